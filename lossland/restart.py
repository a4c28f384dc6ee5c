"""Thick-restart Lanczos (Wu & Simon 2000): the k extreme eigenpairs of a symmetric operator in a basis
of at most m float64 vectors, m set by a memory budget instead of by the number of steps; and the
Krylov basics that lanczos.py shares (seeded start vectors, the residual bound, the NaN guard).

The recurrence is Lanczos with full reorthogonalisation written as a Krylov decomposition
H V_j = V_{j+1} G, V orthonormal and G ((j+1) × j) the Gram-Schmidt coefficients. When V holds m
vectors, the l best Ritz vectors of T = G[:j, :j] replace it and the last Lanczos vector v is kept:
H Y = Y Θ + v bᵀ (a thick restart), and the recurrence goes on from v. With full reorthogonalisation
this is the symmetric Krylov-Schur method (Stewart 2001): the Ritz values of unrestarted Lanczos until
the first restart, and never more than m + 1 basis vectors after it.

Stopping rule as in `lanczos.top_eigenpairs`: the free estimate |G[j, :j]·s_i| ≤ tol·|θ_i| gates a
check. No products H v_j are kept (they would double the memory), so the check rotates the basis into
Ritz form and multiplies the k Ritz vectors (k HVPs, counted, VERIFY_BLOCK at a time); it returns only
when their true residuals pass. Vectors held at once: the basis (≤ m + 1), the new product, and one
verification block in and out (`stored_vectors`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigh

ROWS = 8  # basis rows allocated at a time (the basis grows to its limit without ever being copied)
VERIFY_BLOCK = 4  # Ritz vectors multiplied together when residuals are checked
OVERHEAD_VECTORS = 2 + 2 * VERIFY_BLOCK  # the product w, a Gram-Schmidt temporary, a verification block in and out
MIN_SLACK = 8  # the basis holds at least k + MIN_SLACK vectors, so a restart cycle adds ≥ MIN_SLACK / 2 new ones
COLUMNS = 8192  # columns rotated at a time in a restart (a j × COLUMNS temporary)
DGKS = 0.5 ** 0.5  # a second Gram-Schmidt pass only where the first cancelled more than 1 − DGKS of the norm

# A Ritz value within ZERO·‖H‖ of 0 is zero to rounding: no relative residual rule can be met for it, so it
# passes when its residual is that small too (an absolute floor, as ARPACK's). Lets k exceed the rank.
ZERO = 1e-10


# --- Krylov basics shared with lanczos.py ---------------------------------------------------------

def device_of(op) -> torch.device:
    return torch.device(getattr(op, "device", "cpu"))


def start_vectors(n: int, b: int, seed: int, kind: str, device) -> torch.Tensor:
    """(b, n) float64 unit rows, drawn on the CPU from a seeded generator (same on every device)."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        v = torch.randn((b, n), generator=gen, dtype=torch.float64)
    else:
        v = torch.randint(0, 2, (b, n), generator=gen).to(torch.float64).mul_(2).sub_(1)
    return (v / torch.linalg.vector_norm(v, dim=1, keepdim=True)).to(device)


def bound(theta: np.ndarray, tol: float, scale: float) -> np.ndarray:
    """Residual each Ritz pair must reach: tol·|θ_i|, or ZERO·‖H‖ for a θ_i that is zero to rounding."""
    floor = ZERO * scale
    return np.where(np.abs(theta) <= floor, floor, tol * np.abs(theta))


def finite(w: torch.Tensor, step: int) -> torch.Tensor:
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"the operator returned NaN or inf at Lanczos step {step}: the loss or its Hessian is not "
                         f"finite at this point (a diverged model, or an overflow); no eigenvalues can be computed")
    return w


def select(theta: np.ndarray, count: int, which: str) -> np.ndarray:
    """Indices of the `count` extreme values of theta: largest first, or smallest first."""
    return np.argsort(-theta)[:count] if which == "largest" else np.argsort(theta)[:count]


# --- the memory budget ----------------------------------------------------------------------------

def basis_limit(n: int, k: int, max_steps: int, max_bytes: int) -> int:
    """The most basis vectors m a restarted run keeps so that all it stores fits in max_bytes."""
    vectors = max_bytes // (8 * n) - OVERHEAD_VECTORS - 1
    need = min(k + MIN_SLACK, n)
    if vectors < need:
        raise ValueError(f"max_basis_bytes = {max_bytes} holds {max(vectors, 0)} basis vectors of n = {n}; "
                         f"thick-restart Lanczos for k = {k} needs at least {need} (k + {MIN_SLACK}) plus "
                         f"{OVERHEAD_VECTORS + 1} working vectors: {(need + OVERHEAD_VECTORS + 1) * 8 * n} bytes")
    return max(need, min(vectors, max_steps, n))


class _Rows:
    """Up to `limit` float64 rows of length n, allocated ROWS at a time (never copied to grow)."""

    def __init__(self, n: int, limit: int, device):
        self.n, self.limit, self.device = n, limit, device
        self.blocks: list[torch.Tensor] = []

    @property
    def allocated(self) -> int:
        return sum(len(b) for b in self.blocks)

    def __setitem__(self, i: int, v: torch.Tensor) -> None:
        while i >= self.allocated:
            self.blocks.append(torch.empty((min(ROWS, self.limit - self.allocated), self.n), dtype=torch.float64,
                                           device=self.device))
        self.blocks[i // ROWS][i % ROWS] = v

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.blocks[i // ROWS][i % ROWS]

    def _parts(self, j: int):
        for b, block in enumerate(self.blocks):
            lo = b * ROWS
            if lo >= j:
                return
            yield lo, block[:j - lo]

    def combine(self, coef: torch.Tensor, j: int) -> torch.Tensor:
        """Σ_i coef_i row_i over rows < j."""
        return sum(part.T @ coef[lo:lo + len(part)] for lo, part in self._parts(j))

    def orthogonalise(self, w: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(w − V Vᵀ w over rows < j, the coefficients Vᵀ w): classical Gram-Schmidt, a second pass only where
        the first cancelled much of w (Daniel, Gragg, Kaufman & Stewart 1976: twice is enough, once often is).
        At n = 10⁶ a pass over 100 rows moves 1.6 GB, as much time as an HVP on a loaded CPU."""
        total = torch.zeros(j, dtype=torch.float64, device=w.device)
        for _ in range(2):
            before = torch.linalg.vector_norm(w)
            coef = torch.cat([part @ w for _, part in self._parts(j)])
            w = w - self.combine(coef, j)
            total += coef
            if float(torch.linalg.vector_norm(w)) > DGKS * float(before):
                break
        return w, total

    def rotate(self, S: torch.Tensor, j: int) -> None:
        """Rows[:kept] ← Sᵀ Rows[:j] for S (j, kept), a few columns at a time (a j × COLUMNS temporary)."""
        for c0 in range(0, self.n, COLUMNS):
            cols = torch.cat([part[:, c0:c0 + COLUMNS] for _, part in self._parts(j)])
            new = S.T @ cols
            for lo, part in self._parts(S.shape[1]):
                part[:, c0:c0 + COLUMNS] = new[lo:lo + len(part)]


# --- thick-restart Lanczos --------------------------------------------------------------------------

@dataclass(frozen=True)
class RestartResult:
    theta: np.ndarray  # (k,) Ritz values, sorted by `which`
    vectors: torch.Tensor | None  # (n, k) unit Ritz vectors, when asked for
    residuals: np.ndarray  # ||H y_i − θ_i y_i|| from products of the returned vectors
    steps: int  # Lanczos steps (HVPs of the recurrence; the checks' HVPs come on top)
    scale: float  # ‖T‖ seen: the largest |Ritz value|
    restarts: int
    stored_vectors: int  # the most float64 n-vectors held at once


class _State:
    """H V_j = V_{j+1} G: the basis rows, G, j (vectors multiplied so far), and the run's counters."""

    def __init__(self, op, m: int, seed: int):
        self.op, self.m, self.seed = op, m, seed
        self.n, self.device = op.n, device_of(op)
        self.V = _Rows(self.n, m + 1, self.device)
        self.V[0] = start_vectors(self.n, 1, seed, "gaussian", self.device)[0]
        self.G = np.zeros((m + 1, m))
        self.j, self.steps, self.restarts, self.fresh, self.scale = 0, 0, 0, 0, 1e-300
        self.alive, self.invariant = True, False  # V[j] is a next direction; the last step hit an invariant space

    def expand(self) -> bool:
        """One Lanczos step from V[j]; False when the basis already spans everything."""
        j, V = self.j, self.V
        v = V[j]
        w = finite(self.op.matvec(v).to(device=self.device, dtype=torch.float64), self.steps + 1)
        a, known = float(v @ w), self.G[j, :j].copy()  # v's known couplings: β_{j−1}, or a restart's b
        w = w - a * v
        if j and np.count_nonzero(known) == 1 and known[j - 1] != 0:  # the three-term recurrence
            w = w - float(known[j - 1]) * V[j - 1]
        elif known.any():  # just after a restart v couples to every kept Ritz vector
            w = w - V.combine(torch.as_tensor(known, device=self.device), j)
        w, h = V.orthogonalise(w, j + 1)  # what rounding left: one pass, as a rule
        b = float(torch.linalg.vector_norm(w))
        self.steps, self.j = self.steps + 1, j + 1
        h = h.cpu().numpy()
        h[:j] += known
        h[j] += a
        self.G[:j + 1, j] = h
        self.scale = max(self.scale, abs(a), b)
        self.invariant = b <= 1e-12 * self.scale * math.sqrt(self.n)
        if not self.invariant:
            self.G[j + 1, j] = b
            V[j + 1] = w / b
            return True
        self.fresh += 1  # an invariant subspace: go on from a fresh direction orthogonal to the basis
        w, _ = V.orthogonalise(start_vectors(self.n, 1, self.seed + 7919 * self.fresh, "gaussian", self.device)[0],
                               j + 1)
        norm = float(torch.linalg.vector_norm(w))
        self.G[j + 1, j] = 0.0
        self.alive = norm >= 1e-8 and j + 1 < self.n
        if self.alive:
            V[j + 1] = w / norm
        return self.alive

    def ritz(self, count: int, which: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(θ, S, free residual estimates |G[j, :j] s_i|) of the `count` extreme Ritz pairs."""
        T = self.G[:self.j, :self.j]
        theta, S = eigh(0.5 * (T + T.T), driver="evr")  # numpy's eigh contends with torch's threads: 50× slower
        self.scale = max(self.scale, float(np.abs(theta).max()))
        idx = select(theta, count, which)
        return theta[idx], S[:, idx], np.abs(self.G[self.j, :self.j] @ S[:, idx])

    def restart(self, theta: np.ndarray, S: np.ndarray) -> None:
        """Keep the Ritz vectors V_j S (kept of them) and the last Lanczos vector: H Y = Y Θ + v (G[j] S)ᵀ."""
        kept, j = S.shape[1], self.j
        S_rows = np.ascontiguousarray(S)  # LAPACK's F-order S sends torch's small matmul down a path 50× slower
        self.V.rotate(torch.as_tensor(S_rows, dtype=torch.float64, device=self.device), j)
        coupling = self.G[j, :j] @ S
        if self.alive and kept < j:
            self.V[kept] = self.V[j]
        self.G[:] = 0.0
        self.G[:kept, :kept] = np.diag(theta)
        self.G[kept, :kept] = coupling
        self.j = kept

    def residuals(self, theta: np.ndarray, k: int) -> np.ndarray:
        """True residuals of the first k basis rows (Ritz vectors after a restart), VERIFY_BLOCK at a time."""
        out = np.empty(k)
        for lo in range(0, k, VERIFY_BLOCK):
            Y = torch.stack([self.V[i] for i in range(lo, min(lo + VERIFY_BLOCK, k))], dim=1)
            HY = finite(self.op.matmat(Y).to(device=self.device, dtype=torch.float64), self.steps)
            lam = torch.as_tensor(theta[lo:lo + Y.shape[1]], device=self.device)
            out[lo:lo + Y.shape[1]] = torch.linalg.vector_norm(HY.sub_(Y.mul_(lam)), dim=0).cpu().numpy()
        return out


def thick_restart(op, k: int, tol: float, max_steps: int, which: str, seed: int, max_bytes: int,
                  return_vectors: bool = False) -> RestartResult:
    """The k extreme eigenpairs (`which`: largest or smallest) with ||Hy_i − θ_i y_i|| ≤ tol·|θ_i| for
    every returned pair (checked on products of the returned vectors), in a basis of
    m = basis_limit(n, k, max_steps, max_bytes) vectors; at most max_steps Lanczos steps."""
    m = basis_limit(op.n, k, max_steps, max_bytes)
    keep = k + (m - k) // 2  # Wu & Simon's choice: half the free space for the restarted Ritz vectors
    state, next_check = _State(op, m, seed), 0
    while True:
        alive = state.expand()
        done = not alive or state.steps >= max_steps or state.j >= op.n
        # At an invariant subspace the fresh direction may carry more copies of a multiple eigenvalue,
        # so the first k of them declare nothing (as in lanczos._lanczos).
        hold = state.invariant and state.fresh <= k and not done
        if state.j >= k and not hold and (done or state.steps >= next_check):
            theta, S, estimate = state.ritz(k, which)
            if done or np.all(estimate <= bound(theta, tol, state.scale)):
                result, passed = _checked(state, which, k, tol, return_vectors)
                if done or passed:
                    return result
                next_check = state.steps + max(k, state.steps // 4)  # HVP noise above tol: check less often
        if state.j >= m:
            state.restarts += 1
            state.restart(*state.ritz(keep, which)[:2])


def _checked(state: _State, which: str, k: int, tol: float, return_vectors: bool) -> tuple[RestartResult, bool]:
    """Rotate the basis into Ritz form (all j pairs kept, so the recurrence may go on), check the first
    k pairs on true products: (the result, whether every residual passed)."""
    theta, S, _ = state.ritz(state.j, which)
    state.restart(theta, S)
    residuals = state.residuals(theta[:k], k)
    passed = bool(np.all(residuals <= bound(theta[:k], tol, state.scale)))
    vectors = torch.stack([state.V[i] for i in range(k)], dim=1).clone() if return_vectors else None
    return RestartResult(theta=theta[:k], vectors=vectors, residuals=residuals, steps=state.steps,
                         scale=state.scale, restarts=state.restarts,
                         stored_vectors=state.V.allocated + OVERHEAD_VECTORS + (k if return_vectors else 0)), passed
