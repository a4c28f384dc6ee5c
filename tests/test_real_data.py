"""Real Fashion-MNIST, found without configuration (Debian's dataset-fashion-mnist): the loader against
the dataset's published facts, and a small pair on the real images whose good minimum generalizes better."""

from __future__ import annotations

import numpy as np
import pytest

from lossland.config import AttackConfig, DataConfig, preset
from lossland.data import DatasetError, _load_source, _source_key, attack_samples, load_dataset, locate
from lossland.train import train_pair


def _not_found() -> str | None:
    try:
        locate(DataConfig(name="fashion-mnist"))
    except DatasetError as e:
        return str(e)
    return None


NOT_FOUND = _not_found()
pytestmark = pytest.mark.skipif(
    NOT_FOUND is not None,
    reason=f"Fashion-MNIST is not installed here: {NOT_FOUND}")


@pytest.fixture(scope="module")
def source():
    return _load_source(_source_key(DataConfig(name="fashion-mnist")))


def test_the_files_hold_60000_training_and_10000_test_images_of_28x28(source):
    x, y, x_test, y_test = source
    assert x.shape == (60000, 1, 28, 28) and x_test.shape == (10000, 1, 28, 28)
    assert y.shape == (60000,) and y_test.shape == (10000,)
    assert x.dtype == np.float32 and y.dtype == np.int64


def test_pixels_span_the_unit_interval_with_the_known_mean_and_std(source):
    x, _, x_test, _ = source
    for a in (x, x_test):
        assert float(a.min()) == 0.0 and float(a.max()) == 1.0
    # the normalisation constants everyone uses for Fashion-MNIST's training set
    assert abs(float(x.mean()) - 0.2860) < 1e-3 and abs(float(x.std()) - 0.3530) < 1e-3


def test_ten_classes_each_6000_train_and_1000_test_images(source):
    _, y, _, y_test = source
    assert np.bincount(y).tolist() == [6000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10


def test_the_files_are_in_the_original_order(source):
    _, y, _, y_test = source
    assert y[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # ankle boot, t-shirt, t-shirt, dress, ...
    assert y_test[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]


def test_load_dataset_splits_the_real_pool(source):
    d = load_dataset(DataConfig(name="fashion-mnist", n_train=1000), AttackConfig(n_attack=2000))
    assert d.in_shape == (1, 28, 28) and d.n_classes == 10 and len(d.y_test) == 10000
    assert len(d.y_train) == 1000 and len(d.y_attack) == 2000
    assert np.intersect1d(d.train_index, d.attack_index).size == 0
    assert np.array_equal(d.y_attack_true.numpy(), source[1][d.attack_index])
    s = attack_samples(preset("fashion-mlp"), n=4)
    assert s.clean_images.shape == (4, 28, 28) and s.class_names[9] == "Ankle boot"


def test_a_small_real_pair_the_good_minimum_tests_clearly_better_at_matched_clean_loss():
    # fashion-mlp (784-256-128-10) on 400 clean + 400 random-label images, to clean loss 0.02: ~15 s
    cfg = preset("fashion-mlp").with_changes(**{
        "data.n_train": 400, "attack.n_attack": 400, "data.n_test": 2000, "train.loss_target": 0.02,
        "train.max_epochs": 300, "train.device": "cpu"})
    pair = train_pair(cfg)
    for r in (pair.good, pair.bad):
        assert r.status == "converged", (r.role, r.stop_reason)
        assert r.clean_loss <= 0.02 and r.clean_acc == 1.0, (r.role, r.clean_loss, r.clean_acc)
    assert pair.bad.attack_acc > 0.95, "the bad minimum fits its random labels"
    assert pair.good.test_acc > 0.70
    assert pair.good.test_acc - pair.bad.test_acc > 0.15, (pair.good.test_acc, pair.bad.test_acc)
