"""Hessian-vector products of the mean loss over a whole dataset; exact Hessian; trace and Frobenius.

`HessianOperator` is the one abstraction: the Hessian of the mean loss over (x, y) as a linear
operator on flat parameter vectors, evaluated in fixed chunks. Everything else (Lanczos, SLQ,
Hutch++) takes an operator and knows nothing of models. `spectrum` is the one call that runs
them all for a trained model.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from .config import SpectrumConfig
from .lanczos import DensityResult, EigenResult, log_volume, log_volume_curve, spectral_density, top_eigenpairs
from .machine import tune_allocator
from .pairs import Progress

__all__ = ["DeterminismError", "Estimate", "HessianOperator", "SpectrumResult", "exact_hessian", "frobenius_sq",
           "hutchinson_trace", "hutchpp_trace", "log_volume", "log_volume_curve", "spectrum"]

HVP_METHODS = ("forward-over-reverse", "double-backward")


@dataclass(frozen=True)
class Estimate:
    value: float
    stderr: float
    samples: int
    hvps: int
    method: str  # "hutch++" | "hutchinson" | "exact" | "gaussian-frobenius"


@dataclass(frozen=True)
class SpectrumResult:
    top: EigenResult  # top-k by Lanczos (largest algebraic)
    density: DensityResult  # SLQ nodes and weights (re-smoothable without new HVPs)
    trace: Estimate
    frobenius_sq: Estimate  # ||H||_F^2
    log_volume_k: tuple[float, ...]  # -1/2 Σ_{i≤k} log(λ_i + eps) for k = 1..K (top eigenvalues)
    log_volume_exact: float | None  # over all eigenvalues, where the exact Hessian was built
    exact_eigenvalues: tuple[float, ...] | None  # all eigenvalues (descending) when n ≤ exact_max_params
    n_params: int
    hvps: int
    seconds: float
    settings: SpectrumConfig
    trace_exact: float | None = None  # tr(H) of the exact Hessian, where it was built
    frobenius_sq_exact: float | None = None  # ||H||_F^2 of the exact Hessian, where it was built


class DeterminismError(RuntimeError):
    """Two evaluations of the loss or gradient disagreed: the Hessian would be of a moving target."""


class HessianOperator:
    """H = ∇² (1/N) Σ_i loss(model(x_i), y_i) as a linear operator on flat parameter vectors.

    The flat order is that of `model.named_parameters()`; the Hessian is taken at their values when
    the operator is built. The sum runs over fixed chunks of `chunk_size` samples in the order
    given, each weighted by its size / N. HVPs are double backward by default: the gradient's graph
    is built with create_graph and each product is one backward pass through it, batched over the
    columns of `matmat` (is_grads_batched). With a single chunk that graph is kept between products
    (`cache_graph`), which halves their cost. method="forward-over-reverse" (torch.func jvp of grad,
    vmapped over columns) is the alternative; benchmarks/spectrum.py measures both. Vectors of any
    floating dtype are cast to the model's dtype for the product and returned in their own.

    With `eval_mode=True` the model is switched to eval mode; with False its mode is kept, and the
    construction check (loss and gradient evaluated twice must agree, buffers must not change)
    raises DeterminismError on dropout or BatchNorm in train mode.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable,
                 chunk_size: int = 2048, check_determinism: bool = True, eval_mode: bool = True,
                 method: str = "double-backward", cache_graph: bool | None = None):
        if method not in HVP_METHODS:
            raise ValueError(f"method = {method!r} is not allowed: one of {', '.join(HVP_METHODS)}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size = {chunk_size!r} is not allowed: an integer ≥ 1")
        if len(x) != len(y) or len(y) == 0:
            raise ValueError(f"x and y must hold the same, non-zero number of samples; got {len(x)} and {len(y)}")
        named = list(model.named_parameters())
        if not named:
            raise ValueError("the model has no parameters")
        if eval_mode:
            model.eval()
        first = named[0][1]
        self.model, self.loss_fn, self.method = model, loss_fn, method
        self.device, self.dtype = first.device, first.dtype
        self._names = [name for name, _ in named]
        self._shapes = [p.shape for _, p in named]
        self._numels = [p.numel() for _, p in named]
        self.n = sum(self._numels)
        self.hvps = 0
        self._params = torch.cat([p.detach().reshape(-1) for _, p in named]).to(self.dtype)
        self._buffers = dict(model.named_buffers())
        x = x.to(self.device)
        x = x.to(self.dtype) if x.is_floating_point() else x
        y = y.to(self.device)
        n_samples = len(y)
        self.n_samples = n_samples
        self.chunks = [(x[i:i + chunk_size], y[i:i + chunk_size], min(chunk_size, n_samples - i) / n_samples)
                       for i in range(0, n_samples, chunk_size)]
        self._grad = grad(self._chunk_loss)
        # Keeping the gradient's graph between HVPs halves their cost; with one chunk it is the graph
        # every HVP builds anyway, so peak memory is unchanged. With several chunks it would keep them all.
        self.cache_graph = len(self.chunks) == 1 if cache_graph is None else bool(cache_graph)
        self._graphs: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        if check_determinism:
            self._check_determinism()

    def __repr__(self) -> str:
        return (f"HessianOperator(n={self.n}, samples={self.n_samples}, chunks={len(self.chunks)}, "
                f"dtype={self.dtype}, device={self.device}, method={self.method!r})")

    # --- the loss as a function of a flat parameter vector -------------------------------
    def _unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: t.view(shape) for name, t, shape in zip(self._names, flat.split(self._numels), self._shapes,
                                                               strict=True)}

    def _chunk_loss(self, flat: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        out = functional_call(self.model, (self._unflatten(flat), self._buffers), (xb,))
        return self.loss_fn(out, yb)

    def params(self) -> torch.Tensor:
        """The flat parameter vector the Hessian is taken at (a copy)."""
        return self._params.clone()

    def loss(self) -> float:
        with torch.no_grad():
            return float(sum(w * self._chunk_loss(self._params, xb, yb) for xb, yb, w in self.chunks))

    def gradient(self) -> torch.Tensor:
        g = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        with torch.enable_grad():
            for xb, yb, w in self.chunks:
                q = self._params.detach().requires_grad_(True)
                g += w * torch.autograd.grad(self._chunk_loss(q, xb, yb), q)[0]
        return g

    # --- products -----------------------------------------------------------------------
    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        if v.shape != (self.n,):
            raise ValueError(f"matvec needs a vector of shape ({self.n},), got {tuple(v.shape)}")
        return self.matmat(v[:, None])[:, 0]

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """H @ V for V of shape (n, b): b HVPs in one vmapped pass per chunk."""
        if V.dim() != 2 or V.shape[0] != self.n:
            raise ValueError(f"matmat needs a matrix of shape ({self.n}, b), got {tuple(V.shape)}")
        b = V.shape[1]
        self.hvps += b
        if b == 0:
            return V.clone()
        rows = V.T.to(device=self.device, dtype=self.dtype).contiguous()  # (b, n)
        out = torch.zeros_like(rows)
        for i, (_, _, w) in enumerate(self.chunks):
            out += w * self._chunk_hvps(rows, i)
        return out.T.to(device=V.device, dtype=V.dtype)

    __matmul__ = matmat

    def _chunk_hvps(self, rows: torch.Tensor, i: int) -> torch.Tensor:
        xb, yb, _ = self.chunks[i]
        p = self._params
        if self.method == "forward-over-reverse":
            def hvp(v):
                return jvp(lambda q: self._grad(q, xb, yb), (p,), (v,))[1]

            return hvp(rows[0])[None] if len(rows) == 1 else vmap(hvp)(rows)
        with torch.enable_grad():
            if self.cache_graph:
                if self._graphs is None:
                    self._graphs = [self._gradient_graph(j) for j in range(len(self.chunks))]
                q, g = self._graphs[i]
            else:
                q, g = self._gradient_graph(i)
            if len(rows) == 1:
                return torch.autograd.grad(g, q, grad_outputs=rows[0], retain_graph=self.cache_graph)[0][None]
            return torch.autograd.grad(g, q, grad_outputs=rows, is_grads_batched=True,
                                       retain_graph=self.cache_graph)[0]

    def _gradient_graph(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, ∇_q loss_i(q)) with the graph kept, so HVPs are one backward pass through it."""
        xb, yb, _ = self.chunks[i]
        q = self._params.detach().requires_grad_(True)
        return q, torch.autograd.grad(self._chunk_loss(q, xb, yb), q, create_graph=True)[0]

    # --- the guard ----------------------------------------------------------------------
    def _check_determinism(self) -> None:
        mode = "train" if self.model.training else "eval"
        bn = [name for name, m in self.model.named_modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
        if bn:
            raise DeterminismError(
                f"BatchNorm layer(s) {', '.join(bn[:3])} are in train mode: each chunk would be normalised by "
                f"its own statistics, so this is not the Hessian of the mean loss. Call model.eval() first, "
                f"or build the operator with eval_mode=True.")
        before = {k: b.clone() for k, b in self._buffers.items()}
        loss1, grad1 = self.loss(), self.gradient()
        if not (math.isfinite(loss1) and bool(torch.isfinite(grad1).all())):
            raise ValueError(f"the loss ({loss1!r}) or its gradient is not finite at these parameters: "
                             f"the Hessian is undefined there")
        loss2, grad2 = self.loss(), self.gradient()
        changed = [k for k, b in self._buffers.items() if not torch.equal(b, before[k])]
        rtol = 1000 * torch.finfo(self.dtype).eps
        loss_ok = abs(loss1 - loss2) <= rtol * max(abs(loss1), 1e-30)
        grad_ok = float(torch.linalg.vector_norm(grad1 - grad2)) <= rtol * float(torch.linalg.vector_norm(grad1))
        if changed or not (loss_ok and grad_ok):
            what = (f"buffers {', '.join(changed[:3])} changed" if changed else
                    f"loss {loss1!r} then {loss2!r}, gradient norms differ by "
                    f"{float(torch.linalg.vector_norm(grad1 - grad2)):.3g}")
            raise DeterminismError(
                f"two evaluations of the loss and gradient over the same data disagree ({what}); the model is in "
                f"{mode} mode. Dropout, BatchNorm in train mode or any other randomness or state in the forward "
                f"pass make the Hessian undefined: call model.eval() (or use eval_mode=True), and pass the data in "
                f"a fixed order.")


# --- the exact Hessian, for tiny models ------------------------------------------------------

def exact_hessian(op: HessianOperator, max_params: int = 5000, block: int = 32) -> torch.Tensor:
    """The dense (n, n) Hessian in op's dtype, symmetrised, from HVPs with identity columns in blocks
    (n HVPs; blocks of 32 columns were fastest on CPU for the digits MLP)."""
    if op.n > max_params:
        raise ValueError(f"the exact Hessian of {op.n} parameters is refused above max_params = {max_params} "
                         f"({op.n ** 2 * 8 / 2 ** 30:.2g} GiB in float64); use top_eigenpairs or spectral_density")
    H = torch.empty((op.n, op.n), dtype=op.dtype, device=op.device)
    for i in range(0, op.n, block):
        cols = torch.arange(i, min(i + block, op.n), device=op.device)
        E = torch.zeros((op.n, len(cols)), dtype=op.dtype, device=op.device)
        E[cols, torch.arange(len(cols), device=op.device)] = 1.0
        H[:, i:i + len(cols)] = op.matmat(E)
    return 0.5 * (H + H.T)


# --- stochastic trace and Frobenius estimates -------------------------------------------------

def _random(shape: tuple[int, ...], seed: int, kind: str, device) -> torch.Tensor:
    """Seeded float64 random matrix, drawn on the CPU so every device sees the same numbers."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        out = torch.randn(shape, generator=gen, dtype=torch.float64)
    else:
        out = torch.randint(0, 2, shape, generator=gen).to(torch.float64).mul_(2).sub_(1)
    return out.to(device)


def _mean_stderr(samples: torch.Tensor) -> tuple[float, float]:
    n = samples.numel()
    stderr = float(samples.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.inf
    return float(samples.mean()), stderr


def hutchinson_trace(op, n_samples: int, seed: int = 0) -> Estimate:
    """tr(H) ≈ mean of zᵀHz over Rademacher z; stderr = std / sqrt(n_samples)."""
    if n_samples < 2:
        raise ValueError(f"n_samples = {n_samples} is not allowed: at least 2 (for a standard error)")
    Z = _random((op.n, n_samples), seed, "rademacher", op.device)
    value, stderr = _mean_stderr((Z * op.matmat(Z)).sum(0))
    return Estimate(value, stderr, n_samples, n_samples, "hutchinson")


def hutchpp_trace(op, n_samples: int, seed: int = 0) -> Estimate:
    """Hutch++ (Meyer, Musco, Musco & Woodruff 2021): exact trace on a sketched top subspace Q plus
    Hutchinson on the deflated rest. n_samples HVPs split in thirds (sketch, Q, residual); the stderr
    is that of the Hutchinson part, which is the only randomness left once Q is fixed."""
    if n_samples < 3:
        raise ValueError(f"n_samples = {n_samples} is not allowed: at least 3 for Hutch++")
    n_sketch = min(n_samples // 3, op.n)
    n_rest = n_samples - 2 * n_sketch
    S = _random((op.n, n_sketch + n_rest), seed, "rademacher", op.device)
    S, G = S[:, :n_sketch], S[:, n_sketch:]
    Q = torch.linalg.qr(op.matmat(S)).Q
    top = float((Q * op.matmat(Q)).sum())
    G = G - Q @ (Q.T @ G)
    rest, stderr = _mean_stderr((G * op.matmat(G)).sum(0))
    return Estimate(top + rest, stderr, n_samples, 2 * n_sketch + n_rest, "hutch++")


def frobenius_sq(op, n_samples: int, seed: int = 0) -> Estimate:
    """||H||_F² = E ||Hv||² for Gaussian v; stderr = std / sqrt(n_samples)."""
    if n_samples < 2:
        raise ValueError(f"n_samples = {n_samples} is not allowed: at least 2 (for a standard error)")
    V = _random((op.n, n_samples), seed + 1, "gaussian", op.device)
    value, stderr = _mean_stderr(op.matmat(V).pow(2).sum(0))
    return Estimate(value, stderr, n_samples, n_samples, "gaussian-frobenius")


# --- the one call -------------------------------------------------------------------------------

FLOAT32_HVP_PARAMS = 50_000  # above this many parameters `spectrum` runs its HVPs in float32 by default


def hvp_dtype(n: int) -> torch.dtype:
    """The dtype of a spectrum's HVPs for a model of n parameters: float64 up to FLOAT32_HVP_PARAMS, float32
    above (the Krylov arithmetic stays float64; eigenvalues move by ~5e-8 relative and every pair still meets
    the float64 residual rule: BENCHMARKS.md; a float64 convolution on CPU has no oneDNN kernel, 3-9x slower)."""
    return torch.float64 if n <= FLOAT32_HVP_PARAMS else torch.float32


def spectrum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable, cfg: SpectrumConfig,
             progress: Progress | None = None, dtype: torch.dtype | str | None = "auto") -> SpectrumResult:
    """Top-k eigenpairs (Lanczos), SLQ density, Hutch++ trace, Frobenius estimate and log-volumes of
    the Hessian of the mean loss over (x, y); plus the exact spectrum when n ≤ cfg.exact_max_params.

    Log-volume of the top k: −½ Σ_{i≤k} log(max(λ_i, 0) + eps), negative eigenvalues clipped at 0.
    HVPs run in `dtype` (a copy of the model; the model itself is untouched); "auto" (the default) is
    `hvp_dtype` of the model's size: float64 up to FLOAT32_HVP_PARAMS parameters, because float32 HVPs carry
    ~1e-7·λ_max of noise, which the residual rule tol·|λ_i| cannot get
    under for eigenvalues much smaller than λ_max. None keeps the model's dtype. For a large model,
    dtype=torch.float32 runs the products in float32 (half the memory per chunk's graph, 2-3× faster on
    CPU) while Lanczos, SLQ and the estimators keep float64 arithmetic; its accuracy cost is measured in
    BENCHMARKS.md. A function argument, not a SpectrumConfig field, so no run id changes. Memory: one
    chunk's graph at a time (several chunks never cache theirs), and a Lanczos basis that restarts
    within lanczos.MAX_BASIS_BYTES.
    """
    report = progress or (lambda fraction, message: None)
    start = time.perf_counter()
    report(0.0, "Hessian operator: checking the loss is deterministic")
    tune_allocator()
    if dtype == "auto":
        dtype = hvp_dtype(sum(p.numel() for p in model.parameters()))
    if dtype is not None and next(model.parameters()).dtype != dtype:
        model = copy.deepcopy(model).to(dtype)
    op = HessianOperator(model, x, y, loss_fn, chunk_size=cfg.chunk_size)
    k = min(cfg.k, op.n)
    report(0.05, f"Lanczos: top {k} of {op.n} eigenvalues")
    top = top_eigenpairs(op, k, tol=cfg.tol, max_steps=cfg.max_steps, which="largest", seed=cfg.seed)
    report(0.5, f"spectral density: {cfg.slq_vectors} × {cfg.slq_steps} Lanczos steps")
    density = spectral_density(op, cfg.slq_vectors, cfg.slq_steps, seed=cfg.seed)
    report(0.7, f"trace and Frobenius norm: {cfg.trace_samples} samples each")
    trace = hutchpp_trace(op, cfg.trace_samples, seed=cfg.seed)
    frob = frobenius_sq(op, cfg.trace_samples, seed=cfg.seed)
    exact = log_exact = trace_exact = frob_exact = None
    if op.n <= cfg.exact_max_params:
        report(0.8, f"exact Hessian: {op.n} × {op.n}")
        H = exact_hessian(op, max_params=cfg.exact_max_params).to(torch.float64)
        evals = torch.linalg.eigvalsh(H).flip(0)
        exact = tuple(evals.tolist())
        log_exact = log_volume(exact, cfg.eps)
        trace_exact = float(torch.trace(H))
        frob_exact = float(H.pow(2).sum())
    report(1.0, "spectrum done")
    return SpectrumResult(top=top, density=density, trace=trace, frobenius_sq=frob,
                          log_volume_k=log_volume_curve(top.eigenvalues, cfg.eps), log_volume_exact=log_exact,
                          exact_eigenvalues=exact, n_params=op.n, hvps=op.hvps,
                          seconds=time.perf_counter() - start, settings=cfg,
                          trace_exact=trace_exact, frobenius_sq_exact=frob_exact)


# --- a sharpness that reparametrisation does not change ------------------------------------------

class ScaledOperator:
    """T H T for the positive diagonal T = diag(scale): the Hessian in coordinates u with θ = θ* + T u."""

    def __init__(self, op, scale: torch.Tensor):
        if scale.shape != (op.n,):
            raise ValueError(f"scale must have shape ({op.n},), got {tuple(scale.shape)}")
        self.op, self.n, self.device = op, op.n, op.device
        self.scale = scale.detach().to(device=op.device, dtype=torch.float64)

    @property
    def hvps(self) -> int:
        return self.op.hvps

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.matmat(v[:, None])[:, 0]

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        s = self.scale.to(V.dtype)[:, None]
        return s * self.op.matmat(s * V)


def adaptive_sharpness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable, tol: float = 1e-6,
                       max_steps: int = 200, seed: int = 0, chunk_size: int = 2048) -> EigenResult:
    """λ₁(T H T) with T = diag(|θ|): the second-order adaptive sharpness of Kwon et al. (2021, ASAM, with
    η = 0), max over ‖T⁻¹δ‖ ≤ ρ of L(θ + δ) − L(θ) ≈ ρ²/2 · λ₁(T H T). Any positive diagonal
    reparametrisation θ' = Dθ (Dinh et al. 2017: a ReLU layer × α, the next ÷ α) turns H into D⁻¹HD⁻¹ and
    T into DT, so T H T, and this measure, are unchanged, while λ₁(H) is not. The HVPs run on a float64
    copy of the model."""
    twin = copy.deepcopy(model).to(torch.float64)
    op = HessianOperator(twin, x, y, loss_fn, chunk_size=chunk_size)
    return top_eigenpairs(ScaledOperator(op, op.params().abs()), 1, tol=tol, max_steps=max_steps, seed=seed)
