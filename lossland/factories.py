"""A researcher's own model and data, named in a config by import path, built and normalised here.

    {"model": {"name": "custom", "factory": "my_pkg.nets:make_net", "factory_kwargs": {"width": 64}},
     "data":  {"name": "custom", "factory": "my_pkg.data:load", "factory_kwargs": {"n": 2000}}}

The model factory returns an `nn.Module`; it is called with `factory_kwargs`, plus `in_shape` (one
sample's shape) and `n_classes` where its signature names them, under the seed `model.seed`. The
dataset factory returns one of

    (x_train, y_train, x_test, y_test)           tensors or arrays; also a dict with these keys and,
                                                 optionally, "n_classes"
    (train, test)  or {"train": …, "test": …}    each a torch Dataset of (x, y) or a DataLoader
    a Dataset or a DataLoader                    the pool; a fixed fifth of it becomes the test split

Labels are integers in [0, n_classes) (n_classes: the dict's, else the largest label + 1). The train part
is the *pool*: `data.n_train` clean samples are drawn from it by `data.seed` and the attack set from the
rest, exactly as for the built-in datasets (lossland.data). Every problem is a FactoryError (a ConfigError)
naming the field and what is accepted.

The run id covers the factory's import path, its arguments and the sha256 of its module's source
(`pinned` writes it into the config; only the module holding the factory is hashed, not what it imports).
A config whose pinned hash differs from the module's source here is refused when a model or data are
built from it: a stored run is never silently rebuilt from edited code.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from .config import ConfigError, DataConfig, ExperimentConfig, ModelConfig

TEST_FRACTION = 0.2  # of a single Dataset or DataLoader, held out as the test split (a fixed permutation)
ACCEPTED = ("(x_train, y_train, x_test, y_test) tensors or arrays; a dict with those keys (and optionally "
            "n_classes); (train, test) or {'train': ..., 'test': ...} of torch Datasets or DataLoaders; or one "
            "Dataset or DataLoader")


class FactoryError(ConfigError):
    """A factory can't be imported, raised, or returned something lossland can't use; the message names the field."""


# --- import paths and sources ----------------------------------------------------------------------

def _module(path: str, field: str):
    module_name = path.partition(":")[0]
    try:
        return importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - anything the researcher's module raises on import
        raise FactoryError(f"{field} = {path!r}: importing module {module_name} failed ({type(e).__name__}: {e}); "
                           f"it must be importable here (installed, or its folder on sys.path)") from None


def resolve(path: str, field: str):
    """The callable an import path `package.module:function` names (FactoryError otherwise)."""
    target: Any = _module(path, field)
    for part in path.partition(":")[2].split("."):
        if not hasattr(target, part):
            raise FactoryError(f"{field} = {path!r}: {type(target).__name__} {getattr(target, '__name__', '')} has no "
                               f"attribute {part!r}")
        target = getattr(target, part)
    if not callable(target):
        raise FactoryError(f"{field} = {path!r} is a {type(target).__name__}, not a callable")
    return target


def module_source(path: str, field: str) -> tuple[str, str]:
    """(module name, source text) of the module holding the factory."""
    module = _module(path, field)
    try:
        return module.__name__, inspect.getsource(module)
    except (OSError, TypeError) as e:
        raise FactoryError(f"{field} = {path!r}: the source of module {module.__name__} can't be read ({e}); a "
                           f"factory must live in a .py file") from None


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def named(cfg: ExperimentConfig) -> dict[str, DataConfig | ModelConfig]:
    """The sections of cfg that name a factory, by name."""
    return {name: getattr(cfg, name) for name in ("data", "model") if getattr(cfg, name).factory is not None}


def pinned(cfg: ExperimentConfig, missing_only: bool = False) -> ExperimentConfig:
    """cfg with each factory's source hash set from its module here (the id then covers the code); with
    `missing_only`, only where none is set (a worker keeps the driver's, and building refuses other code). A
    config without factories comes back as it is."""
    changes = {f"{name}.factory_sha256": sha256(module_source(s.factory, f"{name}.factory")[1])
               for name, s in named(cfg).items() if not (missing_only and s.factory_sha256)}
    return cfg.with_changes(**changes) if changes else cfg


def sources(cfg: ExperimentConfig) -> dict[str, dict[str, str]]:
    """Each factory's import path, module, sha256 and source text, by section: stored with the runs (and so
    carried by bundles) for review. Empty for a config without factories."""
    out = {}
    for name, s in named(cfg).items():
        module, text = module_source(s.factory, f"{name}.factory")
        out[name] = {"factory": s.factory, "module": module, "sha256": sha256(text), "source": text}
    return out


def _current(section: DataConfig | ModelConfig, field: str) -> None:
    """Refuse a pinned factory whose module's source here is not the one the config was made with."""
    now = sha256(module_source(section.factory, field)[1])
    if section.factory_sha256 is not None and now != section.factory_sha256:
        raise FactoryError(f"{field} = {section.factory!r}: the source of its module here (sha256 {now[:12]}…) is not "
                           f"the one this run was made with ({section.factory_sha256[:12]}…); restore that source, or "
                           f"run the edited code as a new run")


def unavailable(cfg: ExperimentConfig) -> str | None:
    """Why this config's model or data can't be rebuilt here (a factory not importable, or its source edited
    since), or None: for pages that load a stored run's model."""
    try:
        for name, s in named(cfg).items():
            _current(s, f"{name}.factory")
    except FactoryError as e:
        return str(e)
    return None


def require_local(cfg: ExperimentConfig, root: Path) -> None:
    """Refuse factories whose module file does not lie under `root` (found without importing that module): a
    dashboard runs only its own folder's code, never `os:system` typed into a form."""
    for name, s in named(cfg).items():
        module_name = s.factory.partition(":")[0]
        try:
            spec = importlib.util.find_spec(module_name)
        except Exception:  # noqa: BLE001 - a parent package that fails to import, a malformed name
            spec = None
        located = spec is not None and spec.has_location and spec.origin and Path(spec.origin).is_file()
        origin = Path(spec.origin).resolve() if located else None  # frozen and built-in modules have no file
        if origin is None or not origin.is_relative_to(root.resolve()):
            raise FactoryError(f"{name}.factory = {s.factory!r}: the dashboard runs factories only from modules in its "
                               f"folder {root.resolve()} (this one is {origin or 'not found'}); run it from the "
                               f"command line or Python instead")


def _call(fn, field: str, path: str, kwargs: dict):
    try:
        return fn(**kwargs)
    except Exception as e:  # noqa: BLE001 - the researcher's code: one clear error, never a traceback
        raise FactoryError(f"{field} = {path!r} raised {type(e).__name__}: {e} (called with "
                           f"{json.dumps(kwargs, default=str)[:300]})") from None


# --- models ----------------------------------------------------------------------------------------

def build_model(cfg: ModelConfig, in_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """model.factory(**factory_kwargs [, in_shape=…, n_classes=…]) under the global RNG as the caller seeded it."""
    _current(cfg, "model.factory")
    fn = resolve(cfg.factory, "model.factory")
    kwargs = dict(cfg.factory_kwargs)
    try:
        named = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        named = {}
    for key, value in (("in_shape", tuple(in_shape)), ("n_classes", int(n_classes))):
        if key in named:
            if key in kwargs:
                raise FactoryError(f"model.factory_kwargs.{key} is not allowed: lossland passes {key} from the data")
            kwargs[key] = value
    model = _call(fn, "model.factory", cfg.factory, kwargs)
    if not isinstance(model, nn.Module):
        raise FactoryError(f"model.factory = {cfg.factory!r} returned a {type(model).__name__}: it must return a "
                           f"torch.nn.Module")
    if not any(True for _ in model.parameters()):
        raise FactoryError(f"model.factory = {cfg.factory!r} returned a module without parameters")
    return model


# --- data ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Arrays:
    """A factory's data normalised: float32 inputs, int64 labels, as numpy arrays (the pool is the train part)."""

    x_pool: np.ndarray
    y_pool: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int


def as_tensors(data: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) from a pair of tensors/arrays, a torch Dataset of (x, y) items, or a DataLoader of (x, y)
    batches, read once in its order. FactoryError naming `what` otherwise."""
    try:
        if isinstance(data, DataLoader):
            parts = [_pair(batch, what) for batch in data]
            if not parts:
                raise FactoryError(f"{what}: the DataLoader yields no batches")
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        if isinstance(data, TorchDataset) and not isinstance(data, (tuple, list)):
            items = [_pair(data[i], what) for i in range(len(data))]
            if not items:
                raise FactoryError(f"{what}: the Dataset is empty")
            return torch.stack([i[0] for i in items]), torch.stack([i[1].reshape(()) for i in items])
    except FactoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a researcher's Dataset or collate function
        raise FactoryError(f"{what}: reading it failed ({type(e).__name__}: {e})") from None
    return _pair(data, what)


def _pair(item: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(item, dict) and {"x", "y"} <= set(item):
        item = (item["x"], item["y"])
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise FactoryError(f"{what}: expected (x, y) pairs (inputs and integer labels), got {type(item).__name__}")
    try:
        return torch.as_tensor(np.asarray(item[0]) if not isinstance(item[0], torch.Tensor) else item[0]), \
            torch.as_tensor(np.asarray(item[1]) if not isinstance(item[1], torch.Tensor) else item[1])
    except (TypeError, ValueError, RuntimeError) as e:
        raise FactoryError(f"{what}: x and y must be tensors or arrays ({e})") from None


def _parts(result: Any, path: str) -> tuple[Any, Any, int | None]:
    """(train, test, n_classes) of a factory's result, train and test as (x, y) or a Dataset/DataLoader."""
    field = f"data.factory = {path!r}"
    if isinstance(result, dict):
        n_classes = result.get("n_classes")
        if {"x_train", "y_train", "x_test", "y_test"} <= set(result):
            return (result["x_train"], result["y_train"]), (result["x_test"], result["y_test"]), n_classes
        if {"train", "test"} <= set(result):
            return result["train"], result["test"], n_classes
        raise FactoryError(f"{field} returned a dict with keys {sorted(map(str, result))[:8]}; accepted: {ACCEPTED}")
    if isinstance(result, (tuple, list)) and len(result) == 4:
        return (result[0], result[1]), (result[2], result[3]), None
    if isinstance(result, (tuple, list)) and len(result) == 2 and all(
            isinstance(r, (TorchDataset, DataLoader)) for r in result):
        return result[0], result[1], None
    if isinstance(result, (TorchDataset, DataLoader)):
        x, y = as_tensors(result, f"{field} (its Dataset)")
        order = np.random.default_rng(12345).permutation(len(y))  # fixed pool/test split, as digits has
        n_test = max(1, int(round(TEST_FRACTION * len(y))))
        test, pool = torch.as_tensor(order[:n_test]), torch.as_tensor(order[n_test:])
        return (x[pool], y[pool]), (x[test], y[test]), None
    raise FactoryError(f"{field} returned a {type(result).__name__}; accepted: {ACCEPTED}")


def arrays(result: Any, path: str) -> Arrays:
    """A dataset factory's result, checked and normalised (see the module's docstring)."""
    field = f"data.factory = {path!r}"
    train, test, n_classes = _parts(result, path)
    (x, y), (xt, yt) = as_tensors(train, f"{field}: its train part"), as_tensors(test, f"{field}: its test part")
    for part, xs, ys in (("train", x, y), ("test", xt, yt)):
        if xs.dim() < 2 or ys.dim() != 1 or len(xs) != len(ys) or len(ys) == 0:
            raise FactoryError(f"{field}: its {part} part has inputs of shape {tuple(xs.shape)} and labels of shape "
                               f"{tuple(ys.shape)}; expected (n, ...) inputs and (n,) labels, n ≥ 1 the same")
        if ys.dtype.is_floating_point or ys.dtype.is_complex or ys.dtype == torch.bool:
            raise FactoryError(f"{field}: its {part} labels are {ys.dtype}; expected integer class labels")
        if not bool(torch.isfinite(xs.float()).all()):
            raise FactoryError(f"{field}: its {part} inputs hold NaN or infinite values")
    if x.shape[1:] != xt.shape[1:]:
        raise FactoryError(f"{field}: train inputs have shape {tuple(x.shape[1:])} per sample but test inputs "
                           f"{tuple(xt.shape[1:])}; they must be the same")
    top = int(max(y.max(), yt.max())) + 1
    low = int(min(y.min(), yt.min()))
    if n_classes is None:
        n_classes = top
    if not isinstance(n_classes, int) or isinstance(n_classes, bool) or n_classes < 2 or low < 0 or top > n_classes:
        raise FactoryError(f"{field}: labels run from {low} to {top - 1} with n_classes = {n_classes!r}; labels must "
                           f"lie in [0, n_classes) and n_classes be an integer ≥ 2")
    as_np = lambda t, dtype: np.ascontiguousarray(t.detach().cpu().numpy(), dtype=dtype)  # noqa: E731
    return Arrays(as_np(x, np.float32), as_np(y, np.int64), as_np(xt, np.float32), as_np(yt, np.int64), n_classes)


@functools.lru_cache(maxsize=4)
def _load(path: str, kwargs_json: str, sha: str | None) -> Arrays:
    return arrays(_call(resolve(path, "data.factory"), "data.factory", path, json.loads(kwargs_json)), path)


def call_data_factory(path: str, kwargs: dict) -> Arrays:
    """The normalised data of the dataset factory at an import path, called with kwargs (plain JSON data)."""
    return _load(path, json.dumps(kwargs, sort_keys=True), sha256(module_source(path, "data.factory")[1]))


def load_data(cfg: DataConfig) -> Arrays:
    """The normalised data of data.factory (cached by its path, arguments and source hash)."""
    _current(cfg, "data.factory")
    sha = cfg.factory_sha256 or sha256(module_source(cfg.factory, "data.factory")[1])
    return _load(cfg.factory, json.dumps(cfg.factory_kwargs, sort_keys=True), sha)
