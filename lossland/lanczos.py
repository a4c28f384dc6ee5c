"""Lanczos with full reorthogonalisation (top-k eigenpairs) and stochastic Lanczos quadrature.

Operators are anything with `.n` (size), `.matvec(v)` and `.matmat(V)` over flat vectors (and
optionally `.device`); this module knows nothing of models. The Krylov basis is float64.

`top_eigenpairs` runs one unrestarted Lanczos recurrence, reorthogonalising every new vector
against the whole basis twice (classical Gram-Schmidt), so no ghost copies of converged
eigenvalues appear. After every step it checks the k extreme Ritz pairs with the free estimate
|β_m s_{m,i}| and, when all pass `tol·|θ_i|`, confirms them with their true residuals, assembled
from the stored products H v_j (no extra HVP; `verify=True` spends k more to recompute them).
That keeps 2 × steps float64 n-vectors; where their worst case 16·n·max_steps bytes passes
MAX_BASIS_BYTES it runs thick-restart Lanczos instead (restart.py: memory O((k + slack)·n) within
the budget, the same residual rule, k HVPs per confirmation).
`spectral_density` runs one short Lanczos per random vector, all vectors batched through
`matmat`, and keeps the Gauss quadrature (Ritz values, squared first eigenvector components).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from .restart import bound, device_of, finite, select, start_vectors, thick_restart

WHICH = ("largest", "smallest")
MEMORY = ("auto", "full", "restart")
# The auto switch: full reorthogonalisation with stored products holds 2 · max_steps float64 n-vectors at
# worst (16 · n · max_steps bytes); above this it restarts within the budget. 1 GiB: digits and mnist1d runs
# (≤ 73 MB) stay unrestarted; at n = 10⁶ a restarted basis of up to ~120 vectors fits.
MAX_BASIS_BYTES = 2 ** 30


@dataclass(frozen=True)
class EigenResult:
    eigenvalues: tuple[float, ...]  # sorted: descending for "largest", ascending for "smallest"
    residuals: tuple[float, ...]  # ||H v_i - λ_i v_i|| for each unit Ritz vector
    hvps: int  # Hessian-vector products spent (a matmat of b columns counts b)
    seconds: float
    converged: bool  # every residual ≤ tol·|λ_i|
    which: str  # "largest" | "smallest"
    tol: float
    vectors: torch.Tensor | None = None  # (n, k) float64 Ritz vectors, when asked for
    steps: int = 0  # Lanczos steps taken (basis size, unless restarted)
    restarts: int = 0  # thick restarts (memory="restart")
    stored_vectors: int = 0  # the most float64 n-vectors the solver held at once (its memory / 8n bytes)


@dataclass(frozen=True)
class DensityResult:
    """Raw SLQ quadrature: per random vector, m Ritz values (nodes) and weights summing to 1.

    The smoothed density is the average over vectors of Σ_j w_j N(t; θ_j, s²) with the kernel width
    s = sigma · (λ_max − λ_min), sigma relative to the spectral range the nodes span. A vector whose
    Krylov space became invariant before m steps has its trailing nodes padded with weight 0.
    """

    nodes: np.ndarray  # (n_vectors, m)
    weights: np.ndarray  # (n_vectors, m)
    n_params: int
    hvps: int
    seconds: float

    def spectral_range(self) -> tuple[float, float]:
        live = self.nodes[self.weights > 0]
        live = live if live.size else self.nodes.ravel()
        return float(live.min()), float(live.max())

    def width(self, sigma: float) -> float:
        lo, hi = self.spectral_range()
        return sigma * ((hi - lo) if hi > lo else max(abs(hi), 1.0))

    def grid(self, n_points: int = 1000, sigma: float = 0.05) -> np.ndarray:
        """Evenly spaced points over the spectral range ± 5 kernel widths (holds all but ~1e-7 of the mass)."""
        lo, hi = self.spectral_range()
        pad = 5.0 * self.width(sigma)
        return np.linspace(lo - pad, hi + pad, n_points)

    def smooth(self, grid: np.ndarray, sigma: float) -> np.ndarray:
        s = self.width(sigma)
        t = np.asarray(grid, dtype=np.float64)[:, None, None]
        kernel = np.exp(-0.5 * ((t - self.nodes[None]) / s) ** 2) / (s * math.sqrt(2 * math.pi))
        return (kernel * self.weights[None]).sum(-1).mean(-1)

    def moments(self, p: int) -> float:
        """Σ_j w_j θ_j^p averaged over vectors: an estimate of tr(H^p) / n (exact in expectation for p < 2m)."""
        return float((self.weights * self.nodes ** p).sum(1).mean())


# --- log-volume of a basin from its eigenvalues -------------------------------------------------

def log_volume(eigenvalues, eps: float) -> float:
    """−½ Σ log(max(λ_i, 0) + eps): negative eigenvalues are clipped at 0 (flat, not a saddle's volume)."""
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    return float(-0.5 * np.log(lam + eps).sum())


def log_volume_curve(eigenvalues, eps: float) -> tuple[float, ...]:
    """log_volume of the first k eigenvalues for k = 1..K (in the order given, top first)."""
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    return tuple(float(v) for v in np.cumsum(-0.5 * np.log(lam + eps)))


# --- helpers ----------------------------------------------------------------------------------

def _orthogonalise(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """w − basis basisᵀ w, twice (classical Gram-Schmidt twice is as good as modified, and one BLAS call)."""
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


class _Basis:
    """Rows of a float64 Krylov basis in a buffer that doubles when full."""

    def __init__(self, n: int, capacity: int, device):
        self.rows = torch.empty((max(1, capacity), n), dtype=torch.float64, device=device)
        self.size = 0

    def append(self, v: torch.Tensor) -> None:
        if self.size == len(self.rows):
            self.rows = torch.cat([self.rows, torch.empty_like(self.rows)])
        self.rows[self.size] = v
        self.size += 1

    @property
    def view(self) -> torch.Tensor:
        return self.rows[:self.size]


def _ritz(alpha: list[float], beta: list[float], k: int, which: str) -> tuple[np.ndarray, np.ndarray, float]:
    """The k extreme eigenpairs of the tridiagonal T (α on the diagonal, β off it), sorted by `which`,
    and ‖T‖ (the largest |Ritz value|: the operator's scale as seen so far)."""
    m = len(alpha)
    if m == 1:
        return np.array(alpha), np.ones((1, 1)), abs(alpha[0])
    theta, S = eigh_tridiagonal(np.array(alpha), np.array(beta[:m - 1]))  # all of them: stemr beats a selection
    order = select(theta, k, which)
    return theta[order], S[:, order], float(np.abs(theta).max())


# --- top-k eigenpairs ---------------------------------------------------------------------------

def top_eigenpairs(op, k: int, tol: float = 1e-6, max_steps: int = 300, which: str = "largest", seed: int = 0,
                   return_vectors: bool = False, block_size: int = 1, check_every: int = 1,
                   verify: bool = False, memory: str = "auto", max_basis_bytes: int = MAX_BASIS_BYTES) -> EigenResult:
    """The k largest (or most negative, which="smallest") eigenpairs of a symmetric operator.

    Stops when every one of the k Ritz pairs y_i = V s_i has ||Hy_i − θ_i y_i|| ≤ tol·|θ_i|, or
    after max_steps Lanczos steps (converged=False). The free estimate |β_m s_{m,i}| gates the test;
    the residual itself is then computed from the stored products H v_j (H y = Σ_j s_ij H v_j), so
    it is the true residual of the returned vectors up to rounding, at no extra HVP — at the price
    of a second n × steps float64 buffer. `verify=True` recomputes it with one matmat of the k Ritz
    vectors (k more HVPs, counted). The basis never exceeds n vectors: with max_steps ≥ n the result
    is exact up to rounding. When the Krylov space becomes invariant (β ≈ 0) the recurrence restarts
    from a random vector orthogonal to the basis, so eigenvalues outside the start vector's span
    (such as further copies of a multiple eigenvalue) are still found. `block_size` > 1 runs block
    Lanczos through op.matmat (more HVPs, fewer but wider products). A Ritz value zero to rounding
    (|θ| ≤ ZERO·‖H‖) can't meet a relative rule; it passes at a residual ≤ ZERO·‖H‖, so k may exceed the
    operator's rank. An operator that returns NaN or inf raises ValueError: never a NaN eigenvalue.

    memory="restart" runs thick-restart Lanczos (restart.thick_restart) holding at most
    max_basis_bytes of float64 vectors, its residuals always from products of the returned vectors;
    "full" never restarts; "auto" (single-vector only) restarts where 16·n·max_steps > max_basis_bytes.
    """
    if which not in WHICH:
        raise ValueError(f"which = {which!r} is not allowed: one of largest, smallest")
    if memory not in MEMORY:
        raise ValueError(f"memory = {memory!r} is not allowed: one of {', '.join(MEMORY)}")
    n = op.n
    if not 1 <= k <= n:
        raise ValueError(f"k = {k} is not allowed: an integer in [1, n = {n}]")
    if block_size < 1 or (block_size > 1 and memory == "restart"):
        raise ValueError(f"block_size = {block_size} is not allowed: an integer ≥ 1, and 1 with memory='restart'")
    start, hvps0, cap = time.perf_counter(), op.hvps, min(max(max_steps, k), n)
    if memory == "restart" or (memory == "auto" and block_size == 1 and 16 * n * cap > max_basis_bytes):
        r = thick_restart(op, k, tol, max(max_steps, k), which, seed, max_basis_bytes, return_vectors)
        return EigenResult(eigenvalues=tuple(float(t) for t in r.theta), residuals=tuple(float(x) for x in r.residuals),
                           hvps=op.hvps - hvps0, seconds=time.perf_counter() - start,
                           converged=bool(np.all(r.residuals <= bound(r.theta, tol, r.scale))), which=which, tol=tol,
                           vectors=r.vectors, steps=r.steps, restarts=r.restarts, stored_vectors=r.stored_vectors)
    run = _lanczos if block_size == 1 else _block_lanczos
    theta, Y, residuals, steps, scale, stored = run(op, k, tol, cap, which, seed, max(1, check_every), block_size)
    if verify:
        HY = op.matmat(Y).to(device=Y.device, dtype=torch.float64)
        residuals = torch.linalg.vector_norm(HY - Y * torch.as_tensor(theta, device=Y.device), dim=0).cpu().numpy()
    converged = bool(np.all(residuals <= bound(theta, tol, scale)))
    return EigenResult(eigenvalues=tuple(float(t) for t in theta), residuals=tuple(float(r) for r in residuals),
                       hvps=op.hvps - hvps0, seconds=time.perf_counter() - start, converged=converged,
                       which=which, tol=tol, vectors=Y if return_vectors else None, steps=steps,
                       stored_vectors=stored)


def _ritz_pairs(basis: _Basis, products: _Basis, theta: np.ndarray, S: np.ndarray, scale: float):
    """(θ, unit Ritz vectors Y = Vᵀ S / ‖·‖ (n, k), ||H y_i − θ_i y_i|| with H Y = (HV)ᵀ S / ‖·‖, steps, ‖T‖,
    n-vectors held: both buffers' capacity and Y)."""
    V, HV = basis.view, products.view
    S = torch.as_tensor(S, dtype=torch.float64, device=V.device)
    Y = V.T @ S
    norms = torch.linalg.vector_norm(Y, dim=0, keepdim=True)
    HY = HV.T @ S / norms
    Y = Y / norms
    residuals = torch.linalg.vector_norm(HY - Y * torch.as_tensor(theta, device=Y.device), dim=0)
    stored = len(basis.rows) + len(products.rows) + 2 * len(theta)
    return theta, Y, residuals.cpu().numpy(), basis.size, scale, stored


def _lanczos(op, k, tol, cap, which, seed, check_every, _block):
    """Single-vector Lanczos, fully reorthogonalised; returns _ritz_pairs at the stop."""
    n, device = op.n, device_of(op)
    basis, products = _Basis(n, min(cap, 64), device), _Basis(n, min(cap, 64), device)
    alpha: list[float] = []
    beta: list[float] = []
    v = start_vectors(n, 1, seed, "gaussian", device)[0]
    v_prev, b_prev = torch.zeros_like(v), 0.0
    restarts, next_check = 0, 0
    while True:
        basis.append(v)
        w = finite(op.matvec(v).to(device=device, dtype=torch.float64), basis.size)
        products.append(w)
        a = float(v @ w)
        w = _orthogonalise(w - a * v - b_prev * v_prev, basis.view)
        b = float(torch.linalg.vector_norm(w))
        alpha.append(a)
        m = len(alpha)
        scale = max(max(abs(x) for x in alpha), max(beta, default=0.0), 1e-300)
        full = m >= cap
        invariant = b <= 1e-12 * scale * math.sqrt(n)
        # At an invariant subspace the next fresh direction may carry more copies of a multiple
        # eigenvalue, so the first k of them declare nothing (at most k extra HVPs on a low-rank H).
        hold = invariant and restarts < k and not full
        if m >= k and not hold and (full or (m - k) % check_every == 0):
            theta, S, norm = _ritz(alpha, beta, k, which)
            if full:
                return _ritz_pairs(basis, products, theta, S, norm)
            if m >= next_check and np.all(np.abs(b * S[-1]) <= bound(theta, tol, norm)):
                pairs = _ritz_pairs(basis, products, theta, S, norm)
                if np.all(pairs[2] <= bound(theta, tol, norm)):
                    return pairs
                next_check = m + max(k, m // 2)  # HVPs noisier than tol (float32): check less often
        if invariant:  # continue from a fresh direction orthogonal to the basis
            restarts += 1
            fresh = start_vectors(n, 1, seed + 7919 * restarts, "gaussian", device)[0]
            w = _orthogonalise(fresh, basis.view)
            b_next = float(torch.linalg.vector_norm(w))
            if b_next < 1e-8:  # the basis already spans everything
                return _ritz_pairs(basis, products, *_ritz(alpha, beta + [0.0], k, which))
            v_prev, v, b_prev = v, w / b_next, 0.0
            beta.append(0.0)
        else:
            v_prev, v, b_prev = v, w / b, b
            beta.append(b)


def _block_lanczos(op, k, tol, cap, which, seed, check_every, p):
    """Block Lanczos: p HVPs per step through one op.matmat; T is block tridiagonal. A block that loses
    rank (invariant subspace) has its dead columns replaced by random directions orthogonal to the basis."""
    n, device = op.n, device_of(op)
    basis, products = _Basis(n, min(cap, 64), device), _Basis(n, min(cap, 64), device)
    T = np.zeros((cap + p, cap + p))
    Q = _orthonormal_block(start_vectors(n, p, seed, "gaussian", device).T, basis.view, seed, 0)[0]
    Q_prev, R_prev = None, None
    next_check, restarts, size = 0, 1, 0.0
    while True:
        j = basis.size
        width = min(Q.shape[1], cap - j)
        Q = Q[:, :width]
        W = finite(op.matmat(Q).to(device=device, dtype=torch.float64), basis.size)
        size = max(size, float(torch.linalg.vector_norm(W, dim=0).max()))  # ‖H‖ as seen so far
        for c in range(width):
            basis.append(Q[:, c])
            products.append(W[:, c])
        A = Q.T @ W
        A = 0.5 * (A + A.T)
        W = W - Q @ A - (Q_prev @ R_prev.T[:, :width] if Q_prev is not None else 0.0)
        W = _orthogonalise(W, basis.view)
        m = basis.size
        T[j:m, j:m] = A.cpu().numpy()
        full = m >= cap
        before = restarts
        Q_next, R, restarts = _orthonormal_block(W, basis.view, seed, restarts, size)
        R_np = R.cpu().numpy()
        # As in _lanczos: a block that just lost rank reached an invariant subspace; the fresh directions
        # replacing it may hold more of the top k (copies, zeros past the rank), so the first k declare nothing.
        hold = restarts > before and restarts - 1 <= k and not full
        if m >= k and not hold and (full or (m // p) % check_every == 0):
            theta, S = np.linalg.eigh(T[:m, :m])
            norm = float(np.abs(theta).max())
            idx = select(theta, k, which)
            theta, S = theta[idx], S[:, idx]
            if full:
                return _ritz_pairs(basis, products, theta, S, norm)
            if m >= next_check and np.all(np.linalg.norm(R_np @ S[j:m], axis=0) <= bound(theta, tol, norm)):
                pairs = _ritz_pairs(basis, products, theta, S, norm)
                if np.all(pairs[2] <= bound(theta, tol, norm)):
                    return pairs
                next_check = m + max(k, m // 2)
        T[m:m + width, j:m] = R_np
        T[j:m, m:m + width] = R_np.T
        Q_prev, R_prev, Q = Q, R, Q_next


def _orthonormal_block(W: torch.Tensor, basis: torch.Tensor, seed: int, restarts: int, scale: float = 0.0):
    """QR of W (n, p) against the basis with deflation: W = Q R, Q orthonormal and orthogonal to the
    basis; a column with nothing new left (norm ≤ 1e-10 of `scale`, the operator's size, or else of W's
    largest column) becomes a random direction (its R[c, c] stays 0)."""
    n, p = W.shape
    Q = torch.zeros_like(W)
    R = torch.zeros((p, p), dtype=W.dtype, device=W.device)
    scale = scale or (float(torch.linalg.vector_norm(W, dim=0).max()) if p else 0.0)
    for c in range(p):
        w = W[:, c]
        for _ in range(2):
            coef = Q[:, :c].T @ w
            w = w - Q[:, :c] @ coef
            R[:c, c] += coef
        norm = float(torch.linalg.vector_norm(w))
        if norm > 1e-10 * max(scale, 1e-300):
            Q[:, c], R[c, c] = w / norm, norm
            continue
        fresh = start_vectors(n, 1, seed + 7919 * restarts, "gaussian", W.device)[0]
        restarts += 1
        known = torch.cat([basis, Q[:, :c].T])
        fresh = _orthogonalise(fresh, known)
        Q[:, c] = fresh / torch.linalg.vector_norm(fresh)
    return Q, R, restarts


# --- stochastic Lanczos quadrature ----------------------------------------------------------------

def spectral_density(op, n_vectors: int, n_steps: int, seed: int = 0, batch: int = 32,
                     max_basis_bytes: int = 2 ** 30) -> DensityResult:
    """SLQ (Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao 2019): per Rademacher unit vector, m
    Lanczos steps with full reorthogonalisation; nodes are the Ritz values, weights the squared
    first components of T's eigenvectors. Up to `batch` vectors run together through op.matmat,
    fewer where their float64 bases (batch × m × n × 8 bytes) would pass max_basis_bytes."""
    if n_vectors < 1 or n_steps < 1:
        raise ValueError(f"n_vectors = {n_vectors}, n_steps = {n_steps}: both must be ≥ 1")
    start, hvps0 = time.perf_counter(), op.hvps
    device = device_of(op)
    m = min(n_steps, op.n)
    batch = max(1, min(batch, max_basis_bytes // (8 * m * op.n)))
    nodes = np.zeros((n_vectors, m))
    weights = np.zeros((n_vectors, m))
    starts = start_vectors(op.n, n_vectors, seed, "rademacher", device)
    for lo in range(0, n_vectors, batch):
        for i, (alpha, beta) in enumerate(_batched_lanczos(op, starts[lo:lo + batch], m)):
            theta, S = np.linalg.eigh(np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1))
            nodes[lo + i, :len(theta)] = theta
            nodes[lo + i, len(theta):] = theta[-1]
            weights[lo + i, :len(theta)] = S[0] ** 2
    return DensityResult(nodes=nodes, weights=weights, n_params=op.n, hvps=op.hvps - hvps0,
                         seconds=time.perf_counter() - start)


def _batched_lanczos(op, V0: torch.Tensor, m: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Independent Lanczos recurrences from the rows of V0 (b, n), one matmat per step over the rows
    still running; a row stops early when its Krylov space is invariant. Returns (α, β) per row."""
    b, n = V0.shape
    basis = torch.zeros((m, b, n), dtype=torch.float64, device=V0.device)
    alpha = np.zeros((b, m))
    beta = np.zeros((b, m))
    length = np.full(b, m)
    active = torch.ones(b, dtype=torch.bool, device=V0.device)
    v, v_prev, b_prev = V0.clone(), torch.zeros_like(V0), torch.zeros(b, dtype=torch.float64, device=V0.device)
    for j in range(m):
        basis[j] = v
        idx = active.nonzero()[:, 0]
        W = torch.zeros_like(v)
        W[idx] = finite(op.matmat(v[idx].T).T.to(device=V0.device, dtype=torch.float64), j)
        a = (v * W).sum(1)
        W = W - a[:, None] * v - b_prev[:, None] * v_prev
        for _ in range(2):
            W = W - torch.einsum("jb,jbn->bn", torch.einsum("jbn,bn->jb", basis[:j + 1], W), basis[:j + 1])
        bn = torch.linalg.vector_norm(W, dim=1)
        alpha[:, j] = a.cpu().numpy()
        beta[:, j] = bn.cpu().numpy()
        scale = np.maximum(np.abs(alpha[:, :j + 1]).max(1), beta[:, :j + 1].max(1))
        stop = active.cpu().numpy() & (beta[:, j] <= 1e-12 * scale * math.sqrt(n))
        length[stop] = j + 1
        active &= ~torch.as_tensor(stop, device=V0.device)
        if j == m - 1 or not bool(active.any()):
            break
        safe = torch.where(active, bn, torch.ones_like(bn))
        v_prev, v, b_prev = v, torch.where(active[:, None], W / safe[:, None], torch.zeros_like(W)), bn
    return [(alpha[i, :length[i]], beta[i, :length[i] - 1]) for i in range(b)]


# --- log-determinant from the SLQ quadrature -----------------------------------------------------

@dataclass(frozen=True)
class LogDetResult:
    """tr log(H⁺ + ε) = Σ_i log(max(λ_i, 0) + ε) estimated by SLQ, with its standard error over vectors."""

    value: float
    stderr: float  # n · std over vectors / √n_vectors (nan with one vector)
    n_vectors: int
    eps: float


def slq_logdet(density: DensityResult, eps: float) -> LogDetResult:
    """Σ_i log(max(λ_i, 0) + ε) from SLQ nodes and weights: for a unit Rademacher vector v,
    vᵀ log(H + ε) v ≈ Σ_j w_j log(θ_j + ε) (Gauss quadrature), and n times its mean over vectors is an
    unbiased estimate of the trace up to the quadrature error. Negative Ritz values are clipped at 0,
    as `log_volume` clips eigenvalues (flat, not a saddle's volume). The stored quadrature is enough:
    no HVP is spent."""
    if not eps > 0:
        raise ValueError(f"eps = {eps!r} is not allowed: a number > 0")
    nodes = np.clip(np.asarray(density.nodes, dtype=np.float64), 0.0, None)
    per_vector = density.n_params * (np.asarray(density.weights, dtype=np.float64) * np.log(nodes + eps)).sum(1)
    k = len(per_vector)
    stderr = float(per_vector.std(ddof=1) / math.sqrt(k)) if k > 1 else math.nan
    return LogDetResult(value=float(per_vector.mean()), stderr=stderr, n_vectors=k, eps=float(eps))
