"""An imported pair is never answered silently, `--verify` recomputes it, `check` finds what a crash left."""

from __future__ import annotations

import duckdb
import pytest
from conftest import tiny_config

from lossland.cli import main
from lossland.experiments import run_pair, verify_pair
from lossland.pairs import run_ids
from lossland.store import Store


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A tiny pair computed in one store, exported and imported into another."""
    root = tmp_path_factory.mktemp("verify")
    cfg = tiny_config(**{"train.seed": 11})
    origin = Store(root / "origin" / "runs.duckdb")
    run_pair(cfg, origin)
    bundle = origin.export(run_ids(cfg.config_hash()), root / "pair.zip")
    return cfg, root, bundle


def _copy_of(imported, tmp_path) -> Store:
    store = Store(tmp_path / "runs.duckdb")
    store.import_bundle(imported[2])
    return store


@pytest.mark.slow
def test_an_imported_pair_says_where_it_came_from_and_verifies(imported, tmp_path, capsys):
    cfg, _, bundle = imported
    store = _copy_of(imported, tmp_path)
    messages = []
    outcome = run_pair(cfg, store, lambda f, m: messages.append(m))
    assert outcome.from_store and outcome.imported_from.startswith(bundle.name)
    assert "imported from pair.zip" in messages[-1]
    assert main(["run", "--store", str(store.path), "--config", _config_file(cfg, tmp_path), "--verify",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "imported from pair.zip" in out and "verified: every compared number agrees" in out


@pytest.mark.slow
def test_verify_fails_on_a_number_that_was_not_computed_from_the_config(imported, tmp_path, capsys):
    cfg, _, _ = imported
    store = _copy_of(imported, tmp_path)
    con = duckdb.connect(str(store.path))  # a forgery the bundle checks can't see: a consistent, wrong number
    con.execute("UPDATE runs SET top_eigenvalue = top_eigenvalue * 3 WHERE role = 'bad'")
    con.close()
    v = verify_pair(cfg, store)
    assert not v.ok and [(r[0], r[1]) for r in v.differing] == [("bad", "top_eigenvalue")]
    assert main(["run", "--store", str(store.path), "--config", _config_file(cfg, tmp_path), "--verify",
                 "--quiet"]) == 1
    assert "NOT verified: 1 number(s) differ" in capsys.readouterr().out


def test_a_pair_computed_here_does_not_claim_to_be_imported(tmp_path):
    cfg = tiny_config(**{"train.max_epochs": 3, "spectrum.exact_max_params": 0})
    store = Store(tmp_path / "runs.duckdb")
    run_pair(cfg, store)
    assert run_pair(cfg, store).imported_from is None


def test_check_finds_a_stray_checkpoint_and_repair_removes_it(tmp_path, capsys):
    cfg = tiny_config(**{"train.max_epochs": 3, "spectrum.exact_max_params": 0})
    store = Store(tmp_path / "runs.duckdb")
    run_pair(cfg, store)
    assert main(["check", "--store", str(store.path)]) == 0
    stray = store.checkpoint_dir / "0123456789abcdef-good.pt"
    stray.write_bytes(b"left by a crash")
    assert main(["check", "--store", str(store.path)]) == 1
    assert str(stray) in capsys.readouterr().out
    assert main(["check", "--store", str(store.path), "--repair", "--min-age", "0"]) == 0
    assert not stray.exists() and f"removed {stray}" in capsys.readouterr().out


def _config_file(cfg, tmp_path) -> str:
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json())
    return str(path)


def test_check_and_export_take_a_recorded_checkpoint_path_the_os_refuses(tmp_path, capsys):
    """A stored path too long for the OS (or with a NUL byte) is a missing checkpoint, not a traceback."""
    cfg = tiny_config(**{"train.max_epochs": 3, "spectrum.exact_max_params": 0})
    store = Store(tmp_path / "runs.duckdb")
    run_pair(cfg, store)
    con = duckdb.connect(str(store.path))
    con.execute("UPDATE runs SET checkpoint = ? WHERE role = 'good'", ["a" * 200_000])
    con.execute("UPDATE runs SET checkpoint = ? WHERE role = 'bad'", ["x\0y.pt"])
    con.close()
    report = store.check()
    assert set(report.missing_checkpoints) == set(run_ids(cfg.config_hash()))
    assert main(["check", "--store", str(store.path)]) == 1
    assert main(["export", cfg.config_hash(), "--out", str(tmp_path / "b.zip"), "--store", str(store.path)]) in (0, 2)
    assert "Traceback" not in capsys.readouterr().err
