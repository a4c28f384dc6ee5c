"""A researcher's own model and data (config factories), and analysing a model they already have (analyze)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import open_app, page_texts
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

import lossland
from lossland import factories
from lossland.checkpoint import load_checkpoint
from lossland.cli import main
from lossland.config import ConfigError, ExperimentConfig, SpectrumConfig
from lossland.data import DatasetError, load_experiment_data
from lossland.experiments import run_pair, sweep
from lossland.external import is_external, load_module_file
from lossland.store import Store
from lossland.store.verify import legacy_hash
from lossland.train import cross_entropy

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "own_model"
# The example, made tiny: a pair in well under a second of training.
TINY = ["--set", "data.n_train=60", "--set", "attack.n_attack=30", "--set", "train.max_epochs=40",
        "--set", "train.loss_target=0.05", "--set", "spectrum.k=3", "--set", "spectrum.exact_max_params=0"]


def example_config(**changes) -> ExperimentConfig:
    cfg = ExperimentConfig.from_json((EXAMPLE / "config.json").read_text())
    return cfg.with_changes(**{"data.n_train": 60, "attack.n_attack": 30, "train.max_epochs": 40,
                               "train.loss_target": 0.05, "spectrum.k": 3, "spectrum.exact_max_params": 0} | changes)


# --- 1. factories through run, the store, checkpoints and bundles ---------------------------------------

def test_the_example_runs_through_the_cli_into_a_store_and_reads_back(tmp_path, capsys):
    store_path = tmp_path / "runs.duckdb"
    assert main(["run", "--config", str(EXAMPLE / "config.json"), *TINY, "--store", str(store_path), "--quiet",
                 "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["from_store"] is False
    assert main(["run", "--config", str(EXAMPLE / "config.json"), *TINY, "--store", str(store_path), "--quiet",
                 "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["from_store"] is True and again["pair_id"] == first["pair_id"]
    view = Store(store_path).pair(first["pair_id"])
    assert set(view.runs["dataset"]) == {"examples.own_model.data:load"}
    assert set(view.runs["model"]) == {"examples.own_model.nets:make_net"}
    cfg = ExperimentConfig.from_json(view.runs["config_json"].iloc[0])
    source = (EXAMPLE / "nets.py").read_text()
    assert cfg.model.factory_sha256 == factories.sha256(source)
    stored = json.loads(view.runs["extra_json"].iloc[0])["factory_sources"]
    assert stored["model"]["source"] == source and stored["data"]["source"] == (EXAMPLE / "data.py").read_text()
    assert len(view.spectra) > 0 and view.runs["test_acc"].notna().all()
    assert main(["show", first["pair_id"], "--store", str(store_path)]) == 0
    assert "def make_net(in_shape, n_classes" in capsys.readouterr().out  # shown for review
    assert main(["train", "--config", str(EXAMPLE / "config.json"), *TINY, "--no-spectrum", "--checkpoints",
                 str(tmp_path / "ck"), "--json", "--quiet"]) == 0  # train too: the same pair id, not stored
    assert json.loads(capsys.readouterr().out)["pair_id"] == first["pair_id"]
    ck = load_checkpoint(Store(store_path).checkpoint_path(f"{first['pair_id']}-bad"))  # rebuilt by the factory
    x, y = ck.clean_train()
    assert type(ck.model).__name__ == "ResidualMLP" and x.shape == (60, 8)


def _module(folder: Path, name: str, body: str) -> None:
    (folder / f"{name}.py").write_text(body)
    sys.modules.pop(name, None)


NET = "from torch import nn\n\ndef make(in_shape, n_classes, width=4):\n    return nn.Sequential(nn.Flatten(), " \
      "nn.Linear(in_shape[0], width), nn.Tanh(), nn.Linear(width, n_classes))\n"


def test_editing_the_model_file_makes_a_new_run_and_refuses_the_old_checkpoint(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    _module(tmp_path, "byo_net_edit", NET)
    base = example_config(**{"model.factory": "byo_net_edit:make", "model.factory_kwargs": {}})
    store = Store(tmp_path / "runs.duckdb")
    first = run_pair(base, store)
    assert not first.from_store
    assert factories.pinned(base).config_hash() == first.pair_id  # same source, same id
    points = sweep(base, {"train.seed": [0, 1]}, store)  # a sweep pins each point the same way
    assert [p.from_store for p in points] == [True, False] and points[0].pair_id == first.pair_id
    assert factories.pinned(base.with_changes(**{"model.factory_kwargs": {"width": 5}})).config_hash() != first.pair_id
    _module(tmp_path, "byo_net_edit", NET.replace("nn.Tanh()", "nn.ReLU()"))
    edited = factories.pinned(base)
    assert edited.config_hash() != first.pair_id  # the id covers the module's source
    with pytest.raises(ConfigError, match="not the one this run was made with"):
        load_checkpoint(store.checkpoint_path(f"{first.pair_id}-good"))
    with pytest.raises(ConfigError, match="factory_sha256 is not set"):
        base.config_hash()  # an id is never made without the source hash


def test_a_bundle_carries_the_source_and_imports_where_the_module_is_not_importable(tmp_path, monkeypatch, capsys,
                                                                                  dashboard):
    code = tmp_path / "code"
    code.mkdir()
    monkeypatch.syspath_prepend(str(code))
    _module(code, "byo_net_bundle", NET)
    store = Store(tmp_path / "a" / "runs.duckdb")
    pair_id = run_pair(example_config(**{"model.factory": "byo_net_bundle:make", "model.factory_kwargs": {}}),
                       store).pair_id
    bundle = store.export([f"{pair_id}-good", f"{pair_id}-bad"], tmp_path / "pair.zip")
    (code / "byo_net_bundle.py").unlink()  # the receiving machine has not got the code ...
    sys.modules.pop("byo_net_bundle", None)
    other = Store(tmp_path / "b" / "runs.duckdb")
    assert len(other.import_bundle(bundle).run_ids_added) == 2  # ... and the import never needs (or runs) it
    assert "byo_net_bundle" not in sys.modules
    assert main(["show", pair_id, "--store", str(other.path)]) == 0
    assert "def make(in_shape, n_classes, width=4)" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="importing module byo_net_bundle failed"):
        load_checkpoint(other.checkpoint_path(f"{pair_id}-good"))
    _module(code, "byo_net_bundle", NET)  # even where the code is there, the dashboard won't run a bundle's code
    dashboard(other.path)
    at = open_app(query={"pair": pair_id})
    assert NET.strip() in [c.value.strip() for c in at.code]  # the model's source, shown as code for review
    assert "Model and data code" in [h.value for h in at.subheader]
    at = open_app("views/landscape.py", query={"pair": pair_id})
    assert "never runs code that came with a bundle" in page_texts(at)
    assert not at.button  # nothing offered to compute


def data_factory_module(folder: Path) -> None:
    _module(folder, "byo_data_forms", '''
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

def arrays(n=50):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    return x[:40], (x[:40, 0] > 0).astype(np.int64), x[40:], (x[40:, 0] > 0).astype(np.int64)

def datasets(loader=False):
    xt, yt, xs, ys = (torch.as_tensor(a) for a in arrays())
    train, test = TensorDataset(xt, yt), TensorDataset(xs, ys)
    if loader:
        return DataLoader(train, batch_size=7), DataLoader(test, batch_size=3)
    return {"train": train, "test": test}

def one_dataset():
    xt, yt, _, _ = (torch.as_tensor(a) for a in arrays())
    return TensorDataset(xt, yt)

def boom():
    raise RuntimeError("no data today")

def text():
    return "not data"

def negative():
    x, y, xs, ys = arrays()
    return x, y - 1, xs, ys

def shapes():
    x, y, xs, ys = arrays()
    return x, y, xs[:, :2], ys

def float_labels():
    x, y, xs, ys = arrays()
    return x, y.astype(np.float32), xs, ys

def not_a_module(in_shape, n_classes):
    return 3
''')


def test_dataset_factories_accept_tensors_datasets_and_loaders_and_name_every_problem(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    data_factory_module(tmp_path)
    forms = [factories.call_data_factory(f"byo_data_forms:{name}", kwargs)
             for name, kwargs in (("arrays", {}), ("datasets", {}), ("datasets", {"loader": True}))]
    for a in forms[1:]:
        assert np.array_equal(a.x_pool, forms[0].x_pool) and np.array_equal(a.y_test, forms[0].y_test)
        assert a.n_classes == 2
    single = factories.call_data_factory("byo_data_forms:one_dataset", {})
    assert len(single.y_pool) == 32 and len(single.y_test) == 8  # a fixed fifth held out as test
    problems = {"missing_module_xyz:f": "importing module missing_module_xyz failed",
                "byo_data_forms:nothing": "has no attribute 'nothing'", "byo_data_forms:boom": "raised RuntimeError",
                "byo_data_forms:text": "returned a str; accepted", "byo_data_forms:negative": "labels run from -1",
                "byo_data_forms:shapes": "they must be the same", "byo_data_forms:float_labels": "integer class labels"}
    for path, message in problems.items():
        with pytest.raises(ConfigError, match=message):
            factories.call_data_factory(path, {})
    cfg = ExperimentConfig.from_dict({"data": {"name": "custom", "factory": "byo_data_forms:arrays", "n_train": 30},
                                      "attack": {"n_attack": 20}})
    with pytest.raises(DatasetError, match=r"attack.n_attack = 20 is not allowed .* at most 10"):
        load_experiment_data(factories.pinned(cfg))
    d = load_experiment_data(factories.pinned(cfg.with_changes(**{"attack.n_attack": 10})))
    assert (len(d.y_train), len(d.y_attack), len(d.y_test)) == (30, 10, 10)
    assert not set(d.train_index) & set(d.attack_index)  # the attack set comes from the rest of the pool
    bad_model = cfg.with_changes(**{"model.name": "custom", "model.factory": "byo_data_forms:not_a_module",
                                    "attack.n_attack": 0})
    with pytest.raises(ConfigError, match="returned a int: it must return a torch.nn.Module"):
        run_pair(bad_model, Store(tmp_path / "runs.duckdb"))


def test_config_factory_fields_are_validated_and_leave_old_ids_alone():
    assert legacy_hash(ExperimentConfig().to_json()) == "20551c7745bf9e67"  # as before factories existed
    assert ExperimentConfig().config_hash() == "717dfcfc3fe30e45"  # schema 7's rule: no spectrum, no device
    for changes, message in (({"model.factory": "a:b"}, "model.name = 'mlp'"),
                             ({"model.name": "custom"}, "model.factory = None"),
                             ({"model.name": "custom", "model.factory": "a b:c"}, "an import path"),
                             ({"data.name": "custom", "data.factory": "a:b", "data.factory_kwargs": {"x": [1, {2}]}},
                              "plain JSON data")):
        with pytest.raises(ConfigError, match=message):
            ExperimentConfig().with_changes(**changes)
    sha = "0" * 64
    custom = ExperimentConfig().with_changes(**{"model.name": "custom", "model.factory": "a:b",
                                                "model.factory_sha256": sha})
    changed = [custom.with_changes(**{k: v}) for k, v in (("model.factory", "a:c"), ("model.factory_sha256", "1" * 64),
                                                          ("model.factory_kwargs", {"w": 1}))]
    assert len({c.config_hash() for c in [custom, *changed]}) == 4  # path, source and arguments are in the id
    assert ExperimentConfig.from_json(custom.to_json()) == custom


# --- 2. analyze: a model the researcher already has --------------------------------------------------

def _tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    x = torch.randn(45, 3)
    y = torch.randint(0, 3, (45,))
    return model, x, y


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    twin = copy.deepcopy(model).double()
    names = [n for n, _ in twin.named_parameters()]
    shapes = [p.shape for _, p in twin.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for _, p in twin.named_parameters()])

    def loss(theta):
        params, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            params[n] = theta[i:i + s.numel()].view(s)
            i += s.numel()
        return cross_entropy(functional_call(twin, params, (x.double(),)), y)

    return torch.autograd.functional.hessian(loss, flat)


SPEC = SpectrumConfig(k=4, tol=1e-10, max_steps=43, slq_vectors=1, slq_steps=5, trace_samples=3, exact_max_params=0,
                      chunk_size=16)


def test_analyze_matches_the_dense_hessian_for_tensors_a_dataset_and_a_dataloader():
    model, x, y = _tiny()
    truth = torch.linalg.eigvalsh(dense_hessian(model, x, y)).flip(0)[:4]
    results = [lossland.analyze(model, data, cross_entropy, SPEC)
               for data in ((x, y), TensorDataset(x, y), DataLoader(TensorDataset(x, y), batch_size=7))]
    for r in results:
        got = torch.tensor(r.top.eigenvalues, dtype=torch.float64)
        assert torch.allclose(got, truth, rtol=1e-8, atol=1e-12), (got, truth)
        assert r.n_params == 31
    assert results[0].top.eigenvalues == results[1].top.eigenvalues == results[2].top.eigenvalues


def test_the_pages_show_an_external_run_beside_a_factory_pair_and_run_only_local_factories(tmp_path, dashboard):
    model, x, y = _tiny()
    store = Store(tmp_path / "runs.duckdb")
    pair_id = run_pair(example_config(), store).pair_id
    lossland.analyze(model, (x, y), cross_entropy, SPEC, store=store, name="my-net")
    ext = store.runs(model="my-net")
    assert len(ext) == 1 and is_external(ext["run_id"].iloc[0]) and ext["run_id"].iloc[0].endswith("-good")
    lossland.analyze(model, (x, y), cross_entropy, SPEC, store=store, name="my-net")
    assert len(store.runs(model="my-net")) == 1  # the same analysis is stored once
    dashboard(store.path)
    at = open_app(query={"pair": ext["pair_id"].iloc[0]})
    assert "External run: my-net on tensors" in page_texts(at)
    at.selectbox(key="overview-beside").select(pair_id).run()
    assert not at.exception
    assert list(at.dataframe[0].value.columns) == ["external", "good", "bad"]
    at.switch_page("views/landscape.py").run()
    assert "This is an external run" in page_texts(at)
    for page in ("views/spectrum.py", "views/landscape.py", "views/theory.py", "views/runs.py"):
        at = open_app(page, query={"pair": pair_id})  # the factory pair: its model rebuilt through the factory
        assert "can't be rebuilt" not in page_texts(at), page
    at = open_app("views/new_experiment.py")
    at.text_input(key="ne-digits-mlp-dfac").input("os:system")
    at.text_input(key="ne-digits-mlp-dkw").input('{"command": "echo hi"}')
    at.button[0].click().run()
    assert "runs factories only from modules in its folder" in page_texts(at)


def test_the_analyze_command_reads_a_saved_module_and_explains_bad_files(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path))
    data_factory_module(tmp_path)
    _module(tmp_path, "byo_cli_net", NET)
    import byo_cli_net

    model = byo_cli_net.make((3,), 2)
    torch.save(model, tmp_path / "model.pt")
    store = tmp_path / "runs.duckdb"
    assert main(["analyze", str(tmp_path / "model.pt"), "--data", "byo_data_forms:arrays", "--k", "3",
                 "--store", str(store), "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["eigenvalues"]) == 3 and is_external(out["run_id"])
    assert Store(store).runs(run_id=out["run_id"])["test_acc"].notna().all()
    torch.save(model.state_dict(), tmp_path / "state.pt")
    (tmp_path / "junk.pt").write_bytes(b"not torch")
    for name, message in (("state.pt", "Dict, not a torch.nn.Module .a state_dict"), ("junk.pt", "can't be read"),
                          ("nope.pt", "no such file")):
        with pytest.raises(ConfigError, match=message):
            load_module_file(tmp_path / name)
    assert main(["analyze", str(tmp_path / "nope.pt"), "--data", "byo_data_forms:arrays"]) == 2
    assert "nope.pt: no such file" in capsys.readouterr().err
