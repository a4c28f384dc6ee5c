"""The command line's run management and analyses: delete, restore, gc, tag, untag, note, compare, and
landscape, escape, random-init, radius (their parsers and what they print; registered by lossland.cli)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from . import manage
from . import terminal as term
from .arguments import assignments
from .config import ConfigError
from .frames import differing
from .pairs import pair_of
from .store import Store
from .store.search import operators_help, parse

StoreArgs = Callable[..., None]
WHERE_HELP = (f"filter COLUMN OP VALUE, OP one of {operators_help()}; COLUMN a runs column, tags, note or "
              f"tag.KEY; e.g. --where test_acc>=0.9 --where tag.owner=ana (repeat: all must hold)")


def conditions(args: argparse.Namespace) -> list:
    """The --where items of a command as search conditions (a StoreError names a wrong one)."""
    return [parse(item) for item in getattr(args, "where", None) or []]


def cmd_runs(args: argparse.Namespace) -> int:
    store = args.open_store(args)
    df = store.runs(where=conditions(args), deleted=args.deleted)
    cols = ["run_id", "role", "status", "tags", "dataset", "model", "n_attack", "clean_acc", "test_acc",
            "top_eigenvalue", "trace", "created_at"]
    df = df[[c for c in cols if c in df.columns]].head(args.limit)
    if args.json:
        print(df.to_json(orient="records", date_format="iso", indent=2))
    else:
        print(df.to_string(index=False) if len(df) else f"no runs in {store.path}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store = args.open_store(args)
    if (args.run_id is None) == (not args.where):
        raise ConfigError("show: give a pair or run id, or --where conditions (the pairs of the runs that match)")
    ids = ([pair_of(args.run_id)] if args.run_id else
           list(dict.fromkeys(store.runs(where=conditions(args))["pair_id"]))[:args.limit])
    views = [term.view_summary(store.pair(pair_id), sources=bool(args.run_id)) for pair_id in ids]  # one: its code
    if args.json:
        print(term.dumps(views if args.where else views[0]))
    else:
        print("\n\n".join(map(term.format_view, views)) or "no stored pair matches")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    done, before = args.open_store(args).delete(args.ids)
    print(f"deleted {len(done)} run(s): {', '.join(done) or 'none'}" + (f"; already deleted: {', '.join(before)}"
                                                                           if before else ""))
    print("they stay in the store with their checkpoints until `lossland gc`; `lossland restore` brings them back")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    done, live = args.open_store(args).restore(args.ids)
    print(f"restored {len(done)} run(s): {', '.join(done) or 'none'}" + (f"; not deleted: {', '.join(live)}"
                                                                            if live else ""))
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    print("\n".join(args.open_store(args).collect_garbage(dry_run=args.dry_run).lines()))
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    tags = assignments(args.tags, "tag", "key=value, e.g. owner=ana")
    args.open_store(args).set_tags(args.id, tags)
    print(f"tagged {args.id}: {', '.join(f'{k}={v}' for k, v in tags.items())}")
    return 0


def cmd_untag(args: argparse.Namespace) -> int:
    had = args.open_store(args).remove_tags(args.id, args.keys)
    missing = [k for k in args.keys if k not in had]
    print(f"removed from {args.id}: {', '.join(had) or 'nothing'}" + (f"; it had no {', '.join(missing)}"
                                                                        if missing else ""))
    return 0


def cmd_note(args: argparse.Namespace) -> int:
    args.open_store(args).set_note(args.id, args.text)
    print(f"note of {args.id} " + ("removed" if not args.text.strip() else "saved"))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    table = manage.compare(args.open_store(args), args.ids)
    differs = differing(table)
    if args.differing:
        table = table[differs]
    if args.json:
        print(term.dumps({label: dict(row) for label, row in table.iterrows()}))
        return 0
    rows = [(("* " if differs[label] else "  ") + str(label), *row) for label, row in table.iterrows()]
    print(term.table(rows, ("", *table.columns)))
    print("(* differs between the runs)")
    return 0


def cmd_analysis(args: argparse.Namespace) -> int:
    options = {name: getattr(args, name) for name in manage.spec_fields(args.command)}
    spec = manage.build_spec(args.command, getattr(args, "kind", None), options)
    store: Store = args.open_store(args)
    progress, close = term.progress_bar(spec.title, args.quiet)
    try:
        a = manage.analysis(store, args.pair_id, spec, args.stored_only, progress)
    finally:
        close()
    head = {"pair_id": args.pair_id, "kind": a.kind, "analysis_id": a.analysis_id, "from_store": a.from_store,
            "seconds": round(a.seconds, 3), "settings": spec.settings()}
    if args.json:
        print(term.dumps(head | {"rows": json.loads(a.frame.to_json(orient="records", date_format="iso"))}))
        return 0
    print(f"{spec.title} of pair {args.pair_id} ({'from the store' if a.from_store else 'computed and stored'}, "
          f"{a.seconds:.1f} s): {spec.describe()}")
    table = manage.analysis_table(a).reset_index()
    table = table.drop(columns=[c for c in ("index",) if c in table.columns])
    print(term.table([tuple(_cell(v) for v in r) for r in table.itertuples(index=False)], tuple(table.columns)))
    return 0


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def add_commands(sub: argparse._SubParsersAction, add_store_args: StoreArgs,
                 open_store: Callable[[argparse.Namespace], Store]) -> None:
    """runs (list), show, delete, restore, gc, tag, untag, note, compare, landscape, escape, random-init, radius"""
    def parser(name: str, func, help: str, description: str, json_flag: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description)
        p.set_defaults(func=func, open_store=open_store)
        add_store_args(p, json_flag=json_flag)
        return p

    for name in ("runs", "list"):
        p = parser(name, cmd_runs, "table of stored runs" + (" (the same as runs)" if name == "list" else ""),
                   "List stored runs, newest first (soft-deleted ones left out).", True)
        p.add_argument("--where", action="append", metavar="COLUMN OP VALUE", help=WHERE_HELP)
        p.add_argument("--deleted", action="store_true", help="list the soft-deleted runs instead")
        p.add_argument("--limit", type=int, default=50, help="rows to show (default 50)")
    p = parser("show", cmd_show, "one stored pair", "Numbers of a stored pair (or one of its runs), or of the pairs "
               "whose runs match --where.", True)
    p.add_argument("run_id", nargs="?", help="pair id, or run id (<pair>-good / <pair>-bad)")
    p.add_argument("--where", action="append", metavar="COLUMN OP VALUE", help="instead of an id: " + WHERE_HELP)
    p.add_argument("--limit", type=int, default=10, help="pairs to show with --where (default 10)")
    p = parser("delete", cmd_delete, "soft-delete runs or pairs (kept until gc; restore brings them back)",
               "Hide runs from every listing, page and bundle; their rows and checkpoints stay until `gc`.")
    p.add_argument("ids", nargs="+", metavar="RUN_OR_PAIR", help="run ids (<pair>-good / <pair>-bad) or pair ids")
    p = parser("restore", cmd_restore, "bring soft-deleted runs back", "Undo `delete` (before `gc`).")
    p.add_argument("ids", nargs="+", metavar="RUN_OR_PAIR")
    p = parser("gc", cmd_gc, "remove soft-deleted runs for good, with their rows and checkpoint files",
               "Remove every soft-deleted run: its rows in every table, its tags and notes, its checkpoint files; "
               "prints what it removed.")
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="say what would go, change nothing")
    p = parser("tag", cmd_tag, "set tags on a run or a pair", "Set key=value tags (search them with "
               "--where tag.KEY=VALUE); an existing key gets the new value.")
    p.add_argument("id", metavar="RUN_OR_PAIR")
    p.add_argument("tags", nargs="+", metavar="KEY=VALUE")
    p = parser("untag", cmd_untag, "remove tags of a run or a pair", "Remove tags by key.")
    p.add_argument("id", metavar="RUN_OR_PAIR")
    p.add_argument("keys", nargs="+", metavar="KEY")
    p = parser("note", cmd_note, "write the free-text note of a run or a pair", "Replace the note (\"\" removes it); "
               "search notes with --where note~TEXT.")
    p.add_argument("id", metavar="RUN_OR_PAIR")
    p.add_argument("text")
    p = parser("compare", cmd_compare, "stored runs side by side", "The Runs page's comparison: pair, role, tags, "
               "note, the numbers and every config field, a column per run; * marks rows that differ.", True)
    p.add_argument("ids", nargs="+", metavar="RUN_OR_PAIR", help="two or more run ids, or pair ids (both runs)")
    p.add_argument("--differing", action="store_true", help="only the rows that differ")
    for command, specs in manage.ANALYSIS_COMMANDS.items():
        _analysis_parser(parser, command, specs)


def _analysis_parser(parser, command: str, specs: tuple) -> None:
    titles = " / ".join(s.title for s in specs)
    p = parser(command, cmd_analysis, f"{titles} of a stored pair (computed once, then read from the store)",
               f"Read the stored {titles} of a pair with these settings, or compute and store it first. Options are "
               f"the settings of the analysis (default: its spec's).", True)
    p.add_argument("pair_id")
    if len(specs) > 1:
        p.add_argument("--kind", choices=[s.kind for s in specs], default=specs[0].kind,
                       help=f"which analysis (default {specs[0].kind})")
    for name, kind in manage.spec_fields(command).items():
        owners = [s.kind for s in specs if name in s.__dataclass_fields__]
        default = getattr(specs[[s.kind for s in specs].index(owners[0])](), name)
        shown = ",".join(f"{v:g}" for v in default) if isinstance(default, tuple) else default
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar=kind.split("[")[0].upper(),
                       help=f"default {shown}" + (f" ({', '.join(owners)})" if len(specs) > 1 else ""))
    p.add_argument("--stored-only", dest="stored_only", action="store_true",
                   help="never compute: fail when the store lacks it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
