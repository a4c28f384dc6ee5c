"""A researcher's own data: Gaussian blobs, one per class, in `dim` dimensions.

Returns the four arrays lossland accepts as a dict (a tuple of four, a torch Dataset or a DataLoader
work too; see lossland/factories.py). The train part is the pool that lossland draws the clean-train
and attack samples from; labels are integers in [0, classes)."""

import numpy as np


def load(n_train=400, n_test=200, dim=8, classes=3, spread=1.5, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)) * spread

    def draw(n):
        y = rng.integers(0, classes, n)
        return (centres[y] + rng.standard_normal((n, dim))).astype(np.float32), y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test, "n_classes": classes}
