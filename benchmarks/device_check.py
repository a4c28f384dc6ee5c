"""The device path against the CPU on one checkpoint: training, HVP and Lanczos agree to float tolerance.

    python benchmarks/device_check.py [--device cuda|cpu] [--quick]

1. Training: the fashion-cnn preset's model (--quick: a small CNN), 1 epoch on 1,000 Fashion-MNIST images
   (--quick: 200) from the same seed on the CPU and on --device; float32 with TF32 off, so the two runs
   differ only by rounding and reduction order: parameters within TRAIN_RTOL.
2. The CPU run is written as a lossland checkpoint and read back; from it, float64 HVPs of the same
   vectors on both devices (within HVP_RTOL) and Lanczos top-5 on both (eigenvalues within EIG_RTOL,
   every residual ≤ 1e-6·|λ| on each device), over 500 of the images (--quick: top-3 over 50).
Exits 1 when anything disagrees. With --device cpu it checks the CPU path against itself (a rehearsal).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lossland.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from lossland.config import preset  # noqa: E402
from lossland.curvature import HessianOperator  # noqa: E402
from lossland.data import load_experiment_data  # noqa: E402
from lossland.lanczos import top_eigenpairs  # noqa: E402
from lossland.machine import describe  # noqa: E402
from lossland.train import loss_function, train  # noqa: E402

TRAIN_RTOL = 1e-3  # float32 training for one epoch: rounding and reduction order only
HVP_RTOL = 1e-10  # float64 products of the same vectors
EIG_RTOL = 1e-8  # float64 Lanczos at tol 1e-8 on the same operator


def config(quick: bool):
    changes = {"data.n_train": 200 if quick else 1000, "attack.n_attack": 0, "data.n_test": 100,
               "train.max_epochs": 1, "train.loss_target": 1e-9}
    if quick:
        changes |= {"model.channels": (4, 8), "model.widths": (16,)}
    return preset("fashion-cnn").with_changes(**changes)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().cpu().double().reshape(-1), b.detach().cpu().double().reshape(-1)
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def check_training(cfg, data, device) -> tuple[float, object]:
    """(relative parameter difference after one epoch on CPU and on device, the CPU run)."""
    cpu = train(cfg, data, "good", device="cpu")
    other = train(cfg, data, "good", device=device)
    flat = [torch.cat([p.reshape(-1) for p in r.model.parameters()]) for r in (other, cpu)]
    return relative(*flat), cpu


def check_curvature(model, x, y, device, n_samples: int, k: int) -> dict[str, float]:
    """HVP and Lanczos top-k of the float64 loss over the first n_samples, on the CPU and on device."""
    loss = loss_function("cross_entropy")
    ops = [HessianOperator(copy.deepcopy(model).double().to(d), x[:n_samples].double().to(d),
                           y[:n_samples].to(d), loss) for d in ("cpu", device)]
    V = torch.randn(ops[0].n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    hvp = relative(ops[1].matmat(V.to(device)), ops[0].matmat(V))
    tops = [top_eigenpairs(op, k, tol=1e-8, max_steps=300) for op in ops]
    lam = [np.array(t.eigenvalues) for t in tops]
    worst = max(max(r / abs(v) for r, v in zip(t.residuals, t.eigenvalues, strict=True)) for t in tops)
    return {"hvp": hvp, "eig": float(np.max(np.abs(lam[1] - lam[0]) / np.abs(lam[0]))), "residual": worst,
            "lambda_1": float(lam[0][0])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run with --device cpu for the CPU rehearsal")
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False  # TF32 would make the GPU run a different computation
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)
    start = time.perf_counter()
    cfg = config(args.quick)
    data = load_experiment_data(cfg)
    print(f"machine: {describe(device)}")
    train_diff, cpu_run = check_training(cfg, data, device)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_checkpoint(Path(tmp) / "good.pt", cfg, "good", cpu_run.model)
        model = load_checkpoint(path).model
    k = 3 if args.quick else 5
    curv = check_curvature(model, data.x_train, data.y_train, device, 50 if args.quick else 500, k)
    checks = [("training: parameters after 1 epoch", train_diff, TRAIN_RTOL),
              ("float64 HVP of 3 vectors", curv["hvp"], HVP_RTOL),
              (f"Lanczos top-{k} eigenvalues", curv["eig"], EIG_RTOL),
              ("largest relative residual (both devices)", curv["residual"], 1e-6)]
    print(f"{'check (cpu vs ' + args.device + ')':<44} {'relative':>10} {'tolerance':>10}  result")
    for name, value, tol in checks:
        print(f"{name:<44} {value:10.2e} {tol:10.0e}  {'ok' if value <= tol else 'DISAGREE'}")
    print(f"λ₁ = {curv['lambda_1']:.6g}; {time.perf_counter() - start:.1f} s")
    return 0 if all(value <= tol for _, value, tol in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
