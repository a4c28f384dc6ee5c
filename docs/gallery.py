"""Write the README's figure gallery (docs/gallery/*.png) from a real run of the default digits pair.

    python docs/gallery.py [--store DIR]

Trains the default pair (`ExperimentConfig()`: digits, 64-32-32-10 MLP, 500 clean + 500 attack samples)
into a temporary store unless --store names one that holds it, computes the interpolation, 1-D slices
and 2-D surfaces with their default specs (plus the refinement near each minimum where it is cheaper than
a finer uniform grid), and an attack-size sweep (0, 250, 500 × seeds 0, 1), and draws them with the same
chart builders as the dashboard and the report. About 9 minutes on a 2-core CPU. PNGs are written at scale 1
and quantised to 256 colours to stay small.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import altair as alt
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lossland import (  # noqa: E402
    analyses,
    charts,
    contour_charts,
    contours,
    experiments,  # noqa: E402
    figures3d,
)
from lossland.config import ExperimentConfig  # noqa: E402
from lossland.experiments import run_pair  # noqa: E402
from lossland.frames import spectrum_frame  # noqa: E402
from lossland.pairs import ROLES  # noqa: E402
from lossland.specs import InterpolationSpec, SliceSpec, SurfaceSpec  # noqa: E402
from lossland.store import Store  # noqa: E402

OUT = ROOT / "docs" / "gallery"
MAX_BYTES = 150_000


def save(png: bytes, name: str) -> None:
    """Quantised to a 256-colour palette (the charts have few colours; the 3-D view's gradient keeps well)."""
    img = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    (OUT / name).write_bytes(buf.getvalue())
    size = len(buf.getvalue())
    print(f"{name}: {size / 1000:.0f} kB{'  (over the budget!)' if size > MAX_BYTES else ''}")


def surfaces(store: Store, pair_id: str) -> tuple[dict, dict]:
    frames, refined = {}, {}
    for role in ROLES:
        spec = SurfaceSpec(role=role)
        frames[role] = analyses.compute(store, pair_id, spec).frame
        span = contours.refine_span(contours.grid_of(frames[role]))
        if span is not None:
            refined[role] = analyses.compute(store, pair_id, replace(spec, span=span)).frame
            print(f"{role}: refined over ±{span:g}")
    return frames, refined


def sweep(cfg: ExperimentConfig, store: Store, progress) -> None:
    """The attack-size sweep of the default pair over two seeds: every seed a point over the mean."""
    grid = {"attack.n_attack": [0, 250, 500], "train.seed": [0, 1]}
    experiments.sweep(cfg, grid, store, progress)
    runs = experiments.attack_sweep_frame(store, cfg, grid)
    save(charts.to_png(alt.hconcat(charts.sweep_chart(runs, "test_acc", "digits: test accuracy vs attack size"),
                                   charts.sweep_chart(runs, "top_eigenvalue", "digits: top eigenvalue vs attack size")),
                       scale=1.0), "sweep.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", type=Path, help="a store folder to use (default: a temporary one)")
    args = p.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store((args.store or Path(tmp)) / "runs.duckdb")
        pair_id = run_pair(ExperimentConfig(), store).pair_id
        view = store.pair(pair_id)
        print(f"pair {pair_id} in {time.perf_counter() - start:.0f} s")
        frames, refined = surfaces(store, pair_id)
        found = contour_charts.surface_charts(frames, refined=refined, title="digits: ")
        save(charts.to_png(alt.hconcat(*found.values()), scale=1.0), "contours.png")
        save(figures3d.surface_png(frames, title="digits: ", dpi=80), "surface-3d.png")
        interp = analyses.compute(store, pair_id, InterpolationSpec()).frame
        save(charts.to_png(charts.interpolation_chart(interp), scale=1.0), "interpolation.png")
        slices = analyses.compute(store, pair_id, SliceSpec()).frame
        save(charts.to_png(charts.slice_chart(slices), scale=1.0), "slices.png")
        spectra = charts.spectrum_chart(spectrum_frame(view.spectra, view.runs))
        acc = charts.accuracy_chart(view.runs[["role", "clean_acc", "attack_acc", "test_acc"]])
        save(charts.to_png(alt.hconcat(acc, spectra), scale=1.0), "minima.png")
        sweep(ExperimentConfig(), store, lambda f, m: None)
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
