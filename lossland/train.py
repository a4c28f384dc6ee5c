"""Train a model, or an ensemble of seeds at once, to a minimum of matched clean training loss.

Data lives on the device as tensors and mini-batches are index slices of a seeded permutation:
no per-sample DataLoader. One stop rule (`StopRule`) serves single runs and ensembles alike: a
run stops when the loss on the *clean* training set reaches `train.loss_target` (so a good and a
bad minimum are compared at matched training error), at `train.max_epochs`, or when that loss
stops being finite or exceeds DIVERGED_FACTOR × the untrained model's (status "diverged").
The loops differ only in how one epoch steps: one model, or N stacked models under torch.func.vmap.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .config import ExperimentConfig, TrainConfig
from .data import Dataset, load_experiment_data
from .machine import tune_allocator
from .models import build_model, n_params
from .pairs import CURVE_COLUMNS, METRICS, Progress, Throttled, check_role, quiet, scaled
from .trajectory import Recorder, Trajectory

# on_epoch(role, row): one run's curve row (epoch, lr, the six metrics) as soon as the epoch is logged
OnEpoch = Callable[[str, dict[str, float]], None]
DIVERGED_FACTOR = 10.0  # a clean loss this many times the untrained model's is divergence, finite or not


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def loss_function(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Mean loss over the batch: cross-entropy, or ½‖f(x) − onehot(y)‖² ("mse")."""
    if name == "cross_entropy":
        return cross_entropy
    if name == "mse":
        return half_squared_error
    raise ValueError(f"train.loss = {name!r} is not allowed: one of cross_entropy, mse")


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)


def half_squared_error(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (out - F.one_hot(y, out.shape[-1]).to(out.dtype)).pow(2).sum(-1).mean()


def per_sample_loss(name: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss of each sample (no mean), for outputs (..., N, C) and labels (N,)."""
    y = y.expand(out.shape[:-1])
    if name == "cross_entropy":
        return F.cross_entropy(out.flatten(0, -2), y.flatten(), reduction="none").view(out.shape[:-1])
    return 0.5 * (out - F.one_hot(y, out.shape[-1]).to(out.dtype)).pow(2).sum(-1)


@dataclass(frozen=True)
class Curves:
    """Per-epoch loss and accuracy on clean train, attack and test (tuples of equal length)."""

    epoch: tuple[int, ...] = ()
    lr: tuple[float, ...] = ()
    clean_loss: tuple[float, ...] = ()
    clean_acc: tuple[float, ...] = ()
    attack_loss: tuple[float, ...] = ()
    attack_acc: tuple[float, ...] = ()
    test_loss: tuple[float, ...] = ()
    test_acc: tuple[float, ...] = ()

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({c: list(getattr(self, c)) for c in CURVE_COLUMNS})


@dataclass(frozen=True)
class TrainResult:
    role: str  # "good" (clean data) or "bad" (clean + attack)
    status: str  # "converged" | "max_epochs" | "diverged"
    stop_reason: str
    epochs: int
    seconds: float
    device: str
    n_params: int
    clean_loss: float
    clean_acc: float
    attack_loss: float
    attack_acc: float
    test_loss: float
    test_acc: float
    curves: Curves
    model: nn.Module = field(repr=False, compare=False)  # eval mode, on `device`
    trajectory: Trajectory | None = field(default=None, repr=False, compare=False)  # see lossland.trajectory

    def metrics(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in METRICS}


@dataclass(frozen=True)
class PairResult:
    config: ExperimentConfig
    good: TrainResult
    bad: TrainResult

    @property
    def pair_id(self) -> str:
        return self.config.config_hash()


def _make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    # fused: one kernel per step instead of a dozen per tensor, ~25% of a small model's epoch on CPU
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               fused=fused)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def _make_schedule(opt: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.max_epochs)
    if cfg.schedule == "step":  # ×0.1 at half and three quarters of max_epochs
        return torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=[cfg.max_epochs // 2, 3 * cfg.max_epochs // 4], gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0)


CURVE_TEST_MAX = 2000  # test samples in each epoch's curve row; a run's final test metrics use the whole split
EVAL_CHUNK_ELEMENTS = 2**19  # input numbers per forward chunk: about a cache's worth (8192 digits, 668 images)


def evenly_spaced(x: torch.Tensor, y: torch.Tensor, most: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """At most `most` (None: CURVE_TEST_MAX) samples of (x, y), evenly spaced over the split (all of them when it
    is no larger): the test samples of each epoch's curve row and of every landscape point."""
    most = CURVE_TEST_MAX if most is None else most
    if len(y) <= most:
        return x, y
    keep = torch.linspace(0, len(y) - 1, most).round().long().to(y.device)
    return x[keep], y[keep]


def eval_chunk(x: torch.Tensor) -> int:
    """Samples per no-grad forward chunk: large chunks for small inputs, a few hundred images (on a 2-core CPU a
    LeNet evaluates 16,000 images in 0.7 s at 512 a chunk, 1.5 s at 8,192)."""
    per = max(1, x[0].numel()) if len(x) else 1
    return max(256, min(8192, EVAL_CHUNK_ELEMENTS // per))


class _Evaluator:
    """Loss and accuracy on clean train, attack and test from one forward pass over all three
    (one pass instead of three: on small data the per-call overhead is what an epoch costs).

    Each epoch's test numbers come from at most CURVE_TEST_MAX evenly spaced test samples (on Fashion-MNIST's
    10,000 test images the whole split cost 5x the training of a LeNet good run per epoch); `final` measures the
    whole test split for the run's result."""

    PARTS = ("clean", "attack", "test")

    def __init__(self, data: Dataset, loss: str, chunk: int | None = None):
        x_test, y_test = evenly_spaced(data.x_test, data.y_test)
        self.whole_test = (data.x_test, data.y_test) if len(y_test) < len(data.y_test) else None
        sets = [(data.x_train, data.y_train), (data.x_attack, data.y_attack), (x_test, y_test)]
        self.x = torch.cat([x for x, _ in sets])
        self.y = torch.cat([y for _, y in sets])
        sizes = [len(y) for _, y in sets]
        self.bounds = [(sum(sizes[:i]), sum(sizes[:i + 1])) for i in range(3)]
        self.loss, self.chunk = loss, chunk or eval_chunk(self.x)

    def _outputs(self, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return torch.cat([forward(x[i:i + self.chunk]) for i in range(0, len(x), self.chunk)], dim=-2)

    @torch.no_grad()
    def __call__(self, forward: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"clean_loss": ..., "clean_acc": ..., ...}; each a scalar, or (m,) for an ensemble."""
        out = self._outputs(forward, self.x)
        losses = per_sample_loss(self.loss, out, self.y)
        correct = (out.argmax(-1) == self.y).to(losses.dtype)
        row = {}
        for name, (a, b) in zip(self.PARTS, self.bounds, strict=True):
            nan = torch.full(losses.shape[:-1], float("nan"))
            row[f"{name}_loss"] = losses[..., a:b].mean(-1) if b > a else nan
            row[f"{name}_acc"] = correct[..., a:b].mean(-1) if b > a else nan
        return row

    @torch.no_grad()
    def final(self, model: nn.Module, last: dict) -> dict:
        """The last curve row with its test numbers measured on the whole test split."""
        if self.whole_test is None:
            return last
        x, y = self.whole_test
        out = self._outputs(model, x)
        return last | {"test_loss": float(per_sample_loss(self.loss, out, y).mean()),
                       "test_acc": float((out.argmax(-1) == y).double().mean())}


def _progress_fraction(epoch: int, max_epochs: int, loss0: float, loss: float, target: float) -> float:
    by_epoch = epoch / max_epochs
    if not (math.isfinite(loss) and loss > 0 and loss0 > target):
        return min(1.0, by_epoch)
    by_loss = math.log(loss0 / loss) / math.log(loss0 / target)
    return min(1.0, max(by_epoch, by_loss))


# --- the stop rule: matched clean loss, or divergence -------------------------------------------

@dataclass(frozen=True)
class StopRule:
    """When one run stops, judged on its clean training loss after each epoch: "converged" at or below
    `loss_target` (the paper's matched training error), "diverged" when it is not finite or above
    DIVERGED_FACTOR × `loss_init` (a cross-entropy can explode and stay finite), else "max_epochs"."""

    loss_target: float
    max_epochs: int
    loss_init: float  # the untrained model's clean loss (or the starting point's, if worse)

    @classmethod
    def for_run(cls, tc: TrainConfig, start_loss: float, untrained_loss: float | None = None) -> StopRule:
        """The rule of a run that starts at `start_loss`; divergence stays judged against the untrained
        model when the run starts elsewhere (e.g. a perturbed minimum), or the start, if worse."""
        loss_init = start_loss if untrained_loss is None else max(start_loss, untrained_loss)
        return cls(tc.loss_target, tc.max_epochs, loss_init)

    def verdict(self, epoch: int, clean_loss: float, lr: float) -> tuple[str, str] | None:
        """(status, reason) when the run stops after this epoch, else None."""
        if not math.isfinite(clean_loss) or clean_loss > DIVERGED_FACTOR * self.loss_init:
            return "diverged", (f"clean training loss became {clean_loss:.4g} at epoch {epoch}, from "
                                f"{self.loss_init:.4g} untrained (lr = {lr:g}); lower train.lr or change "
                                f"train.optimizer")
        if clean_loss <= self.loss_target:
            return "converged", f"clean loss {clean_loss:.3e} ≤ target {self.loss_target:g}"
        return None

    @property
    def unfinished(self) -> tuple[str, str]:
        return "max_epochs", f"reached max_epochs = {self.max_epochs}"


class _Log:
    """The per-epoch rows of one run, and the TrainResult they end in."""

    def __init__(self):
        self.columns: dict[str, list] = {c: [] for c in CURVE_COLUMNS}

    def add(self, row: dict) -> None:
        for c in CURVE_COLUMNS:
            self.columns[c].append(row[c])

    def result(self, role: str, verdict: tuple[str, str], epochs: int, seconds: float, device: torch.device,
               model: nn.Module, evaluator: _Evaluator) -> TrainResult:
        """The run's result: its final metrics are the last row's, the test numbers on the whole split."""
        last = evaluator.final(model, {c: self.columns[c][-1] for c in CURVE_COLUMNS})
        return TrainResult(role=role, status=verdict[0], stop_reason=verdict[1], epochs=epochs, seconds=seconds,
                           device=str(device), n_params=n_params(model), **{k: float(last[k]) for k in METRICS},
                           curves=Curves(**{c: tuple(self.columns[c]) for c in CURVE_COLUMNS}), model=model)


def _fit_set(data: Dataset, role: str) -> tuple[torch.Tensor, torch.Tensor]:
    """What a role trains on: the clean set ("good"), or clean plus attack ("bad")."""
    return data.train_with_attack() if check_role(role) == "bad" else (data.x_train, data.y_train)


def _device(device: torch.device | str | None, tc: TrainConfig) -> torch.device:
    return torch.device(device) if device is not None else resolve_device(tc.device)


# --- one model ---------------------------------------------------------------------------------------

def _step_epoch(model: nn.Module, opt: torch.optim.Optimizer, loss_fn, x: torch.Tensor, y: torch.Tensor,
                gen: torch.Generator, batch_size: int) -> None:
    model.train()
    perm = torch.randperm(len(y), generator=gen).to(x.device)
    for i in range(0, len(y), batch_size):
        idx = perm[i:i + batch_size]
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def train(cfg: ExperimentConfig, data: Dataset, role: str = "good", progress: Progress = quiet,
          device: torch.device | str | None = None, init: dict[str, torch.Tensor] | None = None,
          on_epoch: OnEpoch | None = None, trajectory_points: int = 0) -> TrainResult:
    """Train one model: on clean train ("good") or clean + attack ("bad"); from `init` (parameters by
    name, e.g. a perturbed minimum) instead of the seeded initialisation when given. `on_epoch(role, row)`
    sees each epoch's curve row (epoch, lr and the metrics) as it is logged, e.g. to draw live curves. With
    trajectory_points ≥ 3 the result carries the thinned optimizer trajectory (lossland.trajectory)."""
    tc, dev = cfg.train, _device(device, cfg.train)
    tune_allocator()
    data = data.to(dev)
    x_fit, y_fit = _fit_set(data, role)
    progress = Throttled(progress)
    model = build_model(cfg.model, data.in_shape, data.n_classes).to(dev)
    evaluator = _Evaluator(data, tc.loss)
    untrained = None
    if init is not None:
        untrained = float(evaluator(model.eval())["clean_loss"])
        load_params(model, init)
    loss_fn = loss_function(tc.loss)
    opt = _make_optimizer(model.parameters(), tc)
    schedule = _make_schedule(opt, tc)
    gen = torch.Generator().manual_seed(tc.seed)
    start_loss = float(evaluator(model.eval())["clean_loss"])
    rule = StopRule.for_run(tc, start_loss, untrained)
    recorder = Recorder(trajectory_points) if trajectory_points else None
    if recorder is not None:
        recorder.record(0, model, start_loss)
    log, verdict, loss0, epoch = _Log(), None, None, 0
    start = time.perf_counter()
    for epoch in range(1, tc.max_epochs + 1):
        lr = opt.param_groups[0]["lr"]
        _step_epoch(model, opt, loss_fn, x_fit, y_fit, gen, tc.batch_size)
        schedule.step()
        row = _epoch_row(model.eval(), evaluator, epoch, lr)
        log.add(row)
        if on_epoch is not None:
            on_epoch(role, dict(row))
        if recorder is not None:
            recorder.record(epoch, model, row["clean_loss"])
        loss0 = row["clean_loss"] if loss0 is None else loss0
        verdict = rule.verdict(epoch, row["clean_loss"], lr)
        if verdict is None or verdict[0] == "converged":
            progress(_progress_fraction(epoch, tc.max_epochs, loss0, row["clean_loss"], tc.loss_target),
                     f"{role}: epoch {epoch}, clean loss {row['clean_loss']:.2e}")
        if verdict is not None:
            break
    verdict = verdict or rule.unfinished
    seconds = time.perf_counter() - start
    progress(1.0 if verdict[0] == "converged" else progress.best, f"{role}: {verdict[0]} after {epoch} epochs",
             force=True)
    result = log.result(role, verdict, epoch, seconds, dev, model.eval(), evaluator)
    if recorder is not None and verdict[0] != "diverged":
        result = replace(result, trajectory=recorder.finish(epoch, model, result.clean_loss))
    return result


def load_params(model: nn.Module, params: dict[str, torch.Tensor]) -> None:
    """Copy parameters by name into the model (all of them, shapes checked); buffers are left alone."""
    named = dict(model.named_parameters())
    if set(params) != set(named):
        raise ValueError(f"parameters {sorted(set(named) ^ set(params))[:4]} are missing or unknown; "
                         f"init must name exactly the model's parameters")
    with torch.no_grad():
        for name, p in named.items():
            if params[name].shape != p.shape:
                raise ValueError(f"parameter {name} has shape {tuple(p.shape)}, init gives {tuple(params[name].shape)}")
            p.copy_(params[name])


def _epoch_row(model: nn.Module, evaluator: _Evaluator, epoch: int, lr: float) -> dict:
    return {"epoch": epoch, "lr": float(lr)} | {k: float(v) for k, v in evaluator(model).items()}


def train_pair(cfg: ExperimentConfig, progress: Progress = quiet, device: torch.device | str | None = None,
               data: Dataset | None = None, on_epoch: OnEpoch | None = None) -> PairResult:
    """The good minimum (clean data) and the bad one (clean + attack), at the same clean-loss target."""
    data = data if data is not None else load_experiment_data(cfg)
    points = cfg.record.trajectory_points
    good = train(cfg, data, "good", scaled(progress, 0.0, 0.5), device, on_epoch=on_epoch, trajectory_points=points)
    bad = train(cfg, data, "bad", scaled(progress, 0.5, 1.0), device, on_epoch=on_epoch, trajectory_points=points)
    return PairResult(config=cfg, good=good, bad=bad)
