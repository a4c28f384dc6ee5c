"""Figure 1 against the truth: the interpolant passes through its points, the network reaches near-zero
training error, and its roughness is far below the interpolating polynomial's — where that comparison
can fail (a low-degree fit, a target the interpolant reproduces), it does."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from lossland import analyses, fitting
from lossland.specs import CURVE_FIT, CURVE_FIT_TARGETS, CurveFitSpec, from_stored
from lossland.store import Store

NOISE = CurveFitSpec().noise


@pytest.fixture(scope="module")
def default():
    """The page's and the report's Figure 1 (CurveFitSpec's defaults): (result, per-fit summary)."""
    res = fitting.curve_fit(**CurveFitSpec().settings())
    return res, fitting.summary(res.to_frame())


def _at(summary, fit: str, n: int):
    return summary[(summary["fit"] == fit) & (summary["n"] == n)].set_index("seed")


def test_the_spec_is_curve_fits_parameters_and_targets():
    assert set(CurveFitSpec().settings()) == set(inspect.signature(fitting.curve_fit).parameters)
    assert CURVE_FIT_TARGETS == tuple(fitting.TARGETS)
    assert from_stored("curve_fit", CurveFitSpec(ns=[6]).to_json()) == CurveFitSpec(ns=(6,))


def test_roughness_of_a_cubic_is_its_closed_form_and_the_target_scores_zero():
    x = np.linspace(-1, 1, 2001)
    assert fitting.roughness(x, x ** 3) == pytest.approx(24.0, rel=1e-3)  # ∫ (6x)² dx over [−1, 1]
    assert fitting.roughness(x, 2 * x - 1) == pytest.approx(0.0, abs=1e-12)


def test_the_polynomial_of_degree_n_minus_1_and_the_min_norm_ones_above_interpolate_the_points(default):
    x, y = fitting.points("sin", NOISE, 9, seed=4)
    for degree in (8, 9, 30):
        assert np.max(np.abs(fitting.polynomial(x, y, degree, x) - y)) < 1e-10, degree
    assert np.max(np.abs(fitting.polynomial(x, y, 3, x) - y)) > 1e-2  # below n − 1: least squares, not through
    _, summary = default
    for fit in (fitting.poly_label(), fitting.poly_label(20)):
        assert (summary[summary["fit"] == fit]["train_mse"] < 1e-20).all(), fit


def test_the_network_reaches_near_zero_training_error_at_every_n_and_seed(default):
    res, summary = default
    net = summary[summary["fit"] == fitting.NET]
    assert len(net) == len(CurveFitSpec().ns) * CurveFitSpec().n_seeds
    assert (net["train_mse"] < 1e-3 * NOISE ** 2).all(), net  # the noise variance is 1e-2
    assert res.n_params > 100 * max(CurveFitSpec().ns)  # over-parameterised


def test_the_networks_roughness_is_far_below_the_interpolating_polynomials(default):
    _, summary = default
    n = max(CurveFitSpec().ns)
    net = _at(summary, fitting.NET, n)
    for fit in (fitting.poly_label(), fitting.poly_label(20)):
        assert (net["roughness"] < 0.1 * _at(summary, fit, n)["roughness"]).all(), fit
    assert (net["roughness"] < 0.01 * _at(summary, fitting.poly_label(), n)["roughness"]).all()
    assert (net["test_mse"] < 0.1 * _at(summary, fitting.poly_label(), n)["test_mse"]).all()


def test_negative_control_a_low_degree_fit_is_as_smooth_as_the_network(default):
    _, summary = default
    n = max(CurveFitSpec().ns)
    net, low = _at(summary, fitting.NET, n), _at(summary, fitting.poly_label(degree=3), n)
    assert not (net["roughness"] < 0.1 * low["roughness"]).any(), "the comparison must fail here"


def test_negative_control_an_interpolant_that_reproduces_a_cubic_target_is_not_rough():
    spec = CurveFitSpec(target="cubic", noise=0.0, ns=(8,), n_seeds=2, extra_degrees=(0,))
    summary = fitting.summary(fitting.curve_fit(**spec.settings()).to_frame())
    poly, net = _at(summary, fitting.poly_label(), 8), _at(summary, fitting.NET, 8)
    target = summary[summary["fit"] == fitting.TARGET]["roughness"].iloc[0]
    assert (poly["test_mse"] < 1e-20).all() and np.allclose(poly["roughness"], target, rtol=1e-3)
    assert not (net["roughness"] < 0.1 * poly["roughness"]).any(), "the comparison must fail here"


def test_the_curve_fit_is_stored_like_any_analysis_and_read_back_whole(tmp_path):
    store = Store(tmp_path / "runs.duckdb")
    spec = CurveFitSpec(ns=(5,), n_seeds=1, steps=50)
    assert analyses.get(store, CURVE_FIT, spec) is None
    done = analyses.compute(store, CURVE_FIT, spec)
    again = analyses.get(store, CURVE_FIT, spec)
    assert not done.from_store and again.from_store and again.analysis_id == spec.analysis_id(CURVE_FIT)
    expected = fitting.curve_fit(**spec.settings()).to_frame()
    assert list(again.frame.columns) == list(expected.columns) and len(again.frame) == len(expected)
    assert again.frame[["fit", "n", "seed", "part"]].equals(expected[["fit", "n", "seed", "part"]])
    np.testing.assert_allclose(again.frame[["x", "value", "target"]], expected[["x", "value", "target"]], rtol=1e-12)
    assert analyses.compute(store, CURVE_FIT, spec).from_store
