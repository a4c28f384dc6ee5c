"""Hessian-vector products of the mean loss over a whole dataset; exact Hessian; trace and Frobenius.

(Interface fixed; the algorithms are being written.)
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import SpectrumConfig
from .lanczos import DensityResult, EigenResult


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
