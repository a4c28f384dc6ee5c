"""`python -m lossland ...`: the command-line face of the library (the dashboard is the other)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from .config import DEFAULT_PRESET, PRESETS, ConfigError, ExperimentConfig, preset

CHECKPOINT_DIR = Path("data/checkpoints")


def _progress_bar(desc: str) -> tuple[Callable[[float, str], None], Callable[[], None]]:
    """A tqdm bar driven by the library's progress(fraction, message) protocol (on stderr)."""
    from tqdm import tqdm

    bar = tqdm(total=1000, desc=desc, file=sys.stderr, leave=False,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}")

    def progress(fraction: float, message: str) -> None:
        bar.n = int(1000 * min(max(fraction, 0.0), 1.0))
        bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    return progress, bar.close


def load_config(args: argparse.Namespace) -> ExperimentConfig:
    """--config FILE (JSON) or --preset NAME, then --set section.field=value overrides."""
    if getattr(args, "config", None):
        path = Path(args.config)
        if not path.exists():
            raise ConfigError(f"--config {path}: no such file")
        cfg = ExperimentConfig.from_json(path.read_text())
    else:
        cfg = preset(args.preset)
    changes = {}
    for item in getattr(args, "set", None) or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected section.field=value, e.g. train.lr=0.01")
        try:
            changes[key] = json.loads(raw)
        except json.JSONDecodeError:
            changes[key] = raw
    if getattr(args, "device", None):
        changes["train.device"] = args.device
    return cfg.with_changes(**changes) if changes else cfg


def _add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                   help=f"named configuration (default {DEFAULT_PRESET})")
    g.add_argument("--config", metavar="FILE", help="experiment config as JSON (see `lossland config`)")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="override one field, e.g. --set train.lr=0.01 --set model.widths=[64,64]")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override train.device")


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths, strict=True)))
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])


def _fmt(v: float | None, spec: str = ".4g") -> str:
    return "—" if v is None else format(v, spec)


# --- train --------------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    from .checkpoint import save_checkpoint
    from .train import train_pair

    cfg = load_config(args)
    progress, close = _progress_bar("training good/bad pair") if not args.quiet else (lambda f, m: None, lambda: None)
    try:
        pair = train_pair(cfg, progress)
    finally:
        close()
    spectra = {}
    if not args.no_spectrum:
        spectra = _pair_spectra(pair, cfg, args.quiet)
    out_dir = Path(args.checkpoints)
    paths = {r.role: str(save_checkpoint(out_dir / f"{pair.pair_id}-{r.role}.pt", cfg, r.role, r.model))
             for r in (pair.good, pair.bad)}
    summary = pair_summary(pair, spectra, paths)
    print(json.dumps(summary, indent=2) if args.json else format_pair(summary))
    return 0


def _pair_spectra(pair, cfg: ExperimentConfig, quiet: bool) -> dict:
    from .curvature import spectrum
    from .data import load_experiment_data
    from .train import loss_function

    data = load_experiment_data(cfg)
    out = {}
    for r in (pair.good, pair.bad):
        progress, close = _progress_bar(f"spectrum of {r.role}") if not quiet else (lambda f, m: None, lambda: None)
        try:
            x, y = data.x_train.to(r.device), data.y_train.to(r.device)
            out[r.role] = spectrum(r.model, x, y, loss_function(cfg.train.loss), cfg.spectrum, progress)
        finally:
            close()
    return out


def pair_summary(pair, spectra: dict, checkpoints: dict) -> dict:
    rows = {}
    for r in (pair.good, pair.bad):
        row = {"role": r.role, "status": r.status, "stop_reason": r.stop_reason, "epochs": r.epochs,
               "seconds": round(r.seconds, 3), "device": r.device, "n_params": r.n_params, **r.metrics(),
               "checkpoint": checkpoints.get(r.role)}
        s = spectra.get(r.role)
        if s is not None:
            row |= {"top_eigenvalues": list(s.top.eigenvalues[:5]), "trace": s.trace.value,
                    "trace_stderr": s.trace.stderr, "frobenius_sq": s.frobenius_sq.value,
                    "frobenius_sq_stderr": s.frobenius_sq.stderr,
                    "log_volume": s.log_volume_k[-1], "log_volume_k": len(s.log_volume_k),
                    "eps": s.settings.eps, "spectrum_hvps": s.hvps, "spectrum_seconds": round(s.seconds, 3)}
        rows[r.role] = row
    return {"pair_id": pair.pair_id, "config": json.loads(pair.config.to_json()), "good": rows["good"],
            "bad": rows["bad"]}


def format_pair(summary: dict) -> str:
    g, b = summary["good"], summary["bad"]
    fields = [("status", "status", "s"), ("epochs", "epochs", "d"), ("seconds", "seconds", ".2f"),
              ("clean-train loss", "clean_loss", ".2e"), ("clean-train acc", "clean_acc", ".2%"),
              ("attack acc", "attack_acc", ".2%"), ("test acc", "test_acc", ".2%")]
    rows = [(label, format(g[k], f), format(b[k], f)) for label, k, f in fields]
    if "trace" in g:
        for i in range(min(5, len(g["top_eigenvalues"]))):
            rows.append((f"λ{i + 1}", _fmt(g["top_eigenvalues"][i]), _fmt(b["top_eigenvalues"][i])))
        rows += [("trace", f"{g['trace']:.4g} ± {g['trace_stderr']:.2g}",
                  f"{b['trace']:.4g} ± {b['trace_stderr']:.2g}"),
                 ("‖H‖_F²", f"{g['frobenius_sq']:.4g} ± {g['frobenius_sq_stderr']:.2g}",
                  f"{b['frobenius_sq']:.4g} ± {b['frobenius_sq_stderr']:.2g}"),
                 (f"log-volume (k={g['log_volume_k']}, ε={g['eps']:g})", f"{g['log_volume']:.4g}",
                  f"{b['log_volume']:.4g}")]
    rows.append(("stop reason", g["stop_reason"], b["stop_reason"]))
    text = [f"pair {summary['pair_id']}  ({summary['config']['data']['name']}, "
            f"{summary['config']['model']['name']}, {g['n_params']} parameters, {g['device']})",
            _table(rows, ("", "good", "bad"))]
    if g.get("checkpoint"):
        text.append(f"checkpoints: {g['checkpoint']}, {b['checkpoint']}")
    return "\n".join(text)


# --- spectrum -----------------------------------------------------------------------------

def cmd_spectrum(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .checkpoint import load_checkpoint
    from .curvature import spectrum

    ck = load_checkpoint(args.checkpoint)
    settings = ck.config.spectrum
    for name in ("k", "tol", "seed", "chunk_size"):
        if getattr(args, name) is not None:
            settings = replace(settings, **{name: getattr(args, name)})
    settings.validate()
    x, y = ck.clean_train()
    progress, close = _progress_bar("spectrum") if not args.quiet else (lambda f, m: None, lambda: None)
    try:
        s = spectrum(ck.model, x, y, ck.loss_fn, settings, progress)
    finally:
        close()
    d = spectrum_summary(s, ck)
    print(json.dumps(d, indent=2) if args.json else format_spectrum(d))
    return 0


def spectrum_summary(s, ck) -> dict:
    return {"checkpoint": str(ck.path), "role": ck.role, "n_params": s.n_params,
            "eigenvalues": list(s.top.eigenvalues), "residuals": list(s.top.residuals),
            "converged": s.top.converged, "trace": s.trace.value, "trace_stderr": s.trace.stderr,
            "trace_exact": getattr(s, "trace_exact", None), "frobenius_sq": s.frobenius_sq.value,
            "frobenius_sq_stderr": s.frobenius_sq.stderr, "frobenius_sq_exact": getattr(s, "frobenius_sq_exact", None),
            "log_volume_k": list(s.log_volume_k), "log_volume_exact": s.log_volume_exact, "eps": s.settings.eps,
            "hvps": s.hvps, "lanczos_hvps": s.top.hvps, "seconds": s.seconds}


def format_spectrum(d: dict) -> str:
    rows = [(str(i + 1), f"{lam:.8g}", f"{res:.1e}") for i, (lam, res) in
            enumerate(zip(d["eigenvalues"], d["residuals"], strict=True))]
    lines = [f"{d['checkpoint']} ({d['role']}, {d['n_params']} parameters): top-{len(rows)} eigenvalues of the "
             f"Hessian of the clean training loss", _table(rows, ("i", "eigenvalue", "residual")),
             f"trace        {d['trace']:.6g} ± {d['trace_stderr']:.2g}"
             + (f"   (exact {d['trace_exact']:.6g})" if d["trace_exact"] is not None else ""),
             f"‖H‖_F²       {d['frobenius_sq']:.6g} ± {d['frobenius_sq_stderr']:.2g}"
             + (f"   (exact {d['frobenius_sq_exact']:.6g})" if d["frobenius_sq_exact"] is not None else ""),
             f"log-volume   {d['log_volume_k'][-1]:.6g} over the top {len(d['log_volume_k'])} (ε = {d['eps']:g})"
             + (f"; {d['log_volume_exact']:.6g} over all" if d["log_volume_exact"] is not None else ""),
             f"{d['hvps']} Hessian-vector products ({d['lanczos_hvps']} for Lanczos), {d['seconds']:.2f} s"]
    return "\n".join(lines)


# --- config -------------------------------------------------------------------------------

def cmd_config(args: argparse.Namespace) -> int:
    print(load_config(args).to_json(indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lossland", description=(
        "lossland: train good and bad minima, measure their Hessian spectra, keep every run "
        "(after Wu, Zhu & E, arXiv 1706.10239)."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a good/bad pair and print their numbers",
                       description="Train the good minimum (clean data) and the bad minimum (clean + attack set "
                                   "with random labels) to the same clean-loss target; print both.")
    _add_config_args(p)
    p.add_argument("--checkpoints", default=str(CHECKPOINT_DIR), metavar="DIR",
                   help=f"where the two checkpoints go (default {CHECKPOINT_DIR})")
    p.add_argument("--no-spectrum", action="store_true", help="skip the Hessian spectra")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("spectrum", help="Hessian spectrum of a checkpoint",
                       description="Top-k eigenvalues (Lanczos), trace, Frobenius norm and log-volume of the "
                                   "Hessian of the clean training loss at a saved minimum.")
    p.add_argument("checkpoint", help="a .pt file written by `train` or `run`")
    p.add_argument("--k", type=int, help="number of top eigenvalues (default: the config's)")
    p.add_argument("--tol", type=float, help="relative residual tolerance")
    p.add_argument("--seed", type=int, help="seed of the random start vectors")
    p.add_argument("--chunk-size", dest="chunk_size", type=int, help="samples per HVP chunk")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_spectrum)

    p = sub.add_parser("config", help="print a preset (with overrides) as JSON, to edit and pass to --config")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .data import DatasetError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DatasetError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
