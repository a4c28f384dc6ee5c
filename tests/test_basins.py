"""Basins against the truth: perturbation sizes, escape trials as an ensemble against one by one,
sharpness against the exact Hessian, radii against a closed-form quadratic, the 2-layer measure against
finite differences (of f in x, of the gradient in θ) and the 2-layer bound with exact float64 matrices
on trained models."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from conftest import tiny_config
from torch.func import functional_call

from lossland.basins import (
    BoundResult,
    EscapeResult,
    TwoLayerMeasure,
    attack_size_grid,
    empirical_radius,
    escape_trials,
    perturb,
    random_init_statistics,
    two_layer_bound,
    two_layer_measure,
)
from lossland.config import preset
from lossland.curvature import HessianOperator, exact_hessian
from lossland.data import load_experiment_data
from lossland.ensemble import train_ensemble
from lossland.landscape import filter_normalized_direction, flat_params, slice_1d, unflatten
from lossland.models import TwoLayer, build_model
from lossland.train import loss_function, train

CFG = tiny_config(**{"train.device": "cpu"})


@pytest.fixture(scope="module")
def data():
    return load_experiment_data(CFG)


@pytest.fixture(scope="module")
def pair(data):
    return train(CFG, data, "good"), train(CFG, data, "bad")


def test_perturb_moves_every_weight_filter_by_radius_times_its_norm_and_no_bias(pair):
    model = pair[0].model
    moved = unflatten(model, perturb(model, 0.3, seed=5) - flat_params(model))
    for name, p in model.named_parameters():
        if p.dim() == 1:
            assert torch.count_nonzero(moved[name]) == 0, name
        else:
            torch.testing.assert_close(moved[name].norm(dim=1), 0.3 * p.detach().norm(dim=1), rtol=1e-5, atol=1e-7)


def test_escape_trials_as_an_ensemble_equal_the_trials_one_by_one(data, pair):
    bad = pair[1].model
    args = dict(radii=[0.0, 0.5], n_trials=3, seed=0, retrain_epochs=200)
    together = escape_trials(CFG, data, bad, **args)
    alone = escape_trials(CFG, data, bad, **args, ensemble=False)
    assert isinstance(together, EscapeResult) and len(together.escaped) == 6
    assert together.status == alone.status
    np.testing.assert_array_equal(together.epochs, alone.epochs)
    for k in ("start_clean_loss", "clean_loss", "attack_loss", "test_loss", "test_acc", "distance_from_minimum",
              "distance_travelled"):
        np.testing.assert_allclose(getattr(together, k), getattr(alone, k), rtol=1e-4, atol=1e-6, err_msg=k)
    np.testing.assert_array_equal(together.escaped, alone.escaped)


def test_escapes_follow_their_definition_and_radius_zero_starts_at_the_minimum(data, pair):
    good, bad = pair
    result = escape_trials(CFG, data, bad.model, [0.0, 0.5], n_trials=4, seed=0, retrain_epochs=300)
    np.testing.assert_array_equal(result.radius, [0.0] * 4 + [0.5] * 4)
    np.testing.assert_array_equal(result.trial, [0, 1, 2, 3] * 2)
    assert result.minimum_test_acc == pytest.approx(bad.test_acc, abs=1e-6)
    np.testing.assert_allclose(result.start_clean_loss[:4], bad.clean_loss, rtol=1e-5)
    assert (result.start_clean_loss[4:] > 100 * bad.clean_loss).all()
    change = result.test_acc - result.minimum_test_acc
    converged = np.array(result.status) == "converged"
    np.testing.assert_array_equal(result.escaped, converged & (change > result.escape_margin))
    p0, p1 = result.escape_probability()
    # retraining the bad minimum itself on clean data keeps it; from half a filter norm away it finds
    # minima that generalise better (the clean set alone fits without the random labels)
    assert p0 == 0.0 and p1 >= 0.5
    assert len(result.to_frame()) == 8

    around_good = escape_trials(CFG, data, good.model, [0.5], n_trials=2, seed=0, retrain_epochs=300, role="good")
    moved = np.abs(around_good.test_acc - around_good.minimum_test_acc) > around_good.escape_margin
    np.testing.assert_array_equal(around_good.escaped, moved & (np.array(around_good.status) == "converged"))


def test_escape_compares_test_accuracies_on_the_same_whole_test_split(data, pair, monkeypatch):
    import lossland.train as train_module
    monkeypatch.setattr(train_module, "CURVE_TEST_MAX", 50)  # the landscapes' test subset is now 50 samples
    assert len(data.y_test) > 50
    _, bad = pair
    result = escape_trials(CFG, data, bad.model, [0.0], n_trials=1, seed=0, retrain_epochs=5)
    assert result.minimum_test_acc == pytest.approx(bad.test_acc, abs=1e-6), "the minimum on the whole split"
    assert result.start_test_acc[0] == pytest.approx(bad.test_acc, abs=1e-6)


def test_random_init_statistics_give_each_seeds_exact_top_eigenvalues(data):
    result = random_init_statistics(CFG, data, n_seeds=3, seed0=4, spectrum_k=2)
    members = train_ensemble(CFG, data, [4, 5, 6], "good")
    np.testing.assert_array_equal(result.seeds, [4, 5, 6])
    assert result.eigenvalues.shape == (3, 2) and result.lanczos_converged.all()
    np.testing.assert_array_equal(result.converged, [m.status == "converged" for m in members])
    np.testing.assert_allclose(result.test_acc, [m.test_acc for m in members], rtol=1e-6)
    for j, member in enumerate(members):
        twin = copy.deepcopy(member.model).double()
        H = exact_hessian(HessianOperator(twin, data.x_train, data.y_train, loss_function("cross_entropy")))
        top = torch.linalg.eigvalsh(H).flip(0)[:2].numpy()
        np.testing.assert_allclose(result.eigenvalues[j], top, rtol=1e-5)
    np.testing.assert_array_equal(result.top_eigenvalue, result.eigenvalues[:, 0])


def test_empirical_radius_of_a_quadratic_loss_is_the_root_of_its_closed_form(data):
    # A linear model under MSE: along θ + r·d the loss is exactly L0 + g r + c r²/2, with
    # d = (D, 0) filter-normalised, g = mean (f − onehot)·(D x), c = mean ‖D x‖².
    cfg = CFG.with_changes(**{"model.widths": (), "train.loss": "mse", "train.max_epochs": 30})
    model = copy.deepcopy(train(cfg, data, "good").model).double()
    x, onehot = data.x_train.double().flatten(1), torch.nn.functional.one_hot(data.y_train, 10).double()
    with torch.no_grad():
        residual = model(x) - onehot
    L0 = float(0.5 * residual.pow(2).sum(1).mean())
    threshold = 1.5 * L0
    result = empirical_radius(model, data, "mse", threshold, n_directions=4, seed=3, r_max=2.0, tol=1e-4)
    for k, seed in enumerate(range(3, 7)):
        D = unflatten(model, filter_normalized_direction(model, seed))["net.1.weight"]
        Dx = x @ D.T
        g, c = float((residual * Dx).sum(1).mean()), float(Dx.pow(2).sum(1).mean())
        root = (-g + math.sqrt(g * g + 2 * c * (threshold - L0))) / c
        assert not result.censored[k]
        assert result.radii[k] <= root < result.radii[k] + 1e-4
        assert result.loss_at_radius[k] < threshold
    assert result.base_loss == pytest.approx(L0, rel=1e-10)
    assert result.mean == pytest.approx(result.radii.mean()) and result.std == pytest.approx(result.radii.std())

    short = empirical_radius(model, data, "mse", threshold, n_directions=4, seed=3, r_max=0.5 * result.radii.min())
    assert short.censored.all() and np.all(short.radii == short.r_max)
    with pytest.raises(ValueError, match="threshold"):
        empirical_radius(model, data, "mse", 0.5 * L0)


def test_empirical_radius_of_an_mlp_minimum_is_where_its_loss_first_reaches_the_threshold(data, pair):
    model = pair[0].model
    result = empirical_radius(model, data, "cross_entropy", threshold=0.1, n_directions=3, seed=0, tol=1e-3)
    for k in range(3):
        r = result.radii[k]
        d = filter_normalized_direction(model, k)
        below = slice_1d(model, data, "cross_entropy", d, np.linspace(0, r, 30)).clean_loss
        beyond = slice_1d(model, data, "cross_entropy", d, [r + 1e-3]).clean_loss
        assert (below < 0.1).all() and beyond[0] >= 0.1


# tanh: smooth, so the Hessian is that of the function everywhere; MSE with ReLU at this size stalls at dead units
TWO_LAYER = {"model.name": "two_layer", "model.widths": (8,), "model.activation": "tanh", "train.lr": 0.01,
             "train.max_epochs": 400}


@pytest.fixture(scope="module")
def bounds():
    """The bound at (near-)minima of a 64-8-10 tanh two-layer net: both losses, attack sizes 0 and 100."""
    out = {}
    for loss in ("mse", "cross_entropy"):
        for n_attack in (0, 100):
            cfg = tiny_config(**TWO_LAYER, **{"train.device": "cpu", "train.loss": loss, "attack.n_attack": n_attack})
            data = load_experiment_data(cfg)
            model = train(cfg, data, "bad" if n_attack else "good").model
            out[loss, n_attack] = (model, data, two_layer_bound(model, data.x_train, data.y_train, loss))
    return out


def test_the_two_layer_bound_holds_at_every_trained_minimum_and_is_not_vacuous(bounds):
    for key, (_, _, b) in bounds.items():
        assert isinstance(b, BoundResult) and b.holds, key
        assert b.complexity <= b.trace_rhs <= b.rhs, key
        assert b.rhs == pytest.approx(math.sqrt(8) * b.spectral_norm_sq * b.gauss_newton_frobenius)
        assert b.trace_rhs / b.complexity < 5.0, key  # the first step loses little: measured 1.7-3.6
        assert b.ratio < 150, key  # the whole chain: measured 25-80
        assert b.settings.width == 8 and b.settings.n_params == 610 and b.settings.n_samples == 100


def test_the_bounds_complexity_is_the_mean_squared_input_gradient(bounds):
    for (loss, n_attack), (model, data, b) in bounds.items():
        x = data.x_train.double().flatten(1).requires_grad_(True)
        out = copy.deepcopy(model).double()(x)
        grads = [torch.autograd.grad(out[:, k].sum(), x, retain_graph=True)[0] for k in range(out.shape[1])]
        plain = float(sum(g.pow(2).sum() for g in grads)) / len(x)
        assert b.input_gradient_sq == pytest.approx(plain, rel=1e-10), (loss, n_attack)
        if loss == "mse":
            assert b.complexity == pytest.approx(plain, rel=1e-10)


def test_under_mse_gauss_newton_is_most_of_the_hessian_near_a_minimum(bounds):
    # H = G + R with R weighted by the residuals f − e_y: near an MSE minimum ‖H − G‖_F is a small part of
    # ‖H‖_F, which checks G (from Jacobians) against H (from HVPs), two independent computations. (Under
    # cross-entropy R stays comparable to G: measured ‖R‖_F ≈ 0.3 ‖H‖_F at the converged clean minimum.)
    for n_attack in (0, 100):
        b = bounds["mse", n_attack][2]
        assert b.residual_frobenius < 0.1 * b.hessian_frobenius, n_attack
        assert b.rhs_hessian == pytest.approx(b.rhs, rel=0.1), n_attack


def test_fitting_random_labels_makes_the_function_more_complex_and_the_bound_larger(bounds):
    for loss in ("mse", "cross_entropy"):
        good, bad = bounds[loss, 0][2], bounds[loss, 100][2]
        assert bad.complexity > 1.5 * good.complexity and bad.rhs > 1.5 * good.rhs, loss


def test_the_bound_holds_for_an_mlp_and_refuses_other_models(data, pair):
    b = two_layer_bound(pair[0].model, data.x_train, data.y_train, loss_function("cross_entropy"))
    assert b.holds and b.settings.loss == "cross_entropy" and b.settings.width == 16
    cnn = build_model(CFG.with_changes(**{"model.name": "cnn", "model.channels": (2,)}).model, data.in_shape, 10)
    with pytest.raises(ValueError, match="TwoLayer or MLP"):
        two_layer_bound(cnn, data.x_train, data.y_train, "cross_entropy")


@pytest.fixture(scope="module")
def tiny_two_layer():
    """A 3-5-2 tanh net (32 parameters) at a random point, on 30 Gaussian inputs: small enough for finite
    differences of everything."""
    torch.manual_seed(0)
    model = TwoLayer(3, 5, 2, "tanh").double()
    return model, torch.randn(30, 3, dtype=torch.float64), torch.randint(0, 2, (30,)), torch.randn(7, 3).double()


def _fd_hessian(model, x, y, loss, h=1e-5):
    """The Hessian of the mean loss by central differences of its autograd gradient, column by column."""
    fn, theta = loss_function(loss), flat_params(model)

    def gradient(flat):
        flat = flat.detach().requires_grad_(True)
        return torch.autograd.grad(fn(functional_call(model, unflatten(model, flat), (x,)), y), flat)[0]

    eye = torch.eye(len(theta), dtype=theta.dtype)
    H = torch.stack([(gradient(theta + h * e) - gradient(theta - h * e)) / (2 * h) for e in eye], 1)
    return 0.5 * (H + H.T)


def _fd_input_gradient_sq(model, x, h=1e-6):
    """mean over x of Σ_k Σ_j (∂f_k/∂x_j)² by central differences of f in x."""
    with torch.no_grad():
        cols = [(model(x + h * e) - model(x - h * e)) / (2 * h) for e in torch.eye(x.shape[1], dtype=x.dtype)]
    return float(sum(c.pow(2).sum() for c in cols)) / len(x)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_the_two_layer_measure_agrees_with_finite_differences(tiny_two_layer, loss):
    model, x, y, x_held = tiny_two_layer
    m = two_layer_measure(model, x, y, loss, x_heldout=x_held)
    assert isinstance(m, TwoLayerMeasure) and m.frobenius_method == "exact" and m.hessian_frobenius_stderr == 0
    H = _fd_hessian(model, x, y, loss)
    assert m.hessian_frobenius == pytest.approx(float(torch.linalg.matrix_norm(H)), rel=1e-7)
    assert m.top_eigenvalue == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-6) and m.lanczos_converged
    assert m.complexity == pytest.approx(_fd_input_gradient_sq(model, x), rel=1e-7)
    assert m.complexity_heldout == pytest.approx(_fd_input_gradient_sq(model, x_held), rel=1e-7)
    if loss == "mse":
        assert m.complexity_loss_metric == pytest.approx(m.complexity, rel=1e-12)
    else:  # seen through the softmax: Λ ⪯ I/2 on the simplex, so C_Λ < C
        assert 0 < m.complexity_loss_metric < m.complexity
    with torch.no_grad():
        out = model(x)
    assert m.loss == pytest.approx(float(loss_function(loss)(out, y)), rel=1e-12)
    assert m.accuracy == pytest.approx(float((out.argmax(1) == y).double().mean()))
    assert (m.n_params, m.width, m.input_dim, m.n_samples, m.n_heldout) == (32, 5, 3, 30, 7)
    spectral = float(torch.linalg.matrix_norm(model.hidden.weight.detach(), ord=2))
    assert m.weight_factor == pytest.approx(math.sqrt(5) * spectral ** 2)


def test_the_measures_stochastic_frobenius_norm_is_within_its_standard_errors_of_the_exact(tiny_two_layer):
    model, x, y, _ = tiny_two_layer
    exact = two_layer_measure(model, x, y, "mse")
    est = two_layer_measure(model, x, y, "mse", exact_max_params=0, frobenius_samples=200, seed=3)
    assert est.frobenius_method == "gaussian-frobenius" and math.isnan(est.complexity_heldout)
    assert 0 < est.hessian_frobenius_stderr < 0.2 * exact.hessian_frobenius
    assert abs(est.hessian_frobenius - exact.hessian_frobenius) < 4 * est.hessian_frobenius_stderr
    assert est.top_eigenvalue == pytest.approx(exact.top_eigenvalue, rel=1e-6)


def test_the_measure_reads_the_same_complexity_and_hessian_as_the_bound_at_trained_minima(bounds):
    for (loss, n_attack), (model, data, b) in bounds.items():
        m = two_layer_measure(model, data.x_train, data.y_train, loss)
        assert m.complexity == pytest.approx(b.input_gradient_sq, rel=1e-10), (loss, n_attack)
        assert m.complexity_loss_metric == pytest.approx(b.complexity, rel=1e-10), (loss, n_attack)
        assert m.hessian_frobenius == pytest.approx(b.hessian_frobenius, rel=1e-10), (loss, n_attack)
        assert m.top_eigenvalue <= m.hessian_frobenius * (1 + 1e-9)


def test_attack_size_grid_spans_zero_to_twice_the_clean_set_clipped_to_the_pool():
    assert attack_size_grid(preset("digits-mlp")) == [0, 250, 500, 750, 900]  # pool 1400 − 500 clean
    assert attack_size_grid(CFG) == [0, 50, 100, 150, 200]
    assert attack_size_grid(CFG.with_changes(**{"data.n_train": 1000, "attack.n_attack": 0})) == [0, 400]
    assert attack_size_grid(CFG, max_factor=1.0, n_points=3) == [0, 50, 100]
