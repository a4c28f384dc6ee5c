"""Checkpoints: one trained minimum with its config, loadable without retraining.

Saved as plain tensors and strings and loaded with `torch.load(weights_only=True)`, so a
checkpoint from a collaborator can never run code.
"""

from __future__ import annotations

import errno
import io
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .config import ConfigError, ExperimentConfig
from .data import Dataset, load_experiment_data
from .models import build_model
from .train import loss_function

FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or not a lossland checkpoint."""


def write_atomic(path: str | Path, write, what: str = "file") -> Path:
    """write(tmp) a sibling temporary file, then rename it onto `path`: a reader never sees half a
    file. A full disk or an unwritable folder becomes one CheckpointError that says which."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        tmp.replace(path)
    except (OSError, RuntimeError) as e:  # full disk, no permission (torch wraps write errors in RuntimeError)
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # its folder is the problem
        full = (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or "No space left" in str(e)
        raise CheckpointError(f"{what} {path} can't be written ({type(e).__name__}: {e})"
                              + ("; the disk is full: free space and retry" if full else
                                 "; check that its folder is writable") + ". Nothing of this run was stored") from None
    return path


def _payload(config: ExperimentConfig, role: str, model: nn.Module) -> dict:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"format": FORMAT, "config_json": config.to_json(), "role": role, "state_dict": state}


def save_checkpoint(path: str | Path, config: ExperimentConfig, role: str, model: nn.Module) -> Path:
    payload = _payload(config, role, model)
    return write_atomic(path, lambda tmp: torch.save(payload, tmp), "checkpoint")


def checkpoint_bytes(config: ExperimentConfig, role: str, model: nn.Module) -> bytes:
    """The file `save_checkpoint` writes, as bytes (for a worker that returns results to a driver)."""
    buffer = io.BytesIO()
    torch.save(_payload(config, role, model), buffer)
    return buffer.getvalue()


def write_checkpoint_bytes(path: str | Path, blob: bytes) -> Path:
    return write_atomic(path, lambda tmp: Path(tmp).write_bytes(blob), "checkpoint")


def read_checkpoint_file(path: str | Path) -> dict:
    """The checkpoint's contents, loaded safely (`weights_only`: a hostile file can't run code) and
    checked for this format; CheckpointError (saying what is wrong) otherwise. Builds no model."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt, truncated or hostile: one clear error
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); "
                              f"it is corrupt or not a lossland checkpoint") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or "state_dict" not in blob:
        raise CheckpointError(f"checkpoint {path} is not a lossland checkpoint of format {FORMAT}")
    return blob


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    config: ExperimentConfig
    role: str
    model: nn.Module = field(repr=False)  # eval mode, CPU
    _data: list = field(default_factory=list, repr=False, compare=False)

    @property
    def loss_fn(self):
        return loss_function(self.config.train.loss)

    def dataset(self) -> Dataset:
        if not self._data:
            self._data.append(load_experiment_data(self.config))
        return self._data[0]

    def clean_train(self) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.dataset()
        return d.x_train, d.y_train


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    blob = read_checkpoint_file(path)
    try:
        config, role = ExperimentConfig.from_json(blob.get("config_json")), str(blob["role"])
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} has no valid config or role ({e}); it is not a lossland checkpoint "
                              f"of format {FORMAT}") from None
    d = load_experiment_data(config)
    model = build_model(config.model, d.in_shape, d.n_classes)
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not match its config's model: {e}") from None
    model.eval()
    return Checkpoint(path=path, config=config, role=role, model=model, _data=[d])
