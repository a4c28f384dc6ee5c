"""N seeds of one config trained at once: the models stacked into one vectorised model (torch.func.vmap),
each member with its own mini-batches, its own stop rule, frozen when it stops (`train` is the one-model loop
these results equal). `train_seeds`, what random inits and the perturb-and-retrain trials call, stacks them
where that pays and trains them one after another where it does not."""

from __future__ import annotations

import copy
import time

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .config import ExperimentConfig
from .data import Dataset
from .models import build_model
from .pairs import Progress, Throttled, quiet, scaled
from .train import (
    StopRule,
    TrainResult,
    _device,
    _Evaluator,
    _fit_set,
    _Log,
    _make_optimizer,
    _make_schedule,
    load_params,
    loss_function,
    train,
)


def ensemble_pays(cfg: ExperimentConfig, data: Dataset, device: torch.device | str | None = None) -> bool:
    """Whether `train_seeds` stacks the seeds: never with BatchNorm (its statistics can't be vmapped), always on a
    GPU, and on a CPU unless the model has a convolution: vmapped convolutions run slower than one model after
    another there (benchmarks/train_throughput.py, 8 seeds on the 2-core VM: the Fashion-MNIST LeNet 0.7x, its
    235k-parameter MLP 1.3x, the 3.5k digits MLP 2.3-3.2x)."""
    if cfg.model.batchnorm:
        return False
    if _device(device, cfg.train).type != "cpu":
        return True
    model = build_model(cfg.model, data.in_shape, data.n_classes)
    return not any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) for m in model.modules())


def train_seeds(cfg: ExperimentConfig, data: Dataset, seeds: list[int], role: str = "good",
                progress: Progress = quiet, device: torch.device | str | None = None,
                init: list[dict[str, torch.Tensor]] | None = None, ensemble: bool | None = None) -> list[TrainResult]:
    """One run per seed, as `train_ensemble` defines them (model.seed = train.seed = seed; with `init`, member i
    starts from init[i] and its seed orders its mini-batches): stacked when `ensemble` (None: `ensemble_pays`),
    else one after another with `train`, which gives the same results within float tolerance."""
    if ensemble is None:
        ensemble = ensemble_pays(cfg, data, device)
    if ensemble:
        return train_ensemble(cfg, data, seeds, role, progress=progress, device=device, init=init)
    if init is not None and len(init) != len(seeds):
        raise ValueError(f"init holds {len(init)} parameter sets for {len(seeds)} seeds; one per seed")
    changes = (lambda s: {"train.seed": s}) if init is not None else (lambda s: {"model.seed": s, "train.seed": s})
    return [train(cfg.with_changes(**changes(s)), data, role, device=device, init=None if init is None else init[j],
                  progress=scaled(progress, j / len(seeds), (j + 1) / len(seeds), f"seed {s}: "))
            for j, s in enumerate(seeds)]

# --- ensembles: N seeds as one vectorised model ------------------------------------------

class _Ensemble:
    """N models of one architecture stacked for torch.func.vmap: called on shared inputs it returns
    (N, B, C); `step_epoch` gives each member its own mini-batches."""

    def __init__(self, members: list[nn.Module]):
        self.params, self.buffers = stack_module_state(members)
        base = copy.deepcopy(members[0]).to("meta")

        def one(p, b, x):
            return functional_call(base, (p, b), (x,))

        self.per_member = vmap(one)  # each member its own batch
        self.shared = vmap(one, in_dims=(0, 0, None))  # all members on the same inputs

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared(self.params, self.buffers, x)

    def step_epoch(self, opt: torch.optim.Optimizer, loss_fn, x: torch.Tensor, y: torch.Tensor,
                   gens: list[torch.Generator], batch_size: int) -> None:
        n, m = len(y), len(gens)
        perms = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(x.device)
        for i in range(0, n, batch_size):
            idx = perms[:, i:i + batch_size]
            out = self.per_member(self.params, self.buffers, x[idx])
            yb = y[idx]
            # Σ of the members' mean losses, as one mean over all members' samples: every member's batch
            # has the same size, and vmap over the loss costs more than the model on CPU
            loss = loss_fn(out.flatten(0, 1), yb.flatten(0, 1)) * m
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    @torch.no_grad()
    def hold(self, frozen: dict[str, torch.Tensor], stopped: list[bool]) -> None:
        """Put stopped members back where they stopped (the optimizer moved them with the others)."""
        if any(stopped):
            for k, v in self.params.items():
                mask = torch.tensor(stopped, device=v.device)
                v[mask] = frozen[k][mask]

    @torch.no_grad()
    def freeze(self, frozen: dict[str, torch.Tensor], j: int) -> None:
        """Record member j's parameters as where it stopped."""
        for k, v in self.params.items():
            frozen[k][j] = v[j]

    @torch.no_grad()
    def unstack(self, members: list[nn.Module]) -> None:
        for j, model in enumerate(members):
            for name, p in model.named_parameters():
                p.copy_(self.params[name][j])
            model.eval()


def _start_members(members: list[nn.Module], init: list[dict[str, torch.Tensor]] | None,
                   evaluator: _Evaluator) -> list[float] | None:
    """Load each member's `init`; returns the untrained members' clean losses (None without init)."""
    if init is None:
        return None
    if len(init) != len(members):
        raise ValueError(f"init holds {len(init)} parameter sets for {len(members)} seeds; one per seed")
    untrained = [float(evaluator(member.eval())["clean_loss"]) for member in members]
    for member, params_j in zip(members, init, strict=True):
        load_params(member.train(), params_j)
    return untrained


def train_ensemble(cfg: ExperimentConfig, data: Dataset, seeds: list[int], role: str = "good",
                   progress: Progress = quiet, device: torch.device | str | None = None,
                   init: list[dict[str, torch.Tensor]] | None = None) -> list[TrainResult]:
    """Train one model per seed (model.seed = train.seed = seed) at once with torch.func.vmap.

    With `init`, member i starts from the parameters init[i] (by name) instead of its seeded
    initialisation; its seed then only orders its mini-batches.

    Member i equals `train(cfg with model.seed = train.seed = seeds[i])` within float tolerance:
    the same initialisation, the same mini-batch order, the same optimizer arithmetic (Adam and
    SGD are elementwise, so stepping the stacked tensors steps every member alike) and the same
    StopRule. A member that stops is held where it stopped while the others go on.
    """
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    if cfg.model.batchnorm:
        raise ValueError("model.batchnorm = True can't be trained as a vmap ensemble; train the seeds one by one")
    tc, dev, m = cfg.train, _device(device, cfg.train), len(seeds)
    data = data.to(dev)
    x_fit, y_fit = _fit_set(data, role)
    progress = Throttled(progress)
    members = [build_model(cfg.with_changes(**{"model.seed": s}).model, data.in_shape, data.n_classes).to(dev)
               for s in seeds]
    evaluator = _Evaluator(data, tc.loss)
    untrained = _start_members(members, init, evaluator)
    ens = _Ensemble(members)
    loss_fn = loss_function(tc.loss)
    opt = _make_optimizer(list(ens.params.values()), tc)
    schedule = _make_schedule(opt, tc)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    frozen = {k: v.detach().clone() for k, v in ens.params.items()}
    start_losses = evaluator(ens)["clean_loss"].expand(m).tolist()
    rules = [StopRule.for_run(tc, start_losses[j], untrained[j] if untrained else None) for j in range(m)]
    logs, verdicts, epochs = [_Log() for _ in seeds], [None] * m, [tc.max_epochs] * m
    start = time.perf_counter()
    for epoch in range(1, tc.max_epochs + 1):
        lr = opt.param_groups[0]["lr"]
        ens.step_epoch(opt, loss_fn, x_fit, y_fit, gens, tc.batch_size)
        schedule.step()
        ens.hold(frozen, [v is not None for v in verdicts])
        rows = _ensemble_rows(ens, evaluator, epoch, lr, m)
        for j in (j for j in range(m) if verdicts[j] is None):
            logs[j].add(rows[j])
            verdicts[j] = rules[j].verdict(epoch, rows[j]["clean_loss"], lr)
            if verdicts[j] is not None:
                epochs[j] = epoch
                ens.freeze(frozen, j)
        finished = sum(v is not None for v in verdicts)
        progress(max(finished / m, epoch / tc.max_epochs), f"ensemble {role}: epoch {epoch}, {finished}/{m} done")
        if finished == m:
            break
    seconds = time.perf_counter() - start
    ens.unstack(members)
    return [logs[j].result(role, verdicts[j] or rules[j].unfinished, epochs[j], seconds / m, dev, members[j],
                           evaluator)
            for j in range(m)]


def _ensemble_rows(forward, evaluator: _Evaluator, epoch: int, lr: float, m: int) -> list[dict]:
    values = {k: v.expand(m).tolist() for k, v in evaluator(forward).items()}
    return [{"epoch": epoch, "lr": float(lr)} | {k: float(v[j]) for k, v in values.items()} for j in range(m)]
