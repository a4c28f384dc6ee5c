"""One real-browser test: `streamlit run app.py` against a fixture store, driven by Debian's Chromium."""

from __future__ import annotations

import os
import shutil
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


@pytest.fixture
def served_app(filled_store):
    store, ids = filled_store
    port = _free_port()
    env = dict(os.environ, LOSSLAND_STORE=str(store.path), LOSSLAND_READONLY="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
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
        yield url, store, ids
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_overview_in_chromium_shows_the_pair_numbers(served_app):
    from playwright.sync_api import sync_playwright

    url, store, ids = served_app
    older = [i for i in ids if i != store.latest_pair_id()][0]
    runs = store.pair(older).runs.set_index("role")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-sync", "--disable-component-update"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/?pair={older}", timeout=60_000)  # a deep link, as a collaborator would open it
            page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=60_000)
            page.wait_for_selector('[data-testid="stDataFrame"]', timeout=30_000)
            page.wait_for_timeout(1500)  # let the charts draw before the screenshot
            body = page.inner_text("body")
            assert "Both minima fit the clean training set" in body
            assert f"{runs.loc['good', 'test_acc']:.1%}" in body and f"{runs.loc['bad', 'test_acc']:.1%}" in body
            assert f"{runs.loc['bad', 'top_eigenvalue']:.4g}" in body
            assert older in page.url
            assert "Read-only" in body
            page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "overview.png").stat().st_size > 10_000


def test_a_deep_link_to_a_subpage_on_a_fresh_server_goes_through_the_app(served_app):
    """The first request a fresh server sees is a deep link to /spectrum: the page must still run inside
    app.py's navigation (sidebar with the store, read-only notice), not as a stand-alone script."""
    from playwright.sync_api import sync_playwright

    url, store, ids = served_app
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.goto(f"{url}/spectrum?pair={ids[0]}", timeout=60_000)
            page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=60_000)
            page.wait_for_selector("text=Hessian spectra", timeout=30_000)
            sidebar = page.inner_text('[data-testid="stSidebar"]')
            assert "Overview" in sidebar and "runs.duckdb" in sidebar and "Read-only" in sidebar
            assert "New experiment" not in sidebar  # read-only navigation holds on a deep link too
        finally:
            browser.close()
