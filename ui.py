"""Reusable dashboard pieces (Streamlit side): the store, the job runner, pickers and downloads.

Pages stay thin: widgets -> these helpers and lossland calls -> lossland.charts.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import fields, replace
from pathlib import Path

import streamlit as st
import torch

from background import JobRunner
from lossland import analyses, factories
from lossland import limits as operator
from lossland.charts import to_pdf, to_png, to_svg
from lossland.checkpoint import CheckpointError, read_checkpoint_file
from lossland.config import ConfigError, ExperimentConfig
from lossland.data import DatasetError
from lossland.external import is_external
from lossland.frames import when
from lossland.limits import Limits, check_analysis, check_experiment, limits
from lossland.pairs import run_ids
from lossland.specs import Spec
from lossland.store import Store, StoreError, default_store_path

# What the library raises for bad input or a damaged store: shown in the page, never as a traceback.
LIBRARY_ERRORS = (StoreError, ConfigError, DatasetError, CheckpointError)

# Markdown that would not show as itself: links, images, HTML, code, emphasis, maths, tables, Streamlit's
# :colour[...] directives, "_" only at a word's edge (snake_case stays readable), and a line's leading list,
# heading-underline or quote marker: each gets a backslash.
_MARKDOWN = re.compile(r"(?P<char>[\\`*~$\[\]<>|#]|(?<!\w)_|_(?!\w))|^(?P<lead>[ \t]*)(?P<marker>[-+=]|\d{1,9}[.)])",
                       re.MULTILINE)
# GFM links bare addresses (http://, www., e-mail) in the parsed text, where a backslash no longer counts:
# a zero-width space inside each breaks the address and shows nothing.
_BARE_LINK = re.compile(r"(?<=:)(?=//)|(?<=www)(?=\.)|(?=@)", re.IGNORECASE)


def _escaped(m: re.Match) -> str:
    if m["char"]:
        return "\\" + m["char"]
    return m["lead"] + m["marker"][:-1] + "\\" + m["marker"][-1]


def text(value: object) -> str:
    """Any value (a stored string, a URL parameter, an error message) as markdown that shows it literally:
    for the st.* calls that render markdown (error, warning, info, caption, markdown, write, help=)."""
    return _BARE_LINK.sub("\u200b", _MARKDOWN.sub(_escaped, str(value)))


def check_settings() -> None:
    """Every operator setting is valid (the LOSSLAND_* caps, LOSSLAND_READONLY): ConfigError naming the
    first that is not. The app refuses to start on one, so no page runs on a guessed setting."""
    limits()
    read_only()


def read_only() -> bool:
    """Serving to collaborators: LOSSLAND_READONLY (see lossland.limits.switch), or `streamlit run app.py --
    --read-only`."""
    return operator.read_only() or "--read-only" in sys.argv


@st.cache_resource
def _store(path: str) -> Store:
    if read_only() and not Path(path).is_file():
        raise StoreError(f"no store at {path}: a read-only dashboard creates none. Point LOSSLAND_STORE at an "
                         f"existing store, or create one with `python -m lossland runs --store {path}`")
    capped = caps()  # imports are bounded by the operator's caps, not only by the bundle's own configs
    return Store(Path(path), max_bundle_bytes=capped.max_upload_mb * 4 * 1024**2, caps=capped,  # unpacked: 4×
                 read_only=read_only())


def caps() -> Limits:
    """The operator's caps (valid: the app checked them at start)."""
    return limits()


def within_caps(cfg: ExperimentConfig) -> bool:
    """True when cfg may be launched under the operator's caps; otherwise the page says why."""
    try:
        check_experiment(cfg, caps())
    except ConfigError as e:
        show_config_error(e)
        return False
    return True


def plan_within_caps(plan) -> bool:
    """True when every experiment of a reproduction plan is within the operator's caps (its configs,
    analysis specs); otherwise the page says which is over."""
    capped = caps()
    try:
        for _, cfg in plan.bases + ((("two_layer", plan.two_layer),) if plan.two_layer else ()):
            check_experiment(cfg, capped)
        for spec in plan.specs():
            check_analysis(spec, f"reproduction: {spec.title}", capped)
    except ConfigError as e:
        show_config_error(e)
        return False
    return True


def show_error(e: BaseException, doing: str = "") -> None:
    """A library error, stated in the page (the app keeps working)."""
    st.error(f"{doing + ' — ' if doing else ''}{text(e)}", icon="⚠️")


def get_store() -> Store:
    return _store(str(default_store_path()))


@st.cache_data(ttl=2, show_spinner=False)
def cached_runs(path: str, version: int) -> object:
    return _store(path).runs()


def runs_frame(store: Store):
    return cached_runs(str(store.path), jobs().version)


def attempt(edit, doing: str) -> bool:
    """A store edit from a page (a tag, a note): True when it was made (cached run tables refresh), else False
    with the library's error shown in the page."""
    try:
        edit()
    except LIBRARY_ERRORS as e:
        show_error(e, doing)
        return False
    cached_runs.clear()
    return True


def device_label() -> str:
    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}"
    return f"CPU ({os.cpu_count()} cores)"


@st.cache_data(ttl=60, show_spinner=False)
def store_problems(path: str, version: int) -> int:
    """How many orphans `Store.check` finds (cached for a minute: it lists the checkpoint folder)."""
    report = _store(path).check()
    return len(report.lines()) if not report.ok else 0


def sidebar(store: Store) -> None:
    with st.sidebar:
        st.caption("store")
        st.code(str(store.path), language=None)
        try:
            n = store.count_runs()
            st.metric("runs", n)
            problems = store_problems(str(store.path), jobs().version)
            if problems:
                st.warning(f"{problems} checkpoint problem(s) (files without runs, runs without files, leftovers "
                           "of a crash); `python -m lossland check --repair` lists and fixes them")
        except StoreError as e:
            st.error(text(e))
        st.caption(device_label())
        if read_only():
            st.info("Read-only: browsing, comparing, SQL and downloads only.", icon="🔒")


# --- background jobs (background.py) ------------------------------------------------------------

@st.cache_resource
def _runner(path: str) -> JobRunner:
    return JobRunner(_store(path))


def jobs() -> JobRunner:
    return _runner(str(default_store_path()))


def job_progress(pair_id: str, key: str) -> None:
    """Polls the job of `pair_id` once a second (a fragment), reruns the page when it lands."""

    @st.fragment(run_every=1.0)
    def poll() -> None:
        job = jobs().get(pair_id)
        if job is None:
            return
        if job.state in ("queued", "running"):
            st.progress(job.fraction, text=job.progress_text())
            if st.button("Cancel", key=f"{key}-cancel"):
                job.cancel = True
        elif job.state == "cancelled":
            st.warning("Cancelled; nothing was stored.")
        elif job.state == "failed":
            st.error(f"It failed: {text(job.error)}. Nothing was stored.")
        elif st.session_state.get(f"{key}-seen") != job.finished:
            st.session_state[f"{key}-seen"] = job.finished
            st.rerun()

    poll()


# --- pickers and downloads -----------------------------------------------------------------

def pair_label(row) -> str:
    if is_external(row["pair_id"]):
        return f"{row['pair_id']} · external · {row['dataset']}/{row['model']} · {when(row['created_at'])}"
    return (f"{row['pair_id']} · {row['dataset']}/{row['model']} · attack {row['n_attack']} · "
            f"{when(row['created_at'])}" + (" · imported" if str(row.get("imported")) == "True" else ""))


def pair_picker(store: Store, key: str) -> str | None:
    """Select a stored pair; the choice lives in the URL (?pair=...) so a copied link shows the same view."""
    runs = runs_frame(store)
    if runs is None or len(runs) == 0:
        return None
    pairs = runs.drop_duplicates("pair_id")
    ids = list(pairs["pair_id"])
    wanted = st.query_params.get("pair")
    if wanted and wanted not in ids:
        st.warning(f"Pair {text(repr(wanted[:200]))} from the link is not in this store; showing the latest "
                   "instead.")
        wanted = None
    labels = {r["pair_id"]: pair_label(r) for _, r in pairs.iterrows()}
    choice = st.selectbox("pair", ids, index=ids.index(wanted) if wanted else 0, format_func=labels.get, key=key)
    st.query_params["pair"] = choice
    return choice


def chart_downloads(chart, name: str, key: str) -> None:
    """PNG, SVG and PDF of a chart (rendered without a browser by vl-convert)."""
    row = st.container(horizontal=True)
    # Rendered only when clicked: a page with several charts stays fast.
    row.download_button("PNG", lambda: to_png(chart), f"{name}.png", "image/png", key=f"{key}-png")
    row.download_button("SVG", lambda: to_svg(chart), f"{name}.svg", "image/svg+xml", key=f"{key}-svg")
    row.download_button("PDF", lambda: to_pdf(chart), f"{name}.pdf", "application/pdf", key=f"{key}-pdf")


def show_config_error(e: ConfigError) -> None:
    st.error(f"Invalid setting — {text(e)}")


@st.cache_data(show_spinner=False, max_entries=256)
def _checkpoint_problem(path: str, mtime: float, size: int) -> str | None:
    try:
        read_checkpoint_file(path)
    except CheckpointError as e:
        return str(e)
    return None


def require_runnable(store: Store, pair_id: str | None, cfg: ExperimentConfig) -> None:
    """ConfigError when running cfg here would run code the dashboard must not: a factory named by a pair that
    came from a bundle (its code is shown for review, never run by the dashboard), or one from a module outside
    the dashboard's folder; or a factory that is not importable here, or edited since the pair was made."""
    if not factories.named(cfg):
        return
    if pair_id is not None and not store.provenance(run_ids(pair_id)).empty:
        raise ConfigError("this pair was imported from a bundle and its config names code (a model or data factory): "
                          "the dashboard never runs code that came with a bundle. Review its source on the Overview, "
                          "and run it yourself from the command line if you trust it")
    factories.require_local(cfg, Path.cwd())
    if (why := factories.unavailable(cfg)) is not None:
        raise ConfigError(why)


def checkpoint_problem(store: Store, pair_id: str) -> str | None:
    """Why the pair's minima can't be loaded for an analysis here (a checkpoint missing or corrupt, code the
    dashboard must not or can't run: see require_runnable), or None."""
    if is_external(pair_id):
        return "it is an external run (lossland.analyze), kept without its weights; analyses need a lossland pair"
    try:
        require_runnable(store, pair_id, ExperimentConfig.from_json(store.pair(pair_id).runs["config_json"].iloc[0]))
    except ConfigError as e:
        return f"its model or data can't be rebuilt here: {e}"
    for rid in run_ids(pair_id):
        path = store.checkpoint_path(rid)
        if path is None:
            return f"run {rid} has no checkpoint recorded"
        try:
            info = path.stat()
        except OSError:
            return f"the checkpoint of run {rid} is missing ({path})"
        problem = _checkpoint_problem(str(path), info.st_mtime, info.st_size)
        if problem:
            return f"run {rid}: {problem}"
    return None


OTHER_SETTINGS = "other settings…"


def analysis_settings(store: Store, pair_id: str, default: Spec, key: str, fixed: tuple[str, ...] = ()) -> Spec | None:
    """The settings of an analysis to show: where the store holds some for this pair, a picker of them
    (most recent first, the first shown at once) with a last choice for other settings; otherwise, or
    on that choice, one widget per setting, starting at `default`. Settings in `fixed` are `default`'s
    (e.g. a surface's role). None, with the reason shown, when the widgets' values are not allowed."""
    pinned = {name: getattr(default, name) for name in fixed}
    try:
        found = list(dict.fromkeys(replace(s, **pinned) for s in analyses.stored(store, pair_id, default.kind)))
    except LIBRARY_ERRORS as e:
        show_error(e)
        return None
    if found:
        choice = st.selectbox("stored settings", [*found, None], key=f"{key}-stored",
                              format_func=lambda s: OTHER_SETTINGS if s is None else s.describe(fixed))
        if choice is not None:
            return choice
    try:
        return spec_widgets(default, key, fixed)
    except ConfigError as e:
        show_config_error(e)
        return None


def spec_widgets(default: Spec, key: str, fixed: tuple[str, ...] = ()) -> Spec:
    """One widget per setting of `default` but those in `fixed`, starting at its values, side by side;
    the spec they make (ConfigError, naming the field, when a value is not allowed)."""
    names = [f.name for f in fields(default) if f.name not in fixed]
    values = {}
    for col, name in zip(st.columns(len(names)) if names else [], names, strict=True):
        value, k = getattr(default, name), f"{key}-{name}"
        if name in default.choices:
            options = list(default.choices[name])
            values[name] = col.selectbox(name, options, index=options.index(value), key=k)
        elif isinstance(value, tuple):
            values[name] = _numbers(default.field(name), col.text_input(name, ", ".join(f"{v:g}" for v in value),
                                                                         key=k, help="numbers separated by commas"))
        elif isinstance(value, int):
            values[name] = int(col.number_input(name, value=value, step=1, key=k))
        else:
            values[name] = float(col.number_input(name, value=value, format="%g", key=k))
    return replace(default, **values)


def _numbers(path: str, text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.replace(";", ",").split(",") if t.strip())
    except ValueError:
        raise ConfigError(f"{path} = {text[:80]!r} is not allowed: numbers separated by commas") from None


def analysis_block(store: Store, pair_id: str, spec: Spec | None, key: str, label: str = ""):
    """The stored analysis `spec` of the pair, or — where it isn't stored — a button that computes it in the
    background (not in read-only mode); None until it is stored (and when `spec` is None). No button
    where the spec is over the operator's caps or the pair's checkpoints can't be loaded: the page says
    why instead. `label` names it in the page (default: "the <spec's title>")."""
    if spec is None:
        return None
    label = label or f"the {spec.title}"
    try:
        result = analyses.get(store, pair_id, spec)
    except LIBRARY_ERRORS as e:
        show_error(e)
        return None
    if result is not None:
        return result
    if read_only():
        st.caption(f"{label}: not computed yet, and this dashboard is read-only.")
        return None
    try:
        check_analysis(spec, label, caps())
        problem = checkpoint_problem(store, pair_id)
    except LIBRARY_ERRORS as e:
        show_error(e, f"Can't compute {label}")
        return None
    if problem:
        st.error(f"Can't compute {label}: {text(problem)}. The stored runs and their numbers are unaffected; analyses "
                 f"need the trained weights, so restore the checkpoint file from a backup.", icon="⚠️")
        return None
    job_key = f"{key}:{spec.analysis_id(pair_id)}"
    job = jobs().get(job_key)
    if job is None or job.state in ("failed", "cancelled"):
        if st.button(f"Compute {label}", key=f"btn-{key}", help=spec.describe()):
            jobs().submit_task(job_key, lambda progress: analyses.compute(store, pair_id, spec, progress))
            st.rerun()
    if job is not None:
        job_progress(job_key, key=f"job-{key}")
    return None


def sweep_executor() -> str:
    """Sweeps launched from the dashboard go to the Ray cluster the operator configured
    (LOSSLAND_RAY_ADDRESS), else run here; progress is reported per point either way."""
    return "ray" if os.environ.get("LOSSLAND_RAY_ADDRESS") else "local"


def page_pair(title: str, key: str, hint: str = "", whole: bool = True) -> tuple[Store, str]:
    """The common head of a pair page: title, the pair picker (deep-linked), and a stop with a hint
    when the store holds no pair yet, or — for a page that needs a whole pair (`whole`) — when an
    external run (one model, no partner) is picked."""
    store = get_store()
    st.title(title)
    pair_id = pair_picker(store, key=key)
    if pair_id is None:
        st.info("No runs yet: start one on the Overview or New experiment page." + (f" {hint}" if hint else ""))
        st.stop()
    if whole and is_external(pair_id):
        st.info("This is an external run (a model analysed with lossland.analyze, without a partner or a "
                "checkpoint): this page's analyses need a lossland pair. Its spectrum is on the Overview and "
                "Spectrum pages.")
        st.stop()
    return store, pair_id

