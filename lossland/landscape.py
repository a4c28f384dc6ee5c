"""The loss landscape around minima: interpolation, filter-normalised directions, 1-D and 2-D slices.

Everything evaluates the model at many flat parameter vectors θ (the order of
`model.named_parameters()`, as in curvature.HessianOperator). `LossSurface` does so in batches of
points: the vectors are unflattened into stacked parameter dicts and the model runs through
torch.func.functional_call under vmap, so a batch of P points is one forward pass per data chunk
instead of P. Every point reports loss and accuracy on clean train, attack and test (the six
METRICS), with the model in eval mode and its buffers (BatchNorm statistics) held fixed; test numbers come from at
most train.CURVE_TEST_MAX evenly spaced test samples, as in each epoch's curve row (on Fashion-MNIST's 10,000 test
images the whole split was 2/3 of a LeNet surface's cost).

Directions follow Li, Xu, Taylor, Studer & Goldstein, "Visualizing the Loss Landscape of Neural
Nets" (2018): a Gaussian direction whose every filter is rescaled to the norm of the matching
filter of the weights, biases and BatchNorm parameters zeroed. `eigen_directions` gives the
sharpest directions instead: the top Hessian eigenvectors.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.func import functional_call, vmap

from .curvature import HessianOperator
from .data import Dataset
from .lanczos import top_eigenpairs
from .pairs import METRICS, Progress
from .train import evenly_spaced, per_sample_loss

OnBatch = Callable[[np.ndarray, dict[str, np.ndarray]], None]
INTERPOLATION_ALPHAS = tuple(np.linspace(-0.5, 1.5, 41))  # the default: both minima and half the gap beyond


# --- flat parameter vectors ------------------------------------------------------------------

def flat_params(model: nn.Module) -> torch.Tensor:
    """The parameters as one detached vector (a copy), in the order of model.named_parameters()."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def set_flat_params(model: nn.Module, vec: torch.Tensor) -> None:
    """Load a flat vector (as from flat_params) into the model's parameters, in place."""
    n = sum(p.numel() for p in model.parameters())
    if vec.shape != (n,):
        raise ValueError(f"the model has {n} parameters; got a vector of shape {tuple(vec.shape)}")
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(vec.to(next(model.parameters())), model.parameters())


def unflatten(model: nn.Module, vec: torch.Tensor) -> dict[str, torch.Tensor]:
    """A flat vector (n,) or a batch of them (P, n) as parameter tensors by name ((P, *shape) for a batch)."""
    named = list(model.named_parameters())
    lead = vec.shape[:-1]
    parts = vec.split([p.numel() for _, p in named], dim=-1)
    return {name: part.reshape(*lead, *p.shape) for (name, p), part in zip(named, parts, strict=True)}


def _frozen(a) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    a.setflags(write=False)
    return a


# --- the batched evaluator -------------------------------------------------------------------

class LossSurface:
    """Loss and accuracy on clean train, attack and test at many parameter vectors of one model.

    `evaluate(thetas)` takes (P, n) vectors and runs them `batch_points` at a time as one vmapped
    functional_call each. `chunk` bounds the sample evaluations per forward pass, *summed over the
    points of a batch* (each point sees chunk // batch_points samples at a time), so memory does
    not grow with batch_points. The model is copied and put in eval mode; its buffers are shared by
    every point. Data and vectors go to the model's device and dtype. Test numbers come from the curve rows'
    evenly spaced test samples (train.evenly_spaced), or from the whole split with `whole_test`, to compare
    with a run's result (escape trials: a retrained run's test_acc is on the whole split).
    """

    def __init__(self, model: nn.Module, data: Dataset, loss_name: str, chunk: int = 8192, batch_points: int = 64,
                 whole_test: bool = False):
        if chunk < 1 or batch_points < 1:
            raise ValueError(f"chunk = {chunk} and batch_points = {batch_points} must both be ≥ 1")
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.base = copy.deepcopy(model).eval()
        self.n = sum(p.numel() for p in self.base.parameters())
        self.buffers = dict(self.base.named_buffers())
        data = data.to(self.device)
        test = (data.x_test, data.y_test) if whole_test else evenly_spaced(data.x_test, data.y_test)
        sets = [(data.x_train, data.y_train), (data.x_attack, data.y_attack), test]
        x = torch.cat([x for x, _ in sets])
        self.x = x.to(self.dtype) if x.is_floating_point() else x
        self.y = torch.cat([y for _, y in sets])
        sizes = np.cumsum([0] + [len(y) for _, y in sets])
        self.parts = {part: (int(sizes[i]), int(sizes[i + 1])) for i, part in enumerate(("clean", "attack", "test"))}
        if loss_name not in ("cross_entropy", "mse"):
            raise ValueError(f"loss_name = {loss_name!r} is not allowed: one of cross_entropy, mse")
        self.loss_name = loss_name
        self.samples_per_forward = max(1, chunk // batch_points)
        self.batch_points = batch_points
        self.evaluations = 0  # points evaluated so far

        def one(params, x):
            return functional_call(self.base, (params, self.buffers), (x,))

        self._batched = vmap(one, in_dims=(0, None))

    @torch.no_grad()
    def evaluate(self, thetas: torch.Tensor) -> dict[str, np.ndarray]:
        """{metric: (P,) float64 array} for the P parameter vectors thetas (P, n)."""
        if thetas.dim() != 2 or thetas.shape[1] != self.n:
            raise ValueError(f"thetas must have shape (P, {self.n}), got {tuple(thetas.shape)}")
        out: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
        step = self.samples_per_forward
        for i in range(0, len(thetas), self.batch_points):
            block = thetas[i:i + self.batch_points].to(device=self.device, dtype=self.dtype)
            params = unflatten(self.base, block)
            logits = torch.cat([self._batched(params, self.x[j:j + step]) for j in range(0, len(self.y), step)], 1)
            losses = _per_sample_loss(self.loss_name, logits, self.y)
            correct = (logits.argmax(-1) == self.y).to(losses.dtype)
            for part, (a, b) in self.parts.items():
                loss = losses[:, a:b].mean(1) if b > a else torch.full((len(block),), float("nan"))
                acc = correct[:, a:b].mean(1) if b > a else torch.full((len(block),), float("nan"))
                out[f"{part}_loss"].append(loss.double().cpu().numpy())
                out[f"{part}_acc"].append(acc.double().cpu().numpy())
        self.evaluations += len(thetas)
        return {m: np.concatenate(v) if v else np.zeros(0) for m, v in out.items()}


def _per_sample_loss(loss_name: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """train.per_sample_loss for (P, N, C) outputs; cross-entropy as logsumexp − logit of the label,
    ~5× faster than log_softmax over a last dimension of 10 on CPU."""
    if loss_name == "cross_entropy":
        return torch.logsumexp(logits, -1) - logits.gather(-1, y.expand(logits.shape[:-1])[..., None])[..., 0]
    return per_sample_loss(loss_name, logits, y)


# --- results ---------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class _Metrics:
    """The six metrics (pairs.METRICS) as arrays of one shape."""

    clean_loss: np.ndarray
    clean_acc: np.ndarray
    attack_loss: np.ndarray
    attack_acc: np.ndarray
    test_loss: np.ndarray
    test_acc: np.ndarray


@dataclass(frozen=True, eq=False)
class Curve1D(_Metrics):
    """The six metrics at θ(α) for each α (all arrays of shape (len(alphas),))."""

    alphas: np.ndarray
    seconds: float = 0.0

    def to_frame(self):
        return pd.DataFrame({"alpha": self.alphas} | {m: getattr(self, m) for m in METRICS})


@dataclass(frozen=True, eq=False)
class Surface2D(_Metrics):
    """The six metrics on a grid θ0 + α d1 + β d2: arrays of shape (len(betas), len(alphas)), row i at
    betas[i], column j at alphas[j]; point index i·len(alphas) + j (row-major) is the order of evaluation."""

    alphas: np.ndarray
    betas: np.ndarray
    n_evaluated: int  # points evaluated by this call (the rest came from `done`)
    seconds: float

    def to_frame(self):
        """One row per grid point, in point-index order: index, alpha, beta and the six metrics."""
        b, a = np.meshgrid(self.betas, self.alphas, indexing="ij")
        return pd.DataFrame({"index": np.arange(a.size), "alpha": a.ravel(), "beta": b.ravel()}
                            | {m: getattr(self, m).ravel() for m in METRICS})


def _curve(alphas: np.ndarray, values: dict[str, np.ndarray], seconds: float) -> Curve1D:
    return Curve1D(alphas=_frozen(alphas), **{m: _frozen(values[m]) for m in METRICS}, seconds=seconds)


# --- 1-D: interpolation and slices -----------------------------------------------------------

def interpolate(model_a: nn.Module, model_b: nn.Module, data: Dataset, loss_name: str,
                alphas=INTERPOLATION_ALPHAS, batch_points: int = 64) -> Curve1D:
    """The metrics along θ(α) = (1 − α) θ_a + α θ_b (model_a's buffers, device and dtype)."""
    start = time.perf_counter()
    surface = LossSurface(model_a, data, loss_name, batch_points=batch_points)
    theta_a = flat_params(model_a).to(surface.device)
    theta_b = flat_params(model_b).to(device=surface.device, dtype=theta_a.dtype)
    if theta_a.shape != theta_b.shape:
        raise ValueError(f"the models differ: {theta_a.numel()} and {theta_b.numel()} parameters")
    alphas = np.asarray(alphas, dtype=np.float64)
    a = torch.as_tensor(alphas, dtype=theta_a.dtype, device=theta_a.device)[:, None]
    values = surface.evaluate((1 - a) * theta_a + a * theta_b)
    return _curve(alphas, values, time.perf_counter() - start)


def slice_1d(model: nn.Module, data: Dataset, loss_name: str, direction: torch.Tensor, alphas,
             batch_points: int = 64) -> Curve1D:
    """The metrics along θ0 + α d."""
    start = time.perf_counter()
    surface = LossSurface(model, data, loss_name, batch_points=batch_points)
    theta = flat_params(model)
    d = direction.to(theta).reshape(-1)
    if d.shape != theta.shape:
        raise ValueError(f"direction has {d.numel()} entries; the model has {theta.numel()} parameters")
    alphas = np.asarray(alphas, dtype=np.float64)
    a = torch.as_tensor(alphas, dtype=theta.dtype, device=theta.device)[:, None]
    return _curve(alphas, surface.evaluate(theta + a * d), time.perf_counter() - start)


def slice_2d(model: nn.Module, data: Dataset, loss_name: str, d1: torch.Tensor, d2: torch.Tensor, alphas, betas,
             done: Mapping[int, Mapping[str, float]] | None = None, on_batch: OnBatch | None = None,
             batch_points: int = 64, progress: Progress | None = None) -> Surface2D:
    """The metrics on the grid θ0 + α d1 + β d2, resumable.

    Points are numbered row-major (index = i·len(alphas) + j for betas[i], alphas[j]) and evaluated
    in that order, `batch_points` at a time. After each batch `on_batch(indices, values)` is called
    (indices an int array, values {metric: array} aligned with it), so a caller can store it; an
    exception there stops the grid with every earlier batch delivered. Points in `done`
    (index -> {metric: value}, e.g. read back from the store) are not evaluated again.
    """
    start = time.perf_counter()
    alphas, betas = np.asarray(alphas, dtype=np.float64), np.asarray(betas, dtype=np.float64)
    n_points = len(alphas) * len(betas)
    grid = {m: np.full(n_points, np.nan) for m in METRICS}
    done = done or {}
    for idx, vals in done.items():
        if not 0 <= int(idx) < n_points:
            raise ValueError(f"done holds point index {idx}, outside the grid of {n_points} points")
        for m in METRICS:
            grid[m][int(idx)] = float(vals[m])
    todo = np.array([i for i in range(n_points) if i not in done], dtype=np.int64)
    if len(todo):
        surface = LossSurface(model, data, loss_name, batch_points=batch_points)
        theta = flat_params(model)
        u, v = d1.to(theta).reshape(-1), d2.to(theta).reshape(-1)
        if u.shape != theta.shape or v.shape != theta.shape:
            raise ValueError(f"directions must have {theta.numel()} entries (the model's parameters); "
                             f"got {u.numel()} and {v.numel()}")
        for k in range(0, len(todo), batch_points):
            idx = todo[k:k + batch_points]
            a = torch.as_tensor(alphas[idx % len(alphas)], dtype=theta.dtype, device=theta.device)[:, None]
            b = torch.as_tensor(betas[idx // len(alphas)], dtype=theta.dtype, device=theta.device)[:, None]
            values = surface.evaluate(theta + a * u + b * v)
            for m in METRICS:
                grid[m][idx] = values[m]
            if on_batch is not None:
                on_batch(idx.copy(), values)
            if progress is not None:
                progress((k + len(idx)) / len(todo), f"2-D slice: {k + len(idx)}/{len(todo)} points")
    shape = (len(betas), len(alphas))
    return Surface2D(alphas=_frozen(alphas), betas=_frozen(betas),
                     **{m: _frozen(grid[m].reshape(shape)) for m in METRICS},
                     n_evaluated=len(todo), seconds=time.perf_counter() - start)


# --- directions --------------------------------------------------------------------------------

def filter_normalized_direction(model: nn.Module, seed: int) -> torch.Tensor:
    """A random direction (n,) scaled filter by filter to the weights (Li et al. 2018, "ignore_biasbn").

    Gaussian entries drawn on the CPU from torch.Generator(seed), one tensor per parameter in order;
    for a parameter with dim ≥ 2 each slice along dim 0 (a Linear row, a conv output filter) is
    rescaled to the norm of the same slice of the weights; parameters with dim ≤ 1 (biases,
    BatchNorm scale and shift) are zero. Returned in the model's dtype, on its device.
    """
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for p in model.parameters():
        d = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        if p.dim() <= 1:
            d.zero_()
        else:
            w = p.detach().to(device="cpu", dtype=torch.float64).reshape(len(p), -1)
            d = d.reshape(len(p), -1)
            d = d * (torch.linalg.vector_norm(w, dim=1, keepdim=True)
                     / (torch.linalg.vector_norm(d, dim=1, keepdim=True) + 1e-10))
        parts.append(d.reshape(-1))
    first = next(model.parameters())
    return torch.cat(parts).to(device=first.device, dtype=first.dtype)


def eigen_directions(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable, k: int = 2,
                     seed: int = 0, tol: float = 1e-6, max_steps: int = 300, chunk_size: int = 2048) -> torch.Tensor:
    """The top-k Hessian eigenvectors (k, n) of the mean loss over (x, y), unit norm, in the model's dtype
    and device: Lanczos on a float64 copy of the model (as curvature.spectrum). Each is signed so
    its entry of largest magnitude is positive, which makes the result deterministic."""
    first = next(model.parameters())
    twin = copy.deepcopy(model).to(torch.float64)
    op = HessianOperator(twin, x, y, loss_fn, chunk_size=chunk_size)
    result = top_eigenpairs(op, k, tol=tol, max_steps=max_steps, seed=seed, return_vectors=True)
    V = result.vectors.T  # (k, n) float64
    sign = torch.sign(V.gather(1, V.abs().argmax(1, keepdim=True)))
    return (V * sign).to(device=first.device, dtype=first.dtype)
