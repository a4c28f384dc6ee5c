"""Training and measurement are separate: a sweep over attack sizes trains its good minimum once, spectra of
stored runs are measured on their checkpoints and stored under their settings' id, readers pick one."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_config

import lossland.pipeline
from lossland import frames, measure
from lossland.cli import main
from lossland.experiments import run_pair, sweep
from lossland.store import Store

FAST = {"train.max_epochs": 60, "train.loss_target": 0.3}  # tiny minima: a pair in a few seconds


class Trainings:
    """Counts the minima lossland.pipeline trains, by role (the real training runs)."""

    def __init__(self, monkeypatch):
        self.roles: list[str] = []
        real = lossland.pipeline.train

        def counted(cfg, data, role, *args, **kwargs):
            self.roles.append(role)
            return real(cfg, data, role, *args, **kwargs)

        monkeypatch.setattr(lossland.pipeline, "train", counted)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A 3-point attack-size sweep into a fresh store, and the roles it trained."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    try:
        trainings = Trainings(mp)
        store = Store(tmp_path_factory.mktemp("measure") / "runs.duckdb")
        outcomes = sweep(tiny_config(**FAST), {"attack.n_attack": [0, 50, 100]}, store)
    finally:
        mp.undo()
        torch.set_num_threads(threads)
    return store, outcomes, trainings.roles


def test_a_sweep_over_attack_sizes_trains_the_good_minimum_once_and_every_pair_shares_it(swept):
    store, outcomes, roles = swept
    assert sorted(roles) == ["bad", "bad", "bad", "good"]
    assert len({o.pair_id for o in outcomes}) == 3 and not any(o.from_store for o in outcomes)
    runs = store.runs()
    good, bad = runs[runs["role"] == "good"], runs[runs["role"] == "bad"]
    assert good["train_id"].nunique() == 1 and bad["train_id"].nunique() == 3  # one good minimum, three bad ones
    assert set(bad["train_id"]) == set(bad["pair_id"])
    for column in ("epochs", "clean_loss", "test_acc", "top_eigenvalue", "trace"):  # the same minimum, measured alike
        assert good[column].astype(float).nunique() == 1, column
    reused = good[good["extra_json"].notna()]
    assert len(reused) == 2 and {json.loads(e)["good_from"] for e in reused["extra_json"]} == (
        set(good[good["extra_json"].isna()]["run_id"]))
    by_attack = good.set_index("n_attack")
    assert pd.isna(by_attack.loc[0, "attack_acc"]) and by_attack.loc[[50, 100], "attack_acc"].notna().all()


def test_a_reused_good_minimum_measures_its_attack_metrics_on_its_own_attack_set(swept):
    store, outcomes, _ = swept
    pair = store.pair(outcomes[2].pair_id)
    row = pair.run("good")
    ck = measure.run_checkpoint(store, row["run_id"])[1]
    data = ck.dataset()
    with torch.no_grad():
        acc = (ck.model(data.x_attack).argmax(-1) == data.y_attack).double().mean().item()
    assert len(data.y_attack) == 100 and row["attack_acc"] == pytest.approx(acc, abs=1e-12)
    curves = pair.curves[pair.curves["role"] == "good"]
    assert curves["attack_acc"].isna().all() and curves["test_acc"].notna().all()  # measured on another attack set


def test_run_pair_of_a_new_attack_size_reuses_the_stored_good_run(swept, monkeypatch):
    store, outcomes, _ = swept
    trainings = Trainings(monkeypatch)
    out = run_pair(tiny_config(**FAST, **{"attack.n_attack": 25}), store)
    assert trainings.roles == ["bad"] and not out.from_store
    assert out.view.run("good")["test_acc"] == store.pair(outcomes[0].pair_id).run("good")["test_acc"]


def test_spectrum_settings_and_device_leave_the_pair_id_alone_and_a_stored_pair_is_measured_not_trained(
        swept, monkeypatch):
    store, outcomes, _ = swept
    cfg = tiny_config(**FAST, **{"attack.n_attack": 50})
    changed = cfg.with_changes(**{"spectrum.k": 3, "train.device": "cpu"})
    assert changed.config_hash() == cfg.config_hash() and cfg.with_changes(**{"train.lr": 0.03}).config_hash() != (
        cfg.config_hash())
    trainings = Trainings(monkeypatch)
    out = run_pair(changed, store)
    assert out.from_store and trainings.roles == []
    lanczos = out.view.spectra[out.view.spectra["kind"] == "lanczos"]
    assert lanczos.groupby("role").size().to_dict() == {"bad": 3, "good": 3}  # the asked spectrum, once per run
    assert set(out.view.runs["spectrum_id"]) == {changed.spectrum_id()}
    default = store.pair(cfg.config_hash())  # the runs' own spectrum stays what the runs row sums up
    assert set(default.spectra["spectrum_id"]) == {cfg.spectrum_id()}
    top = default.spectra[(default.spectra["kind"] == "lanczos") & (default.spectra["idx"] == 1)]
    assert list(top["eigenvalue"]) == pytest.approx(list(default.runs["top_eigenvalue"]))


def test_the_spectrum_command_measures_a_stored_run_without_training_then_reads_it_back(swept, monkeypatch, capsys):
    store, outcomes, _ = swept
    rid = f"{outcomes[2].pair_id}-bad"
    trainings = Trainings(monkeypatch)
    args = ["spectrum", rid, "--k", "4", "--store", str(store.path), "--quiet", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)[0]
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)[0]
    assert trainings.roles == []
    assert (first["from_store"], second["from_store"]) == (False, True) and second["hvps"] == 0
    assert second["eigenvalues"] == pytest.approx(first["eigenvalues"], rel=1e-12)
    assert len(first["eigenvalues"]) == 4
    assert not first["exact"]  # 1,210 parameters: above the default threshold, so Lanczos only
    spectra = store.table("spectra")
    assert spectra[spectra["run_id"] == rid]["spectrum_id"].nunique() == 2  # the config's and the new one
    view = store.pair(outcomes[2].pair_id)
    assert view.spectra.groupby(["role", "kind"]).size().loc[("bad", "lanczos")] == 5  # readers: the config's only
    assert len(view.estimates[(view.estimates["role"] == "bad") & (view.estimates["name"] == "trace")]) == 1


def test_more_eigenpairs_get_more_lanczos_steps_and_a_short_run_says_it_did_not_converge(swept, capsys):
    store, outcomes, _ = swept
    rid = f"{outcomes[1].pair_id}-bad"
    base = ["spectrum", rid, "--k", "12", "--store", str(store.path), "--quiet"]
    assert main([*base, "--json"]) == 0
    enough = json.loads(capsys.readouterr().out)[0]
    assert enough["converged"] and len(enough["eigenvalues"]) == 12, "6·k steps: all 12 reach the tolerance"
    assert main([*base, "--max-steps", "13"]) == 0
    assert "warning: not every eigenpair reached the residual tolerance" in capsys.readouterr().out


def test_the_exact_hessian_is_opt_in_its_cost_is_printed_first_and_it_agrees_with_lanczos(swept, capsys):
    store, outcomes, _ = swept
    rid = f"{outcomes[1].pair_id}-good"
    assert main(["spectrum", rid, "--k", "4", "--exact", "--store", str(store.path), "--quiet"]) == 0
    out = capsys.readouterr()
    assert "exact Hessian of 1,210 parameters: 1,210 Hessian-vector products, about" in out.err
    assert "measured and stored" in out.out
    settings = measure.settings_for(tiny_config().spectrum, 1210, exact=True, k=4)
    got = store.spectrum_frames(rid, settings.spectrum_id())["spectra"]
    exact = got[got["kind"] == "exact"].sort_values("idx")["eigenvalue"].to_numpy()
    lanczos = got[got["kind"] == "lanczos"].sort_values("idx")["eigenvalue"].to_numpy()
    assert len(exact) == 1210 and np.allclose(lanczos, exact[:4], rtol=1e-6, atol=1e-8)
    assert measure.settings_for(tiny_config().spectrum, 400).exact_max_params >= 400  # a tiny model gets it anyway
    with pytest.raises(ValueError, match="refused above 50,000"):
        measure.settings_for(tiny_config().spectrum, 60_000, exact=True)


def test_frames_read_one_spectrum_per_run_when_a_run_holds_two():
    runs = pd.DataFrame({"run_id": ["p-good", "p-bad"], "role": ["good", "bad"], "spectrum_id": ["a", "a"]})
    spectra = pd.DataFrame({"run_id": ["p-good"] * 4 + ["p-bad"] * 2, "kind": "lanczos",
                            "idx": [1, 2, 1, 2, 1, 2], "eigenvalue": [3.0, 2.0, 3.1, 2.1, 9.0, 8.0],
                            "spectrum_id": ["a", "a", "b", "b", "b", "b"]})
    own = frames.spectrum_frame(spectra, runs)
    assert own.groupby("role").size().to_dict() == {"bad": 2, "good": 2}
    assert list(own[own["role"] == "good"]["eigenvalue"]) == [3.0, 2.0]  # the config's; p-bad has only "b"
    asked = frames.spectrum_frame(spectra, runs, spectrum_id="b")
    assert list(asked[asked["role"] == "good"]["eigenvalue"]) == [3.1, 2.1]
    est = pd.DataFrame({"run_id": ["p-good"] * 3, "name": ["trace", "trace", "bound_x"], "value": [1.0, 2.0, 5.0],
                        "spectrum_id": ["a", "b", None]})
    assert list(frames.estimate_frame(est, runs, ["trace", "bound_x"])["value"]) == [1.0, 5.0]
