"""Lanczos and SLQ against the truth: eigvalsh of the exact Hessian of tiny float64 models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lossland.config import DataConfig, ModelConfig
from lossland.curvature import HessianOperator, exact_hessian
from lossland.data import load_dataset
from lossland.lanczos import DensityResult, log_volume, log_volume_curve, spectral_density, top_eigenpairs
from lossland.models import build_model
from lossland.restart import MIN_SLACK, OVERHEAD_VECTORS, basis_limit
from lossland.train import loss_function


class MatrixOperator:
    """A dense symmetric matrix behind the operator interface, counting HVPs like HessianOperator."""

    def __init__(self, A: torch.Tensor):
        self.A, self.n, self.device, self.dtype, self.hvps = A, A.shape[0], A.device, A.dtype, 0

    def matvec(self, v):
        self.hvps += 1
        return self.A @ v

    def matmat(self, V):
        self.hvps += V.shape[1]
        return self.A @ V


def _trained_operator(model_cfg: ModelConfig, n_train: int, steps: int) -> tuple[HessianOperator, np.ndarray]:
    data = load_dataset(DataConfig(name="digits", n_train=n_train))
    x, y = data.x_train.double(), data.y_train
    model = build_model(model_cfg, data.in_shape, data.n_classes).double()
    loss_fn = loss_function("cross_entropy")
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):  # a few full-batch steps, so the Hessian is not that of the initialisation
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    op = HessianOperator(model, x, y, loss_fn)
    exact = torch.linalg.eigvalsh(exact_hessian(op)).flip(0).numpy()
    return op, exact


@pytest.fixture(scope="module")
def mlp():
    return _trained_operator(ModelConfig(name="mlp", widths=(16,)), 300, 30)


@pytest.fixture(scope="module")
def cnn():
    return _trained_operator(ModelConfig(name="cnn", channels=(4, 8), widths=(16,)), 100, 30)


@pytest.fixture(params=["mlp", "cnn"])
def tiny(request):
    return request.getfixturevalue(request.param)


def _rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def test_top10_match_eigvalsh_of_the_exact_hessian(tiny):
    op, exact = tiny
    res = top_eigenpairs(op, 10, tol=1e-10, max_steps=300)
    assert res.converged and res.which == "largest"
    assert len(res.eigenvalues) == 10
    assert list(res.eigenvalues) == sorted(res.eigenvalues, reverse=True)
    assert _rel(res.eigenvalues, exact[:10]) < 1e-8
    assert all(r <= 1e-10 * abs(lam) for r, lam in zip(res.residuals, res.eigenvalues, strict=True))
    assert res.hvps == res.steps  # residuals come from the stored products: no extra HVP


def test_verify_recomputes_the_residuals_with_k_counted_hvps(tiny):
    op, _ = tiny
    plain = top_eigenpairs(op, 6, tol=1e-9)
    checked = top_eigenpairs(op, 6, tol=1e-9, verify=True)
    assert checked.hvps == plain.hvps + 6 and checked.eigenvalues == plain.eigenvalues
    assert checked.converged
    assert np.allclose(checked.residuals, plain.residuals, rtol=0.1, atol=1e-13 * abs(plain.eigenvalues[0]))


def test_smallest_finds_the_most_negative_eigenvalues(tiny):
    op, exact = tiny
    res = top_eigenpairs(op, 3, tol=1e-8, max_steps=600, which="smallest")
    assert res.converged and res.which == "smallest"
    assert list(res.eigenvalues) == sorted(res.eigenvalues)
    assert _rel(res.eigenvalues, exact[::-1][:3]) < 1e-8
    assert res.eigenvalues[0] < 0


def test_no_ghost_eigenvalues_after_many_steps(tiny):
    """Far past convergence of the top ones, plain Lanczos grows duplicate copies; full reorth must not."""
    op, exact = tiny
    res = top_eigenpairs(op, 25, tol=1e-20, max_steps=250)  # unreachable: runs all 250 steps
    lam = np.array(res.eigenvalues)
    assert res.steps == 250
    gaps = -np.diff(lam) / np.abs(lam[:-1])
    assert gaps.min() > 1e-6, "two returned eigenvalues coincide where the exact spectrum is simple"
    assert _rel(lam[:15], exact[:15]) < 1e-8


def test_ritz_vectors_are_orthonormal_and_residuals_are_honest(mlp):
    op, _ = mlp
    res = top_eigenpairs(op, 5, tol=1e-9, return_vectors=True)
    Y = res.vectors
    assert Y.shape == (op.n, 5) and Y.dtype == torch.float64
    assert torch.allclose(Y.T @ Y, torch.eye(5, dtype=torch.float64), atol=1e-10)
    HY = op.matmat(Y)
    recomputed = torch.linalg.vector_norm(HY - Y * torch.tensor(res.eigenvalues, dtype=torch.float64), dim=0)
    assert np.allclose(recomputed.numpy(), res.residuals, rtol=1e-3, atol=1e-14)


def test_lanczos_is_reproducible_with_a_seed(mlp):
    op, _ = mlp
    a = top_eigenpairs(op, 4, tol=1e-8, seed=3)
    b = top_eigenpairs(op, 4, tol=1e-8, seed=3)
    assert a.eigenvalues == b.eigenvalues and a.hvps == b.hvps


def test_max_steps_beyond_n_gives_the_whole_spectrum_exactly():
    gen = torch.Generator().manual_seed(0)
    B = torch.randn(40, 40, generator=gen, dtype=torch.float64)
    A = B + B.T
    exact = torch.linalg.eigvalsh(A).flip(0).numpy()
    res = top_eigenpairs(MatrixOperator(A), 40, tol=1e-10, max_steps=500)
    assert res.steps == 40
    assert np.allclose(res.eigenvalues, exact, rtol=0, atol=1e-10)
    assert res.converged


def test_invariant_subspace_restarts_and_finds_multiplicities():
    """From one start vector a Krylov space sees each distinct eigenvalue once; restarts recover the copies."""
    gen = torch.Generator().manual_seed(1)
    Q = torch.linalg.qr(torch.randn(30, 30, generator=gen, dtype=torch.float64)).Q
    lam = torch.tensor([5.0, 5.0, 5.0, 3.0, 3.0] + [1.0] * 10 + [0.0] * 15, dtype=torch.float64)
    op = MatrixOperator(Q @ torch.diag(lam) @ Q.T)
    res = top_eigenpairs(op, 5, tol=1e-10, max_steps=100)
    assert np.allclose(res.eigenvalues, [5, 5, 5, 3, 3], atol=1e-10)
    assert res.converged


def test_rejects_bad_arguments():
    op = MatrixOperator(torch.eye(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="which"):
        top_eigenpairs(op, 2, which="middle")
    with pytest.raises(ValueError, match="k = 6"):
        top_eigenpairs(op, 6)


def test_block_lanczos_agrees_with_single_vector(tiny):
    op, exact = tiny
    res = top_eigenpairs(op, 10, tol=1e-10, max_steps=300, block_size=4)
    assert res.converged
    assert _rel(res.eigenvalues, exact[:10]) < 1e-8
    assert all(r <= 1e-10 * abs(lam) for r, lam in zip(res.residuals, res.eigenvalues, strict=True))


# --- thick restart: a basis bounded by a memory budget ---------------------------------------------

def _budget(n: int, basis: int) -> int:
    """Bytes for `basis` float64 basis vectors of length n plus the solver's working vectors."""
    return 8 * n * (basis + 1 + OVERHEAD_VECTORS)


def _clustered(n: int = 400, seed: int = 0) -> tuple[MatrixOperator, np.ndarray]:
    """A symmetric matrix whose top 20 eigenvalues come in 5 tight clusters (gaps 1e-3) above a bulk."""
    gen = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64)).Q
    top = [c + 1e-3 * i for c in (10.0, 9.0, 8.0, 7.0, 6.0) for i in range(4)]
    bulk = 3 * torch.rand(n - 20, generator=gen, dtype=torch.float64)
    lam = torch.cat([torch.tensor(top, dtype=torch.float64), bulk])
    A = Q @ torch.diag(lam) @ Q.T
    return MatrixOperator(0.5 * (A + A.T)), np.sort(lam.numpy())[::-1]


def _assert_exact_pairs(res, exact, tol: float) -> None:
    lam = np.asarray(res.eigenvalues)
    assert res.converged
    assert np.all(np.abs(lam - exact[:len(lam)]) <= 1e-10 * np.abs(exact[:len(lam)]))
    assert np.all(np.asarray(res.residuals) <= tol * np.abs(lam))


def test_thick_restart_matches_eigvalsh_of_the_exact_hessian_in_a_small_basis(tiny):
    op, exact = tiny
    k, basis = 10, 10 + MIN_SLACK
    budget = _budget(op.n, basis)
    res = top_eigenpairs(op, k, tol=1e-9, max_steps=2000, memory="restart", max_basis_bytes=budget)
    assert res.restarts >= 1, "the budget was meant to force restarts"
    _assert_exact_pairs(res, exact, 1e-9)
    assert res.stored_vectors <= budget // (8 * op.n)
    assert res.hvps > res.steps  # residuals confirmed on k products of the returned vectors, counted


def test_thick_restart_separates_clustered_eigenvalues():
    op, exact = _clustered()
    budget = _budget(op.n, 20 + MIN_SLACK)
    res = top_eigenpairs(op, 20, tol=1e-9, max_steps=3000, memory="restart", max_basis_bytes=budget)
    assert res.restarts >= 1
    _assert_exact_pairs(res, exact, 1e-9)
    assert res.stored_vectors <= budget // (8 * op.n)
    full = top_eigenpairs(op, 20, tol=1e-9, max_steps=3000, memory="full")
    assert np.allclose(res.eigenvalues, full.eigenvalues, rtol=1e-12, atol=0)
    assert full.stored_vectors > res.stored_vectors


def test_thick_restart_returns_orthonormal_vectors_with_honest_residuals(mlp):
    op, _ = mlp
    res = top_eigenpairs(op, 5, tol=1e-9, memory="restart", max_basis_bytes=_budget(op.n, 5 + MIN_SLACK),
                         return_vectors=True, max_steps=2000)
    Y = res.vectors
    assert torch.allclose(Y.T @ Y, torch.eye(5, dtype=torch.float64), atol=1e-10)
    HY = op.matmat(Y)
    recomputed = torch.linalg.vector_norm(HY - Y * torch.tensor(res.eigenvalues, dtype=torch.float64), dim=0)
    assert np.allclose(recomputed.numpy(), res.residuals, rtol=1e-6, atol=1e-14)


def test_thick_restart_finds_the_smallest_eigenvalues():
    op, exact = _clustered(seed=3)
    negated = MatrixOperator(-op.A)
    res = top_eigenpairs(negated, 8, tol=1e-9, max_steps=3000, which="smallest", memory="restart",
                         max_basis_bytes=_budget(op.n, 8 + MIN_SLACK))
    assert res.restarts >= 1
    _assert_exact_pairs(res, -exact, 1e-9)


def test_thick_restart_recovers_multiplicities_at_an_invariant_subspace():
    gen = torch.Generator().manual_seed(1)
    Q = torch.linalg.qr(torch.randn(30, 30, generator=gen, dtype=torch.float64)).Q
    lam = torch.tensor([5.0, 5.0, 5.0, 3.0, 3.0] + [1.0] * 10 + [0.0] * 15, dtype=torch.float64)
    op = MatrixOperator(Q @ torch.diag(lam) @ Q.T)
    res = top_eigenpairs(op, 5, tol=1e-10, max_steps=200, memory="restart", max_basis_bytes=_budget(30, 5 + MIN_SLACK))
    assert np.allclose(res.eigenvalues, [5, 5, 5, 3, 3], atol=1e-10) and res.converged


def test_auto_restarts_only_above_the_memory_threshold(mlp):
    op, exact = mlp
    small = 16 * op.n * 300 - 1  # just below what the unrestarted worst case (basis + products) needs
    auto = top_eigenpairs(op, 6, tol=1e-9, max_steps=300, max_basis_bytes=small)
    assert auto.hvps > auto.steps and auto.stored_vectors <= small // (8 * op.n)  # the restarted solver ran
    plain = top_eigenpairs(op, 6, tol=1e-9, max_steps=300, max_basis_bytes=16 * op.n * 300)
    assert plain.hvps == plain.steps and plain.restarts == 0
    assert np.allclose(auto.eigenvalues, plain.eigenvalues, rtol=1e-12, atol=0)


def test_a_budget_below_k_plus_slack_is_refused():
    op = MatrixOperator(torch.eye(100, dtype=torch.float64))
    with pytest.raises(ValueError, match="max_basis_bytes"):
        top_eigenpairs(op, 10, memory="restart", max_basis_bytes=_budget(100, 10 + MIN_SLACK - 1))
    assert basis_limit(100, 10, 300, _budget(100, 10 + MIN_SLACK)) == 10 + MIN_SLACK
    with pytest.raises(ValueError, match="memory"):
        top_eigenpairs(op, 2, memory="small")


# --- stochastic Lanczos quadrature ---------------------------------------------------------------

def test_density_integrates_to_one_on_its_grid(tiny):
    op, _ = tiny
    dens = spectral_density(op, n_vectors=3, n_steps=30, seed=0)
    assert dens.nodes.shape == dens.weights.shape == (3, 30)
    assert np.allclose(dens.weights.sum(1), 1.0, atol=1e-12)
    for sigma in (0.01, 0.05, 0.2):
        grid = dens.grid(2000, sigma)
        assert abs(np.trapezoid(dens.smooth(grid, sigma), grid) - 1.0) < 1e-4


def test_slq_moments_match_trace_and_frobenius(mlp):
    """Σ w θ and Σ w θ² average to tr(H)/n and ||H||_F²/n (Gauss quadrature is exact for degree < 2m)."""
    op, exact = mlp
    dens = spectral_density(op, n_vectors=8000, n_steps=2, seed=0, batch=1000)
    assert dens.hvps == 8000 * 2
    assert dens.moments(1) == pytest.approx(exact.sum() / op.n, rel=0.02)
    assert dens.moments(2) == pytest.approx((exact ** 2).sum() / op.n, rel=0.02)


def test_slq_quadrature_is_exact_for_one_vector():
    """For a unit start v, Σ_j w_j θ_j^p = vᵀ A^p v for p < 2m; on a 20×20 matrix with m = 20, all of A's mass."""
    gen = torch.Generator().manual_seed(2)
    B = torch.randn(20, 20, generator=gen, dtype=torch.float64)
    A = B @ B.T / 20
    dens = spectral_density(MatrixOperator(A), n_vectors=1, n_steps=40, seed=5)
    assert dens.nodes.shape == (1, 20)  # capped at n
    lam = torch.linalg.eigvalsh(A).numpy()
    live = dens.nodes[0][dens.weights[0] > 1e-12]
    assert np.allclose(np.sort(live), lam, atol=1e-10)  # a Rademacher start touches every eigenvector


def test_density_resmooths_without_new_hvps(mlp):
    op, _ = mlp
    dens = spectral_density(op, n_vectors=2, n_steps=10, seed=1)
    before = op.hvps
    dens.smooth(dens.grid(100, 0.1), 0.1)
    assert op.hvps == before
    same = spectral_density(op, n_vectors=2, n_steps=10, seed=1)
    assert np.array_equal(dens.nodes, same.nodes) and np.array_equal(dens.weights, same.weights)
    assert isinstance(dens, DensityResult)


# --- log-volume ------------------------------------------------------------------------------------

def test_log_volume_clips_negative_eigenvalues_at_zero():
    eps = 1e-3
    assert log_volume([4.0, 1.0, -2.0], eps) == pytest.approx(-0.5 * (np.log(4 + eps) + np.log(1 + eps) + np.log(eps)))
    curve = log_volume_curve([4.0, 1.0, -2.0], eps)
    assert len(curve) == 3 and curve[-1] == pytest.approx(log_volume([4.0, 1.0, -2.0], eps))
    assert curve[0] == pytest.approx(-0.5 * np.log(4 + eps))
