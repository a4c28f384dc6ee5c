"""The estimators the claims use beyond λ₁: the SLQ log-determinant against the exact one, and adaptive
sharpness unchanged by the layer rescaling of Dinh et al. (2017) that changes λ₁."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lossland.config import DataConfig, ModelConfig
from lossland.curvature import HessianOperator, adaptive_sharpness, exact_hessian
from lossland.data import load_dataset
from lossland.lanczos import log_volume, slq_logdet, spectral_density, top_eigenpairs
from lossland.models import build_model
from lossland.train import loss_function

LOSS = loss_function("cross_entropy")


@pytest.fixture(scope="module")
def trained():
    """A 64-8-10 ReLU MLP (610 parameters) after 200 full-batch Adam steps on 200 digits, float64."""
    torch.manual_seed(0)
    data = load_dataset(DataConfig(name="digits", n_train=200))
    x, y = data.x_train.double(), data.y_train
    model = build_model(ModelConfig(name="mlp", widths=(8,), seed=0), data.in_shape, data.n_classes).double()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(200):
        opt.zero_grad()
        LOSS(model(x), y).backward()
        opt.step()
    return model.eval(), x, y


# Relative bias allowed beyond 3 standard errors. At ε = 1e-4 most of this net's 610 eigenvalues lie within
# ±ε of 0 (114 negative, 359 with |λ| < 1e-4): a Ritz node stands for a cluster of them, and log is concave, so
# the quadrature overestimates (Jensen); measured +0.1 to +0.7% over 60-100 Lanczos steps.
BIAS = {1e-4: 1e-2, 1e-3: 2e-3, 1e-2: 2e-3}


@pytest.mark.parametrize("eps", list(BIAS))
def test_slq_logdet_is_within_three_standard_errors_of_the_exact_log_determinant(trained, eps):
    model, x, y = trained
    op = HessianOperator(model, x, y, LOSS)
    exact = torch.linalg.eigvalsh(exact_hessian(op)).numpy()
    truth = -2.0 * log_volume(exact, eps)  # Σ log(max(λ, 0) + ε)
    est = slq_logdet(spectral_density(op, n_vectors=24, n_steps=60, seed=1), eps)  # 60: the stored slq_steps
    assert est.n_vectors == 24 and est.eps == eps and est.stderr > 0
    assert abs(est.value - truth) <= 3 * est.stderr + BIAS[eps] * abs(truth), (est, truth)


def test_slq_logdet_refuses_a_non_positive_eps(trained):
    model, x, y = trained
    density = spectral_density(HessianOperator(model, x, y, LOSS), n_vectors=2, n_steps=5)
    with pytest.raises(ValueError, match="eps"):
        slq_logdet(density, 0.0)


def _rescaled(model: torch.nn.Module, alpha: float) -> torch.nn.Module:
    """The same function with the first layer × α and the second ÷ α (ReLU is positively homogeneous)."""
    twin = copy.deepcopy(model)
    first, second = twin.net[1], twin.net[3]
    with torch.no_grad():
        first.weight.mul_(alpha)
        first.bias.mul_(alpha)
        second.weight.div_(alpha)
    return twin


def test_adaptive_sharpness_is_invariant_under_layer_rescaling_while_the_top_eigenvalue_is_not(trained):
    model, x, y = trained
    alpha = 4.0
    twin = _rescaled(model, alpha)
    assert torch.allclose(model(x), twin(x), atol=1e-10), "the rescaled network computes the same function"
    top = [top_eigenpairs(HessianOperator(m, x, y, LOSS), 1, tol=1e-8).eigenvalues[0] for m in (model, twin)]
    assert top[1] / top[0] < 0.5 or top[1] / top[0] > 2.0, top  # λ₁ moves a lot under the rescaling
    sharp = [adaptive_sharpness(m, x, y, LOSS, tol=1e-8).eigenvalues[0] for m in (model, twin)]
    assert sharp[0] > 0 and np.isclose(sharp[0], sharp[1], rtol=1e-6), sharp
