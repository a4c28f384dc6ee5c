"""Checkpoints: one trained minimum with its config, loadable without retraining.

Saved as plain tensors and strings and loaded with `torch.load(weights_only=True)`, so a
checkpoint from a collaborator can never run code. `verify_checkpoint` checks one from a stranger
against the run it claims to be before anything of it is used: its model under the parameter cap,
the same config and role, and every tensor of the model's shape and dtype with the bytes to back it.
"""

from __future__ import annotations

import errno
import io
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .config import CUSTOM, ConfigError, ExperimentConfig
from .data import Dataset, load_experiment_data
from .limits import _IN_SHAPES, limits
from .models import build_model, n_params
from .train import loss_function
from .trajectory import Trajectory, check_payload

FORMAT = 1
_KEYS = {"format", "config_json", "role", "state_dict", "trajectory"}  # what a checkpoint may hold (see _payload)


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


def _payload(config: ExperimentConfig, role: str, model: nn.Module, trajectory: Trajectory | None = None) -> dict:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"format": FORMAT, "config_json": config.to_json(), "role": role, "state_dict": state,
            **({"trajectory": trajectory.payload()} if trajectory is not None else {})}


def save_checkpoint(path: str | Path, config: ExperimentConfig, role: str, model: nn.Module,
                    trajectory: Trajectory | None = None) -> Path:
    """Write a trained run (its config, role, weights and, when recorded, its optimizer trajectory) to
    `path` atomically; returns the path."""
    payload = _payload(config, role, model, trajectory)
    return write_atomic(path, lambda tmp: torch.save(payload, tmp), "checkpoint")


def checkpoint_bytes(config: ExperimentConfig, role: str, model: nn.Module,
                     trajectory: Trajectory | None = None) -> bytes:
    """The file `save_checkpoint` writes, as bytes (for a worker that returns results to a driver)."""
    buffer = io.BytesIO()
    torch.save(_payload(config, role, model, trajectory), buffer)
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
    trajectory: Trajectory | None = field(default=None, repr=False)  # the optimizer's path, when recorded
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
    """Read a checkpoint written by lossland (weights only: never unpickles code); the model rebuilt from its
    config. CheckpointError names the file and what is wrong when it is not one."""
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
    trajectory = None
    if "trajectory" in blob:
        try:
            trajectory = Trajectory.from_payload(blob["trajectory"], n_params(model))
        except ValueError as e:
            raise CheckpointError(f"checkpoint {path} holds a broken trajectory: {e}") from None
    return Checkpoint(path=path, config=config, role=role, model=model, trajectory=trajectory, _data=[d])


# --- checkpoints from strangers ---------------------------------------------------------------------

def meta_model(config: ExperimentConfig) -> nn.Module:
    """config's model built on the meta device: its parameters' names, shapes and dtypes, no memory, no data."""
    in_shape = (config.data.teacher_dim,) if config.data.name == "teacher" else _IN_SHAPES[config.data.name]
    with torch.device("meta"):
        return build_model(config.model, in_shape, config.data.n_classes())


def from_factory(config: ExperimentConfig) -> bool:
    """True when config's model or data come from a researcher's factory: code a bundle's checks never run."""
    return CUSTOM in (config.data.name, config.model.name)


def model_size(config: ExperimentConfig, max_params: int | None = None, declared: int | None = None) -> int:
    """Parameters of config's model (counted on the meta device; for a factory's model, whose code is not
    run, the `declared` count of its run); CheckpointError when they exceed max_params (default: the
    operator's cap, LOSSLAND_MAX_PARAMS)."""
    cap = limits().max_params if max_params is None else max_params
    if from_factory(config) and declared is None:
        raise CheckpointError("its model comes from a factory, whose code is never run to count it; its run "
                              "must state n_params")
    count = int(declared) if from_factory(config) else n_params(meta_model(config))
    if count > cap:
        raise CheckpointError(f"its config's model ({config.model.name}, widths {list(config.model.widths)}, "
                              f"channels {list(config.model.channels)}) has {count:,} parameters, over the cap "
                              f"of {cap:,} (LOSSLAND_MAX_PARAMS)")
    return count


def verify_checkpoint(path: str | Path, config: ExperimentConfig, role: str, max_params: int | None = None) -> int:
    """Check an untrusted checkpoint file against the run it claims to be, building no real model:
    config's model within max_params (see model_size, checked before the file is read), the file a
    lossland checkpoint that loads safely, of this config and role, its state exactly the tensors of
    the model (names, shapes, dtypes), each contiguous and backed by real bytes (no tensor declares more
    elements than its storage holds). Returns the parameter count; CheckpointError says what is wrong."""
    path = Path(path)
    blob = read_checkpoint_file(path)
    count = model_size(config, max_params, _elements(path, blob.get("state_dict")) if from_factory(config) else None)
    unknown = sorted(map(str, set(blob) - _KEYS))
    if unknown:
        raise CheckpointError(f"checkpoint {path} holds unknown entries {unknown[:5]}")
    if blob.get("role") != role:
        raise CheckpointError(f"checkpoint {path} is of role {blob.get('role')!r}, its run is {role!r}")
    try:
        theirs = ExperimentConfig.from_json(blob.get("config_json"))
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path} has no valid config ({e})") from None
    if theirs.config_hash() != config.config_hash():
        raise CheckpointError(f"checkpoint {path} is of another config (pair {theirs.config_hash()}, its run's "
                              f"is {config.config_hash()})")
    if not from_factory(config):  # a factory's model is never built here: its tensors are checked as they are
        _check_state(path, blob["state_dict"], meta_model(config).state_dict())
    if "trajectory" in blob:
        try:
            check_payload(blob["trajectory"], count, most=from_factory(config))  # a factory's count has buffers
        except ValueError as e:
            raise CheckpointError(f"checkpoint {path} holds a broken trajectory: {e}") from None
    return count


def _elements(path: Path, state: object) -> int:
    """Elements of every tensor of a factory model's checkpoint (bounded by the parameter cap as a whole),
    each checked contiguous and backed by its storage."""
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise CheckpointError(f"checkpoint {path}: its state_dict is not a mapping of names to tensors")
    _check_state(path, state, {name: torch.empty(t.shape, dtype=t.dtype, device="meta") for name, t in state.items()})
    return sum(t.numel() for t in state.values())


def _check_state(path: Path, state: object, expected: dict[str, torch.Tensor]) -> None:
    if not isinstance(state, dict) or set(state) != set(expected):
        names = set(state) if isinstance(state, dict) else set()
        odd = sorted(map(str, names ^ set(expected)))
        raise CheckpointError(f"checkpoint {path} does not hold its config's model: tensors {odd[:4]} are "
                              f"missing or unknown")
    storages: dict[int, int] = {}
    needed = 0
    for name, want in expected.items():
        t = state[name]
        if not isinstance(t, torch.Tensor) or t.shape != want.shape or t.dtype != want.dtype:
            got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise CheckpointError(f"checkpoint {path}: {name} is {got}, its config's model has "
                                  f"{tuple(want.shape)} {want.dtype}")
        size = t.numel() * t.element_size()
        storage = t.untyped_storage()
        if not t.is_contiguous() or storage.nbytes() < t.storage_offset() * t.element_size() + size:
            raise CheckpointError(f"checkpoint {path}: {name} declares {t.numel():,} elements but its storage "
                                  f"holds {storage.nbytes():,} bytes (an expanded or out-of-bounds tensor)")
        storages[storage.data_ptr()] = storage.nbytes()
        needed += size
    if sum(storages.values()) < needed:
        raise CheckpointError(f"checkpoint {path}: its tensors declare {needed:,} bytes but share "
                              f"{sum(storages.values()):,} bytes of storage")
