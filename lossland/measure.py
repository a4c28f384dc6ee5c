"""Spectra of stored runs, measured on their checkpoints without training again.

Training and measurement are separate: a run's id covers what determines its minimum, and each spectrum is
stored under the run by the id of its settings (`SpectrumConfig.spectrum_id`). The config's spectrum comes
with the run (runs.spectrum_id; the runs row sums it up); other settings are measured on the checkpoint and
stored beside it, so asking twice measures once. The exact dense Hessian costs n_params HVPs: `settings_for`
builds it only when asked or for a tiny model (EXACT_DEFAULT_MAX parameters), and `exact_cost` times one HVP
to say what it will cost before it starts.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint
from .config import ConfigError, ExperimentConfig, SpectrumConfig
from .curvature import HessianOperator, SpectrumResult, spectrum
from .models import n_params
from .pairs import ROLES, Progress, is_run_id, quiet, run_id, run_ids
from .store import Store, StoreError

Bar = Callable[[str], tuple[Progress, Callable[[], None]]]  # what -> (progress callback, close)

EXACT_DEFAULT_MAX = 500  # without --exact, the dense Hessian is built only up to this many parameters
EXACT_MOST = 50_000  # SpectrumConfig.exact_max_params' upper bound: n² float64 is 18.6 GiB there


@dataclass(frozen=True)
class Measured:
    """One spectrum of one run: its settings, whether it came from the store, and its numbers as the CLI
    prints them (the keys of `summary`)."""

    run_id: str | None  # None: a checkpoint whose run is not in the store (nothing was stored)
    spectrum_id: str
    settings: SpectrumConfig
    from_store: bool
    summary: dict[str, Any]


def settings_for(base: SpectrumConfig, n_params: int, exact: bool = False, **changes: Any) -> SpectrumConfig:
    """`base` with the `changes` that are not None (k, tol, seed, chunk_size, ...); the exact Hessian only
    with `exact` (any size up to EXACT_MOST) or when n_params ≤ EXACT_DEFAULT_MAX."""
    if exact and n_params > EXACT_MOST:
        raise ConfigError(f"--exact: the dense Hessian of {n_params:,} parameters is refused above {EXACT_MOST:,} "
                          f"({n_params ** 2 * 8 / 2 ** 30:.0f} GiB in float64); Lanczos, SLQ and Hutch++ need no "
                          f"dense matrix")
    most = max(base.exact_max_params, n_params) if exact else min(base.exact_max_params, EXACT_DEFAULT_MAX)
    if changes.get("k") is not None and changes.get("max_steps") is None:  # more eigenpairs need more steps
        changes["max_steps"] = max(base.max_steps, min(n_params, 6 * changes["k"]))
    try:
        out = replace(base, exact_max_params=most, **{k: v for k, v in changes.items() if v is not None})
    except TypeError as e:
        raise ConfigError(f"spectrum: {e}") from None
    out.validate()
    return out


def exact_cost(ck: Checkpoint, settings: SpectrumConfig) -> tuple[int, float]:
    """(HVPs, estimated seconds) of the exact Hessian of ck's clean training loss: n_params products, each as
    long as one timed here (float64, as `spectrum` runs them)."""
    x, y = ck.clean_train()
    op = HessianOperator(copy.deepcopy(ck.model).to(torch.float64), x, y, ck.loss_fn, chunk_size=settings.chunk_size)
    v = torch.randn(op.n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    op.matvec(v)  # the first product builds the cached graph
    start = time.perf_counter()
    op.matvec(v)
    return op.n, op.n * (time.perf_counter() - start)


def summary(s: SpectrumResult, ck: Checkpoint) -> dict[str, Any]:
    """A computed spectrum's numbers as `terminal.format_spectrum` prints them."""
    return {"checkpoint": str(ck.path), "role": ck.role, "n_params": s.n_params,
            "spectrum_id": s.settings.spectrum_id(),
            "eigenvalues": list(s.top.eigenvalues), "residuals": list(s.top.residuals), "converged": s.top.converged,
            "trace": s.trace.value, "trace_stderr": s.trace.stderr, "trace_exact": s.trace_exact,
            "frobenius_sq": s.frobenius_sq.value, "frobenius_sq_stderr": s.frobenius_sq.stderr,
            "frobenius_sq_exact": s.frobenius_sq_exact, "log_volume_k": list(s.log_volume_k),
            "log_volume_exact": s.log_volume_exact, "eps": s.settings.eps, "hvps": s.hvps,
            "lanczos_hvps": s.top.hvps, "seconds": s.seconds, "exact": s.exact_eigenvalues is not None}


def stored_summary(frames: dict[str, pd.DataFrame], row: pd.Series, settings: SpectrumConfig) -> dict[str, Any]:
    """A stored spectrum's numbers, keyed as `summary` (no new HVPs: hvps and seconds are 0)."""
    top = frames["spectra"][frames["spectra"]["kind"] == "lanczos"].sort_values("idx")
    est = frames["estimates"]
    one = {n: r for n, r in zip(est["name"], est.itertuples(), strict=True) if n != "log_volume_k"}
    lv = est[est["name"] == "log_volume_k"].sort_values("k")["value"].astype(float).tolist()
    value = lambda name, field="value": float(getattr(one[name], field)) if name in one else None  # noqa: E731
    residuals = top["residual"].astype(float).tolist()
    eigenvalues = top["eigenvalue"].astype(float).tolist()
    return {"checkpoint": str(row["checkpoint"]), "role": str(row["role"]), "n_params": int(row["n_params"]),
            "spectrum_id": settings.spectrum_id(), "eigenvalues": eigenvalues, "residuals": residuals,
            "converged": all(r <= settings.tol * abs(e) for e, r in zip(eigenvalues, residuals, strict=True)),
            "trace": value("trace"), "trace_stderr": value("trace", "stderr"), "trace_exact": value("trace_exact"),
            "frobenius_sq": value("frobenius_sq"), "frobenius_sq_stderr": value("frobenius_sq", "stderr"),
            "frobenius_sq_exact": value("frobenius_sq_exact"), "log_volume_k": lv,
            "log_volume_exact": value("log_volume_exact"), "eps": settings.eps, "hvps": 0, "lanczos_hvps": 0,
            "seconds": 0.0, "exact": bool((frames["spectra"]["kind"] == "exact").any())}


def compute(ck: Checkpoint, settings: SpectrumConfig, progress: Progress = quiet,
            announce: Callable[[str], None] = lambda message: None) -> SpectrumResult:
    """The spectrum of a checkpoint's clean training loss with `settings`; when that builds the exact Hessian,
    its cost is announced first."""
    n = n_params(ck.model)
    if n <= settings.exact_max_params:
        hvps, seconds = exact_cost(ck, settings)
        announce(f"exact Hessian of {n:,} parameters: {hvps:,} Hessian-vector products, about {seconds:.0f} s "
                 f"(from one timed product), and {n * n * 8 / 2 ** 20:,.0f} MiB")
    x, y = ck.clean_train()
    return spectrum(ck.model, x, y, ck.loss_fn, settings, progress)


def run_checkpoint(store: Store, rid: str) -> tuple[pd.Series, Checkpoint]:
    """A stored run's row and its checkpoint, checked to be of the run's config and role."""
    runs = store.runs(run_id=rid)
    if runs.empty:
        raise StoreError(f"no run {rid!r} in store {store.path}; `lossland runs` lists them")
    row = runs.iloc[0]
    path = store.checkpoint_path(rid)
    if row["status"] == "failed" or path is None or not path.exists():
        raise StoreError(f"run {rid} has no checkpoint ({'it failed' if row['status'] == 'failed' else path}): "
                         f"its spectrum can't be measured without training it again")
    ck = load_checkpoint(path)
    theirs = ExperimentConfig.from_json(row["config_json"])
    if ck.role != row["role"] or ck.config.training_hash() != theirs.training_hash():
        raise CheckpointError(f"checkpoint {path} is not of run {rid} (another config or role)")
    return row, ck


def measure(store: Store, rid: str, settings: SpectrumConfig, progress: Progress = quiet,
            announce: Callable[[str], None] = lambda message: None) -> Measured:
    """The spectrum of stored run `rid` with `settings`: from the store when it holds it, else measured on the
    run's checkpoint (no training) and stored under the run."""
    sid = settings.spectrum_id()
    row, ck = run_checkpoint(store, rid)
    frames = store.spectrum_frames(rid, sid)
    if len(frames["spectra"]):
        progress(1.0, f"spectrum {sid} of {rid} answered from the store")
        return Measured(rid, sid, settings, True, stored_summary(frames, row, settings))
    s = compute(ck, settings, progress, announce)
    store.save_spectrum(rid, s)
    return Measured(rid, sid, settings, False, summary(s, ck))


def for_target(store: Store, target: str, exact: bool, changes: dict[str, Any], bar: Bar,
               announce: Callable[[str], None] = lambda message: None) -> list[Measured]:
    """`lossland spectrum TARGET`: a run id, a pair id (both runs) or a checkpoint file. A stored run is measured
    with its config's settings and `changes` (the exact Hessian as `settings_for` says), or, without any, shows
    its config's stored spectrum; a checkpoint whose run the store lacks is measured and not stored. `bar(what)`
    gives a progress callback and its close."""
    if target.endswith(".pt") or Path(target).is_file():
        ck = load_checkpoint(target)
        rid = run_id(ck.config.config_hash(), ck.role)
        if not (store.path.exists() and len(store.runs(run_id=rid))):
            settings = settings_for(ck.config.spectrum, n_params(ck.model), exact, **changes)
            s = _with_bar(bar, "spectrum", lambda progress: compute(ck, settings, progress, announce))
            return [Measured(None, settings.spectrum_id(), settings, False, summary(s, ck))]
        targets = [rid]
    else:
        targets = [target] if is_run_id(target) else run_ids(target)
    done = []
    for rid in targets:
        row, _ = run_checkpoint(store, rid)
        base = ExperimentConfig.from_json(row["config_json"]).spectrum
        asked = exact or any(v is not None for v in changes.values())
        settings = (base if not asked and len(store.spectrum_frames(rid, base.spectrum_id())["spectra"]) else
                    settings_for(base, int(row["n_params"]), exact, **changes))
        done.append(_with_bar(bar, f"spectrum of {rid}",
                              lambda p, r=rid, s=settings: measure(store, r, s, p, announce)))
    return done


def _with_bar(bar: Bar, what: str, work: Callable[[Progress], Any]) -> Any:
    progress, close = bar(what)
    try:
        return work(progress)
    finally:
        close()


def ensure_spectra(store: Store, pair_id: str, settings: SpectrumConfig, progress: Progress = quiet) -> list[Measured]:
    """The spectra with `settings` of a stored pair's runs that did not diverge, measured where missing."""
    runs = store.pair(pair_id).runs.set_index("role")
    todo = [r for r in ROLES if r in runs.index and runs.loc[r, "status"] not in ("diverged", "failed")]
    return [measure(store, run_id(pair_id, role), settings,
                    lambda f, m, i=i, role=role: progress((i + f) / len(todo), f"spectrum of {role}: {m}"))
            for i, role in enumerate(todo)]
