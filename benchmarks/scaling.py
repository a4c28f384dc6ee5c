"""How the Hessian engine scales: HVP cost and top-20 time against parameters and against samples, and
what float32 HVPs (with float64 Lanczos) cost in accuracy.

    python benchmarks/scaling.py [--quick] [--device cpu|cuda] [--threads T] [--png docs/benchmarks/scaling.png]

(a) parameters: the fashion-cnn architecture at five widths (about 10⁴ … 10⁶ parameters), 64 real
    Fashion-MNIST images; (b) samples: a 784-32-10 MLP (25,450 parameters) on 1,000 … 60,000 images,
    chunks of 2,048 (the preset's), with the peak memory above the data (one chunk's graph: it must not
    grow); (c) float32 against float64 HVPs, top-20 of the fashion-mlp preset's model (235,146
    parameters) on 1,000 images. Untrained models (the default initialisation): the cost of an HVP does
    not depend on where the Hessian is taken. Fitted slopes are least squares on log10-log10. Each HVP
    time is the median of 3 after a warm-up.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
import torch
import vl_convert as vlc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from spectrum import table  # noqa: E402
from spectrum_scale import LOSS, measured, residuals  # noqa: E402

from lossland.config import DataConfig, ModelConfig  # noqa: E402
from lossland.curvature import HessianOperator  # noqa: E402
from lossland.data import load_dataset  # noqa: E402
from lossland.lanczos import top_eigenpairs  # noqa: E402
from lossland.machine import describe  # noqa: E402
from lossland.models import build_model  # noqa: E402

WIDTHS = [((4, 8), (24,)), ((8, 16), (60,)), ((16, 32), (120,)), ((24, 48), (200,)), ((32, 64), (300,))]
SAMPLES = [1000, 4000, 16000, 60000]
K = 20


def images(n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset(DataConfig(name="fashion-mnist", n_train=n, n_test=1))
    return data.x_train.to(device), data.y_train.to(device)


def hvp_seconds(op: HessianOperator, repeats: int = 3) -> float:
    v = torch.randn(op.n, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(op.device)
    op.matvec(v)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        op.matvec(v)
        if op.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def point(model_cfg: ModelConfig, x, y, dtype=torch.float64, chunk: int = 2048, top: bool = True) -> dict:
    model = build_model(model_cfg, tuple(x.shape[1:]), 10).to(device=x.device, dtype=dtype).eval()
    op = HessianOperator(model, x.to(dtype), y, LOSS, chunk_size=chunk)
    row = {"params": op.n, "samples": len(y), "hvp s": hvp_seconds(op)}
    if top:
        res, seconds, peak = measured(lambda: top_eigenpairs(op, K, tol=1e-6), x.device)
        row |= {"top-20 s": seconds, "hvps": res.hvps, "per hvp s": seconds / res.hvps, "peak MiB": peak / 2 ** 20,
                "converged": res.converged, "restarts": res.restarts}
    print(f"  {row}", file=sys.stderr, flush=True)
    return row


def slope(xs, ys) -> float:
    return float(np.polyfit(np.log10(xs), np.log10(ys), 1)[0])


def precision_rows(x, y) -> list[list]:
    """(c): top-20 with float64 and with float32 HVPs (Lanczos float64 in both); residuals and errors against
    the float64 operator and its eigenvalues."""
    cfg = ModelConfig(name="mlp", widths=(256, 128))
    model = build_model(cfg, tuple(x.shape[1:]), 10).to(x.device).eval()
    op64 = HessianOperator(model.double(), x.double(), y, LOSS)
    op32 = HessianOperator(build_model(cfg, tuple(x.shape[1:]), 10).to(x.device).eval(), x.float(), y, LOSS)
    rows, reference = [], None
    for name, op, tol, steps in (("float64 HVPs", op64, 1e-6, 300), ("float32 HVPs", op32, 1e-6, 300),
                                 ("float32 HVPs", op32, 1e-5, 300), ("float32 HVPs", op32, 1e-4, 300)):
        res, seconds, peak = measured(lambda op=op, tol=tol, steps=steps: top_eigenpairs(
            op, K, tol=tol, max_steps=steps, return_vectors=True), x.device)
        lam = np.array(res.eigenvalues)
        reference = lam if reference is None else reference
        rel = residuals(op64, lam, res.vectors)
        err = np.abs(lam - reference) / np.abs(reference)
        rows.append([name, f"{tol:g}", res.hvps, seconds, hvp_seconds(op), float(err.max()), float(err[:1].max()),
                     float(rel.max()), float(np.median(rel)), "yes" if res.converged else "no"])
        print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def figure(by_params: pd.DataFrame, by_samples: pd.DataFrame, path: Path) -> None:
    def panel(df: pd.DataFrame, x: str, title: str) -> alt.Chart:
        long = df.melt(id_vars=[x], value_vars=["hvp s", "top-20 s"], var_name="measure", value_name="seconds")
        return alt.Chart(long, title=title, width=260, height=200).mark_line(point=True).encode(
            x=alt.X(f"{x}:Q", scale=alt.Scale(type="log"), title=x),
            y=alt.Y("seconds:Q", scale=alt.Scale(type="log"), title="seconds"),
            color=alt.Color("measure:N", title=None))

    chart = alt.hconcat(panel(by_params, "params", "parameters (64 images)"),
                        panel(by_samples, "samples", "samples (25k-parameter MLP)"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(vlc.vegalite_to_png(chart.to_json(), scale=1.0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--quick", action="store_true", help="two widths, 1k and 2k samples, no precision table")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--png", type=Path, default=Path("docs/benchmarks/scaling.png"))
    ap.add_argument("--parts", default="abc", help="which of (a), (b), (c) to run (the figure needs a and b)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    widths, samples = (WIDTHS[:2], [1000, 2000]) if args.quick else (WIDTHS, SAMPLES)
    print(f"machine: {describe(device)}; torch threads {torch.get_num_threads()}; "
          f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    start = time.perf_counter()
    x, y = images(max(samples), device)
    frames = {}
    cnns = [(ModelConfig(name="cnn", channels=c, widths=w), 64) for c, w in widths]
    mlps = [(ModelConfig(name="mlp", widths=(32,)), n) for n in samples]
    for part, key, configs in (("a", "params", cnns), ("b", "samples", mlps)):
        if part not in args.parts:
            continue
        df = frames[key] = pd.DataFrame([point(cfg, x[:n], y[:n]) for cfg, n in configs])
        cols = ["params", "samples", "hvp s", "top-20 s", "hvps", "per hvp s", "peak MiB", "converged", "restarts"]
        table(f"({part}) {key}: float64 HVPs, top-{K} at tol 1e-6", cols, df[cols].values.tolist())
        print(f"fitted log-log slope vs {key}: HVP {slope(df[key], df['hvp s']):.2f}, "
              f"top-{K} {slope(df[key], df['top-20 s']):.2f}")
    if "c" in args.parts and not args.quick:
        table(f"(c) float32 vs float64 HVPs, top-{K}, fashion-mlp model (235,146 parameters), 1,000 images",
              ["HVPs in", "tol", "HVPs", "seconds", "s / HVP", "max rel err λ", "rel err λ1", "max rel res (f64)",
               "median rel res", "converged"], precision_rows(x[:1000], y[:1000]))
    if len(frames) == 2 and not args.quick:
        figure(frames["params"], frames["samples"], args.png)
        print(f"\nfigure: {args.png} ({args.png.stat().st_size // 1024} KiB)")
    print(f"whole run: {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
