"""Analyse a model you already have: its Hessian spectrum over your data, optionally kept as an external run.

    result = lossland.analyze(model, (x, y), loss_fn, SpectrumConfig(k=20), store=Store())

`data` is (x, y) tensors or arrays, a torch Dataset of (x, y) items, or a DataLoader of (x, y) batches:
it is read once, in its order, into tensors, and every Hessian-vector product then streams over fixed
chunks of `spec.chunk_size` samples (curvature.HessianOperator), so a shuffling loader still gives one
fixed Hessian and memory holds one chunk's graph at a time. The model is analysed in eval mode, on a
float64 copy (curvature.spectrum).

With `store=` the result is kept as an **external run**: run id `ext-<hash>-good`, pair id `ext-<hash>`
(the hash of the model's weights, the data, the loss and the spectrum settings: the same analysis is
stored once), one run and no pair partner, role good, status 'converged' and stop_reason saying it was
trained outside lossland; its config_json holds {"external": …, "spectrum": …} instead of an experiment
config. The Overview and Spectrum pages show it beside any lossland pair.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import factories
from .arguments import json_value
from .config import ConfigError, SpectrumConfig
from .curvature import SpectrumResult, spectrum
from .factory_spec import IMPORT_PATH
from .pairs import Progress, run_id
from .store import Store
from .store.rows import external_tables, now
from .terminal import progress_bar
from .train import loss_function

PREFIX = "ext-"
STOP_REASON = "external: trained outside lossland; analysed by lossland.analyze"


def is_external(pair_or_run_id: str) -> bool:
    """True for the id of an external run or its pair (`ext-<hash>`, `ext-<hash>-good`)."""
    return str(pair_or_run_id).startswith(PREFIX)


def analyze(model: nn.Module, data: Any, loss_fn: Callable, spec: SpectrumConfig | None = None,
            store: Store | None = None, test: Any = None, name: str | None = None, data_name: str | None = None,
            progress: Progress | None = None) -> SpectrumResult:
    """The Hessian spectrum (curvature.spectrum: Lanczos top-k, SLQ density, trace, ‖H‖_F², log-volumes, the
    exact spectrum up to spec.exact_max_params) of the mean `loss_fn(model(x), y)` over `data`. With `store`,
    also kept there as an external run (see the module's docstring; `test`, data in the same forms, adds
    test loss and accuracy to it; `name` and `data_name` label it, default the model's class and the data's
    type)."""
    spec = spec or SpectrumConfig()
    x, y = factories.as_tensors(data, "data")
    if len(x) != len(y) or len(y) == 0:
        raise ConfigError(f"data holds {len(x)} inputs and {len(y)} labels; it needs the same number, at least one")
    result = spectrum(model, x, y, loss_fn, spec, progress)
    if store is not None:
        label = data_name or (type(data).__name__ if not isinstance(data, (tuple, list)) else "tensors")
        store_external(store, model, (x, y), loss_fn, result, test=test, name=name, data_name=label)
    return result


def external_id(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_name: str, spec: SpectrumConfig) -> str:
    """`ext-<16 hex>`: the hash of the weights, the data, the loss and the spectrum settings."""
    h = hashlib.sha256()
    for name, t in [*sorted(model.state_dict().items()), ("x", x), ("y", y)]:
        h.update(f"{name} {tuple(t.shape)} {t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype's bytes
    h.update(json.dumps({"loss": loss_name, "spectrum": spec.__dict__}, sort_keys=True).encode())
    return PREFIX + h.hexdigest()[:16]


@torch.no_grad()
def _metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable, chunk: int) -> tuple:
    """(mean loss, accuracy or None) of the model over (x, y), in chunks; accuracy where outputs are class scores."""
    model.eval()
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    loss, hits, scores = 0.0, 0, True
    for i in range(0, len(y), chunk):
        xb, yb = x[i:i + chunk].to(device), y[i:i + chunk].to(device)
        out = model(xb.to(dtype) if xb.is_floating_point() else xb)
        loss += float(loss_fn(out, yb)) * len(yb)
        scores = scores and out.dim() == 2 and out.shape[1] >= 2 and not yb.is_floating_point() and yb.dim() == 1
        hits += int((out.argmax(1) == yb).sum()) if scores else 0
    return loss / len(y), (hits / len(y) if scores else None)


def store_external(store: Store, model: nn.Module, data: Any, loss_fn: Callable, result: SpectrumResult,
                   test: Any = None, name: str | None = None, data_name: str = "data") -> str:
    """Keep an analysis (`result` of `model` over `data`) as an external run in `store`, replacing an earlier
    one of the same id; returns its run id."""
    x, y = factories.as_tensors(data, "data")
    loss_name = getattr(loss_fn, "__name__", type(loss_fn).__name__)
    pair_id = external_id(model, x, y, loss_name, result.settings)
    rid = run_id(pair_id, "good")
    clean_loss, clean_acc = _metrics(model, x, y, loss_fn, result.settings.chunk_size)
    test_loss = test_acc = None
    if test is not None:
        test_loss, test_acc = _metrics(model, *factories.as_tensors(test, "test"), loss_fn, result.settings.chunk_size)
    label = name or type(model).__name__
    config = {"external": {"model": label, "data": data_name, "loss": loss_name, "n_samples": len(y),
                           "in_shape": list(x.shape[1:])}, "spectrum": result.settings.__dict__}
    facts = {"run_id": rid, "pair_id": pair_id, "role": "good", "status": "converged", "stop_reason": STOP_REASON,
             "config_json": json.dumps(config, sort_keys=True), "dataset": data_name, "model": label, "widths": "",
             "n_params": result.n_params, "n_train": len(y), "n_attack": 0, "clean_loss": clean_loss,
             "clean_acc": clean_acc, "test_loss": test_loss, "test_acc": test_acc,
             "device": str(next(model.parameters()).device)}
    store.save_runs([rid], external_tables(facts, result, now()), f"saving external run {rid}")
    return rid


# --- `python -m lossland analyze` ---------------------------------------------------------------------

PT_WARNING = ("A .pt file of a whole module is a Python pickle: loading it runs code from the file, so analyse only "
              "files you trust (lossland's own checkpoints are loaded safely; this one can't be).")


def load_module_file(path: Path) -> nn.Module:
    """A whole nn.Module saved with torch.save(model, path), loaded with weights_only=False (see PT_WARNING)."""
    if not path.is_file():
        raise ConfigError(f"model file {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError, ImportError) as e:
        raise ConfigError(f"model file {path}: its class can't be found here ({type(e).__name__}: {e}); the module "
                          f"that defines the class must be importable (a class defined in a script's __main__ is "
                          f"not: move it into a module and save again)") from None
    except Exception as e:  # noqa: BLE001 - corrupt, truncated, not a torch file
        raise ConfigError(f"model file {path} can't be read by torch.load ({type(e).__name__}: {e})") from None
    if not isinstance(obj, nn.Module):
        hint = " (a state_dict: save the module itself, torch.save(model, path))" if isinstance(obj, dict) else ""
        raise ConfigError(f"model file {path} holds a {type(obj).__name__}, not a torch.nn.Module{hint}")
    return obj


def cmd_analyze(args: argparse.Namespace) -> int:
    model = load_module_file(Path(args.model))
    kwargs = json_value(args.data_kwargs or "{}", "--data-kwargs")
    if not isinstance(kwargs, dict):
        raise ConfigError(f"--data-kwargs {args.data_kwargs!r}: a JSON object of keyword arguments")
    if not IMPORT_PATH.fullmatch(args.data):
        raise ConfigError(f"--data {args.data!r}: an import path 'package.module:function'")
    a = factories.call_data_factory(args.data, kwargs)
    spec = SpectrumConfig(**{k: v for k, v in (("k", args.k), ("chunk_size", args.chunk_size)) if v is not None}
                          | ({"max_steps": max(300, args.k)} if args.k else {}))
    data = (torch.as_tensor(a.x_pool), torch.as_tensor(a.y_pool))
    loss_fn = loss_function(args.loss)
    progress, close = progress_bar("analyze", args.quiet)
    try:
        result = analyze(model, data, loss_fn, spec, progress=progress)
    finally:
        close()
    out = {"model": args.model, "data": args.data, "n_params": result.n_params, "n_samples": len(a.y_pool),
           "eigenvalues": list(result.top.eigenvalues), "trace": result.trace.value,
           "frobenius_sq": result.frobenius_sq.value, "hvps": result.hvps, "seconds": round(result.seconds, 3)}
    if args.store:
        out["run_id"] = store_external(Store(Path(args.store)), model, data, loss_fn, result,
                                       test=(torch.as_tensor(a.x_test), torch.as_tensor(a.y_test)),
                                       name=Path(args.model).name, data_name=args.data)
    print(json.dumps(out, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
    return 0


def add_analyze_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="Hessian spectrum of a model you already have (a .pt of an nn.Module)",
                       description="Top-k eigenvalues, trace, Frobenius norm and log-volume of the mean loss of a "
                                   "saved nn.Module over the train part of a dataset factory's data; with --store, "
                                   "kept as an external run the dashboard shows beside lossland pairs. " + PT_WARNING)
    p.add_argument("model", help="a .pt written by torch.save(model, path) (the module, not its state_dict)")
    p.add_argument("--data", required=True, metavar="MODULE:FUNCTION",
                   help="dataset factory, e.g. my_pkg.data:load (returns what a config's data.factory may)")
    p.add_argument("--data-kwargs", dest="data_kwargs", metavar="JSON",
                   help='its keyword arguments, e.g. \'{"n": 500}\'')
    p.add_argument("--loss", choices=["cross_entropy", "mse"], default="cross_entropy")
    p.add_argument("--k", type=int, help="number of top eigenvalues (default 20)")
    p.add_argument("--chunk-size", dest="chunk_size", type=int, help="samples per HVP chunk (default 2048)")
    p.add_argument("--store", metavar="FILE", help="keep the result as an external run in this store")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_analyze)
