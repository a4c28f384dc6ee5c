"""The Hessian operator and its estimators against the truth: finite differences, a closed form,
the exact Hessian of tiny float64 models."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from lossland.config import DataConfig, ModelConfig, SpectrumConfig
from lossland.curvature import (
    DeterminismError,
    Estimate,
    HessianOperator,
    SpectrumResult,
    exact_hessian,
    frobenius_sq,
    hutchinson_trace,
    hutchpp_trace,
    log_volume,
    log_volume_curve,
    spectrum,
)
from lossland.data import load_dataset
from lossland.models import build_model
from lossland.train import loss_function

LOSS = loss_function("cross_entropy")


@pytest.fixture(scope="module")
def digits():
    data = load_dataset(DataConfig(name="digits", n_train=300))
    return data.x_train.double(), data.y_train


def _trained(model: nn.Module, x, y, steps: int = 30) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):  # a few full-batch steps, so the Hessian is not that of the initialisation
        opt.zero_grad()
        LOSS(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def mlp(digits):
    x, y = digits
    model = _trained(build_model(ModelConfig(name="mlp", widths=(16,)), (1, 8, 8), 10).double(), x, y)
    op = HessianOperator(model, x, y, LOSS)
    return model, op, exact_hessian(op)


@pytest.fixture(scope="module")
def cnn(digits):
    x, y = digits[0][:100], digits[1][:100]
    model = _trained(build_model(ModelConfig(name="cnn", channels=(4, 8), widths=(16,)), (1, 8, 8), 10).double(), x, y)
    op = HessianOperator(model, x, y, LOSS)
    return model, op, exact_hessian(op)


@pytest.fixture(params=["mlp", "cnn"])
def tiny(request):
    return request.getfixturevalue(request.param)


def _vectors(n: int, b: int, seed: int) -> torch.Tensor:
    return torch.randn(n, b, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


# --- Hessian-vector products -------------------------------------------------------------------

def test_operator_shape_dtype_and_counter(mlp):
    model, op, _ = mlp
    assert op.n == sum(p.numel() for p in model.parameters()) == 1210
    assert op.dtype == torch.float64 and op.device == torch.device("cpu")
    before = op.hvps
    op.matvec(torch.ones(op.n, dtype=torch.float64))
    op.matmat(torch.ones(op.n, 7, dtype=torch.float64))
    assert op.hvps == before + 8


def test_hvp_equals_exact_hessian_times_v(tiny):
    _, op, H = tiny
    V = _vectors(op.n, 3, 0)
    for i in range(3):
        assert _rel(op.matvec(V[:, i]), H @ V[:, i]) < 1e-10
    assert torch.allclose(H, H.T, rtol=0, atol=1e-12 * float(H.abs().max()))


def test_hvp_matches_central_differences_of_the_gradient(tiny):
    model, op, _ = tiny
    x, y = op.chunks[0][0], op.chunks[0][1]
    v = _vectors(op.n, 1, 1)[:, 0]
    v /= torch.linalg.vector_norm(v)
    h = 1e-5

    def gradient_at(flat: torch.Tensor) -> torch.Tensor:
        shifted = copy.deepcopy(model)
        nn.utils.vector_to_parameters(flat, shifted.parameters())
        return HessianOperator(shifted, x, y, LOSS, check_determinism=False).gradient()

    p = op.params()
    fd = (gradient_at(p + h * v) - gradient_at(p - h * v)) / (2 * h)
    assert _rel(op.matvec(v), fd) < 1e-6


def test_hvp_is_symmetric(tiny):
    _, op, _ = tiny
    u, v = _vectors(op.n, 2, 2).unbind(1)
    assert float(u @ op.matvec(v)) == pytest.approx(float(v @ op.matvec(u)), rel=1e-11)


def test_chunks_with_an_uneven_last_chunk_equal_one_chunk(mlp, digits):
    model, op, _ = mlp
    x, y = digits
    chunked = HessianOperator(model, x, y, LOSS, chunk_size=7)  # 300 = 42 × 7 + 6
    assert len(chunked.chunks) == 43 and chunked.chunks[-1][2] == pytest.approx(6 / 300)
    V = _vectors(op.n, 4, 3)
    assert _rel(chunked.matmat(V), op.matmat(V)) < 1e-12
    assert chunked.loss() == pytest.approx(op.loss(), rel=1e-13)
    assert _rel(chunked.gradient(), op.gradient()) < 1e-12


def test_matmat_equals_stacked_matvecs(tiny):
    _, op, _ = tiny
    V = _vectors(op.n, 5, 4)
    stacked = torch.stack([op.matvec(V[:, i]) for i in range(5)], dim=1)
    assert _rel(op.matmat(V), stacked) < 1e-12


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch's forward AD
@pytest.mark.parametrize("method,cache", [("forward-over-reverse", False), ("double-backward", False),
                                          ("double-backward", True)])
def test_every_hvp_method_agrees(mlp, digits, method, cache):
    model, op, H = mlp
    x, y = digits
    other = HessianOperator(model, x, y, LOSS, method=method, cache_graph=cache)
    V = _vectors(op.n, 3, 5)
    assert _rel(other.matmat(V), H @ V) < 1e-10
    assert _rel(other.matvec(V[:, 0]), H @ V[:, 0]) < 1e-10


def test_vectors_are_cast_to_the_model_dtype_and_back(digits):
    x, y = digits
    model = build_model(ModelConfig(name="mlp", widths=(8,)), (1, 8, 8), 10)  # float32
    op = HessianOperator(model, x, y, LOSS)
    assert op.dtype == torch.float32
    v64 = _vectors(op.n, 1, 6)[:, 0]
    assert op.matvec(v64).dtype == torch.float64
    assert op.matvec(v64.float()).dtype == torch.float32
    assert op.gradient().dtype == torch.float32


def test_softmax_regression_hessian_matches_its_closed_form(digits):
    """For logits W x + b and mean CE: H = (1/N) Σ_i (diag(p_i) − p_i p_iᵀ) ⊗ x̃_i x̃_iᵀ, x̃ = (x, 1)."""
    x, y = digits[0][:150], digits[1][:150]
    model = _trained(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).double(), x, y, steps=10)
    H = exact_hessian(HessianOperator(model, x, y, LOSS))
    xt = torch.cat([x.flatten(1), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)  # (N, 65)
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1)
    curv = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (N, 10, 10)
    closed = torch.einsum("icd,ij,ik->cjdk", curv, xt, xt).reshape(650, 650) / len(x)  # order (class, input)
    # flat parameter order: weight (10, 64) row-major, then bias (10,)
    order = [c * 65 + j for c in range(10) for j in range(64)] + [c * 65 + 64 for c in range(10)]
    closed = closed[order][:, order]
    assert _rel(H, closed) < 1e-10


def test_exact_hessian_refuses_large_models(mlp):
    _, op, _ = mlp
    with pytest.raises(ValueError, match="max_params = 100"):
        exact_hessian(op, max_params=100)


# --- the determinism guard ----------------------------------------------------------------------

def _dropout_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 10)).double()


def test_guard_fires_on_dropout_in_train_mode(digits):
    x, y = digits
    model = _dropout_model().train()
    with pytest.raises(DeterminismError, match="disagree.*train mode.*model.eval"):
        HessianOperator(model, x, y, LOSS, eval_mode=False)
    assert isinstance(DeterminismError("x"), RuntimeError)


def test_guard_passes_the_eval_model(digits):
    x, y = digits
    model = _dropout_model().train()
    op = HessianOperator(model, x, y, LOSS)  # eval_mode=True switches dropout off
    assert not model.training
    HessianOperator(model, x, y, LOSS, eval_mode=False)  # now in eval mode by itself: no error
    assert op.loss() > 0


def test_guard_fires_on_batchnorm_in_train_mode(digits):
    x, y = digits
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    model = model.double().train()
    with pytest.raises(DeterminismError, match="BatchNorm"):
        HessianOperator(model, x, y, LOSS, eval_mode=False)
    HessianOperator(model, x, y, LOSS)


# --- trace and Frobenius estimates --------------------------------------------------------------

def test_hutchpp_trace_within_three_standard_errors(tiny):
    _, op, H = tiny
    exact = float(torch.trace(H))
    for seed in (0, 1, 2):
        est = hutchpp_trace(op, 30, seed=seed)
        assert est.method == "hutch++" and est.hvps == 30 and est.samples == 30
        assert abs(est.value - exact) <= 3 * est.stderr, (est, exact)
        assert est.stderr < 0.05 * abs(exact)


def test_hutchinson_trace_within_three_standard_errors(mlp):
    _, op, H = mlp
    exact = float(torch.trace(H))
    for seed in (0, 1):
        est = hutchinson_trace(op, 60, seed=seed)
        assert abs(est.value - exact) <= 3 * est.stderr
    # Hutch++ deflates the top of the spectrum: a smaller error bar for fewer HVPs
    assert hutchpp_trace(op, 30, seed=0).stderr < hutchinson_trace(op, 60, seed=0).stderr


def test_frobenius_within_three_standard_errors(tiny):
    _, op, H = tiny
    exact = float(H.pow(2).sum())
    for seed in (0, 1, 2):
        est = frobenius_sq(op, 40, seed=seed)
        assert est.method == "gaussian-frobenius" and est.hvps == 40
        assert abs(est.value - exact) <= 3 * est.stderr, (est, exact)


def test_estimates_are_reproducible(mlp):
    _, op, _ = mlp
    assert hutchpp_trace(op, 12, seed=5) == hutchpp_trace(op, 12, seed=5)
    assert frobenius_sq(op, 6, seed=5) == frobenius_sq(op, 6, seed=5)
    assert hutchpp_trace(op, 12, seed=5) != hutchpp_trace(op, 12, seed=6)


# --- the one call -------------------------------------------------------------------------------

def test_spectrum_end_to_end(mlp, digits):
    model, _, H = mlp
    x, y = digits
    cfg = SpectrumConfig(k=8, tol=1e-8, max_steps=200, slq_vectors=3, slq_steps=25, trace_samples=30, seed=1)
    seen = []
    res = spectrum(model, x, y, LOSS, cfg, progress=lambda f, m: seen.append((f, m)))
    assert isinstance(res, SpectrumResult) and res.settings == cfg and res.n_params == 1210
    exact = torch.linalg.eigvalsh(H).flip(0).numpy()
    assert res.top.converged and np.allclose(res.top.eigenvalues, exact[:8], rtol=1e-8)
    assert len(res.log_volume_k) == 8
    assert res.log_volume_k == pytest.approx(log_volume_curve(exact[:8], cfg.eps), rel=1e-8)
    assert len(res.exact_eigenvalues) == 1210 and res.exact_eigenvalues[0] == pytest.approx(exact[0])
    assert res.log_volume_exact == pytest.approx(log_volume(exact, cfg.eps), rel=1e-10)
    assert res.trace_exact == pytest.approx(exact.sum(), rel=1e-10)
    assert res.frobenius_sq_exact == pytest.approx((exact ** 2).sum(), rel=1e-10)
    assert abs(res.trace.value - res.trace_exact) <= 3 * res.trace.stderr
    assert abs(res.frobenius_sq.value - res.frobenius_sq_exact) <= 3 * res.frobenius_sq.stderr
    assert isinstance(res.trace, Estimate) and res.density.nodes.shape == (3, 25)
    assert res.hvps >= res.top.hvps + res.density.hvps + 60 + 1210 and res.seconds > 0
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    again = spectrum(model, x, y, LOSS, cfg)
    assert again.top.eigenvalues == res.top.eigenvalues and again.trace == res.trace
    assert np.array_equal(again.density.nodes, res.density.nodes) and again.log_volume_k == res.log_volume_k


def test_spectrum_of_a_float32_model_in_float64_leaves_the_model_alone(digits):
    x, y = digits
    model = build_model(ModelConfig(name="mlp", widths=(8,)), (1, 8, 8), 10)
    cfg = SpectrumConfig(k=3, tol=1e-8, max_steps=100, slq_vectors=1, slq_steps=10, trace_samples=6,
                         exact_max_params=0)
    res = spectrum(model, x.float(), y, LOSS, cfg)
    assert next(model.parameters()).dtype == torch.float32
    assert res.top.converged and res.exact_eigenvalues is None and res.log_volume_exact is None
    assert res.trace_exact is None and res.frobenius_sq_exact is None
    assert all(math.isfinite(v) for v in res.log_volume_k)


# --- memory and precision at scale ---------------------------------------------------------------

class _SavedBytes:
    """Bytes of tensors saved for backward that are alive at once (storages not in `known` counted once)."""

    def __init__(self, known: list[torch.Tensor]):
        self.known = {t.untyped_storage().data_ptr() for t in known}
        self.refs: dict[int, int] = {}
        self.live = self.peak = 0

    def pack(self, t: torch.Tensor):
        key = t.untyped_storage().data_ptr()
        if key not in self.known:
            if self.refs.get(key, 0) == 0:
                self.live += t.untyped_storage().nbytes()
                self.peak = max(self.peak, self.live)
            self.refs[key] = self.refs.get(key, 0) + 1
        return _Held(self, key, t)

    def release(self, key: int, nbytes: int) -> None:
        if key in self.known:
            return
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.live -= nbytes


class _Held:
    def __init__(self, meter: _SavedBytes, key: int, t: torch.Tensor):
        self.t, self.meter, self.key, self.nbytes = t, meter, key, t.untyped_storage().nbytes()

    def __del__(self):
        self.meter.release(self.key, self.nbytes)


def _peak_graph_bytes(op: HessianOperator, v: torch.Tensor) -> int:
    meter = _SavedBytes([op._params] + [t for xb, yb, _ in op.chunks for t in (xb, yb)])
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda held: held.t):
        op.matvec(v)
    return meter.peak


def test_chunked_hvps_hold_one_chunks_graph_whatever_the_dataset_size(digits):
    """Peak memory of saved activations during an HVP is one chunk's graph: 3 chunks of 100 hold no more than
    one chunk of 100; the cached-graph path is off with several chunks (it would keep them all)."""
    x, y = digits
    model = build_model(ModelConfig(name="mlp", widths=(64,)), (1, 8, 8), 10).double().eval()
    one = HessianOperator(model, x[:100], y[:100], LOSS, chunk_size=100, cache_graph=False)
    three = HessianOperator(model, x, y, LOSS, chunk_size=100)
    whole = HessianOperator(model, x, y, LOSS, chunk_size=300, cache_graph=False)
    assert not three.cache_graph and one.n == three.n
    v = _vectors(one.n, 1, 5)[:, 0]
    peak_one, peak_three, peak_whole = (_peak_graph_bytes(op, v) for op in (one, three, whole))
    assert peak_one > 0 and peak_three <= 1.1 * peak_one
    assert peak_whole >= 2.5 * peak_one  # the meter sees graphs grow with the chunk
    assert three._graphs is None
    assert _rel(three.matvec(v), whole.matvec(v)) < 1e-12
    cached = HessianOperator(model, x, y, LOSS, chunk_size=100, cache_graph=True)
    cached.matvec(v)
    assert len(cached._graphs) == 3  # asked for: every chunk's graph is kept, 3× the memory


def test_float32_hvps_with_float64_lanczos_cost_little_accuracy_at_the_top(mlp, digits):
    """HVPs of a float32 copy, Lanczos in float64 (the float64 model is left alone): the top eigenvalues within
    1e-5 of eigvalsh of the float64 Hessian, where float32 HVPs carry ~1e-7·λ_max of rounding."""
    model, op, H = mlp
    x, y = digits
    cfg = SpectrumConfig(k=3, tol=1e-4, max_steps=200, slq_vectors=1, slq_steps=5, trace_samples=3,
                         exact_max_params=0)
    res = spectrum(model, x.float(), y, LOSS, cfg, dtype=torch.float32)
    exact = torch.linalg.eigvalsh(H).flip(0).numpy()
    assert next(model.parameters()).dtype == torch.float64  # a float32 copy did the products
    assert res.top.converged
    err = np.abs(np.array(res.top.eigenvalues) - exact[:3]) / exact[:3]
    assert err.max() < 1e-5, err


def test_spectra_of_large_models_run_float32_hvps_and_small_ones_float64(digits, monkeypatch):
    """"auto" picks the products' dtype by the model's size: the same float64 model above the threshold gives
    float32-rounded eigenvalues (within 1e-5 of the float64 ones, not equal), at or below it the float64 ones."""
    import lossland.curvature as curvature
    from lossland.machine import tune_allocator

    x, y = digits
    model = _trained(build_model(ModelConfig(name="mlp", widths=(16,)), (1, 8, 8), 10).double(), x, y)
    n = sum(p.numel() for p in model.parameters())
    assert curvature.hvp_dtype(curvature.FLOAT32_HVP_PARAMS) == torch.float64
    assert curvature.hvp_dtype(curvature.FLOAT32_HVP_PARAMS + 1) == torch.float32
    cfg = SpectrumConfig(k=3, tol=1e-4, max_steps=200, slq_vectors=1, slq_steps=5, trace_samples=3,
                         exact_max_params=0)
    f64 = spectrum(model, x, y, LOSS, cfg, dtype=torch.float64)
    assert spectrum(model, x, y, LOSS, cfg).top.eigenvalues == f64.top.eigenvalues  # n ≤ threshold: float64
    monkeypatch.setattr(curvature, "FLOAT32_HVP_PARAMS", n - 1)
    auto = spectrum(model, x, y, LOSS, cfg)
    assert auto.top.eigenvalues == spectrum(model, x, y, LOSS, cfg, dtype=torch.float32).top.eigenvalues
    err = np.abs(np.array(auto.top.eigenvalues) - np.array(f64.top.eigenvalues)) / np.array(f64.top.eigenvalues)
    assert 0 < err.max() < 1e-5, err
    assert next(model.parameters()).dtype == torch.float64
    assert tune_allocator() is tune_allocator() is True  # Linux with glibc: large blocks are reused
