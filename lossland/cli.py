"""`python -m lossland ...`: the command-line face of the library (the dashboard is the other)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__, cli_manage, measure
from . import terminal as term
from .arguments import assignments, json_value, load_config, split_values
from .checkpoint import CheckpointError, write_checkpoint_bytes
from .config import DEFAULT_PRESET, PRESETS, ConfigError
from .data import DatasetError, download
from .executors import ExecutorError, make_executor
from .experiments import grid_configs, run_pair, sweep, verify_pair
from .external import add_analyze_command
from .frames import claims_frame
from .manage import grid_points
from .pairs import is_run_id, run_id, run_ids
from .pipeline import compute_pair
from .report import write_report
from .reproduce import plan_for, reports_dir, reproduce
from .store import Store, StoreError, default_store_path


def checkpoint_dir(store: str | Path | None = None) -> Path:
    """The one place checkpoints go: checkpoints/ beside the store (default $LOSSLAND_STORE or data/runs.duckdb)."""
    return Path(store or default_store_path()).parent / "checkpoints"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                   help=f"named configuration (default {DEFAULT_PRESET})")
    g.add_argument("--config", metavar="FILE", help="experiment config as JSON (see `lossland config`)")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="override one field, e.g. --set train.lr=0.01 --set model.widths=[64,64]")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override train.device")


# --- train --------------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    """The pair pipeline, printed and saved to --checkpoints instead of stored (no store is opened)."""
    cfg = load_config(args)
    progress, close = term.progress_bar("training good/bad pair", args.quiet)
    try:
        computed = compute_pair(cfg, progress, with_spectra=not args.no_spectrum)
    finally:
        close()
    out_dir = Path(args.checkpoints) if args.checkpoints else checkpoint_dir()
    paths = {role: str(write_checkpoint_bytes(out_dir / f"{run_id(computed.pair_id, role)}.pt", blob))
             for role, blob in computed.checkpoints.items()}
    summary = term.pair_summary(computed.pair, computed.spectra, paths)
    print(json.dumps(summary, indent=2) if args.json else term.format_pair(summary))
    return 0


# --- spectrum -----------------------------------------------------------------------------

def cmd_spectrum(args: argparse.Namespace) -> int:
    """A spectrum of a stored run (both of a pair), or of a checkpoint: measured on the checkpoint without
    training, stored under its run when the store holds it (a second call reads it), printed."""
    store = _store(args)
    changes = {name: getattr(args, name) for name in ("k", "tol", "seed", "chunk_size", "max_steps")}
    done = measure.for_target(store, args.target, args.exact, changes,
                              lambda what: term.progress_bar(what, args.quiet), _say)
    if args.json:
        print(term.dumps([m.summary | {"run_id": m.run_id, "from_store": m.from_store} for m in done]))
    for m in [] if args.json else done:
        print((f"not stored: no run of this checkpoint in {store.path}" if m.run_id is None else
               f"spectrum {m.spectrum_id} of run {m.run_id}, "
               + ("answered from the store" if m.from_store else f"measured and stored in {store.path}"))
              + ("" if m.summary["exact"] else "; no exact Hessian (--exact builds it)"))
        print(term.format_spectrum(m.summary))
    return 0


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)



# --- store: run, sweep, runs, show, query, export, import ---------------------------------

def _store(args: argparse.Namespace) -> Store:
    return Store(Path(args.store) if args.store else default_store_path())


def _add_store_args(p: argparse.ArgumentParser, json_flag: bool = True) -> None:
    p.add_argument("--store", metavar="FILE", help="DuckDB store (default $LOSSLAND_STORE or data/runs.duckdb)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = _store(args)
    progress, close = term.progress_bar("run", args.quiet)
    try:
        outcome = run_pair(cfg, store, progress)
        verification = verify_pair(cfg, store, progress) if args.verify and outcome.from_store else None
    finally:
        close()
    d = term.view_summary(outcome.view) | {"from_store": outcome.from_store, "imported_from": outcome.imported_from}
    if verification is not None:
        d["verified"] = verification.ok
        d["differing"] = [list(r) for r in verification.differing]
    if args.json:
        print(term.dumps(d))
    else:
        print(("answered from the store " if outcome.from_store else "computed and stored ") + f"({store.path})")
        if outcome.imported_from:
            print(f"imported from {outcome.imported_from}; these numbers were not computed here"
                  + ("" if args.verify else " (--verify recomputes and compares them)"))
        print(term.format_view(d))
        if verification is not None:
            print(term.format_verification(verification))
    return 1 if verification is not None and not verification.ok else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    grid = {key: [json_value(v) for v in split_values(raw)] for key, raw in assignments(
        args.grid, "--grid", "section.field=v1,v2,... e.g. train.seed=0,1,2").items()}
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads}: at least 1")
    n = len(grid_configs(cfg, grid))
    store = _store(args)
    executor = make_executor(args.executor, address=args.ray_address, max_retries=args.max_retries)
    desc = f"sweep of {n} points" + (f" on {executor.where}" if hasattr(executor, "where") else "")
    progress, close = term.progress_bar(desc, args.quiet)
    try:
        outcomes = sweep(cfg, grid, store, progress, executor=executor, threads=args.threads)
    except ExecutorError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        close()
    rows = [term.view_summary(o.view) | {"from_store": o.from_store, "grid": point}
            for o, point in zip(outcomes, grid_points(grid), strict=True)]
    failed = [(o.pair_id, str(o.view.runs["error"].iloc[0])) for o in outcomes
              if (o.view.runs["status"] == "failed").any()]
    if args.json:
        print(term.dumps(rows))
    else:
        print(term.sweep_table(rows))
    for pair_id, error in failed:
        print(f"failed {pair_id}: {error}", file=sys.stderr)
    return 1 if failed else 0


def cmd_query(args: argparse.Namespace) -> int:
    store = _store(args)
    result = store.query(args.sql, max_rows=args.max_rows, timeout=args.timeout)
    if args.json:
        print(result.frame.to_json(orient="records", date_format="iso", indent=2))
    else:
        print(result.frame.to_string(index=False))
        if result.truncated:
            print(f"(first {args.max_rows} rows shown)", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    store = _store(args)
    ids = [i for rid in args.run_ids for i in ([rid] if is_run_id(rid) else run_ids(rid))]
    path = store.export(ids, Path(args.out))
    print(json.dumps({"bundle": str(path), "run_ids": ids}) if args.json else f"wrote {path} ({len(ids)} runs)")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    store = _store(args)
    report = store.import_bundle(Path(args.bundle))
    if args.json:
        print(json.dumps({"added": list(report.run_ids_added), "skipped": list(report.run_ids_skipped)}))
    else:
        print(f"imported {len(report.run_ids_added)} runs into {store.path}; "
              f"{len(report.run_ids_skipped)} already there")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.repair:
        print("\n".join(store.repair(min_age_s=args.min_age).lines()))
    report = store.check()
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def cmd_download(args: argparse.Namespace) -> int:
    print(f"files in {download(args.name, args.root)}")
    return 0


# --- config -------------------------------------------------------------------------------

def cmd_config(args: argparse.Namespace) -> int:
    print(load_config(args).to_json(indent=2))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()] if args.datasets else None
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    plan, skipped = plan_for(args.scale, datasets, args.seeds, models)
    for name, why in skipped:
        print(f"skipping {name}: {why}", file=sys.stderr)
    store = _store(args)
    progress, close = term.progress_bar(f"reproduce ({plan.scale})", args.quiet)
    try:
        rep = reproduce(plan, store, progress, device=args.device, executor=args.executor, skipped=skipped)
    finally:
        close()
    folder = write_report(rep, Path(args.reports) if args.reports else reports_dir(store))
    claims = claims_frame(list(rep.claims))
    print(term.table([(str(r["#"]), r["claim"], r["result"]) for _, r in claims.iterrows()], ("#", "claim", "result")))
    print(f"\n{sum(c.verdict == 'PASS' for c in rep.claims)}/{len(rep.claims)} claims pass; "
          f"{rep.seconds:.0f} s ({rep.computed} steps computed). Report: {folder / 'report.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lossland", description=(
        "lossland: train good and bad minima, measure their Hessian spectra, keep every run "
        "(after Wu, Zhu & E, arXiv 1706.10239)."))
    parser.add_argument("--version", action="version", version=f"lossland {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_compute_commands, add_analyze_command, _store_compute_commands, _store_commands, _setup_commands):
        add(sub)
    cli_manage.add_commands(sub, _add_store_args, _store)
    return parser


def _compute_commands(sub: argparse._SubParsersAction) -> None:
    """train, spectrum: compute a pair or a spectrum and print it, storing nothing"""
    p = sub.add_parser("train", help="train a good/bad pair and print their numbers",
                       description="Train the good minimum (clean data) and the bad minimum (clean + attack set "
                                   "with random labels) to the same clean-loss target; print both.")
    _add_config_args(p)
    p.add_argument("--checkpoints", metavar="DIR", help="where the two checkpoints go (default: checkpoints/ "
                                                         "beside the store, where `run` puts them)")
    p.add_argument("--no-spectrum", action="store_true", help="skip the Hessian spectra")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("spectrum", help="Hessian spectrum of a stored run or a checkpoint, stored under its run",
                       description="Top-k eigenvalues (Lanczos), trace, Frobenius norm and log-volume of the "
                                   "Hessian of the clean training loss at a saved minimum, measured on its "
                                   "checkpoint without training. The spectrum is stored under its run by the id of "
                                   "its settings, so asking again reads it from the store. Without options, a run "
                                   "shows its config's stored spectrum.")
    p.add_argument("target", metavar="RUN_ID|CHECKPOINT",
                   help="a run id (<pair>-good / <pair>-bad), a pair id (both runs), or a .pt file written by "
                        "`train` or `run`")
    p.add_argument("--k", type=int, help="number of top eigenvalues (default: the config's)")
    p.add_argument("--tol", type=float, help="relative residual tolerance")
    p.add_argument("--max-steps", type=int, help="Lanczos steps at most (default: the config's, at least 6·k with --k)")
    p.add_argument("--seed", type=int, help="seed of the random start vectors")
    p.add_argument("--chunk-size", dest="chunk_size", type=int, help="samples per HVP chunk")
    p.add_argument("--exact", action="store_true",
                   help=f"also build the exact dense Hessian (n_params HVPs; its cost is printed first); without "
                        f"it only models of at most {measure.EXACT_DEFAULT_MAX} parameters get it")
    _add_store_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_spectrum)


def _store_compute_commands(sub: argparse._SubParsersAction) -> None:
    """run, sweep, reproduce: compute into the store (cached: stored results are answered at once)"""
    p = sub.add_parser("run", help="compute a good/bad pair into the store (or answer from it)",
                       description="Train both minima, measure their spectra and store everything; a config "
                                   "already in the store is answered at once without training.")
    _add_config_args(p)
    _add_store_args(p)
    p.add_argument("--verify", action="store_true",
                   help="when the pair is stored (e.g. imported from a bundle), compute it again here and compare; "
                        "exit status 1 when the numbers differ")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sweep", help="run_pair over a grid; stored points are skipped",
                       description="Every combination of the --grid values, here or as Ray tasks (--executor ray); "
                                   "results are written here as they arrive, so an interrupted sweep resumes. "
                                   "A point that fails is stored as failed (exit status 1) and the rest go on.")
    _add_config_args(p)
    p.add_argument("--grid", action="append", metavar="SECTION.FIELD=V1,V2",
                   help="e.g. --grid train.seed=0,1,2 --grid attack.n_attack=100,500 --grid model.widths=[32],[64]")
    _add_store_args(p)
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: one point after another in this process (default); ray: one Ray task per point, "
                        "results written to the store here as they arrive")
    p.add_argument("--ray-address", dest="ray_address", metavar="ADDR",
                   help="Ray cluster to use with --executor ray, e.g. 10.0.0.1:6379 or ray://host:10001 "
                        "(default $LOSSLAND_RAY_ADDRESS; without either, a local Ray instance)")
    p.add_argument("--max-retries", dest="max_retries", type=int, default=2,
                   help="times Ray reruns a point whose worker died (default 2); a point that raises is not rerun")
    p.add_argument("--threads", type=int,
                   help="torch threads per point, whatever the executor (default: torch's default here); "
                        "results depend on it, and each Ray task asks for this many CPUs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("reproduce", help="run the paper's experiments (cached) and write a report with a claims table",
                       description="Good/bad pairs over seeds and attack sizes, spectra, landscapes, basins and the "
                                   "2-layer bound, all through the store (a second run reuses every stored result); "
                                   "writes report.md, report.html, claims.json and PNG figures to "
                                   "<store folder>/reports/<UTC time>/.")
    p.add_argument("--scale", choices=["small", "full"], default="small",
                   help="small: digits and mnist1d, minutes on a CPU (default); full: adds MNIST, Fashion-MNIST and "
                        "CIFAR-10 when their files are present, more seeds and trials, sized for a GPU")
    p.add_argument("--datasets", metavar="A,B", help="comma-separated, any of digits, mnist1d, mnist, fashion-mnist, "
                                                      "cifar10 (default: the scale's)")
    p.add_argument("--models", metavar="A,B", help="of a dataset with several models (fashion-mnist: mlp, lenet, "
                                                    "cnn), these (default: all at full, the first at small)")
    p.add_argument("--seeds", type=int, help="initialisation seeds per dataset (default 5 small, 8 full; fewer than "
                                             "5 at full shrink every part of the plan to match)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="where to train (default: cuda when present)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="where the good/bad pairs run (see sweep); analyses run here")
    p.add_argument("--reports", metavar="DIR", help="folder of report folders (default: reports/ beside the store)")
    _add_store_args(p, json_flag=False)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_reproduce)


def _setup_commands(sub: argparse._SubParsersAction) -> None:
    """config, download: a config to edit, the dataset files"""
    p = sub.add_parser("config", help="print a preset (with overrides) as JSON, to edit and pass to --config")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("download", help="fetch MNIST / Fashion-MNIST / CIFAR-10 (needs torchvision)",
                       description="Opt-in download through torchvision, only where it is installed.")
    p.add_argument("name", choices=["mnist", "fashion-mnist", "cifar10"])
    p.add_argument("--root", help="folder (default data/datasets/<name>/)")
    p.set_defaults(func=cmd_download)


def _store_commands(sub: argparse._SubParsersAction) -> None:
    """query, export, import, check: read, share and mend the store (runs and show: cli_manage)"""
    p = sub.add_parser("query", help="read-only SQL over the store",
                       description="Run one read-only SQL statement on a sandboxed connection (no writes, no files, "
                                   "no extensions), with a row cap and a time limit.")
    p.add_argument("sql", help='e.g. "SELECT role, avg(test_acc) FROM runs GROUP BY role"')
    p.add_argument("--max-rows", dest="max_rows", type=int, default=10_000)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds")
    _add_store_args(p)
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("export", help="write stored runs to a bundle (zip) for a collaborator",
                       description="Parquet tables + configs + checkpoints of the given runs in one zip.")
    p.add_argument("run_ids", nargs="+", help="pair ids (both runs) or run ids")
    p.add_argument("--out", required=True, metavar="ZIP", help="bundle to write")
    _add_store_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("check", help="find checkpoints without runs, runs without checkpoints, leftover files",
                       description="Compare the store with its checkpoint folder; --repair removes stray files, "
                                   "finishes an interrupted import and records missing checkpoints. Exit status 1 "
                                   "while problems remain.")
    p.add_argument("--repair", action="store_true", help="fix what can be fixed, then check again")
    p.add_argument("--min-age", dest="min_age", type=float, default=600.0, metavar="SECONDS",
                   help="leave stray files younger than this alone: they may belong to a write in progress")
    _add_store_args(p, json_flag=False)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("import", help="merge a bundle into the store (idempotent)",
                       description="Merge a bundle written by `export`; runs already present are skipped.")
    p.add_argument("bundle", help="a zip written by `export`")
    _add_store_args(p)
    p.set_defaults(func=cmd_import)


def main(argv: list[str] | None = None) -> int:
    if "" not in sys.path and os.getcwd() not in sys.path:  # the `lossland` command finds the current folder's
        sys.path.insert(0, os.getcwd())  # modules (factories) as `python -m lossland` does
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DatasetError, CheckpointError, StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... --json | head`: the reader left; nothing more to say, and no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
