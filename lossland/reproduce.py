"""Reproduce Wu, Zhu & E (2017) in one command: every experiment of the paper, through the store.

A `Plan` (`lossland.plan`) names, per dataset, the base config (a preset, with wrong attack labels), how many seeds of
good/bad pairs to train, an attack-size sweep whose pairs start from *other* seeds (so their good
runs are the negative control: good minima of other initialisations, trained without an attack set),
a grid of optimizer settings on a smaller clean set (robustness), two_layer networks of several widths
and attack sizes (the 2-layer claim, with their untrained networks as its control), Figure 1, and the
spec (`lossland.specs`) of each analysis. `run` computes what the store lacks (pairs via
`experiments.sweep`, analyses via `analyses.compute`, all cached), then `evidence.collect` reads every
number back into `claims.Evidence` and the figures' frames. A second run computes nothing.
`reproduce` does both and returns the `Reproduction`; `report.write_report` writes its folder.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

import torch

from . import __version__, analyses
from .config import ExperimentConfig
from .evidence import Reproduction, collect
from .experiments import sweep
from .machine import describe
from .models import build_model, n_params
from .pairs import Progress, quiet
from .path_analyses import NoTrajectory
from .plan import (
    DATASET_MODELS,
    DATASET_PRESETS,
    OPTIMIZER_GRID,
    SCALES,
    Plan,
    Setting,
    plan_for,
    slice_specs,
    surface_specs,
)
from .specs import CURVE_FIT, BoundSpec, Spec
from .store import Store, git_commit
from .theory import BOUND_MAX_PARAMS

__all__ = ["DATASET_MODELS", "DATASET_PRESETS", "OPTIMIZER_GRID", "SCALES", "Plan", "Reproduction", "Setting",
           "collect", "plan_for", "reports_dir", "reproduce", "run", "slice_specs", "surface_specs"]

# --- running ---------------------------------------------------------------------------------------

Step = tuple[float, str, Callable[[Progress], bool]]  # (weight, label, work -> computed something?)


def _pairs_step(label: str, configs: list[ExperimentConfig], store: Store, device, executor) -> Step:
    """Train (or find in the store) the pairs of `configs`: one sweep over the model seeds of each group of
    configs that differ only in their seed (so an executor can run a group's points together)."""
    groups: dict[str, tuple[ExperimentConfig, list[int]]] = {}
    for cfg in configs:
        key = cfg.with_changes(**{"model.seed": 0}).config_hash()
        groups.setdefault(key, (cfg, []))[1].append(cfg.model.seed)

    def work(progress: Progress) -> bool:
        ids = [c.config_hash() for c in configs]
        runs = store.runs(pair_id=ids)
        if set(ids) <= set(runs["pair_id"]):  # one query instead of a sweep that reads every pair back
            progress(1.0, f"all {len(ids)} pairs answered from the store")
            return False
        computed = False
        for i, (cfg, seeds) in enumerate(groups.values()):
            part = lambda f, m, i=i: progress((i + f) / len(groups), m)  # noqa: E731
            computed |= not all(o.from_store for o in sweep(cfg, {"model.seed": seeds}, store, part, device=device,
                                                            executor=executor))
        return computed
    return 2.0 * len(configs), f"{label}: {len(configs)} good/bad pairs", work


def analysis_step(store: Store, pair_id: str, spec: Spec, done: set[str] | None = None) -> Callable[[Progress], bool]:
    """A step computing one analysis of a pair; a pair that failed to train is skipped (its seed is then
    left out of the claims, which say so) instead of stopping the whole reproduction. `done`: the ids of
    the analyses the store held complete when the run began (those are answered without a query)."""
    def work(progress: Progress) -> bool:
        if done is not None and spec.analysis_id(pair_id) in done:
            progress(1.0, "answered from the store")
            return False
        if not store.has_pair(pair_id):
            progress(1.0, f"skipped: pair {pair_id} failed (see the Runs page)")
            return False
        return not analyses.compute(store, pair_id, spec, progress).from_store
    return work


def _per_minimum(plan: Plan, analysis, tag: str, cfg: ExperimentConfig) -> list[Step]:
    """The analyses of every compared minimum: slices, escape trials, adaptive sharpness."""
    pid = cfg.config_hash()
    out: list[Step] = [(0.2, f"{tag}: 1-D slice {s.seed}", analysis(pid, s)) for s in plan.slices]
    return out + [(1.5, f"{tag}: escape trials", analysis(pid, plan.escape)),
                  (0.2, f"{tag}: adaptive sharpness", analysis(pid, plan.sharpness))]


def steps(plan: Plan, store: Store, device=None, executor=None) -> list[Step]:
    """Every step of the plan, in order: pairs first, then their analyses."""
    rows = store.analyses()
    done = set(rows.loc[rows["status"] == "done", "analysis_id"]) if len(rows) else set()

    def analysis(pair_id: str, spec: Spec) -> Callable[[Progress], bool]:
        return analysis_step(store, pair_id, spec, done)

    out: list[Step] = []
    for name, base in plan.bases:
        sweep_cfgs = [c for cs in plan.sweep_configs(base).values() for c in cs]
        out.append(_pairs_step(f"{name}: main pairs and the attack-size sweep", sweep_cfgs, store, device, executor))
        grid = [c for cs in plan.robustness_configs(base).values() for c in cs]
        if grid:
            out.append(_pairs_step(f"{name}: optimizer grid", grid, store, device, executor))
    if plan.two_layer is not None:
        out.append(_pairs_step("two_layer networks", plan.two_layer_configs(), store, device, executor))
    for name, base in plan.bases:
        mains = plan.main_configs(base)
        first, tag = mains[0].config_hash(), f"{name} seed {mains[0].model.seed}"
        out.append((0.2, f"{tag}: interpolation", analysis(first, plan.interpolation)))
        out += [(0.5, f"{tag}: 2-D surface of the {s.role} minimum", analysis(first, s)) for s in plan.surfaces]
        if plan.extras(name):
            out.append((3.0, f"{name}: {plan.random_init.n_seeds} random inits", analysis(first, plan.random_init)))
        if plan.escape_search is not None and plan.extras(name):
            out.append((2.0, f"{tag}: 50% escape radii", analysis(first, plan.escape_search)))
        if plan.trajectory is not None and plan.extras(name):
            out.append((0.3, f"{tag}: optimizer trajectories", _unless_unrecorded(analysis(first, plan.trajectory))))
        for cfg in mains + plan.control_configs(base):
            out += _per_minimum(plan, analysis, f"{name} seed {cfg.model.seed} attack {cfg.attack.n_attack}", cfg)
        for cfg in (c for cs in plan.robustness_configs(base).values() for c in cs):
            out.append((0.2, f"{name} grid seed {cfg.model.seed}: adaptive sharpness",
                        analysis(cfg.config_hash(), plan.sharpness)))
    for cfg in plan.two_layer_configs():
        tag = f"two_layer width {cfg.model.widths[0]} seed {cfg.model.seed} attack {cfg.attack.n_attack}"
        out.append((0.3, f"{tag}: 2-layer measurement", analysis(cfg.config_hash(), plan.two_layer_spec)))
        if cfg.model.seed == plan.two_layer.model.seed and _two_layer_params(cfg) <= BOUND_MAX_PARAMS:
            # an identity: one seed shows it, on the widths whose exact matrices are affordable
            out.append((0.1, f"{tag}: identity check", analysis(cfg.config_hash(), BoundSpec())))
    if plan.curve_fit is not None:
        spec = plan.curve_fit
        out.append((1.0, "Figure 1: curve fits", lambda p: not analyses.compute(store, CURVE_FIT, spec, p).from_store))
    return out


def _two_layer_params(cfg: ExperimentConfig) -> int:
    """Parameters of a two_layer network on the teacher data (built, not trained: milliseconds)."""
    return n_params(build_model(cfg.model, (cfg.data.teacher_dim,), cfg.data.n_classes()))


def _unless_unrecorded(work: Callable[[Progress], bool]) -> Callable[[Progress], bool]:
    """A trajectory step that skips, saying why, a pair trained without recording its trajectory."""
    def step(progress: Progress) -> bool:
        try:
            return work(progress)
        except NoTrajectory as e:
            progress(1.0, f"skipped: {e}")
            return False
    return step


def run(plan: Plan, store: Store, progress: Progress = quiet, device: torch.device | str | None = None,
        executor=None) -> int:
    """Compute everything the plan needs that the store lacks; returns how many steps computed something
    (0 when every result came from the store)."""
    todo = steps(plan, store, device, executor)
    total, done, computed = sum(w for w, _, _ in todo), 0.0, 0
    for weight, label, work in todo:
        sub = lambda f, m, done=done, weight=weight, label=label: progress(  # noqa: E731
            (done + weight * min(max(f, 0.0), 1.0)) / total, f"{label}: {m}")
        progress(done / total, label)
        computed += bool(work(sub))
        done += weight
    progress(1.0, f"all {len(todo)} steps done ({computed} computed, {len(todo) - computed} from the store)")
    return computed


# --- one command -----------------------------------------------------------------------------------

def reproduce(plan: Plan, store: Store, progress: Progress = quiet, device: torch.device | str | None = None,
              executor=None, skipped: list[tuple[str, str]] | None = None) -> Reproduction:
    """Run the plan (cached), read it back and test the claims. Write its report with
    `report.write_report(rep, reports_dir(store))`."""
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    computed = run(plan, store, lambda f, m: progress(0.95 * f, m), device=device, executor=executor)
    progress(0.95, "reading the results back from the store")
    found = collect(plan, store)
    rep = Reproduction(plan, *found, skipped=tuple(skipped or ()), seconds=time.perf_counter() - t0,
                       computed=computed, machine=describe(device), code=_code_version(),
                       started=started.isoformat(timespec="seconds"))
    progress(1.0, f"claims tested: {sum(c.verdict == 'PASS' for c in rep.claims)} of {len(rep.claims)} pass")
    return rep


def _code_version() -> str:
    commit = git_commit()
    return f"lossland {__version__}" + (f" at commit {commit[:12]}" if commit else "")


def reports_dir(store: Store) -> Path:
    """Where a store's reproduction reports go: reports/ beside it."""
    return Path(store.path).parent / "reports"
