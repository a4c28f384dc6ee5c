"""What the allocator setting and float32 products buy on a CNN's Hessian-vector products.

    python benchmarks/allocator.py [--preset fashion-lenet] [--samples 1000] [--repeats 3] [--threads T]

One HVP of the preset's model (untrained, seeded) over --samples clean training images, as `spectrum` runs it
(one chunk: the gradient's graph kept between products), in float64 and in float32, each measured in two fresh
processes: glibc's default allocator, and `machine.tune_allocator()` (large blocks kept for reuse instead of
fresh pages for each). A process can't undo the setting, so each cell is its own child process. Prints seconds
per HVP (best of --repeats after one warm-up), the kernel (system) CPU seconds per HVP, and the ratios to the
float64 default. Fashion-MNIST from the Debian package; without it, seeded random images of the same shape.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lossland.config import preset  # noqa: E402
from lossland.curvature import HessianOperator  # noqa: E402
from lossland.data import DatasetError, load_experiment_data  # noqa: E402
from lossland.machine import describe, tune_allocator  # noqa: E402
from lossland.models import build_model  # noqa: E402
from lossland.train import loss_function  # noqa: E402


def _images(cfg, n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        data = load_experiment_data(cfg.with_changes(**{"data.n_train": n}))
        return data.x_train, data.y_train, "Fashion-MNIST"
    except DatasetError:
        g = torch.Generator().manual_seed(0)
        return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g), "random images"


def child(args) -> dict:
    tuned = tune_allocator() if args.tuned else False
    torch.set_num_threads(args.threads) if args.threads else None
    cfg = preset(args.preset)
    x, y, source = _images(cfg, args.samples)
    dtype = getattr(torch, args.dtype)
    model = build_model(cfg.model, tuple(x.shape[1:]), 10).to(dtype).eval()
    op = HessianOperator(model, x, y, loss_function(cfg.train.loss), chunk_size=args.samples,
                         check_determinism=False)
    v = torch.randn(op.n, 1, generator=torch.Generator().manual_seed(1), dtype=dtype)
    op.matmat(v)
    best, sys_s = float("inf"), float("inf")
    for _ in range(args.repeats):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        op.matmat(v)
        seconds, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        if seconds < best:
            best, sys_s = seconds, r1.ru_stime - r0.ru_stime
    return {"seconds": best, "system": sys_s, "tuned": tuned, "n": op.n, "source": source}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="fashion-lenet")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tuned", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="float64", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    print(describe("cpu"))
    cells = {}
    for dtype in ("float64", "float32"):
        for tuned in (False, True):
            cmd = [sys.executable, __file__, "--child", "--dtype", dtype, "--preset", args.preset,
                   "--samples", str(args.samples), "--repeats", str(args.repeats), "--threads", str(args.threads)]
            out = subprocess.run(cmd + (["--tuned"] if tuned else []), capture_output=True, text=True, check=True)
            cells[dtype, tuned] = json.loads(out.stdout.strip().splitlines()[-1])
    first = next(iter(cells.values()))
    print(f"{args.preset}: {first['n']:,} parameters, one HVP over {args.samples:,} {first['source']} "
          f"(one chunk, graph kept), best of {args.repeats}")
    base = cells["float64", False]["seconds"]
    print(f"{'HVPs in':8s} {'allocator':22s} {'s / HVP':>8s} {'system s':>9s} {'× faster':>9s}")
    for (dtype, tuned), c in cells.items():
        label = "tune_allocator()" + ("" if c["tuned"] else " (failed)") if tuned else "glibc default"
        print(f"{dtype:8s} {label:22s} {c['seconds']:8.3f} {c['system']:9.3f} {base / c['seconds']:9.2f}")


if __name__ == "__main__":
    main()
