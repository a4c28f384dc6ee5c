"""Orchestration and the command line: a config becomes a stored pair once, and is answered from the store after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_config

from lossland.config import ConfigError
from lossland.experiments import grid_configs, run_pair, sweep
from lossland.store import Store

ROOT = Path(__file__).resolve().parent.parent


def test_run_pair_computes_once_then_answers_from_the_store(tmp_path):
    store = Store(tmp_path / "runs.duckdb")
    cfg = tiny_config(**{"train.seed": 3})
    first = run_pair(cfg, store)
    assert not first.from_store and first.pair_id == cfg.config_hash()
    calls = []
    second = run_pair(cfg, store, lambda f, m: calls.append(m))
    assert second.from_store and "from the store" in calls[-1]
    assert second.view.runs.equals(first.view.runs)
    runs = first.view.runs.set_index("role")
    for role in ("good", "bad"):
        ck = Path(runs.loc[role, "checkpoint"])
        ck = ck if ck.is_absolute() else store.path.parent / ck
        assert ck.exists(), f"checkpoint of the {role} run is written"
    assert runs.loc["good", "clean_acc"] == 1.0 and runs.loc["bad", "clean_acc"] == 1.0
    assert runs.loc["bad", "attack_acc"] > runs.loc["good", "attack_acc"]
    assert len(first.view.spectra[first.view.spectra["kind"] == "lanczos"]) == 2 * cfg.spectrum.k


def test_grid_is_the_cartesian_product_and_rejects_unknown_fields():
    base = tiny_config()
    cfgs = grid_configs(base, {"train.seed": [0, 1], "attack.n_attack": [10, 20, 30]})
    assert len(cfgs) == 6 and len({c.config_hash() for c in cfgs}) == 6
    with pytest.raises(ConfigError, match="train.nonsense"):
        grid_configs(base, {"train.nonsense": [0.5]})
    with pytest.raises(ConfigError, match="attack.n_attack"):
        grid_configs(base, {"attack.n_attack": [-1]})
    with pytest.raises(ConfigError, match="1,000,000 points is over the limit"):
        grid_configs(base, {"train.seed": range(1000), "model.seed": range(1000)})


def test_interrupted_sweep_resumes_by_skipping_stored_points(tmp_path):
    store = Store(tmp_path / "runs.duckdb")
    base = tiny_config(**{"train.max_epochs": 200})
    grid = {"train.seed": [11, 12]}
    first = grid_configs(base, grid)[0]
    run_pair(first, store)  # as if the sweep had stopped after its first point
    outcomes = sweep(base, grid, store)
    assert [o.from_store for o in outcomes] == [True, False]
    assert store.count_runs() == 4


def _cli(*args, store: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, LOSSLAND_STORE=str(store))
    return subprocess.run([sys.executable, "-m", "lossland", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_run_twice_computes_once_and_export_import_round_trips(tmp_path):
    cfg = tiny_config(**{"train.seed": 5})
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(cfg.to_json())
    store_a = tmp_path / "a.duckdb"
    first = _cli("run", "--config", str(cfg_file), "--json", "--quiet", store=store_a)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["from_store"] is False
    second = _cli("run", "--config", str(cfg_file), "--json", "--quiet", store=store_a)
    assert json.loads(second.stdout)["from_store"] is True
    listed = _cli("runs", "--json", store=store_a)
    assert {r["run_id"] for r in json.loads(listed.stdout)} == {f"{cfg.config_hash()}-good",
                                                                 f"{cfg.config_hash()}-bad"}
    bundle = tmp_path / "bundle.zip"
    assert _cli("export", cfg.config_hash(), "--out", str(bundle), store=store_a).returncode == 0
    store_b = tmp_path / "b.duckdb"
    imported = _cli("import", str(bundle), "--json", store=store_b)
    assert imported.returncode == 0, imported.stderr
    assert len(json.loads(imported.stdout)["added"]) == 2
    a, b = Store(store_a), Store(store_b)
    cols = ["run_id", "test_acc", "top_eigenvalue", "trace", "config_json"]
    assert a.runs()[cols].sort_values("run_id").reset_index(drop=True).equals(
        b.runs()[cols].sort_values("run_id").reset_index(drop=True))
    shown = _cli("show", cfg.config_hash(), store=store_b)
    assert cfg.config_hash() in shown.stdout and "test acc" in shown.stdout


def test_cli_query_refuses_writes_with_a_clear_error(tmp_path):
    out = _cli("query", "DELETE FROM runs", store=tmp_path / "q.duckdb")
    assert out.returncode == 2 and out.stderr.startswith("error:") and "Traceback" not in out.stderr


def test_cli_bad_config_names_the_field_without_a_traceback(tmp_path):
    out = _cli("run", "--set", "train.lr=0", store=tmp_path / "x.duckdb")
    assert out.returncode == 2 and "train.lr" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "x.duckdb").exists() or Store(tmp_path / "x.duckdb").count_runs() == 0


def test_every_subcommand_has_help(capsys):
    from lossland.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"train", "spectrum", "run", "sweep", "runs", "show", "query", "export", "import"} <= set(sub.choices)
    for name in sub.choices:
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args([name, "--help"])
        assert exit_.value.code == 0
        assert f"usage: python -m lossland {name}" in capsys.readouterr().out


def test_cli_assignments_take_json_or_text_and_name_the_flag_when_malformed():
    from lossland.arguments import assignments, json_value, split_values

    assert json_value("0.01") == 0.01 and json_value("[64,64]") == [64, 64] and json_value("relu") == "relu"
    assert split_values("[32],[64,64],relu") == ["[32]", "[64,64]", "relu"]
    assert assignments(["train.lr=0.1", "model.activation=tanh"], "--set", "x") == {
        "train.lr": "0.1", "model.activation": "tanh"}
    with pytest.raises(ConfigError, match="--grid 'train.seed'"):
        assignments(["train.seed"], "--grid", "section.field=v1,v2")
