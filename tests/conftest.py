"""Shared fixtures: a tiny real config and a store filled by really running it (once per session)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from lossland.config import ExperimentConfig

# Tiny models: one intra-op thread is faster than two, and far faster on a busy machine. Subprocesses
# (CLI, store writers, streamlit) inherit it through the environment.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

# Tests never write into the working tree's data/: every store lives under a temporary folder.
# One per pytest-xdist worker: DuckDB lets one process write a file.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
os.environ.setdefault("LOSSLAND_STORE", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"lossland-test-{_WORKER}.duckdb"))


def tiny_config(**changes) -> ExperimentConfig:
    """digits, 100 clean + 100 attack samples, a 64-16-10 MLP (1,210 parameters): a pair in seconds."""
    base = ExperimentConfig().with_changes(**{
        "data.n_train": 100, "attack.n_attack": 100, "model.widths": (16,), "train.lr": 0.02,
        "train.batch_size": 50, "train.max_epochs": 1500, "train.loss_target": 1e-2, "spectrum.k": 5,
        "spectrum.slq_vectors": 2, "spectrum.slq_steps": 20, "spectrum.trace_samples": 12,
        "spectrum.max_steps": 120, "spectrum.exact_max_params": 2000, "spectrum.tol": 1e-5})
    return base.with_changes(**changes) if changes else base


APP = str(Path(__file__).resolve().parent.parent / "app.py")


def open_app(page: str | None = None, query: dict | None = None, timeout: float = 60):
    """The dashboard under Streamlit's AppTest, opened with URL `query` and switched to `page` (a views/
    file); fails the test on an exception in the page."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=timeout)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    if page:
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def page_texts(at) -> str:
    """Every text element of a page (markdown, captions and the info/error/warning/success boxes)."""
    parts = [m.value for m in at.markdown] + [m.value for m in at.caption] + [m.value for m in at.info]
    parts += [m.value for m in at.error] + [m.value for m in at.warning] + [m.value for m in at.success]
    return "\n".join(parts)


def wait_for_job(job, timeout: float = 120.0):
    """Poll a dashboard job until it leaves queued/running (or `timeout` seconds pass); returns it."""
    deadline = time.time() + timeout
    while job.state in ("queued", "running") and time.time() < deadline:
        time.sleep(0.2)
    return job


@pytest.fixture(scope="session")
def filled_store(tmp_path_factory):
    """A store holding two real tiny pairs (attack 100 and attack 50); returns (store, [pair ids])."""
    from lossland.experiments import run_pair
    from lossland.store import Store

    store = Store(tmp_path_factory.mktemp("store") / "runs.duckdb")
    ids = [run_pair(tiny_config(**{"attack.n_attack": n}), store).pair_id for n in (50, 100)]
    return store, ids


@pytest.fixture
def dashboard(monkeypatch):
    """A writable dashboard with Streamlit's caches cleared before and after; call it with a store path
    to point the dashboard there (LOSSLAND_STORE)."""
    import streamlit as st

    monkeypatch.delenv("LOSSLAND_READONLY", raising=False)
    st.cache_data.clear()
    st.cache_resource.clear()
    yield lambda path: monkeypatch.setenv("LOSSLAND_STORE", str(path))
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture
def store_env(filled_store, dashboard):
    """The dashboard pointed at the shared filled store (read it, don't break it)."""
    store, ids = filled_store
    dashboard(store.path)
    return store, ids


@pytest.fixture
def copied_store(filled_store, tmp_path, dashboard):
    """A copy of the filled store's folder (runs and checkpoints) with the dashboard pointed at it, for
    tests that write to it or break it."""
    from lossland.store import Store

    src, ids = filled_store
    shutil.copytree(src.path.parent, tmp_path / "copy", ignore=shutil.ignore_patterns("*.wal"))
    store = Store(tmp_path / "copy" / src.path.name)
    dashboard(store.path)
    return store, ids


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A run bundle (zip) of one stored synthetic pair with its checkpoints: (path, run ids)."""
    from store_writer import make_pair, with_checkpoints

    from lossland.store import Store

    root = tmp_path_factory.mktemp("bundle")
    s = Store(root / "runs.duckdb")
    pair, spectra = make_pair(9)
    ids = s.save_pair(pair, spectra, with_checkpoints(s, pair))
    return s.export(ids, root / "bundle.zip"), ids
