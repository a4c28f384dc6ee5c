"""One pair of minima from a config: train both roles, measure their spectra, serialise their checkpoints.

This is the only place the paper's pair is computed. `experiments.run_pair` stores what it returns,
the executors return it from a worker (local or Ray) to the driver that stores it, and
`lossland train` prints it. The data are loaded once and shared by training and the spectra; the
Hessian is that of the clean training loss, measured at every minimum that did not diverge. The good
minimum never sees the attack set, so a good run already trained for another attack size is reused
(`good=`): only its metrics on this config's attack set are measured again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from . import factories
from .checkpoint import checkpoint_bytes
from .config import ExperimentConfig
from .curvature import SpectrumResult, spectrum
from .data import Dataset, load_experiment_data
from .pairs import Progress, quiet, scaled
from .train import OnEpoch, PairResult, TrainResult, loss_function, per_sample_loss, resolve_device, train


@dataclass(frozen=True)
class ComputedPair:
    """A trained pair (its models on `pair.good.model` / `pair.bad.model`), the spectra of the minima
    that did not diverge, both checkpoint files as bytes, keyed by role, and the source of any factory
    the config names (lossland.factories.sources)."""

    pair: PairResult
    spectra: dict[str, SpectrumResult] = field(default_factory=dict)
    checkpoints: dict[str, bytes] = field(default_factory=dict, repr=False)
    sources: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)

    @property
    def pair_id(self) -> str:
        return self.pair.pair_id


def pair_spectra(pair: PairResult, data: Dataset, progress: Progress = quiet) -> dict[str, SpectrumResult]:
    """Hessian spectra of the clean training loss at both minima, skipping a diverged one."""
    cfg = pair.config
    loss_fn = loss_function(cfg.train.loss)
    runs = [r for r in (pair.good, pair.bad) if r.status != "diverged"]
    out: dict[str, SpectrumResult] = {}
    for i, r in enumerate(runs):
        dev = torch.device(r.device)
        part = scaled(progress, i / len(runs), (i + 1) / len(runs), f"spectrum of {r.role}: ")
        out[r.role] = spectrum(r.model, data.x_train.to(dev), data.y_train.to(dev), loss_fn, cfg.spectrum, part)
    return out


def reused_good(good: TrainResult, data: Dataset, loss: str, device: torch.device) -> TrainResult:
    """A good minimum trained for another attack set, on `device`, with its attack metrics measured on this
    one (`data`'s); its curves' attack columns, measured during training on the other set, become NaN."""
    model = good.model.to(device).eval()
    nan = (math.nan,) * len(good.curves.epoch)
    curves = replace(good.curves, attack_loss=nan, attack_acc=nan)
    attack_loss = attack_acc = math.nan
    if len(data.y_attack):
        with torch.no_grad():
            x, y = data.x_attack.to(device), data.y_attack.to(device)
            out = torch.cat([model(x[i:i + 4096]) for i in range(0, len(y), 4096)])
            attack_loss = float(per_sample_loss(loss, out, y).mean())
            attack_acc = float((out.argmax(-1) == y).double().mean())
    return replace(good, model=model, device=str(device), curves=curves, attack_loss=attack_loss,
                   attack_acc=attack_acc)


def compute_pair(cfg: ExperimentConfig, progress: Progress = quiet, device: torch.device | str | None = None,
                 with_spectra: bool = True, on_epoch: OnEpoch | None = None,
                 good: TrainResult | None = None) -> ComputedPair:
    """Train the good and the bad minimum to the same clean-loss target (the good one only when `good`, the
    same minimum trained for another attack set, is not given), measure their spectra (unless `with_spectra`
    is False) and serialise both checkpoints; `on_epoch` sees every epoch's curve row."""
    dev = torch.device(device) if device is not None else resolve_device(cfg.train.device)
    cfg = factories.pinned(cfg, missing_only=True)  # a factory's source hash is part of the pair id
    progress(0.0, "loading data")
    sources = factories.sources(cfg)  # the code this run is made of, before it runs
    data = load_experiment_data(cfg)
    points = cfg.record.trajectory_points
    if good is None:
        good = train(cfg, data, "good", scaled(progress, 0.0, 0.35), dev, on_epoch=on_epoch, trajectory_points=points)
    else:
        progress(0.0, "good minimum: stored for another attack size, not trained again")
        good = reused_good(good, data, cfg.train.loss, dev)
    bad = train(cfg, data, "bad", scaled(progress, 0.35, 0.7), dev, on_epoch=on_epoch, trajectory_points=points)
    pair = PairResult(cfg, good, bad)
    spectra = pair_spectra(pair, data, scaled(progress, 0.7, 0.98)) if with_spectra else {}
    checkpoints = {r.role: checkpoint_bytes(cfg, r.role, r.model, r.trajectory) for r in (pair.good, pair.bad)}
    return ComputedPair(pair, spectra, checkpoints, sources)
