"""One job per config across processes (issue 17, item 5): a lease on a pair in the store, taken before it
is trained; a second process waits with a message and reads the stored result; a dead owner's lease expires."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

from conftest import wait_for_job
from store_writer import make_pair

from background import JobRunner
from lossland.config import ExperimentConfig
from lossland.experiments import sweep
from lossland.leases import claimed
from lossland.store import Store
from lossland.store.rows import now

ROOT = Path(__file__).resolve().parents[1]
WRITER = ROOT / "tests" / "store_writer.py"
ENV = os.environ | {"PYTHONPATH": str(ROOT)}


def _holder(path: Path, seed: int, go: Path) -> subprocess.Popen:
    """A real process that takes the lease of pair `seed` and holds it until `go` exists (store_writer lease)."""
    p = subprocess.Popen([sys.executable, str(WRITER), "lease", str(path), str(seed), str(go)], cwd=ROOT, env=ENV,
                         stdout=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.strip() == "leased":
            return p
    raise AssertionError(f"the lease holder ended without a lease (exit {p.wait()})")


def _lease_row(store: Store, pair_id: str, pid: int, host: str, heartbeat_age_s: float) -> None:
    at = now()
    store._write(lambda con: con.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?, ?)", [
        pair_id, pid, host, "someone-else", at - timedelta(seconds=600), at - timedelta(seconds=heartbeat_age_s)]),
        "planting a lease")


def _until(condition, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_a_cli_run_a_dashboard_job_and_a_sweep_wait_for_the_process_training_the_pair_then_read_it(tmp_path):
    path, go = tmp_path / "runs.duckdb", tmp_path / "go"
    cfg = make_pair(7)[0].config
    holder = _holder(path, 7, go)
    (tmp_path / "cfg.json").write_text(cfg.to_json())
    cli = subprocess.Popen([sys.executable, "-m", "lossland", "run", "--config", str(tmp_path / "cfg.json"),
                            "--store", str(path)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = bytearray()
    threading.Thread(target=lambda: [err.extend(c) for c in iter(lambda: cli.stderr.read1(4096), b"")],
                     daemon=True).start()
    job = JobRunner(Store(path)).submit(cfg)  # a dashboard job of the same config, in this process
    swept, said = [], []  # and a sweep over it, in a thread of its own
    point = threading.Thread(target=lambda: swept.extend(sweep(ExperimentConfig(), {"model.seed": [7]}, Store(path),
                                                               lambda f, m: said.append(m))))
    point.start()
    waiting = f"pair {cfg.config_hash()} is being trained by pid {holder.pid} on host {socket.gethostname()} since "
    _until(lambda: waiting.encode() in err and waiting in job.message and any(waiting in m for m in said))
    assert "; waiting" in job.message and job.state == "running"
    assert not Store(path).has_pair(cfg.config_hash())
    go.touch()  # the holder stores the pair and lets go
    out = cli.stdout.read().decode()
    assert cli.wait(timeout=60) == 0, err.decode()[-2000:]
    assert "answered from the store" in out and "computed" not in out
    assert wait_for_job(job, 60).state == "done" and job.from_store
    point.join(60)
    assert [o.from_store for o in swept] == [True] and "0 new, 1 from the store" in said[-1]
    assert "stored" in holder.stdout.read() and holder.wait(timeout=30) == 0
    store = Store(path)
    assert store.leases() == {} and store.count_runs() == 2


def test_a_lease_whose_owner_died_or_went_silent_is_taken_over(tmp_path):
    path = tmp_path / "runs.duckdb"
    dead = _holder(path, 8, tmp_path / "never")
    dead_pair = make_pair(8)[0].pair_id
    os.kill(dead.pid, signal.SIGKILL)  # killed while holding its lease: the row stays behind
    dead.wait()
    store = Store(path)
    assert store.leases()[dead_pair].pid == dead.pid
    _lease_row(store, "silent", 1, "another-host", heartbeat_age_s=120)  # pid 1 runs, but its heartbeat is old
    messages: list[str] = []
    with claimed(store, messages.append) as claim:
        assert list(claim.batches([dead_pair, "silent"])) == [[dead_pair, "silent"]]  # no wait
        held = store.leases()
        assert {held[p].token for p in (dead_pair, "silent")} == {claim.token}
        assert held[dead_pair].pid == os.getpid()
    assert any(m.startswith(f"took over the lease of pair {dead_pair} is being trained by pid {dead.pid}") and
               m.endswith("its owner is gone") for m in messages), messages
    assert any("pair silent is being trained by pid 1 on host another-host" in m for m in messages)
    assert store.leases() == {}  # released on leaving


def test_a_live_lease_is_waited_for_until_its_heartbeat_is_older_than_the_timeout(tmp_path):
    store = Store(tmp_path / "runs.duckdb")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lease_row(store, "busy", sleeper.pid, socket.gethostname(), heartbeat_age_s=0)
        messages: list[str] = []
        start = time.perf_counter()
        with claimed(store, messages.append, timeout_s=1.0, poll_s=0.1) as claim:
            assert list(claim.batches(["busy"])) == [["busy"]]
        waited = time.perf_counter() - start
    finally:
        sleeper.kill()
        sleeper.wait()
    assert waited >= 0.9  # its owner lives: it waited until the heartbeat aged past the timeout
    assert messages[0].startswith(f"pair busy is being trained by pid {sleeper.pid} on host {socket.gethostname()} "
                                  f"since ") and "; waiting" in messages[0]
    assert any(m.startswith("took over the lease of pair busy") for m in messages)
