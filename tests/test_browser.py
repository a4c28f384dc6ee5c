"""One real-browser test: `streamlit run app.py` against a fixture store, driven by Debian's Chromium."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"  # git-ignored
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [pytest.mark.browser, pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serve(store_path: Path, **env: str):
    """`streamlit run app.py` on a free port against `store_path` (its output in a log beside the store);
    yields (url, process) once healthy."""
    port = _free_port()
    log = (store_path.parent / f"streamlit-{port}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=dict(os.environ, LOSSLAND_STORE=str(store_path), **env), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.3)
        else:
            raise RuntimeError("streamlit did not become healthy in 60 s")
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


@contextlib.contextmanager
def _chromium(width: int = 1400, height: int = 1000):
    """A page of Debian's Chromium, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-sync", "--disable-component-update"])
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def _settled(page) -> None:
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=60_000)


@pytest.fixture
def served_app(filled_store):
    store, ids = filled_store
    with _serve(store.path, LOSSLAND_READONLY="1") as (url, _):
        yield url, store, ids


def test_overview_in_chromium_shows_the_pair_numbers(served_app):
    url, store, ids = served_app
    older = [i for i in ids if i != store.latest_pair_id()][0]
    runs = store.pair(older).runs.set_index("role")
    ARTIFACTS.mkdir(exist_ok=True)
    with _chromium() as page:
        page.goto(f"{url}/?pair={older}", timeout=60_000)  # a deep link, as a collaborator would open it
        _settled(page)
        page.wait_for_selector('[data-testid="stDataFrame"]', timeout=30_000)
        page.wait_for_timeout(1500)  # let the charts draw before the screenshot
        body = page.inner_text("body")
        assert "Both minima fit the clean training set" in body
        assert f"{runs.loc['good', 'test_acc']:.1%}" in body and f"{runs.loc['bad', 'test_acc']:.1%}" in body
        assert f"{runs.loc['bad', 'top_eigenvalue']:.4g}" in body
        assert older in page.url
        assert "Read-only" in body
        page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)
    assert (ARTIFACTS / "overview.png").stat().st_size > 10_000


def test_a_deep_link_to_a_subpage_on_a_fresh_server_goes_through_the_app(served_app):
    """The first request a fresh server sees is a deep link to /spectrum: the page must still run inside
    app.py's navigation (sidebar with the store, read-only notice), not as a stand-alone script."""
    url, store, ids = served_app
    with _chromium(1300, 900) as page:
        page.goto(f"{url}/spectrum?pair={ids[0]}", timeout=60_000)
        _settled(page)
        page.wait_for_selector("text=Hessian spectra", timeout=30_000)
        sidebar = page.inner_text('[data-testid="stSidebar"]')
        assert "Overview" in sidebar and "runs.duckdb" in sidebar and "Read-only" in sidebar
        assert "New experiment" not in sidebar  # read-only navigation holds on a deep link too


SHUTDOWN: dict[str, float] = {}  # seconds from the signal to the exit, for RELIABILITY.md


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_a_job_trains_cancels_it_and_the_dashboard_exits_within_10_s(tmp_path, signum):
    """The default experiment launched from the Overview of an empty store, then the signal mid-training:
    the job is cancelled at its next progress report, the process exits within 10 s, the store holds
    nothing of the pair and no checkpoint file is left behind."""
    from lossland.store import Store

    path = tmp_path / "runs.duckdb"
    with _serve(path) as (url, proc), _chromium() as page:
        page.goto(url, timeout=60_000)
        _settled(page)
        page.get_by_role("button", name="Run the default experiment").click()
        page.wait_for_selector('[data-testid="stProgress"]', timeout=60_000)
        page.wait_for_function("() => /epoch|train/i.test(document.querySelector('[data-testid=\"stProgress\"]')"
                               "?.innerText || '')", timeout=60_000)  # training, not queued
        start = time.perf_counter()
        proc.send_signal(signum)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("the dashboard was still running 30 s after the signal")
        SHUTDOWN[signum.name] = seconds = time.perf_counter() - start
    assert seconds < 10, f"exited {seconds:.1f} s after {signum.name}"
    store = Store(path)
    assert store.count_runs() == 0, "no row of the cancelled pair"
    leftovers = [p.name for p in store.checkpoint_dir.glob("*")] if store.checkpoint_dir.exists() else []
    assert not leftovers, leftovers
    print(f"\n{signum.name}: exited {seconds:.2f} s after the signal")


LINK = "[session expired — log in](http://evil.example)"
IMAGE = "![x](http://evil.example/x.png)"
HTML = "<img src=http://evil.example/y.png>"


@pytest.fixture
def planted_store(tmp_path):
    """A store whose pair carries markdown and HTML in every text a page shows in a box or a caption."""
    import duckdb
    from store_writer import make_pair

    from lossland.store import Store

    store = Store(tmp_path / "runs.duckdb")
    pair, spectra = make_pair(3)
    store.save_pair(pair, spectra)
    with duckdb.connect(str(store.path)) as con:
        con.execute("UPDATE runs SET status = 'diverged', stop_reason = ? WHERE role = 'good'", [LINK])
        con.execute("UPDATE runs SET status = 'failed', error = ? WHERE role = 'bad'", [f"{IMAGE} {HTML}"])
        con.execute("UPDATE runs SET device = ?, widths = ?, dataset = ?",
                    [HTML, LINK, "see http://evil.example/bare and www.evil.example"])
    return store, pair.pair_id


def test_stored_and_linked_markdown_reaches_the_page_as_plain_text(planted_store):
    """Stored strings (stop reason, error, run facts) and a URL parameter full of markdown links, images and
    HTML show as the text they are: the rendered DOM holds no link to and no image from the address."""
    store, pair_id = planted_store
    evil = '[href*="evil.example"], [src*="evil.example"], [srcset*="evil.example"]'
    with _serve(store.path, LOSSLAND_READONLY="1") as (url, _), _chromium() as page:
        for query in (f"pair={pair_id}", "pair=[x](http://evil.example)", "pair=<img src=http://evil.example/q.png>"):
            page.goto(f"{url}/?{query}", timeout=60_000)
            _settled(page)
            page.wait_for_selector('[data-testid="stAlert"]', timeout=30_000)
            page.wait_for_timeout(500)
            assert page.locator(evil).count() == 0, page.locator(evil).evaluate_all("els => els.map(e => e.outerHTML)")
            body = page.inner_text("body").replace("\u200b", "")  # what breaks a bare address is invisible
            if query.startswith(f"pair={pair_id}"):
                for planted in (LINK, IMAGE, HTML, "http://evil.example/bare", "www.evil.example"):
                    assert planted in body, planted  # shown, as text
            else:
                assert "from the link is not in this store" in body and "evil.example" in body
        page.goto(f"{url}/runs?runs={pair_id}-good,{pair_id}-bad", timeout=60_000)
        _settled(page)
        assert page.locator(evil).count() == 0


def test_the_landscape_page_in_chromium_draws_a_stored_surface_and_both_trajectories(filled_store, tmp_path):
    """A copy of the filled store with a 2-D surface and the trajectories of one pair, served read-only: the
    Landscape page renders, its trajectory charts are there (their Vega description names the PCA axes)."""
    from lossland import analyses
    from lossland.specs import SurfaceSpec, TrajectorySpec
    from lossland.store import Store

    src, ids = filled_store
    shutil.copytree(src.path.parent, tmp_path / "copy", ignore=shutil.ignore_patterns("*.wal", "*.log"))
    store = Store(tmp_path / "copy" / src.path.name)
    pair_id = ids[0]
    for role in ("good", "bad"):
        analyses.compute(store, pair_id, SurfaceSpec(role=role, n=9))
    analyses.compute(store, pair_id, TrajectorySpec(n=9))
    ARTIFACTS.mkdir(exist_ok=True)
    with _serve(store.path, LOSSLAND_READONLY="1") as (url, _), _chromium(1400, 1400) as page:
        page.goto(f"{url}/landscape?pair={pair_id}", timeout=60_000)
        _settled(page)
        page.wait_for_selector("text=Optimizer trajectory", timeout=30_000)
        trajectories = page.locator('[aria-label^="optimizer trajectory of the"]')
        trajectories.first.wait_for(timeout=30_000)
        labels = [trajectories.nth(i).get_attribute("aria-label") for i in range(trajectories.count())]
        assert any("good minimum" in t for t in labels) and any("bad minimum" in t for t in labels), labels
        assert all("PC1 (" in t and "PC2 (" in t for t in labels)
        assert page.locator('[data-testid="stVegaLiteChart"]').count() >= 4, "surfaces and trajectories"
        trajectories.first.scroll_into_view_if_needed()
        page.wait_for_timeout(1500)  # let the charts draw before the screenshot
        page.screenshot(path=str(ARTIFACTS / "landscape-trajectory.png"), full_page=True)
    assert (ARTIFACTS / "landscape-trajectory.png").stat().st_size > 10_000
