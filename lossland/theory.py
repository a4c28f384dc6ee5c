"""The paper's 2-layer theory: the complexity of the learned function against the Hessian of the loss.

Setting. f(x) = a·σ(Wx + b) + c ∈ R^K (TwoLayer; only the first layer being affine with a bias is used,
so an MLP fits too), W ∈ R^{m×d}. Over samples x_1..x_N the mean loss L(θ) = (1/N) Σ ℓ(f(x_i), y_i) has
output Hessians Λ_i = ∂²ℓ/∂f² ⪰ 0 (MSE ½‖f − e_y‖²: Λ = I; cross-entropy: Λ = diag(p) − ppᵀ, p = softmax f),
Gauss-Newton matrix G = (1/N) Σ J_θ(x_i)ᵀ Λ_i J_θ(x_i) and Hessian H = G + R with
R = (1/N) Σ_i Σ_k r_ik ∇²_θ f_k(x_i), r_ik = ∂ℓ/∂f_k the residual (MSE: f(x_i) − e_{y_i}).

The complexity of f is C = E_x ‖∂f/∂x‖_F², the mean squared input gradient summed over the outputs;
C_Λ = E_x tr(J_xᵀ Λ J_x) is the same seen through the loss (C_Λ = C under MSE).

The argument (Wu, Zhu & E 2017, section on 2-layer networks). (1) Chain rule through the first layer:
∂f/∂x = (∂f/∂z) W and ∂f/∂b = ∂f/∂z, so J_x = J_b W. (2) W Wᵀ ⪯ ‖W‖₂² I, so averaged over the training
inputs C_Λ ≤ ‖W‖₂² tr(G_bb), G_bb the m×m bias block of G. (3) At a minimum that interpolates under MSE
every residual is zero, so R = 0 and G = H: the Hessian at such a minimum *is* the Gram matrix of the
parameter gradients, whose bias block carries the input gradients before W. With tr(H_bb) ≤ √m ‖H_bb‖_F
≤ √m ‖H‖_F and tr(H_bb) ≤ m λ₁(H),

    C ≤ √m ‖W‖₂² ‖H‖_F   and   C ≤ m ‖W‖₂² λ₁(H):

a minimum with a small Hessian norm and a bounded first layer computes a function of small input gradient.
Across minima this predicts a monotone association of C with ‖H‖_F (and λ₁), which `two_layer_measure`
measures and `claims` tests; nothing in the algebra forces it, since it is only an upper bound.

Assumptions, each a way the association can fail: (a) the first layer is affine with a bias; (b) the
minimum interpolates under MSE, else ‖G − H‖ = ‖R‖ grows with the residuals — under cross-entropy R stays
comparable to G (measured ‖R‖_F ≈ 0.3 ‖H‖_F) and Λ → 0 as the net grows confident, so H bounds only C_Λ,
never the plain logit gradient C; (c) ‖W‖₂ is comparable across the minima compared (weight_factor is
reported so it can be checked); (d) the slack of step (3) (25-80 measured) varies less than C does;
(e) H sees the training inputs only: C over held-out inputs is the distribution's only as far as the
training inputs represent it (complexity_heldout); (f) σ is smooth (tanh, softplus, gelu) so ∇²_θ f exists.

`two_layer_bound` is the identity check of steps (1)-(3) with exact matrices, in G (which holds at any θ,
trained or not, whatever the labels): not the claim. `two_layer_measure` measures the claim's quantities.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from .curvature import HessianOperator, exact_hessian, frobenius_sq
from .lanczos import top_eigenpairs
from .landscape import flat_params, unflatten
from .models import MLP, TwoLayer
from .train import cross_entropy, half_squared_error, loss_function


def _loss_name(loss: str | Callable) -> str:
    names = {cross_entropy: "cross_entropy", half_squared_error: "mse"}
    name = names.get(loss, loss) if callable(loss) else loss
    if name not in ("cross_entropy", "mse"):
        raise ValueError(f"loss = {loss!r} is not allowed: 'cross_entropy', 'mse' or train.loss_function of one")
    return name


def _first_layer(model: nn.Module) -> nn.Linear:
    layer = model.hidden if isinstance(model, TwoLayer) else model.net[1] if isinstance(model, MLP) else None
    if layer is None or not isinstance(layer, nn.Linear) or layer.bias is None:
        raise ValueError(f"the 2-layer theory needs a TwoLayer or MLP (first layer affine with a bias), "
                         f"got {type(model).__name__}")
    return layer


def _float64(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """A float64 copy in eval mode and its first layer (the model itself is untouched)."""
    _first_layer(model)
    twin = copy.deepcopy(model).to(torch.float64).eval()
    return twin, _first_layer(twin)


def _output_metric(f: torch.Tensor, name: str) -> torch.Tensor:
    """Λ = ∂²ℓ/∂f² per sample, (B, K, K)."""
    b, k = f.shape
    if name == "mse":
        return torch.eye(k, dtype=f.dtype, device=f.device).expand(b, k, k)
    prob = f.softmax(-1)
    return torch.diag_embed(prob) - prob[:, :, None] * prob[:, None, :]


def input_gradient_sq(model: nn.Module, x: torch.Tensor, loss: str | Callable,
                      sample_chunk: int = 256) -> tuple[float, float]:
    """(C, C_Λ): the means over x of ‖∂f/∂x‖_F² and of tr(J_xᵀ Λ J_x), exactly (per-sample Jacobians)."""
    name = _loss_name(loss)
    p = next(model.parameters())
    x = x.to(device=p.device, dtype=p.dtype)
    jac = vmap(jacrev(lambda xi: model(xi[None])[0]))
    plain = metric = 0.0
    with torch.no_grad():
        for i in range(0, len(x), sample_chunk):
            xb = x[i:i + sample_chunk]
            f = model(xb)
            Jx = jac(xb).reshape(len(xb), f.shape[-1], -1)  # (B, K, d)
            plain += float(Jx.pow(2).sum())
            metric += float(torch.einsum("bkd,bkl,bld->", Jx, _output_metric(f, name), Jx))
    return plain / len(x), metric / len(x)


# --- the measurement: complexity against the Hessian at many minima -----------------------------

@dataclass(frozen=True)
class TwoLayerMeasure:
    """The quantities of the 2-layer claim at one model (see the module docstring and two_layer_measure)."""

    complexity: float  # C = mean over the training inputs of ‖∂f/∂x‖_F² (summed over the K outputs)
    complexity_heldout: float  # the same over the held-out inputs given; NaN when none were
    complexity_loss_metric: float  # C_Λ = mean of tr(J_xᵀ Λ J_x) over the training inputs (= C for MSE)
    hessian_frobenius: float  # ‖H‖_F of the mean training loss
    hessian_frobenius_stderr: float  # 0 where exact
    frobenius_method: str  # "exact" (dense H) | "gaussian-frobenius" (E‖Hv‖², delta-method s.e.)
    top_eigenvalue: float  # λ₁(H), Lanczos
    lanczos_converged: bool
    spectral_norm_sq: float  # ‖W‖₂² of the first layer
    weight_factor: float  # √m ‖W‖₂²: C ≤ weight_factor · ‖H‖_F at an interpolating MSE minimum
    loss: float  # the mean training loss
    accuracy: float  # argmax f = y over the training samples
    loss_name: str
    n_samples: int
    n_heldout: int
    n_params: int
    width: int  # m
    input_dim: int  # d
    hvps: int
    seconds: float


def _hessian_norms(op: HessianOperator, exact_max_params: int, frobenius_samples: int, tol: float,
                   max_steps: int, seed: int) -> tuple[float, float, str, float, bool]:
    """(‖H‖_F, its s.e., method, λ₁, Lanczos converged)."""
    if op.n <= exact_max_params:
        H = exact_hessian(op, max_params=exact_max_params)
        frob, stderr, method = float(torch.linalg.matrix_norm(H)), 0.0, "exact"
    else:
        est = frobenius_sq(op, frobenius_samples, seed=seed)
        frob, method = math.sqrt(max(est.value, 0.0)), est.method
        stderr = est.stderr / (2 * frob) if frob > 0 else math.inf
    top = top_eigenpairs(op, 1, tol=tol, max_steps=max_steps, seed=seed)
    return frob, stderr, method, float(top.eigenvalues[0]), top.converged


def two_layer_measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str | Callable, *,
                      x_heldout: torch.Tensor | None = None, exact_max_params: int = 2000,
                      frobenius_samples: int = 32, tol: float = 1e-6, max_steps: int = 300, seed: int = 0,
                      chunk_size: int = 2048, sample_chunk: int = 256) -> TwoLayerMeasure:
    """Complexity and Hessian norms of the mean training loss over (x, y) at `model` (TwoLayer or MLP).

    C is exact (per-sample input Jacobians) on the training inputs x and, when given, on x_heldout. The
    Hessian is that of the training loss (curvature.HessianOperator on a float64 copy, eval mode): ‖H‖_F
    from the dense matrix up to exact_max_params parameters, above that from frobenius_samples Gaussian
    products (‖H‖_F = √(E‖Hv‖²), s.e. by the delta method); λ₁ by Lanczos (tol, max_steps, seed). The
    claim these feed and its assumptions (an interpolating MSE minimum, a comparable ‖W‖₂) are in the
    module docstring: this measures, it asserts nothing.
    """
    start = time.perf_counter()
    name = _loss_name(loss)
    twin, layer = _float64(model)
    device = next(twin.parameters()).device
    x, y = x.to(device=device, dtype=torch.float64), y.to(device)
    complexity, metric = input_gradient_sq(twin, x, name, sample_chunk)
    held = math.nan if x_heldout is None else input_gradient_sq(twin, x_heldout, name, sample_chunk)[0]
    op = HessianOperator(twin, x, y, loss_function(name), chunk_size=chunk_size)
    frob, stderr, method, top, converged = _hessian_norms(op, exact_max_params, frobenius_samples, tol,
                                                          max_steps, seed)
    with torch.no_grad():
        accuracy = float((torch.cat([twin(x[i:i + chunk_size]) for i in range(0, len(x), chunk_size)]).argmax(-1)
                          == y).double().mean())
    m, d = layer.weight.shape
    spectral_sq = float(torch.linalg.matrix_norm(layer.weight.detach(), ord=2)) ** 2
    return TwoLayerMeasure(
        complexity=complexity, complexity_heldout=held, complexity_loss_metric=metric, hessian_frobenius=frob,
        hessian_frobenius_stderr=stderr, frobenius_method=method, top_eigenvalue=top, lanczos_converged=converged,
        spectral_norm_sq=spectral_sq, weight_factor=math.sqrt(m) * spectral_sq, loss=op.loss(), accuracy=accuracy,
        loss_name=name, n_samples=len(y), n_heldout=0 if x_heldout is None else len(x_heldout), n_params=op.n,
        width=m, input_dim=d, hvps=op.hvps, seconds=time.perf_counter() - start)


# --- the identity check: C ≤ √m ‖W‖₂² ‖G‖_F with exact matrices -------------------------------------

@dataclass(frozen=True)
class BoundSettings:
    loss: str
    n_samples: int
    n_params: int
    width: int  # m: units of the first layer
    input_dim: int  # d


@dataclass(frozen=True)
class BoundResult:
    """Both sides of C ≤ √m ‖W‖₂² ‖G‖_F (see two_layer_bound), with the intermediate steps.

    `ratio` = rhs / complexity ≥ 1 measures the slack; `trace_rhs` = ‖W‖₂² tr(G_bb) is the tightest
    step of the chain and `rhs_hessian` = √m ‖W‖₂² ‖H‖_F the same bound with the full Hessian, which
    equals rhs where H = G (MSE at zero residual) and is not guaranteed elsewhere.
    """

    complexity: float  # C_Λ = (1/N) Σ tr(J_xᵀ Λ J_x); for MSE the mean of Σ_k ‖∇ₓ f_k(x)‖²
    input_gradient_sq: float  # (1/N) Σ ‖∂f/∂x‖_F² (= complexity for MSE)
    bias_block_trace: float  # tr(G_bb)
    bias_block_frobenius: float  # ‖G_bb‖_F
    gauss_newton_frobenius: float  # ‖G‖_F
    hessian_frobenius: float  # ‖H‖_F, exact
    residual_frobenius: float  # ‖H − G‖_F
    spectral_norm_sq: float  # ‖W‖₂² of the first layer's weight
    weight_factor: float  # √m ‖W‖₂²
    trace_rhs: float  # ‖W‖₂² tr(G_bb)
    rhs: float  # weight_factor · ‖G‖_F
    rhs_hessian: float  # weight_factor · ‖H‖_F
    ratio: float  # rhs / complexity
    holds: bool  # complexity ≤ trace_rhs ≤ rhs (up to rounding)
    loss: float  # the mean loss at the model
    settings: BoundSettings


def _gauss_newton(twin: nn.Module, theta: torch.Tensor, x: torch.Tensor, name: str,
                  sample_chunk: int) -> torch.Tensor:
    """G = (1/N) Σ J_θᵀ Λ J_θ (symmetrised), exactly."""
    def out(flat: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return functional_call(twin, unflatten(twin, flat), (xi[None],))[0]

    jac_theta = vmap(jacrev(out, argnums=0), in_dims=(None, 0))
    p = theta.numel()
    G = torch.zeros((p, p), dtype=torch.float64, device=theta.device)
    with torch.no_grad():
        for i in range(0, len(x), sample_chunk):
            xb = x[i:i + sample_chunk]
            Jt = jac_theta(theta, xb)  # (B, K, p)
            G += torch.einsum("bkp,bkl,blq->pq", Jt, _output_metric(twin(xb), name), Jt)
    G /= len(x)
    return 0.5 * (G + G.T)


BOUND_MAX_PARAMS = 5000  # the exact float64 Hessian and Gauss-Newton matrices of the identity check, at most


def two_layer_bound(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str | Callable,
                    max_params: int = BOUND_MAX_PARAMS, sample_chunk: int = 256) -> BoundResult:
    """Identity check, not the claim: C_Λ ≤ ‖W‖₂² tr(G_bb) ≤ √m ‖W‖₂² ‖G_bb‖_F ≤ √m ‖W‖₂² ‖G‖_F with exact
    float64 matrices (steps (1)-(3) of the module docstring, in the Gauss-Newton matrix G).

    The chain holds at every θ, trained or not, whatever the labels: G and Λ do not depend on them, so its
    holding says the algebra and the code agree, nothing about minima. The claim is about the Hessian
    (two_layer_measure); here ‖H‖_F (exact) and ‖R‖_F = ‖H − G‖_F are reported beside, and
    rhs_hessian = √m ‖W‖₂² ‖H‖_F equals rhs only where R = 0 (MSE at zero residual).

    Slack, measured on a 64-8-10 tanh net on 100 digits (tests/test_basins.py): rhs / C = 25-80, of which
    step (2) gives 1.7-3.6 and the trace-to-Frobenius step (3) the rest. ‖R‖_F / ‖H‖_F was ≤ 0.03 under MSE
    but ≈ 0.3 at a converged cross-entropy minimum, where H and G differ visibly.
    """
    name = _loss_name(loss)
    twin, layer = _float64(model)
    theta = flat_params(twin)
    p = theta.numel()
    if p > max_params:
        raise ValueError(f"the exact Hessian and Gauss-Newton matrices of {p} parameters are refused above "
                         f"max_params = {max_params}")
    x, y = x.to(device=theta.device, dtype=torch.float64), y.to(theta.device)
    offsets = np.cumsum([0] + [q.numel() for q in twin.parameters()])
    b_at = next(i for i, q in enumerate(twin.parameters()) if q is layer.bias)
    G_bb_at = slice(int(offsets[b_at]), int(offsets[b_at + 1]))
    G = _gauss_newton(twin, theta, x, name, sample_chunk)
    plain, complexity = input_gradient_sq(twin, x, name, sample_chunk)
    op = HessianOperator(twin, x, y, loss_function(name))
    H = exact_hessian(op, max_params=max_params)
    G_bb = G[G_bb_at, G_bb_at]
    m, d = layer.weight.shape
    spectral_sq = float(torch.linalg.matrix_norm(layer.weight.detach(), ord=2)) ** 2
    g_frob, h_frob = float(torch.linalg.matrix_norm(G)), float(torch.linalg.matrix_norm(H))
    trace_bb = float(torch.trace(G_bb))
    weight_factor = math.sqrt(m) * spectral_sq
    rhs, trace_rhs = weight_factor * g_frob, spectral_sq * trace_bb
    slack = 1e-9 * max(rhs, 1e-300)
    return BoundResult(
        complexity=complexity, input_gradient_sq=plain, bias_block_trace=trace_bb,
        bias_block_frobenius=float(torch.linalg.matrix_norm(G_bb)), gauss_newton_frobenius=g_frob,
        hessian_frobenius=h_frob, residual_frobenius=float(torch.linalg.matrix_norm(H - G)),
        spectral_norm_sq=spectral_sq, weight_factor=weight_factor, trace_rhs=trace_rhs, rhs=rhs,
        rhs_hessian=weight_factor * h_frob, ratio=rhs / complexity if complexity > 0 else math.inf,
        holds=bool(complexity <= trace_rhs + slack and trace_rhs <= rhs + slack), loss=op.loss(),
        settings=BoundSettings(loss=name, n_samples=len(y), n_params=p, width=m, input_dim=d))
