"""The command line's small promises: one place for checkpoints."""

from conftest import tiny_config

from lossland import cli
from lossland.pairs import run_ids


def test_train_and_run_put_checkpoints_in_one_place_beside_the_store(tmp_path, monkeypatch, capsys):
    store = tmp_path / "lab" / "runs.duckdb"
    monkeypatch.setenv("LOSSLAND_STORE", str(store))
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(tiny_config().to_json())
    assert cli.main(["train", "--config", str(cfg), "--no-spectrum", "--quiet"]) == 0
    names = {f"{r}.pt" for r in run_ids(tiny_config().config_hash())}
    assert {p.name for p in (store.parent / "checkpoints").iterdir()} == names
    assert not (tmp_path / "data").exists(), "not data/checkpoints when the store lives elsewhere"
    other = tmp_path / "elsewhere"
    assert cli.main(["train", "--config", str(cfg), "--no-spectrum", "--quiet", "--checkpoints", str(other)]) == 0
    assert {p.name for p in other.iterdir()} == names
    assert cli.main(["run", "--config", str(cfg), "--quiet", "--store", str(tmp_path / "b" / "runs.duckdb")]) == 0
    assert {p.name for p in (tmp_path / "b" / "checkpoints").iterdir()} == names
    capsys.readouterr()
