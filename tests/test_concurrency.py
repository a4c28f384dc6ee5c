"""Load (issue 8, item 6): eight dashboard sessions at once against one store, launching the same config
at the same moment, while a CLI process writes to the store. Prints the counts and timings.

AppTest swaps process-wide state for each script run (streamlit's Runtime instance, config options), so
the harness lets one page script run at a time; everything else is concurrent as on a server: the eight
session threads read the store directly between page loads, the shared job runner trains in its worker
thread, and a CLI process writes to the same file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from conftest import tiny_config
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
SESSIONS = 8
RUN = "FormSubmitter:ne-digits-mlp-form-Run"


def test_eight_sessions_launch_the_same_config_at_once_while_a_cli_writes(copied_store, tmp_path, monkeypatch,
                                                                         record_property):
    import lossland.experiments as experiments
    from lossland.config import PRESETS

    store, ids = copied_store
    before = store.count_runs()
    shared = tiny_config(**{"train.seed": 51})
    own = {0: 52, 1: 53}  # two sessions launch a config of their own as well
    monkeypatch.setitem(PRESETS, "digits-mlp", shared)  # the form starts from the shared config

    trained, saved, lock = Counter(), Counter(), threading.Lock()
    compute_pair, write_checkpoint = experiments.compute_pair, experiments.write_checkpoint_bytes

    def counting_compute(cfg, *a, **k):
        with lock:
            trained[cfg.config_hash()] += 1
        return compute_pair(cfg, *a, **k)

    def counting_write(path, *a, **k):
        with lock:
            saved[Path(path).name] += 1
        return write_checkpoint(path, *a, **k)

    # A server compiles each page once into its runtime's script cache, shared by every session; AppTest makes a
    # cache per run, and CPython 3.11's compiler is not safe from several threads at once. Share one, as a server.
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache
    from streamlit.testing.v1 import app_test, local_script_runner

    cache = ScriptCache()
    monkeypatch.setattr(local_script_runner, "ScriptCache", lambda: cache)
    monkeypatch.setattr(app_test, "ScriptCache", lambda: cache)
    monkeypatch.setattr(experiments, "compute_pair", counting_compute)
    monkeypatch.setattr(experiments, "write_checkpoint_bytes", counting_write)

    cli_cfg = tiny_config(**{"train.seed": 54})
    (tmp_path / "cli.json").write_text(cli_cfg.to_json())
    cli = subprocess.Popen([sys.executable, "-m", "lossland", "run", "--config", str(tmp_path / "cli.json"),
                            "--store", str(store.path), "--quiet"], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})

    cli_done: list[float] = []
    threading.Thread(target=lambda: (cli.wait(), cli_done.append(time.perf_counter() - start)), daemon=True).start()
    barrier = threading.Barrier(SESSIONS)
    joined: list[int] = []  # the job object each session's shared launch landed on
    pages: list[float] = []  # seconds per page load, all sessions
    reads: list[float] = []  # seconds per pair of direct store reads, all sessions
    script = threading.Lock()
    finished: dict[int, float] = {}
    problems: list[str] = []
    start = time.perf_counter()

    def check(at: AppTest, i: int, where: str) -> None:
        bad = [str(e.value) for e in at.exception] + [e.value for e in at.error]
        if bad:
            problems.append(f"session {i} {where}: {bad}")

    def timed(i: int, at: AppTest, where: str) -> None:
        with script:  # one AppTest script run at a time (see the module's docstring)
            t = time.perf_counter()
            at.run()
            took = time.perf_counter() - t
        with lock:
            pages.append(took)
        check(at, i, where)
        t = time.perf_counter()  # and a session's own queries, concurrent with everything else
        store.pair(ids[i % len(ids)])
        store.query("SELECT role, count(*) AS n, avg(test_acc) AS acc FROM runs GROUP BY role")
        with lock:
            reads.append(time.perf_counter() - t)

    def session(i: int) -> None:
        import ui

        try:
            at = AppTest.from_file(APP, default_timeout=90)
            at.query_params["pair"] = ids[i % len(ids)]
            timed(i, at, "overview")
            for page in ("views/spectrum.py", "views/runs.py", "views/new_experiment.py"):
                at.switch_page(page)
                timed(i, at, page)
            if not [b for b in at.button if b.key == RUN]:
                problems.append(f"session {i}: no form on the New experiment page: {[m.value for m in at.title]} "
                                f"{[m.value for m in at.markdown][:3]}")
                return
            launched = [shared.config_hash()]
            if i in own:
                at.number_input(key="ne-digits-mlp-tseed").set_value(own[i])
                launched.append(shared.with_changes(**{"train.seed": own[i]}).config_hash())
                at.button(key=RUN).click()
                timed(i, at, "launch own")
                at.number_input(key="ne-digits-mlp-tseed").set_value(shared.train.seed)
            barrier.wait(timeout=120)  # every session clicks Run on the shared config at the same moment
            at.button(key=RUN).click()
            timed(i, at, "launch shared")
            job = ui.jobs().get(shared.config_hash())
            with lock:
                joined.append(id(job) if job is not None else 0)
            deadline = time.time() + 120
            while time.time() < deadline and not all(store.has_pair(p) for p in launched):
                time.sleep(0.25)
                at.switch_page("views/runs.py")  # keep browsing while the jobs run
                timed(i, at, "browse while running")
            for pair_id in launched:
                job = ui.jobs().get(pair_id)
                if job is not None and job.state not in ("done", "running", "queued"):
                    problems.append(f"session {i}: job {pair_id} {job.state}: {job.error}")
            at.switch_page("views/overview.py")
            at.query_params["pair"] = shared.config_hash()
            timed(i, at, "overview of the shared pair")
            finished[i] = time.perf_counter() - start
        except Exception as e:  # noqa: BLE001 - collected and reported below
            problems.append(f"session {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=session, args=(i,)) for i in range(SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    out, err = cli.communicate(timeout=120)
    elapsed = time.perf_counter() - start

    assert not problems, "\n".join(problems)
    assert sorted(finished) == list(range(SESSIONS)), "every session finished"
    assert cli.returncode == 0, err
    assert trained[shared.config_hash()] == 1, f"the shared config was computed {trained[shared.config_hash()]}×"
    for role in ("good", "bad"):
        assert saved[f"{shared.config_hash()}-{role}.pt"] == 1, "each checkpoint of the shared pair written once"
    assert len(store.runs(pair_id=shared.config_hash())) == 2, "stored once: one row per run"
    for pair_id in [cli_cfg.config_hash()] + [shared.with_changes(**{"train.seed": s}).config_hash()
                                               for s in own.values()]:
        assert store.has_pair(pair_id)
    after = store.count_runs()
    assert after == before + 2 * (2 + len(own)), (before, after)  # 0 rows lost, none doubled

    figures = {"sessions": SESSIONS, "page_loads": len(pages), "store_reads": 2 * len(reads),
               "page_load_median_s": round(sorted(pages)[len(pages) // 2], 2), "page_load_max_s": round(max(pages), 2),
               "store_read_pair_max_s": round(max(reads), 2), "slowest_session_s": round(max(finished.values()), 1),
               "wall_s": round(elapsed, 1), "cli_wrote_at_s": round(cli_done[0], 1) if cli_done else None,
               "shared_launches": len(joined), "shared_jobs": len(set(joined)), "pairs_trained": dict(trained),
               "runs_before": before, "runs_after": after, "lock_errors": 0}
    for k, v in figures.items():
        record_property(k, json.dumps(v))
    print("\nload test:", json.dumps(figures))
