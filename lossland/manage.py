"""Run management and analyses from the command line, as library calls: the runs to compare, an analysis
spec from `--field value` options, the tables an analysis prints, a sweep's grid values per point.

The printing and the argument parsing are `lossland.cli_manage`'s; the store side is
`lossland.store.manage` (delete, restore, gc, tags, notes) and `lossland.store.search` (--where).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import fields
from typing import Any

import pandas as pd

from . import analyses, path_analyses
from .config import ConfigError
from .frames import runs_comparison
from .pairs import is_run_id, run_ids
from .specs import (
    EscapeSearchSpec,
    EscapeSpec,
    InterpolationSpec,
    RadiusSpec,
    RandomInitSpec,
    SliceSpec,
    Spec,
    SurfaceSpec,
    TrajectorySpec,
)
from .store import Store, StoreError

# command -> the analysis kinds it runs (the first is the default of --kind)
ANALYSIS_COMMANDS: dict[str, tuple[type[Spec], ...]] = {
    "landscape": (InterpolationSpec, SliceSpec, SurfaceSpec, TrajectorySpec), "escape": (EscapeSpec, EscapeSearchSpec),
    "random-init": (RandomInitSpec,), "radius": (RadiusSpec,)}


def compared_runs(store: Store, ids: Iterable[str]) -> pd.DataFrame:
    """The live runs of these run ids and pair ids (a pair id: both its runs), in the order given; a
    StoreError names an id the store lacks."""
    wanted = [rid for i in ids for rid in ([i] if is_run_id(i) else run_ids(i))]
    runs = store.runs(run_id=wanted).set_index("run_id", drop=False)
    missing = [i for i in wanted if i not in runs.index]
    if missing:
        raise StoreError(f"no run {missing[0]!r} in store {store.path} (deleted runs are left out)")
    return runs.loc[list(dict.fromkeys(wanted))].reset_index(drop=True)


def compare(store: Store, ids: Iterable[str]) -> pd.DataFrame:
    """The side-by-side table of frames.runs_comparison for these runs (the Runs page's comparison)."""
    runs = compared_runs(store, ids)
    if len(runs) < 2:
        raise StoreError("compare needs two or more runs (a pair id counts as its two runs)")
    return runs_comparison(runs)


# --- analyses ---------------------------------------------------------------------------------------

def spec_fields(command: str) -> dict[str, str]:
    """Every setting of the command's specs -> its type ("int", "float", "str", "tuple[float, ...]")."""
    out: dict[str, str] = {}
    for cls in ANALYSIS_COMMANDS[command]:
        out |= {f.name: str(f.type) for f in fields(cls)}
    return out


def _value(spec: type[Spec], name: str, kind: str, raw: str) -> Any:
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind.startswith("tuple"):
            return tuple(float(v) for v in raw.split(",") if v.strip())
    except ValueError:
        wanted = "a comma-separated list of numbers" if kind.startswith("tuple") else f"an {kind}"
        raise ConfigError(f"--{name.replace('_', '-')} {raw!r}: {spec.kind}.{name} takes {wanted}") from None
    return raw


def build_spec(command: str, kind: str | None, options: dict[str, str | None]) -> Spec:
    """The spec of `command` (of `kind` for landscape) from its options (None: the spec's default); a
    ConfigError names an option the kind has no setting for, or a value it does not take."""
    choices = {c.kind: c for c in ANALYSIS_COMMANDS[command]}
    cls = choices.get(kind or next(iter(choices)))
    if cls is None:
        raise ConfigError(f"--kind {kind!r}: one of {', '.join(choices)}")
    own = {f.name: str(f.type) for f in fields(cls)}
    given = {k: v for k, v in options.items() if v is not None}
    stray = [k for k in given if k not in own]
    if stray:
        raise ConfigError(f"--{stray[0].replace('_', '-')} is not a setting of {cls.kind}; its settings: "
                          f"{', '.join('--' + k.replace('_', '-') for k in own) or 'none'}")
    return cls(**{k: _value(cls, k, own[k], v) for k, v in given.items()})


def analysis(store: Store, pair_id: str, spec: Spec, stored_only: bool, progress) -> analyses.Analysis:
    """The stored analysis, or (unless stored_only) computed now and stored."""
    store.pair(pair_id)  # an unknown or deleted pair fails here, before any checkpoint is loaded
    found = analyses.get(store, pair_id, spec)
    if found is None and stored_only:
        raise StoreError(f"the store holds no {spec.title} of pair {pair_id} with these settings ({spec.describe()}); "
                         f"leave out --stored-only to compute it")
    return found if found is not None else analyses.compute(store, pair_id, spec, progress)


_SHOWN = ("clean_loss", "clean_acc", "test_loss", "test_acc")


def analysis_table(a: analyses.Analysis) -> pd.DataFrame:
    """What the CLI prints of an analysis: the points of a 1-D landscape, a summary per role (and radius)
    of the rest; `--json` prints the whole frame."""
    f = a.frame
    if a.kind in (InterpolationSpec.kind, SliceSpec.kind):
        cols = (["role"] if a.kind == SliceSpec.kind else []) + ["alpha", *_SHOWN]
        return f.sort_values([c for c in ("role", "alpha") if c in cols])[cols].reset_index(drop=True)
    if a.kind == SurfaceSpec.kind:
        return f.groupby("role").agg(points=("point", "count"), min_clean_loss=("clean_loss", "min"),
                                     max_clean_loss=("clean_loss", "max"), mean_test_acc=("test_acc", "mean"))
    if a.kind == EscapeSpec.kind:
        return f.groupby(["role", "radius"]).agg(trials=("trial", "count"), escaped=("escaped", "mean"),
                                                 test_acc=("test_acc", "mean"), distance=("distance", "mean"))
    if a.kind == TrajectorySpec.kind:
        path = f[f["part"] == "path"]
        return path.groupby("role").agg(points=("point", "count"), last_epoch=("epoch", "max"),
                                        pc1=("explained_1", "first"), pc2=("explained_2", "first"))
    if a.kind == EscapeSearchSpec.kind:
        return path_analyses.escape_transitions(f, a.spec).set_index("role")
    if a.kind == RandomInitSpec.kind:
        return f[["seed", "clean_acc", "test_acc", "top_eigenvalue"]].reset_index(drop=True)
    return f.groupby("role").agg(directions=("trial", "count"), mean_radius=("radius", "mean"),
                                 std_radius=("radius", "std"), censored=("escaped", "sum"))


# --- sweeps -----------------------------------------------------------------------------------------

def grid_points(grid: dict[str, Iterable[Any]]) -> list[dict[str, Any]]:
    """Each point's grid values, in the order of experiments.grid_configs (and so of sweep's outcomes)."""
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(list(grid[k]) for k in keys))]
