"""What the command line prints: progress bars on stderr, plain-text tables, and the summaries of a
pair, a stored pair and a spectrum (the same numbers `--json` prints). The comparison rows come from
`frames`, shared with the dashboard and the report."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from .frames import CLI, CLI_STORED, comparison, missing, records, stored_json
from .pairs import ROLES, Progress


def progress_bar(desc: str, quiet: bool = False) -> tuple[Progress, Callable[[], None]]:
    """A tqdm bar driven by the library's progress(fraction, message) protocol (on stderr), and its close;
    both do nothing when `quiet`."""
    if quiet:
        return (lambda fraction, message: None), (lambda: None)
    from tqdm import tqdm  # the CLI's alone: the library never draws bars

    # smoothing 0: the remaining time extrapolates the average rate since the start, not the last step's
    bar = tqdm(total=1000, desc=desc, file=sys.stderr, leave=False, smoothing=0,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")

    def progress(fraction: float, message: str) -> None:
        step = int(1000 * min(max(fraction, 0.0), 1.0)) - bar.n
        bar.set_postfix_str(message, refresh=False)
        if step > 0:
            bar.update(step)
        else:
            bar.refresh()

    return progress, bar.close


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths, strict=True)))
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])


def fmt(v: float | None, spec: str = ".4g") -> str:
    return "—" if v is None else format(v, spec)


def frobenius(sq: float | None, sq_stderr: float | None = None) -> tuple[float | None, float | None]:
    """‖H‖_F and its standard error from the estimate of ‖H‖_F² = tr(H²) (the delta method: se/(2‖H‖_F)).
    Every face shows ‖H‖_F; the store and JSON keep the squared estimate under the name frobenius_sq."""
    if sq is None or missing(sq):
        return None, None
    norm = max(float(sq), 0.0) ** 0.5
    se = None if sq_stderr is None or missing(sq_stderr) else (float(sq_stderr) / (2 * norm) if norm else 0.0)
    return norm, se


def pair_summary(pair, spectra: dict, checkpoints: dict) -> dict:
    rows = {}
    for r in (getattr(pair, role) for role in ROLES):
        row = {"role": r.role, "status": r.status, "stop_reason": r.stop_reason, "epochs": r.epochs,
               "seconds": round(r.seconds, 3), "device": r.device, "n_params": r.n_params, **r.metrics(),
               "checkpoint": checkpoints.get(r.role)}
        s = spectra.get(r.role)
        if s is not None:
            norm, norm_se = frobenius(s.frobenius_sq.value, s.frobenius_sq.stderr)
            row |= {"top_eigenvalues": list(s.top.eigenvalues[:5]), "trace": s.trace.value,
                    "trace_stderr": s.trace.stderr, "frobenius": norm, "frobenius_stderr": norm_se,
                    "frobenius_sq": s.frobenius_sq.value, "frobenius_sq_stderr": s.frobenius_sq.stderr,
                    "log_volume": s.log_volume_k[-1], "log_volume_k": len(s.log_volume_k),
                    "eps": s.settings.eps, "spectrum_hvps": s.hvps, "spectrum_seconds": round(s.seconds, 3)}
        rows[r.role] = row
    return {"pair_id": pair.pair_id, "config": json.loads(pair.config.to_json()), **rows}


def format_pair(summary: dict) -> str:
    g, b = summary["good"], summary["bad"]
    rows = comparison({role: summary[role] for role in ROLES}, CLI)
    text = [f"pair {summary['pair_id']}  ({summary['config']['data']['name']}, "
            f"{summary['config']['model']['name']}, {g['n_params']} parameters, {g['device']})",
            table(list(rows.itertuples(name=None)), ("", *ROLES))]
    if g.get("checkpoint"):
        text.append(f"checkpoints: {g['checkpoint']}, {b['checkpoint']}")
    return "\n".join(text)


def format_spectrum(d: dict) -> str:
    rows = [(str(i + 1), f"{lam:.8g}", f"{res:.1e}") for i, (lam, res) in
            enumerate(zip(d["eigenvalues"], d["residuals"], strict=True))]
    lines = [f"{d['checkpoint']} ({d['role']}, {d['n_params']} parameters): top-{len(rows)} eigenvalues of the "
             f"Hessian of the clean training loss", table(rows, ("i", "eigenvalue", "residual")),
             f"trace        {d['trace']:.6g} ± {d['trace_stderr']:.2g}"
             + (f"   (exact {d['trace_exact']:.6g})" if d["trace_exact"] is not None else ""),
             "‖H‖_F        {:.6g} ± {:.2g}".format(*frobenius(d["frobenius_sq"], d["frobenius_sq_stderr"]))
             + (f"   (exact {frobenius(d['frobenius_sq_exact'])[0]:.6g})" if d["frobenius_sq_exact"] is not None
                else ""),
             f"log-volume   {d['log_volume_k'][-1]:.6g} over the top {len(d['log_volume_k'])} (ε = {d['eps']:g})"
             + (f"; {d['log_volume_exact']:.6g} over all" if d["log_volume_exact"] is not None else ""),
             f"{d['hvps']} Hessian-vector products ({d['lanczos_hvps']} for Lanczos), {d['seconds']:.2f} s"]
    if not d.get("converged", True):
        lines.append("warning: not every eigenpair reached the residual tolerance (residual ≤ tol·|λ|); "
                     "raise --max-steps")
    return "\n".join(lines)


def view_summary(view, sources: bool = False) -> dict:
    """A stored pair's numbers by role; with `sources`, the factories' source text stored with its runs."""
    keys = ("run_id", "status", "epochs", "seconds", "clean_loss", "clean_acc", "attack_acc", "test_acc",
            "top_eigenvalue", "trace", "frobenius_sq", "log_volume", "checkpoint", "created_at")
    out: dict = {"pair_id": view.pair_id}
    for role, rec in records(view.runs, keys).items():
        out[role] = rec | {"created_at": str(rec["created_at"]), "frobenius": frobenius(rec["frobenius_sq"])[0]}
    extra = stored_json(view.runs["extra_json"].iloc[0]) if sources and len(view.runs) else None
    if isinstance(extra, dict) and isinstance(extra.get("factory_sources"), dict):
        out["factory_sources"] = extra["factory_sources"]
    return out


def format_view(d: dict) -> str:
    rows = comparison({role: d.get(role, {}) for role in ROLES}, CLI_STORED)
    text = f"pair {d['pair_id']}\n" + table(list(rows.itertuples(name=None)), ("", *ROLES))
    for section, s in (d.get("factory_sources") or {}).items():  # stored text, shown for review, never run
        if isinstance(s, dict):
            text += (f"\n\n{section}.factory {s.get('factory')}: module {s.get('module')}, sha256 {s.get('sha256')}, "
                     f"source as stored with the runs:\n" + "\n".join(f"  | {line}" for line in
                                                                      str(s.get("source", "")).splitlines()))
    return text


def sweep_table(rows: list[dict]) -> str:
    """One line per sweep point: its pair, its grid values, whether it is new, stored or failed, and the headline
    numbers."""
    state = lambda r: ("failed" if r["good"]["status"] == "failed"  # noqa: E731
                       else "stored" if r["from_store"] else "new")
    keys = list(dict.fromkeys(k for r in rows for k in r.get("grid", {})))
    lines = [(r["pair_id"], *(_grid_value(r.get("grid", {}).get(k)) for k in keys), state(r),
              fmt(r["good"]["test_acc"], ".1%"), fmt(r["bad"]["test_acc"], ".1%"), fmt(r["good"]["top_eigenvalue"]),
              fmt(r["bad"]["top_eigenvalue"])) for r in rows]
    return table(lines, ("pair", *keys, "", "good test", "bad test", "good λ1", "bad λ1"))


def _grid_value(v) -> str:
    return json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, default=str)


def format_verification(v) -> str:
    """An `experiments.Verification` as text: agreement, or each differing number stored vs recomputed."""
    if v.ok:
        return f"verified: every compared number agrees with a fresh computation (relative tolerance {v.rtol:g})"
    lines = [(role, q, fmt(a, ".6g"), fmt(b, ".6g")) for role, q, a, b in v.differing]
    return (f"NOT verified: {len(lines)} number(s) differ from a fresh computation of this config\n"
            + table(lines, ("role", "quantity", "stored", "recomputed")))
