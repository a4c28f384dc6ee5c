"""Train a model, or an ensemble of seeds at once, to a minimum of matched clean training loss.

Data lives on the device as tensors and mini-batches are index slices of a seeded permutation:
no per-sample DataLoader. A run stops when the loss on the *clean* training set reaches
`train.loss_target` (so a good and a bad minimum are compared at matched training error), at
`train.max_epochs`, or when the loss stops being finite (status "diverged").
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .config import ExperimentConfig, TrainConfig
from .data import Dataset, load_experiment_data
from .models import build_model, n_params

Progress = Callable[[float, str], None]
ROLES = ("good", "bad")
DIVERGED_FACTOR = 10.0  # a clean loss this many times the untrained model's is divergence, finite or not
CURVE_COLUMNS = ("epoch", "lr", "clean_loss", "clean_acc", "attack_loss", "attack_acc", "test_loss", "test_acc")


def _quiet(fraction: float, message: str) -> None:
    pass


class _Throttled:
    """Forwards progress at most every `interval` seconds, never moving the fraction backwards:
    a UI that redraws on every epoch would cost more than the epoch."""

    def __init__(self, progress: Progress, interval: float = 0.2):
        self.progress, self.interval, self.last, self.best = progress, interval, -1e9, 0.0

    def __call__(self, fraction: float, message: str, force: bool = False) -> None:
        self.best = max(self.best, fraction)
        now = time.perf_counter()
        if force or now - self.last >= self.interval:
            self.last = now
            self.progress(self.best, message)


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

    def metrics(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("clean_loss", "clean_acc", "attack_loss", "attack_acc",
                                               "test_loss", "test_acc")}


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


@torch.no_grad()
def evaluate(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             loss_fn, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and accuracy over (x, y) in chunks; works for one model ((C) logits) or an
    ensemble ((N, B, C) logits: returns per-member values of shape (N,))."""
    if len(y) == 0:
        return torch.tensor(float("nan")), torch.tensor(float("nan"))
    total_loss, correct = 0.0, 0.0
    for i in range(0, len(y), chunk):
        out, yb = forward(x[i:i + chunk]), y[i:i + chunk]
        if out.dim() == 3:  # ensemble: (N, B, C)
            losses = torch.stack([loss_fn(o, yb) for o in out])  # a loop: vmap of the loss is ~10× slower
            total_loss = total_loss + losses * len(yb)
            correct = correct + (out.argmax(-1) == yb).sum(-1).to(out.dtype)
        else:
            total_loss += loss_fn(out, yb) * len(yb)
            correct += (out.argmax(-1) == yb).sum().item()
    return torch.as_tensor(total_loss / len(y)), torch.as_tensor(correct / len(y))


class _Evaluator:
    """Loss and accuracy on clean train, attack and test from one forward pass over all three
    (one pass instead of three: on small data the per-call overhead is what an epoch costs)."""

    PARTS = ("clean", "attack", "test")

    def __init__(self, data: Dataset, loss: str, chunk: int = 8192):
        sets = [(data.x_train, data.y_train), (data.x_attack, data.y_attack), (data.x_test, data.y_test)]
        self.x = torch.cat([x for x, _ in sets])
        self.y = torch.cat([y for _, y in sets])
        sizes = [len(y) for _, y in sets]
        self.bounds = [(sum(sizes[:i]), sum(sizes[:i + 1])) for i in range(3)]
        self.loss, self.chunk = loss, chunk

    @torch.no_grad()
    def __call__(self, forward: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"clean_loss": ..., "clean_acc": ..., ...}; each a scalar, or (m,) for an ensemble."""
        out = torch.cat([forward(self.x[i:i + self.chunk]) for i in range(0, len(self.y), self.chunk)], dim=-2)
        losses = per_sample_loss(self.loss, out, self.y)
        correct = (out.argmax(-1) == self.y).to(losses.dtype)
        row = {}
        for name, (a, b) in zip(self.PARTS, self.bounds, strict=True):
            nan = torch.full(losses.shape[:-1], float("nan"))
            row[f"{name}_loss"] = losses[..., a:b].mean(-1) if b > a else nan
            row[f"{name}_acc"] = correct[..., a:b].mean(-1) if b > a else nan
        return row


def _progress_fraction(epoch: int, max_epochs: int, loss0: float, loss: float, target: float) -> float:
    by_epoch = epoch / max_epochs
    if not (math.isfinite(loss) and loss > 0 and loss0 > target):
        return min(1.0, by_epoch)
    by_loss = math.log(loss0 / loss) / math.log(loss0 / target)
    return min(1.0, max(by_epoch, by_loss))


def train(cfg: ExperimentConfig, data: Dataset, role: str = "good", progress: Progress = _quiet,
          device: torch.device | str | None = None, init: dict[str, torch.Tensor] | None = None) -> TrainResult:
    """Train one model: on clean train ("good") or clean + attack ("bad"); from `init` (parameters by
    name, e.g. a perturbed minimum) instead of the seeded initialisation when given."""
    if role not in ROLES:
        raise ValueError(f"role = {role!r} is not allowed: one of good, bad")
    tc = cfg.train
    dev = torch.device(device) if device is not None else resolve_device(tc.device)
    data = data.to(dev)
    x_fit, y_fit = data.train_with_attack() if role == "bad" else (data.x_train, data.y_train)
    progress = _Throttled(progress)
    model = build_model(cfg.model, data.in_shape, data.n_classes).to(dev)
    untrained = None
    if init is not None:  # divergence stays judged against the untrained model (or the start, if worse)
        untrained = float(_Evaluator(data, tc.loss)(model.eval())["clean_loss"])
        load_params(model, init)
    loss_fn = loss_function(tc.loss)
    opt = _make_optimizer(model.parameters(), tc)
    schedule = _make_schedule(opt, tc)
    gen = torch.Generator().manual_seed(tc.seed)
    n = len(y_fit)
    log: dict[str, list] = {c: [] for c in CURVE_COLUMNS}
    status, reason, loss0 = "max_epochs", f"reached max_epochs = {tc.max_epochs}", None
    model.eval()
    evaluator = _Evaluator(data, tc.loss)
    loss_init = float(evaluator(model)["clean_loss"])
    loss_init = loss_init if untrained is None else max(loss_init, untrained)
    start = time.perf_counter()
    epoch = 0
    for epoch in range(1, tc.max_epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen).to(dev)
        lr = opt.param_groups[0]["lr"]
        for i in range(0, n, tc.batch_size):
            idx = perm[i:i + tc.batch_size]
            loss = loss_fn(model(x_fit[idx]), y_fit[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        schedule.step()
        model.eval()
        row = _epoch_row(model, evaluator, epoch, lr)
        for c in CURVE_COLUMNS:
            log[c].append(row[c])
        clean_loss = row["clean_loss"]
        loss0 = clean_loss if loss0 is None else loss0
        if not math.isfinite(clean_loss) or clean_loss > DIVERGED_FACTOR * loss_init:
            status = "diverged"
            reason = (f"clean training loss became {clean_loss:.4g} at epoch {epoch}, from {loss_init:.4g} "
                      f"untrained (lr = {lr:g}); lower train.lr or change train.optimizer")
            break
        progress(_progress_fraction(epoch, tc.max_epochs, loss0, clean_loss, tc.loss_target),
                 f"{role}: epoch {epoch}, clean loss {clean_loss:.2e}")
        if clean_loss <= tc.loss_target:
            status, reason = "converged", f"clean loss {clean_loss:.3e} ≤ target {tc.loss_target:g}"
            break
    seconds = time.perf_counter() - start
    progress(1.0 if status == "converged" else progress.best, f"{role}: {status} after {epoch} epochs", force=True)
    model.eval()
    last = {c: log[c][-1] for c in CURVE_COLUMNS}
    return TrainResult(role=role, status=status, stop_reason=reason, epochs=epoch, seconds=seconds,
                       device=str(dev), n_params=n_params(model),
                       **{k: float(last[k]) for k in ("clean_loss", "clean_acc", "attack_loss",
                                                      "attack_acc", "test_loss", "test_acc")},
                       curves=Curves(**{c: tuple(log[c]) for c in CURVE_COLUMNS}), model=model)


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


def train_pair(cfg: ExperimentConfig, progress: Progress = _quiet, device: torch.device | str | None = None,
               data: Dataset | None = None) -> PairResult:
    """The good minimum (clean data) and the bad one (clean + attack), at the same clean-loss target."""
    data = data if data is not None else load_experiment_data(cfg)
    good = train(cfg, data, "good", lambda f, m: progress(0.5 * f, m), device)
    bad = train(cfg, data, "bad", lambda f, m: progress(0.5 + 0.5 * f, m), device)
    return PairResult(config=cfg, good=good, bad=bad)


# --- ensembles: N seeds as one vectorised model ------------------------------------------

def train_ensemble(cfg: ExperimentConfig, data: Dataset, seeds: list[int], role: str = "good",
                   progress: Progress = _quiet, device: torch.device | str | None = None,
                   init: list[dict[str, torch.Tensor]] | None = None) -> list[TrainResult]:
    """Train one model per seed (model.seed = train.seed = seed) at once with torch.func.vmap.

    With `init`, member i starts from the parameters init[i] (by name) instead of its seeded
    initialisation; its seed then only orders its mini-batches.

    Member i equals `train(cfg with model.seed = train.seed = seeds[i])` within float tolerance:
    the same initialisation, the same mini-batch order, the same optimizer arithmetic (Adam and
    SGD are elementwise, so stepping the stacked tensors steps every member alike). A member that
    reaches the target is frozen there while the others go on.
    """
    from torch.func import functional_call, stack_module_state, vmap

    if role not in ROLES:
        raise ValueError(f"role = {role!r} is not allowed: one of good, bad")
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    if cfg.model.batchnorm:
        raise ValueError("model.batchnorm = True can't be trained as a vmap ensemble; train the seeds one by one")
    tc = cfg.train
    dev = torch.device(device) if device is not None else resolve_device(tc.device)
    data = data.to(dev)
    x_fit, y_fit = data.train_with_attack() if role == "bad" else (data.x_train, data.y_train)
    progress = _Throttled(progress)
    members = [build_model(cfg.with_changes(**{"model.seed": s}).model, data.in_shape, data.n_classes).to(dev)
               for s in seeds]
    untrained = None
    if init is not None:  # divergence stays judged against the untrained model (or the start, if worse)
        if len(init) != len(seeds):
            raise ValueError(f"init holds {len(init)} parameter sets for {len(seeds)} seeds; one per seed")
        probe = _Evaluator(data, tc.loss)
        untrained = [float(probe(member.eval())["clean_loss"]) for member in members]
        for member, params_j in zip(members, init, strict=True):
            load_params(member.train(), params_j)
    params, buffers = stack_module_state(members)
    base = copy.deepcopy(members[0]).to("meta")

    def one(p, b, x):
        return functional_call(base, (p, b), (x,))

    per_member = vmap(one)  # each member its own batch
    shared = vmap(one, in_dims=(0, 0, None))  # all members on the same inputs
    loss_fn = loss_function(tc.loss)
    opt = _make_optimizer(list(params.values()), tc)
    schedule = _make_schedule(opt, tc)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    n, m = len(y_fit), len(seeds)
    logs = [{c: [] for c in CURVE_COLUMNS} for _ in seeds]
    done = [False] * m
    status = ["max_epochs"] * m
    reason = [f"reached max_epochs = {tc.max_epochs}"] * m
    epochs = [tc.max_epochs] * m
    frozen: dict[str, torch.Tensor] = {k: v.detach().clone() for k, v in params.items()}
    loss0: list[float | None] = [None] * m
    start = time.perf_counter()
    forward = lambda x: shared(params, buffers, x)  # noqa: E731
    evaluator = _Evaluator(data, tc.loss)
    loss_init = evaluator(forward)["clean_loss"].expand(m).tolist()
    if untrained is not None:
        loss_init = [max(a, b) for a, b in zip(loss_init, untrained, strict=True)]
    for epoch in range(1, tc.max_epochs + 1):
        perms = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(dev)
        lr = opt.param_groups[0]["lr"]
        for i in range(0, n, tc.batch_size):
            idx = perms[:, i:i + tc.batch_size]
            out = per_member(params, buffers, x_fit[idx])
            yb = y_fit[idx]
            # Σ of the members' mean losses, as one mean over all members' samples: every member's batch
            # has the same size, and vmap over the loss costs more than the model on CPU
            loss = loss_fn(out.flatten(0, 1), yb.flatten(0, 1)) * m
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        schedule.step()
        if any(done):
            with torch.no_grad():
                mask = torch.tensor(done, device=dev)
                for k, v in params.items():
                    v[mask] = frozen[k][mask]
        rows = _ensemble_rows(forward, evaluator, epoch, lr, m)
        for j in range(m):
            if done[j]:
                continue
            for c in CURVE_COLUMNS:
                logs[j][c].append(rows[j][c])
            cl = rows[j]["clean_loss"]
            loss0[j] = cl if loss0[j] is None else loss0[j]
            if not math.isfinite(cl) or cl > DIVERGED_FACTOR * loss_init[j]:
                done[j], status[j], epochs[j] = True, "diverged", epoch
                reason[j] = (f"clean training loss became {cl:.4g} at epoch {epoch}, from {loss_init[j]:.4g} "
                             f"untrained (lr = {lr:g})")
            elif cl <= tc.loss_target:
                done[j], status[j], epochs[j] = True, "converged", epoch
                reason[j] = f"clean loss {cl:.3e} ≤ target {tc.loss_target:g}"
            if done[j]:
                with torch.no_grad():
                    for k, v in params.items():
                        frozen[k][j] = v[j]
        finished = sum(done)
        progress(max(finished / m, epoch / tc.max_epochs), f"ensemble {role}: epoch {epoch}, {finished}/{m} done")
        if all(done):
            break
    seconds = time.perf_counter() - start
    results = []
    for j in range(m):
        model = members[j]
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(params[name][j])
        model.eval()
        last = {c: logs[j][c][-1] for c in CURVE_COLUMNS}
        results.append(TrainResult(
            role=role, status=status[j], stop_reason=reason[j], epochs=epochs[j], seconds=seconds / m,
            device=str(dev), n_params=n_params(model),
            **{k: float(last[k]) for k in ("clean_loss", "clean_acc", "attack_loss", "attack_acc",
                                           "test_loss", "test_acc")},
            curves=Curves(**{c: tuple(logs[j][c]) for c in CURVE_COLUMNS}), model=model))
    return results


def _ensemble_rows(forward, evaluator: _Evaluator, epoch: int, lr: float, m: int) -> list[dict]:
    values = {k: v.expand(m).tolist() for k, v in evaluator(forward).items()}
    return [{"epoch": epoch, "lr": float(lr)} | {k: float(v[j]) for k, v in values.items()} for j in range(m)]
