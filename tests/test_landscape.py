"""Loss landscapes against the truth: batched evaluation against loading each vector into the model,
interpolation against the models' own metrics, filter norms, a resumed grid against one in one go,
and the curvature along the top eigenvector against the exact Hessian's top eigenvalue."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from conftest import tiny_config

from lossland.curvature import HessianOperator, exact_hessian
from lossland.data import load_experiment_data
from lossland.landscape import (
    METRICS,
    Curve1D,
    LossSurface,
    Surface2D,
    eigen_directions,
    filter_normalized_direction,
    flat_params,
    interpolate,
    set_flat_params,
    slice_1d,
    slice_2d,
    unflatten,
)
from lossland.models import build_model
from lossland.train import _Evaluator, loss_function, train

CFG = tiny_config(**{"train.device": "cpu"})
CNN = {"model.name": "cnn", "model.channels": (3,), "model.widths": (8,)}
RESNET_BN = {"model.name": "resnet", "model.channels": (3, 4), "model.widths": (), "model.batchnorm": True}


@pytest.fixture(scope="module")
def data():
    return load_experiment_data(CFG)


@pytest.fixture(scope="module")
def good(data):
    return train(CFG, data, "good")


def _model(changes: dict, data) -> torch.nn.Module:
    """An untrained model; a BatchNorm one with running statistics moved off their defaults."""
    cfg = CFG.with_changes(**changes)
    model = build_model(cfg.model, data.in_shape, data.n_classes)
    if cfg.model.batchnorm:
        with torch.no_grad():
            model.train()(data.x_train)
    return model.eval()


def _one_by_one(model, data, loss: str, thetas: torch.Tensor) -> dict[str, np.ndarray]:
    twin, evaluator = copy.deepcopy(model).eval(), _Evaluator(data, loss)
    rows = []
    for theta in thetas:
        set_flat_params(twin, theta)
        rows.append({k: float(v) for k, v in evaluator(twin).items()})
    return {m: np.array([r[m] for r in rows]) for m in METRICS}


@pytest.mark.parametrize("kind", ["mlp-trained", "mlp-mse", "cnn", "resnet-batchnorm"])
def test_batched_evaluation_equals_loading_each_vector_into_the_model(kind, data, good):
    model, loss = {"mlp-trained": (good.model, "cross_entropy"), "mlp-mse": (good.model, "mse"),
                   "cnn": (_model(CNN, data), "cross_entropy"),
                   "resnet-batchnorm": (_model(RESNET_BN, data), "cross_entropy")}[kind]
    theta = flat_params(model)
    gen = torch.Generator().manual_seed(1)
    thetas = theta + 0.05 * torch.randn((37, theta.numel()), generator=gen) * theta.abs().mean()
    surface = LossSurface(model, data, loss, batch_points=16)  # 16 + 16 + 5: a short last batch
    batched = surface.evaluate(thetas)
    reference = _one_by_one(model, data, loss, thetas)
    assert surface.evaluations == 37
    for m in METRICS:
        assert batched[m].shape == (37,)
        np.testing.assert_allclose(batched[m], reference[m], rtol=1e-6, atol=1e-7, err_msg=m)
    assert torch.equal(flat_params(model), theta), "evaluation must leave the model alone"


def test_batched_evaluation_in_float64_agrees_to_rounding(data, good):
    model = copy.deepcopy(good.model).double()
    data64 = dataclasses.replace(data, x_train=data.x_train.double(), x_attack=data.x_attack.double(),
                                 x_test=data.x_test.double())
    theta = flat_params(model)
    thetas = theta + torch.linspace(-1, 1, 9, dtype=torch.float64)[:, None] * filter_normalized_direction(model, 3)
    batched = LossSurface(model, data64, "cross_entropy", batch_points=4).evaluate(thetas)
    reference = _one_by_one(model, data64, "cross_entropy", thetas)
    for m in METRICS:
        np.testing.assert_allclose(batched[m], reference[m], rtol=1e-12, atol=1e-12, err_msg=m)


def test_interpolation_at_zero_and_one_equals_the_models_own_metrics(data, good):
    other = train(CFG.with_changes(**{"model.seed": 1, "train.seed": 1}), data, "good")
    curve = interpolate(good.model, other.model, data, "cross_entropy")
    assert isinstance(curve, Curve1D) and curve.alphas.shape == (41,) and curve.clean_loss.shape == (41,)
    for alpha, result in ((0.0, good), (1.0, other)):
        i = int(np.argmin(np.abs(curve.alphas - alpha)))
        for m, value in result.metrics().items():
            assert getattr(curve, m)[i] == pytest.approx(value, rel=1e-5, abs=1e-6), (alpha, m)
    # between two minima of the same data the clean loss rises: the path leaves both basins
    assert curve.clean_loss.max() > 10 * max(good.clean_loss, other.clean_loss)
    with pytest.raises(ValueError):
        curve.alphas[0] = 3.0  # frozen arrays


@pytest.mark.parametrize("kind", ["mlp", "cnn", "resnet-batchnorm"])
def test_filter_normalized_direction_has_the_weights_filter_norms_and_zero_biases(kind, data):
    model = _model({"mlp": {}, "cnn": CNN, "resnet-batchnorm": RESNET_BN}[kind], data)
    d = filter_normalized_direction(model, seed=7)
    assert d.shape == flat_params(model).shape and d.dtype == torch.float32
    parts = unflatten(model, d)
    n_filters = n_zeroed = 0
    for name, p in model.named_parameters():
        if p.dim() <= 1:
            assert torch.count_nonzero(parts[name]) == 0, name
            n_zeroed += 1
        else:
            want = p.detach().reshape(len(p), -1).norm(dim=1)
            got = parts[name].reshape(len(p), -1).norm(dim=1)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
            n_filters += len(p)
    assert n_filters > 0 and n_zeroed > 0
    if kind == "resnet-batchnorm":
        bn = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert bn and all(torch.count_nonzero(parts[f"{n}.weight"]) == 0 for n in bn)
    assert torch.equal(d, filter_normalized_direction(model, seed=7))
    assert not torch.allclose(d, filter_normalized_direction(model, seed=8))


def test_a_resumed_grid_equals_the_grid_in_one_go_and_evaluates_only_the_missing_points(data, good):
    model = good.model
    d1, d2 = filter_normalized_direction(model, 0), filter_normalized_direction(model, 1)
    alphas, betas = np.linspace(-0.6, 0.6, 7), np.linspace(-0.5, 0.5, 6)  # 42 points; β = 0 is not on it
    whole = slice_2d(model, data, "cross_entropy", d1, d2, alphas, betas, batch_points=8)
    assert isinstance(whole, Surface2D) and whole.n_evaluated == 42
    assert whole.clean_loss.shape == (6, 7) and not np.isnan(whole.clean_loss).any()

    stored: dict[int, dict[str, float]] = {}
    calls = []

    class Interrupted(Exception):
        pass

    def store_then_stop(indices, values):
        calls.append(indices.tolist())
        for j, i in enumerate(indices):
            stored[int(i)] = {m: float(values[m][j]) for m in METRICS}
        if len(calls) == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        slice_2d(model, data, "cross_entropy", d1, d2, alphas, betas, on_batch=store_then_stop, batch_points=8)
    assert sorted(stored) == list(range(24)), "row-major order, three batches of 8 delivered"

    resumed_calls = []
    resumed = slice_2d(model, data, "cross_entropy", d1, d2, alphas, betas, done=stored, batch_points=8,
                       on_batch=lambda idx, values: resumed_calls.append(idx.tolist()))
    assert resumed.n_evaluated == 18
    assert sorted(i for c in resumed_calls for i in c) == list(range(24, 42))
    for m in METRICS:
        np.testing.assert_allclose(getattr(resumed, m), getattr(whole, m), rtol=1e-6, atol=1e-7, err_msg=m)
    frame = resumed.to_frame()
    assert len(frame) == 42 and frame.loc[9, "alpha"] == alphas[2] and frame.loc[9, "beta"] == betas[1]


def test_grid_rows_are_betas_and_columns_alphas(data, good):
    model = good.model
    d1, d2 = filter_normalized_direction(model, 0), filter_normalized_direction(model, 1)
    alphas, betas = np.array([-0.4, 0.0, 0.3, 0.5]), np.array([-0.2, 0.0, 0.7])
    grid = slice_2d(model, data, "cross_entropy", d1, d2, alphas, betas)
    along_d1 = slice_1d(model, data, "cross_entropy", d1, alphas)
    along_d2 = slice_1d(model, data, "cross_entropy", d2, betas)
    np.testing.assert_allclose(grid.clean_loss[1], along_d1.clean_loss, rtol=1e-6)
    np.testing.assert_allclose(grid.clean_loss[:, 1], along_d2.clean_loss, rtol=1e-6)
    assert grid.clean_loss[1, 1] == pytest.approx(good.clean_loss, rel=1e-5)


def test_the_loss_curves_along_the_top_eigenvectors_as_the_exact_eigenvalues(data, good):
    model = good.model
    V = eigen_directions(model, data.x_train, data.y_train, loss_function("cross_entropy"), k=2)
    assert V.shape == (2, flat_params(model).numel()) and V.dtype == torch.float32
    torch.testing.assert_close(V @ V.T, torch.eye(2), atol=1e-5, rtol=0)
    assert torch.equal(V, eigen_directions(model, data.x_train, data.y_train, loss_function("cross_entropy"), k=2))

    twin = copy.deepcopy(model).double()
    H = exact_hessian(HessianOperator(twin, data.x_train, data.y_train, loss_function("cross_entropy")))
    top = torch.linalg.eigvalsh(H).flip(0)[:2]
    h = 1e-4  # float64: rounding ~1e-16/h² is far below, and few ReLU kinks lie within ±h
    for v, lam in zip(V.double(), top.tolist(), strict=True):
        curve = slice_1d(twin, data, "cross_entropy", v, [-h, 0.0, h])
        curvature = (curve.clean_loss[0] - 2 * curve.clean_loss[1] + curve.clean_loss[2]) / h ** 2
        assert curvature == pytest.approx(lam, rel=1e-3)  # λ1, λ2 differ by ~15%: each is told apart


def test_landscape_test_numbers_come_from_the_curve_rows_evenly_spaced_test_samples(data, good, monkeypatch):
    import lossland.train as train_module
    monkeypatch.setattr(train_module, "CURVE_TEST_MAX", 100)
    assert len(data.y_test) > 100
    keep = torch.linspace(0, len(data.y_test) - 1, 100).round().long()
    theta = flat_params(good.model)[None]
    thin = LossSurface(good.model, data, "cross_entropy").evaluate(theta)
    whole = dataclasses.replace(data, x_test=data.x_test[keep], y_test=data.y_test[keep])
    monkeypatch.setattr(train_module, "CURVE_TEST_MAX", 10**9)
    ref = LossSurface(good.model, whole, "cross_entropy").evaluate(theta)
    full = LossSurface(good.model, data, "cross_entropy").evaluate(theta)
    for m in METRICS:
        assert thin[m][0] == pytest.approx(ref[m][0], rel=1e-6), m
    assert thin["clean_loss"][0] == pytest.approx(full["clean_loss"][0], rel=1e-6)
    assert thin["test_loss"][0] != full["test_loss"][0]  # the cap is what changed the test numbers
