"""How fast are loss landscapes and escape trials? Batched against point by point, ensemble against one by one.

    python benchmarks/landscape.py [--device cpu|cuda] [--grid 41] [--trials 16] [--retrain-epochs 200]

(a) A 41×41 grid of filter-normalised 2-D slices around the good digits-mlp minimum (preset
    "digits-mlp", trained with train.train): landscape.slice_2d, which evaluates 64 parameter vectors
    per vmapped forward pass, against loading each vector into the model and evaluating it with the
    evaluator train() uses (one forward pass over clean, attack and test per point). Both report the
    six metrics at every point; their largest difference is printed.
(b) Escape trials at one radius from the bad minimum: basins.escape_trials with the trials retrained
    together as a vmap ensemble, against the same trials retrained one after another with train().
    Both stop each trial at the clean-loss target or after --retrain-epochs epochs.

Each timing follows one warm-up run (vmap tracing, allocator, lazy imports).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lossland.basins import escape_trials  # noqa: E402
from lossland.config import preset  # noqa: E402
from lossland.data import load_experiment_data  # noqa: E402
from lossland.landscape import (  # noqa: E402
    METRICS,
    filter_normalized_direction,
    flat_params,
    set_flat_params,
    slice_2d,
)
from lossland.machine import describe  # noqa: E402
from lossland.train import _Evaluator, train  # noqa: E402


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def grid_one_by_one(model, data, loss: str, d1, d2, alphas, betas) -> dict[str, np.ndarray]:
    """The reference: every grid point loaded into the model and evaluated on its own."""
    twin, evaluator, theta = copy.deepcopy(model).eval(), _Evaluator(data, loss), flat_params(model)
    out = {m: np.zeros((len(betas), len(alphas))) for m in METRICS}
    for i, b in enumerate(betas):
        for j, a in enumerate(alphas):
            set_flat_params(twin, theta + float(a) * d1 + float(b) * d2)
            for m, v in evaluator(twin).items():
                out[m][i, j] = float(v)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--grid", type=int, default=41)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--radius", type=float, default=0.5)
    ap.add_argument("--retrain-epochs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = preset("digits-mlp").with_changes(**{"train.device": args.device})
    data = load_experiment_data(cfg).to(device)
    loss = cfg.train.loss
    print(f"machine: {describe(device)}")

    good, t_good = timed(lambda: train(cfg, data, "good", device=device))
    bad, t_bad = timed(lambda: train(cfg, data, "bad", device=device))
    print(f"minima: digits-mlp ({good.n_params:,} parameters), good {good.status} in {t_good:.1f} s "
          f"(test acc {good.test_acc:.3f}), bad {bad.status} in {t_bad:.1f} s (test acc {bad.test_acc:.3f}); "
          f"device {device}")

    model = good.model
    d1, d2 = filter_normalized_direction(model, 0), filter_normalized_direction(model, 1)
    alphas = betas = np.linspace(-1.0, 1.0, args.grid)
    n_points = args.grid ** 2
    slice_2d(model, data, loss, d1, d2, alphas[:8], betas[:8])
    grid_one_by_one(model, data, loss, d1, d2, alphas[:8], betas[:2])
    batched, t_batched = timed(lambda: slice_2d(model, data, loss, d1, d2, alphas, betas))
    single, t_single = timed(lambda: grid_one_by_one(model, data, loss, d1, d2, alphas, betas))
    diff = max(float(np.max(np.abs(getattr(batched, m) - single[m]) / np.maximum(np.abs(single[m]), 1.0)))
               for m in METRICS)

    radii = [args.radius]
    short = dict(n_trials=2, seed=0, retrain_epochs=2, device=device)
    escape_trials(cfg, data, bad.model, radii, **short)
    escape_trials(cfg, data, bad.model, radii, **short, ensemble=False)
    kw = dict(n_trials=args.trials, seed=0, retrain_epochs=args.retrain_epochs, device=device)
    together, t_together = timed(lambda: escape_trials(cfg, data, bad.model, radii, **kw))
    alone, t_alone = timed(lambda: escape_trials(cfg, data, bad.model, radii, **kw, ensemble=False))
    epochs = int(together.epochs.sum())
    same = (together.status == alone.status and np.array_equal(together.epochs, alone.epochs)
            and np.array_equal(together.escaped, alone.escaped))

    print()
    print(f"{'workload':<52} {'seconds':>8} {'per unit':>14}  result")
    print("-" * 100)
    print(f"{f'(a) {args.grid}×{args.grid} grid, batched (slice_2d, 64 points/pass)':<52} {t_batched:8.3f} "
          f"{1e3 * t_batched / n_points:11.3f} ms  per point")
    print(f"{f'(a) {args.grid}×{args.grid} grid, point by point':<52} {t_single:8.3f} "
          f"{1e3 * t_single / n_points:11.3f} ms  per point")
    print(f"{'(a) speedup':<52} {'':>8} {'':>14}  {t_single / t_batched:.1f}×  "
          f"(largest relative difference {diff:.1e})")
    print(f"{f'(b) {args.trials} escape trials at r = {args.radius:g}, ensemble':<52} {t_together:8.3f} "
          f"{1e3 * t_together / epochs:11.3f} ms  per trial-epoch")
    print(f"{f'(b) {args.trials} escape trials at r = {args.radius:g}, one by one':<52} {t_alone:8.3f} "
          f"{1e3 * t_alone / epochs:11.3f} ms  per trial-epoch")
    print(f"{'(b) speedup':<52} {'':>8} {'':>14}  {t_alone / t_together:.1f}×  ({epochs} trial-epochs; "
          f"statuses, epochs and escapes {'identical' if same else 'DIFFER'}; "
          f"escape probability {together.escape_probability()[0]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
