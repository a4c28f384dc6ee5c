"""Optimizer trajectories: thinned recording, the PCA plane against an exact reference, the checkpoint
entry, the stored analysis and its chart."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_config

from lossland import analyses, path_charts
from lossland.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, verify_checkpoint
from lossland.config import ConfigError, ExperimentConfig
from lossland.data import load_experiment_data
from lossland.experiments import run_pair
from lossland.landscape import flat_params
from lossland.models import build_model
from lossland.pairs import ROLE_COLORS
from lossland.path_analyses import NoTrajectory
from lossland.specs import TrajectorySpec
from lossland.store import Store
from lossland.train import train
from lossland.trajectory import Recorder, pca_plane, plane_axes, thinned_epochs

EPOCHS = 8
# never reached: every run below trains exactly its max_epochs, so θ_e of a longer run is train(max_epochs=e)'s
CFG = tiny_config(**{"train.loss_target": 1e-9, "train.max_epochs": EPOCHS})


@pytest.mark.parametrize("epochs", [2, 39, 40, 100, 3000, 100_000])
def test_the_recorder_keeps_at_most_its_capacity_evenly_spread_from_init_to_minimum(epochs):
    kept = thinned_epochs(epochs, 40)
    assert kept[0] == 0 and kept[-1] == epochs and kept == sorted(set(kept))
    assert len(kept) <= 40
    gaps = np.diff(kept[:-1])
    assert len(set(gaps)) <= 1 and (not len(gaps) or gaps[0] & (gaps[0] - 1) == 0), "one power-of-two stride"
    if epochs >= 40:
        assert len(kept) >= 20, "halving keeps at least half the capacity"


def test_the_pca_plane_is_the_top_two_principal_directions_of_an_exact_svd():
    gen = torch.Generator().manual_seed(0)
    snaps = torch.randn(9, 300, generator=gen) * torch.linspace(3, 0.1, 300)
    final = snaps[-1]
    directions, coords, explained = pca_plane(snaps, final)
    m = (snaps - final).double().numpy()
    _, s, vt = np.linalg.svd(m - m.mean(0), full_matrices=False)
    d = directions.double().numpy()
    assert np.allclose(d @ d.T, np.eye(2), atol=1e-6), "orthonormal"
    assert np.allclose(np.abs(np.sum(d * vt[:2], 1)), 1, atol=1e-6), "the SVD's top two right singular vectors"
    assert np.allclose(explained, s[:2] ** 2 / np.sum(s ** 2), rtol=1e-6)
    assert np.allclose(coords, m @ d.T, atol=1e-5) and np.allclose(coords[-1], 0)
    assert (coords[0] <= 0).all(), "signed so the first snapshot lies at negative coordinates"


@pytest.fixture(scope="module")
def recorded():
    """A tiny run of EPOCHS epochs recording every epoch, and its snapshots θ_0 .. θ_EPOCHS recomputed."""
    data = load_experiment_data(CFG)
    res = train(CFG, data, "good", trajectory_points=40)
    snaps = [flat_params(build_model(CFG.model, data.in_shape, data.n_classes))]
    snaps += [flat_params(train(CFG.with_changes(**{"train.max_epochs": e}), data, "good").model)
              for e in range(1, EPOCHS + 1)]
    return res, torch.stack(snaps), data


def test_the_stored_path_is_the_projection_of_the_snapshots_on_the_stored_directions(recorded, tmp_path):
    res, snaps, _ = recorded
    assert torch.equal(snaps[-1], flat_params(res.model)), "recording does not change the minimum"
    path = save_checkpoint(tmp_path / "x-good.pt", CFG, "good", res.model, res.trajectory)
    tr = load_checkpoint(path).trajectory
    assert list(tr.epochs) == list(range(EPOCHS + 1))
    d = tr.directions.double()
    assert torch.allclose(d @ d.T, torch.eye(2, dtype=torch.float64), atol=1e-6)
    recomputed = ((snaps - snaps[-1]).double() @ d.T).numpy()
    assert np.allclose(tr.coords, recomputed, rtol=1e-5, atol=1e-5 * np.abs(recomputed).max())
    ref_d, ref_coords, ref_explained = pca_plane(snaps, snaps[-1])
    assert np.allclose(tr.explained, ref_explained) and np.allclose(tr.coords, ref_coords, atol=1e-4)
    assert tr.clean_loss[-1] == pytest.approx(res.clean_loss)
    assert verify_checkpoint(path, CFG, "good") == snaps.shape[1]


def test_a_checkpoint_with_a_broken_trajectory_is_refused(recorded, tmp_path):
    res, _, _ = recorded
    path = save_checkpoint(tmp_path / "x-good.pt", CFG, "good", res.model, res.trajectory)
    blob = torch.load(path, weights_only=True)
    blob["trajectory"]["directions"] = blob["trajectory"]["directions"][:, :10].contiguous()
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="trajectory directions has shape"):
        verify_checkpoint(path, CFG, "good")
    with pytest.raises(CheckpointError, match="broken trajectory"):
        load_checkpoint(path)


def test_recording_is_not_part_of_the_run_id_and_is_validated():
    old = json.loads(CFG.to_json())
    del old["record"]  # a config as stores written before `record` existed hold it
    ids = {ExperimentConfig.from_dict(old).config_hash()} | {
        CFG.with_changes(**{"record.trajectory_points": n}).config_hash() for n in (0, 3, 40, 200)}
    assert ids == {CFG.config_hash()}, "no value of the record section changes the run id"
    assert ExperimentConfig.from_json(CFG.to_json()).record.trajectory_points == 40
    with pytest.raises(ConfigError, match="record.trajectory_points"):
        CFG.with_changes(**{"record.trajectory_points": 2})
    with pytest.raises(ConfigError, match="record.trajectory_points"):
        CFG.with_changes(**{"record.trajectory_points": 10_000})


def test_a_recorder_refuses_a_capacity_without_a_plane():
    with pytest.raises(ValueError, match="at least 3"):
        Recorder(2)


def test_plane_axes_cover_the_path_and_the_origin_with_the_margin():
    coords = np.array([[-4.0, 1.0], [-2.0, 3.0], [0.0, 0.0]])
    a, b = plane_axes(coords, 11, 0.25)
    assert a[0] == pytest.approx(-5.0) and a[-1] == pytest.approx(1.0)
    assert b[0] == pytest.approx(-0.75) and b[-1] == pytest.approx(3.75) and len(a) == len(b) == 11


# --- the stored analysis and its chart -------------------------------------------------------------

@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("trajectory") / "runs.duckdb")
    pair_id = run_pair(tiny_config(**{"train.seed": 5}), store).pair_id
    return store, pair_id, analyses.compute(store, pair_id, TrajectorySpec(n=7))


def test_the_trajectory_analysis_stores_the_plane_and_the_path_of_both_minima(stored):
    store, pair_id, a = stored
    again = analyses.get(store, pair_id, TrajectorySpec(n=7))
    assert again is not None and not a.from_store and again.from_store
    ck = analyses.checkpoints(store, pair_id)
    for role in ("good", "bad"):
        f = again.frame[again.frame["role"] == role]
        grid, path = f[f["part"] == "pca"], f[f["part"] == "path"].sort_values("point")
        tr = ck[role].trajectory
        assert len(grid) == 49 and np.allclose(path[["alpha", "beta"]].to_numpy(), tr.coords)
        assert list(path["epoch"]) == list(tr.epochs) and path["epoch"].iloc[0] == 0
        assert grid["alpha"].min() < path["alpha"].min() and grid["alpha"].max() > 0
        assert np.allclose(f[["explained_1", "explained_2"]].drop_duplicates().to_numpy(), tr.explained)
        assert grid["clean_loss"].min() <= path["clean_loss"].iloc[0], "the init lies higher than the plane's floor"


def test_a_run_whose_checkpoint_holds_no_trajectory_says_so(stored):
    """A checkpoint as lossland wrote it before recording trajectories (or with record.trajectory_points = 0)."""
    store, pair_id, _ = stored
    path = store.checkpoint_path(f"{pair_id}-bad")
    original = path.read_bytes()
    ck = load_checkpoint(path)
    try:
        save_checkpoint(path, ck.config, "bad", ck.model)
        with pytest.raises(NoTrajectory, match="record.trajectory_points = 0"):
            analyses.compute(store, pair_id, TrajectorySpec(n=3))
    finally:
        path.write_bytes(original)


def _layers(spec: dict) -> list[dict]:
    return spec["layer"]


def test_the_trajectory_layer_runs_from_init_to_the_minimum_with_the_explained_variance_on_its_axes(stored):
    _, _, a = stored
    frame = a.frame.sample(frac=1.0, random_state=0)  # shuffled: the chart must order the path itself
    spec = path_charts.trajectory_chart(frame, "bad").to_dict()
    datasets = spec["datasets"]
    e1, e2 = frame.loc[frame["role"] == "bad", ["explained_1", "explained_2"]].iloc[0]
    line = next(lay for lay in _layers(spec)
                if lay["mark"].get("type") == "line" and lay["mark"].get("color") == ROLE_COLORS["bad"])
    rows = pd.DataFrame(datasets[line["data"]["name"]])
    assert list(rows["epoch"]) == sorted(rows["epoch"]) and rows["epoch"].iloc[0] == 0
    assert list(rows["order"]) == list(range(len(rows))) and line["encoding"]["order"]["field"] == "order"
    assert rows[["alpha", "beta"]].iloc[-1].abs().max() < 1e-9, "the path ends at the minimum, the origin"
    assert line["encoding"]["x"]["title"] == f"PC1 ({e1:.1%})" and line["encoding"]["y"]["title"] == f"PC2 ({e2:.1%})"
    assert json.dumps(spec).count("PC1 (") >= 2, "the background's axis carries the same title"
    kinds = {lay["mark"].get("type") for lay in _layers(spec)}
    assert any(lay["mark"].get("filled") for lay in _layers(spec)) and "text" in kinds, "contour bands, labels"
    with pytest.raises(ValueError, match="no trajectory"):
        path_charts.trajectory_chart(frame[frame["role"] == "good"], "bad")


def test_a_bundle_carries_the_trajectory_in_its_checkpoints_and_the_analysis_in_its_rows(stored, tmp_path):
    store, pair_id, a = stored
    bundle = store.export([f"{pair_id}-good", f"{pair_id}-bad"], tmp_path / "pair.zip")
    other = Store(tmp_path / "other" / "runs.duckdb")
    other.import_bundle(bundle)
    again = analyses.get(other, pair_id, TrajectorySpec(n=7))
    assert again is not None and len(again.frame) == len(a.frame)
    for role in ("good", "bad"):
        theirs, ours = (analyses.checkpoints(s, pair_id)[role].trajectory for s in (other, store))
        assert np.array_equal(theirs.coords, ours.coords) and torch.equal(theirs.directions, ours.directions)
