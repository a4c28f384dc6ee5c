"""Per-layer curvature: the top eigenvalue and trace of each parameter block's diagonal Hessian block.

A block is a set of parameters: by default each module's own weights and bias together ("module": the
unit a reader calls a layer; a bias alone is a handful of numbers whose curvature is that of its
layer), or each parameter tensor ("tensor", PyHessian's parameter groups). H_bb is the Hessian of the
loss with respect to the block, every other parameter held fixed: the diagonal block of the full
Hessian, not a Hessian of a smaller model. Its products are full HVPs of `curvature.HessianOperator`
with the other coordinates zero, restricted to the block, so one determinism check and one graph
serve every block. Where a block has at most `exact_max_params` parameters, H_bb is built densely
(n_b HVPs) and both numbers are exact; otherwise λ₁ comes from Lanczos and tr(H_bb) from Hutch++ with
its standard error. The blocks' traces sum to tr(H); their λ₁ are each ≤ λ₁(H) (Cauchy interlacing).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from .curvature import Estimate, HessianOperator, hutchpp_trace
from .lanczos import top_eigenpairs
from .pairs import Progress, quiet

BLOCKINGS = ("module", "tensor")
MAX_BLOCKS = 400  # a stored result keeps every block's numbers in one row's text (under 100,000 characters)


@dataclass(frozen=True)
class Block:
    """A parameter block: its name, its parameters' names and their positions in the flat vector."""

    name: str
    parameters: tuple[str, ...]
    index: torch.Tensor  # int64 positions in the order of model.named_parameters()

    @property
    def n_params(self) -> int:
        return len(self.index)


def parameter_blocks(model: nn.Module, by: str = "module") -> list[Block]:
    """The model's parameter blocks in the order of named_parameters(): per module ("net.0" for
    net.0.weight and net.0.bias; "(root)" for parameters of the model itself) or per tensor."""
    if by not in BLOCKINGS:
        raise ValueError(f"by = {by!r} is not allowed: one of {', '.join(BLOCKINGS)}")
    groups: dict[str, list[tuple[str, int, int]]] = {}
    offset = 0
    for name, p in model.named_parameters():
        key = name if by == "tensor" else (name.rpartition(".")[0] or "(root)")
        groups.setdefault(key, []).append((name, offset, p.numel()))
        offset += p.numel()
    if len(groups) > MAX_BLOCKS:
        raise ValueError(f"the model has {len(groups)} parameter blocks by {by}, more than {MAX_BLOCKS}; "
                         f"group them by module")
    return [Block(key, tuple(n for n, _, _ in parts),
                  torch.cat([torch.arange(start, start + size) for _, start, size in parts]))
            for key, parts in groups.items()]


class BlockOperator:
    """H_bb as a linear operator on vectors of the block's size: H applied to the block's vector padded
    with zeros, read back at the block's positions (one full HVP per column, counted by the full operator)."""

    def __init__(self, op: HessianOperator, index: torch.Tensor):
        self.op, self.n, self.device = op, len(index), op.device
        self.index = index.to(op.device)

    @property
    def hvps(self) -> int:
        return self.op.hvps

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.matmat(v[:, None])[:, 0]

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        full = torch.zeros((self.op.n, V.shape[1]), dtype=V.dtype, device=V.device)
        index = self.index.to(V.device)
        full[index] = V
        return self.op.matmat(full)[index]


def dense_block(op: BlockOperator) -> torch.Tensor:
    """H_bb as a dense symmetrised float64 matrix (n_b HVPs)."""
    H = op.matmat(torch.eye(op.n, dtype=torch.float64, device=op.device))
    return 0.5 * (H + H.T)


@dataclass(frozen=True)
class BlockCurvature:
    name: str
    parameters: tuple[str, ...]
    n_params: int
    top_eigenvalue: float  # largest algebraic eigenvalue of H_bb
    residual: float  # ||H_bb v − λ v|| of its unit vector (0 where exact)
    converged: bool
    trace: Estimate  # method "exact" (stderr 0) or "hutch++"
    hvps: int


@dataclass(frozen=True)
class LayerResult:
    blocks: tuple[BlockCurvature, ...]
    by: str
    n_params: int
    hvps: int
    seconds: float

    def to_frame(self) -> pd.DataFrame:
        """One row per block, in the model's order (idx from 0)."""
        return pd.DataFrame({
            "idx": range(len(self.blocks)), "block": [b.name for b in self.blocks],
            "parameters": [", ".join(b.parameters) for b in self.blocks],
            "n_params": [b.n_params for b in self.blocks],
            "top_eigenvalue": [b.top_eigenvalue for b in self.blocks],
            "residual": [b.residual for b in self.blocks], "converged": [b.converged for b in self.blocks],
            "trace": [b.trace.value for b in self.blocks], "trace_stderr": [b.trace.stderr for b in self.blocks],
            "trace_method": [b.trace.method for b in self.blocks],
            "trace_samples": [b.trace.samples for b in self.blocks], "hvps": [b.hvps for b in self.blocks]})


def block_curvature(op: HessianOperator, block: Block, trace_samples: int = 30, exact_max_params: int = 100,
                    tol: float = 1e-6, max_steps: int = 200, seed: int = 0) -> BlockCurvature:
    """λ₁ and tr of one block's H_bb: exact from the dense block where n_b ≤ exact_max_params, else
    Lanczos (tol, max_steps) and Hutch++ (trace_samples HVPs)."""
    sub, before = BlockOperator(op, block.index), op.hvps
    if block.n_params <= exact_max_params:
        H = dense_block(sub)
        top, residual, converged = float(torch.linalg.eigvalsh(H)[-1]), 0.0, True
        trace = Estimate(float(torch.trace(H)), 0.0, block.n_params, block.n_params, "exact")
    else:
        eig = top_eigenpairs(sub, 1, tol=tol, max_steps=max_steps, which="largest", seed=seed)
        top, residual, converged = eig.eigenvalues[0], eig.residuals[0], eig.converged
        trace = hutchpp_trace(sub, trace_samples, seed=seed)
    return BlockCurvature(block.name, block.parameters, block.n_params, top, residual, converged, trace,
                          op.hvps - before)


def layer_curvature(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable, by: str = "module",
                    trace_samples: int = 30, exact_max_params: int = 100, tol: float = 1e-6, max_steps: int = 200,
                    seed: int = 0, chunk_size: int = 2048, progress: Progress = quiet,
                    dtype: torch.dtype | None = torch.float64) -> LayerResult:
    """block_curvature of every parameter block (parameter_blocks(model, by)) of the Hessian of the mean
    loss over (x, y). HVPs run on a `dtype` copy of the model (float64 by default, as curvature.spectrum;
    the model itself is untouched)."""
    start = time.perf_counter()
    blocks = parameter_blocks(model, by)
    if dtype is not None and next(model.parameters()).dtype != dtype:
        model = copy.deepcopy(model).to(dtype)
    progress(0.0, "Hessian operator: checking the loss is deterministic")
    op = HessianOperator(model, x, y, loss_fn, chunk_size=chunk_size)
    out = []
    for i, block in enumerate(blocks):
        progress(i / len(blocks), f"block {i + 1} of {len(blocks)}: {block.name} ({block.n_params} parameters)")
        out.append(block_curvature(op, block, trace_samples, exact_max_params, tol, max_steps, seed + i))
    progress(1.0, f"{len(blocks)} blocks done")
    return LayerResult(tuple(out), by, op.n, sum(b.hvps for b in out), time.perf_counter() - start)
