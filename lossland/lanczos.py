"""Lanczos with full reorthogonalisation (top-k eigenpairs) and stochastic Lanczos quadrature.

Operators are anything with `.n` (size), `.matvec(v)` and `.matmat(V)` over flat vectors;
this module knows nothing of models. (Interface fixed; the algorithms are being written.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


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


@dataclass(frozen=True)
class DensityResult:
    """Raw SLQ quadrature: per random vector, m Ritz values (nodes) and weights summing to 1."""

    nodes: np.ndarray  # (n_vectors, m)
    weights: np.ndarray  # (n_vectors, m)
    n_params: int
    hvps: int
    seconds: float

    def grid(self, n_points: int = 1000, sigma: float = 0.05) -> np.ndarray:
        raise NotImplementedError

    def smooth(self, grid: np.ndarray, sigma: float) -> np.ndarray:
        raise NotImplementedError
