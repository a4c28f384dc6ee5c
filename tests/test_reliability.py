"""Reliability and security (issue 8): hostile configs and caps, training and store faults, damaged
bundles, the SQL console in the page, and Lanczos on awkward operators. Figures go to RELIABILITY.md."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import stat
import sys
import time
import zipfile
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from conftest import open_app, page_texts, tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from store_writer import make_pair  # noqa: E402
from test_lanczos import MatrixOperator  # noqa: E402

from lossland import store as store_module  # noqa: E402
from lossland.checkpoint import CheckpointError  # noqa: E402
from lossland.config import _SECTIONS, ConfigError, ExperimentConfig  # noqa: E402
from lossland.experiments import run_pair, sweep  # noqa: E402
from lossland.lanczos import spectral_density, top_eigenpairs  # noqa: E402
from lossland.limits import Limits, check_experiment, limits, model_params  # noqa: E402
from lossland.specs import InterpolationSpec  # noqa: E402
from lossland.store import TABLES, BundleError, Store, StoreError  # noqa: E402

PAGES = ("views/overview.py", "views/new_experiment.py", "views/spectrum.py", "views/landscape.py",
         "views/basins.py", "views/theory.py", "views/runs.py")
# bad inputs tried, for RELIABILITY.md
TRIED = {"random dicts": 0, "hostile fields": 0, "random json": 0, "bad cap values": 0}


@pytest.fixture(autouse=True)
def _clean(monkeypatch, dashboard):
    for f in Limits.__dataclass_fields__:
        monkeypatch.delenv(Limits.variable(f), raising=False)


def _tables(store: Store) -> dict:
    return {name: store.table(name) for name in TABLES}


def _same_tables(a: dict, b: dict) -> bool:
    return all(a[n].equals(b[n]) for n in TABLES)


# --- 1. hostile configs and the operator's caps -----------------------------------------------------

HOSTILE = hs.one_of(
    hs.integers(min_value=-10**12, max_value=10**12), hs.sampled_from([0, -1, 2**31, 2**63, 10**400, 10**5000]),
    hs.floats(allow_nan=True, allow_infinity=True), hs.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0]),
    hs.booleans(), hs.none(), hs.text(max_size=30), hs.binary(max_size=10),
    hs.lists(hs.integers(min_value=-5, max_value=200_000), max_size=70),
    hs.dictionaries(hs.text(max_size=5), hs.integers(), max_size=3))
FIELDS = [(section, name) for section, kind in _SECTIONS.items() for name in kind.__dataclass_fields__]
# Rules across fields name the other field of the rule (e.g. a bigger data.n_train leaves no room for the attack).
CROSS = ("attack.n_attack", "spectrum.max_steps", "model.name", "model.widths", "model.channels", "train.loss")


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(field=hs.sampled_from(FIELDS), value=HOSTILE, other=hs.sampled_from(FIELDS), other_value=HOSTILE)
def test_hostile_field_values_get_a_config_error_naming_the_field(field, value, other, other_value):
    TRIED["hostile fields"] += 1
    (section, name), (section2, name2) = field, other
    d = {section: {name: value}}
    d.setdefault(section2, {})[name2] = other_value
    try:
        cfg = ExperimentConfig.from_dict(d)
    except ConfigError as e:
        message = str(e)
        assert len(message) < 1000
        named = (f"{section}.{name}", f"{section2}.{name2}", *CROSS)
        assert any(n in message for n in named) or f"{section}:" in message or f"{section2}:" in message, message
    else:  # whatever passed is a valid config that round-trips
        assert ExperimentConfig.from_json(cfg.to_json()) == cfg


JSONISH = hs.recursive(hs.one_of(hs.none(), hs.booleans(), hs.integers(), hs.floats(), hs.text(max_size=8)),
                       lambda inner: hs.one_of(hs.lists(inner, max_size=4),
                                               hs.dictionaries(hs.one_of(hs.text(max_size=8), hs.integers()),
                                                               inner, max_size=4)), max_leaves=20)
SECTION_NAMES = hs.sampled_from([*_SECTIONS, "nope", "", "data.name"])


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(d=hs.one_of(JSONISH, hs.dictionaries(SECTION_NAMES, JSONISH, max_size=5),
                   hs.dictionaries(SECTION_NAMES, hs.dictionaries(hs.sampled_from([n for _, n in FIELDS] + ["x"]),
                                                                  JSONISH, max_size=6), max_size=5)))
def test_random_nested_dicts_give_a_valid_config_or_a_config_error_never_another_exception(d):
    TRIED["random dicts"] += 1
    try:
        ExperimentConfig.from_dict(d)
    except ConfigError as e:
        assert str(e)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=hs.one_of(hs.text(max_size=200), hs.sampled_from(["[" * 100_000, '{"train": {"lr": ' + "9" * 5000 + "}}",
                                                                '{"train": {"lr": NaN}}', '{"train": {"lr": 1e999}}',
                                                                "\x00", '{"data": {"n_train": 1e3}}'])))
def test_random_json_text_gives_a_config_error(text):
    TRIED["random json"] += 1
    try:
        ExperimentConfig.from_json(text)
    except ConfigError:
        pass


def test_oversized_models_are_refused_by_name_before_any_memory_is_used(monkeypatch):
    with pytest.raises(ConfigError, match=r"model\.widths .*at most 64"):
        ExperimentConfig.from_dict({"model": {"widths": [10] * 100_000}})
    huge = ExperimentConfig().with_changes(**{"model.widths": (100_000,) * 8})  # 7e10 parameters: 280 GB
    start = time.perf_counter()
    assert model_params(huge) > 7 * 10**10  # counted on the meta device
    assert time.perf_counter() - start < 5
    with pytest.raises(ConfigError, match=r"model = .* over this dashboard's cap .*LOSSLAND_MAX_PARAMS"):
        check_experiment(huge)
    with pytest.raises(ConfigError, match=r"train\.max_epochs = 1,000,000 .*LOSSLAND_MAX_EPOCHS"):
        check_experiment(ExperimentConfig().with_changes(**{"train.max_epochs": 1_000_000}))
    check_experiment(ExperimentConfig())  # the default preset is within the default caps
    monkeypatch.setenv("LOSSLAND_MAX_PARAMS", "1000")
    assert limits().max_params == 1000
    with pytest.raises(ConfigError, match="3,466 .* cap of 1,000"):
        check_experiment(ExperimentConfig())
    monkeypatch.setenv("LOSSLAND_MAX_TRIALS", "lots")
    with pytest.raises(ConfigError, match="LOSSLAND_MAX_TRIALS = 'lots'"):
        limits()



def test_every_cap_has_a_range_so_no_value_turns_a_limit_off(monkeypatch):
    from lossland.limits import RANGES

    bad = ["0", "-1", "nan", "inf", "-inf", "1e400", "9" * 5000, "lots", "", "1_0_0x"]
    refused = 0
    for name, (lo, hi) in RANGES.items():
        var = Limits.variable(name)
        integer = Limits.__dataclass_fields__[name].type == "int"
        edges = [lo, hi] if integer else [lo, hi, (lo + hi) / 2]
        for value in edges:
            monkeypatch.setenv(var, f" {value:g} " if not integer else str(int(value)))
            assert getattr(limits(), name) == value, (var, value)
        for value in [*bad[:-2], str(hi * 10 if integer else hi * 1.5), str(lo / 2 if lo > 1 else lo - 1)]:
            monkeypatch.setenv(var, value)
            with pytest.raises(ConfigError, match=rf"{var} = .* is not allowed: an? (integer|number) from "):
                limits()
            refused += 1
        monkeypatch.delenv(var)
        with pytest.raises(ConfigError, match=rf"^{name} = .* is not allowed"):
            Limits(**{name: hi * 10})
    assert limits() == Limits()
    TRIED["bad cap values"] = refused


def test_the_read_only_switch_takes_its_spellings_and_refuses_the_rest(monkeypatch):
    from lossland.limits import read_only

    for raw, expected in [("1", True), ("true", True), (" Yes ", True), ("ON", True), ("\ton\n", True),
                          ("0", False), ("false", False), ("No", False), (" off", False), ("", False), ("  ", False)]:
        monkeypatch.setenv("LOSSLAND_READONLY", raw)
        assert read_only() is expected, raw
    monkeypatch.delenv("LOSSLAND_READONLY")
    assert read_only() is False
    for raw in ("2", "y", "oui", "enabled", "1 1", "true!", "-1", "ＯＮ"):
        monkeypatch.setenv("LOSSLAND_READONLY", raw)
        with pytest.raises(ConfigError, match="LOSSLAND_READONLY = .* is not allowed: one of 1, true, yes, on"):
            read_only()


@pytest.mark.parametrize("variable, value", [("LOSSLAND_READONLY", "maybe"), ("LOSSLAND_READONLY", "1 1"),
                                             ("LOSSLAND_MAX_PARAMS", "0"), ("LOSSLAND_SQL_TIMEOUT_S", "1e9")])
def test_a_bad_operator_setting_stops_the_app_with_one_error_and_no_page(store_env, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    at = open_app()
    assert [e.value for e in at.error] and len(at.error) == 1
    assert f"{variable} = " in at.error[0].value and "does not start" in at.error[0].value
    assert not at.title and not at.sidebar.get("metric"), "no page ran, the store was not read"


def test_read_only_spellings_give_a_read_only_dashboard(store_env, monkeypatch):
    for raw in (" On ", "YES", "true\n"):
        monkeypatch.setenv("LOSSLAND_READONLY", raw)
        at = open_app()
        assert "Read-only" in "\n".join(i.value for i in at.sidebar.info)
        with pytest.raises(ValueError, match="Could not find a navigation page"):
            at.switch_page("views/new_experiment.py")


def test_a_read_only_dashboard_creates_no_store(tmp_path, monkeypatch):
    path = tmp_path / "nothing" / "runs.duckdb"
    monkeypatch.setenv("LOSSLAND_STORE", str(path))
    monkeypatch.setenv("LOSSLAND_READONLY", "1")
    for page in (PAGES[0], *PAGES[2:]):  # every page of a read-only dashboard
        at = open_app(page)
        assert f"no store at {path}" in page_texts(at).replace("\\", "")
    assert not path.parent.exists(), "neither the store nor its folder was made"


def test_a_read_only_dashboard_never_migrates_an_old_store(tmp_path, monkeypatch):
    from lossland.store.schema import create_v1_schema

    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as con:
        create_v1_schema(con)
    before = path.read_bytes()
    monkeypatch.setenv("LOSSLAND_STORE", str(path))
    monkeypatch.setenv("LOSSLAND_READONLY", "1")
    at = open_app()
    assert f"--store {path}" in page_texts(at).replace("\\", "")  # the CLI command that migrates it
    assert path.read_bytes() == before


def _no_jobs() -> bool:
    import ui

    return not ui.jobs().jobs


def test_the_new_experiment_form_enforces_the_operator_caps_without_compute(store_env, monkeypatch):
    monkeypatch.setenv("LOSSLAND_MAX_PARAMS", "1000")
    at = open_app("views/new_experiment.py")
    at.button(key="FormSubmitter:ne-digits-mlp-form-Run").click().run()
    assert not at.exception
    assert "LOSSLAND_MAX_PARAMS" in at.error[0].value and "3,466" in at.error[0].value
    assert _no_jobs(), "nothing was launched"
    monkeypatch.setenv("LOSSLAND_MAX_PARAMS", "100000")
    monkeypatch.setenv("LOSSLAND_MAX_EPOCHS", "100")
    at.run()
    at.button(key="FormSubmitter:ne-digits-mlp-form-Run").click().run()
    assert "train.max_epochs = 3,000" in at.error[0].value and "LOSSLAND_MAX_EPOCHS" in at.error[0].value
    assert _no_jobs()


def test_the_default_run_button_respects_the_caps_too(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSLAND_STORE", str(tmp_path / "empty.duckdb"))
    monkeypatch.setenv("LOSSLAND_MAX_PARAMS", "1000")
    at = open_app()
    assert "LOSSLAND_MAX_PARAMS" in at.error[0].value
    assert not [b for b in at.button if b.key == "overview-run-default"] and _no_jobs()


def test_analyses_over_the_caps_are_refused_in_the_page_without_compute(store_env, monkeypatch):
    store, ids = store_env
    monkeypatch.setenv("LOSSLAND_MAX_GRID_POINTS", "100")
    at = open_app("views/landscape.py", {"pair": ids[0]})
    errors = "\n".join(e.value for e in at.error)
    assert "grid points = 1,681" in errors and "LOSSLAND_MAX_GRID_POINTS" in errors  # the 41 × 41 surfaces
    keys = {b.key for b in at.button}
    assert f"btn-interp:{ids[0]}" in keys and not any(k and k.startswith("btn-surface") for k in keys)
    monkeypatch.setenv("LOSSLAND_MAX_TRIALS", "20")
    at = open_app("views/basins.py", {"pair": ids[0]})
    errors = "\n".join(e.value for e in at.error)
    assert "escape trials: trials = 64" in errors and "random inits: trials = 32" in errors, errors
    keys = {b.key for b in at.button}
    assert f"btn-radius:{ids[0]}" in keys and f"btn-escape:{ids[0]}" not in keys
    monkeypatch.setenv("LOSSLAND_MAX_GRID_POINTS", "10")
    at = open_app("views/theory.py", {"pair": ids[0]})
    assert "attack sweep: points = 15" in at.error[0].value and not [b for b in at.button if b.key == "theory-sweep"]
    assert _no_jobs()


def test_a_corrupt_store_is_stated_on_every_page_never_a_traceback(tmp_path, monkeypatch):
    path = tmp_path / "runs.duckdb"
    path.write_bytes(b"not a database" * 1000)
    monkeypatch.setenv("LOSSLAND_STORE", str(path))
    for page in PAGES:
        at = open_app(page)  # asserts no exception
        assert "corrupt or truncated" in page_texts(at), page
    assert path.read_bytes() == b"not a database" * 1000


def _cli_error(capsys, *argv: str) -> str:
    """Run the CLI; it must refuse with exit 2 and one 'error: ...' line, no traceback. The message."""
    from lossland.cli import main

    assert main(list(argv)) == 2, argv
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err[:500]
    return err


def test_cli_config_input_is_bounded_and_every_error_names_the_file(tmp_path, capsys):
    deep = "[" * 100_000
    files = {"latin1.json": "{\"train\": {\"lr\": 0.01}, \"note\": \"café\"}".encode("latin-1"),
             "deep.json": deep.encode(), "big.json": b" " * (2 * 1024**2) + b"{}", "bad.json": b"{\"train\": {",
             "list.json": b"[1, 2]"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    expected = {"latin1.json": "not UTF-8 text", "deep.json": "nested 100,000 levels deep, at most 16",
                "big.json": "larger than 1 MiB", "bad.json": "not valid JSON", "list.json": "must be a JSON object"}
    for name, words in expected.items():
        err = _cli_error(capsys, "config", "--config", str(tmp_path / name))
        assert f"--config {tmp_path / name}: " in err and words in err, err
    start = time.perf_counter()
    assert "larger than 1 MiB" in _cli_error(capsys, "config", "--config", "/dev/zero")  # read 1 MiB, then stop
    assert time.perf_counter() - start < 5
    assert "a directory" in _cli_error(capsys, "config", "--config", str(tmp_path))
    assert "no such file" in _cli_error(capsys, "config", "--config", str(tmp_path / "nothing.json"))
    assert "--set train.lr: JSON nested 100,000 levels" in _cli_error(capsys, "config", "--set", f"train.lr={deep}")
    assert "--set model.widths: JSON nested 17 levels" in _cli_error(
        capsys, "config", "--set", "model.widths=" + "[" * 17 + "]" * 17)
    assert "the value is 100,000 characters, at most 1,000" in _cli_error(
        capsys, "runs", "--store", str(tmp_path / "s.duckdb"), "--where", f"dataset={deep}")
    assert "nested 100,000 levels" in _cli_error(capsys, "sweep", "--store", str(tmp_path / "s.duckdb"), "--grid",
                                                  f"train.seed={deep}")
    from lossland.cli import main

    (tmp_path / "ok.json").write_text(ExperimentConfig().with_changes(**{"train.lr": 0.02}).to_json())
    assert main(["config", "--config", str(tmp_path / "ok.json"), "--set", "train.seed=3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["train"]["lr"] == 0.02 and printed["train"]["seed"] == 3


# --- 2. training faults -------------------------------------------------------------------------------

def test_a_diverged_pair_is_stored_with_its_curves_and_shown_without_a_traceback(tmp_path, monkeypatch):
    store = Store(tmp_path / "runs.duckdb")
    out = run_pair(tiny_config(**{"train.optimizer": "sgd", "train.lr": 50.0}), store)
    runs = out.view.runs.set_index("role")
    assert set(runs["status"]) == {"diverged"}
    assert len(out.view.curves) >= 2 and len(out.view.spectra) == 0  # curves kept, spectra skipped
    assert runs["top_eigenvalue"].isna().all()
    assert store.has_pair(out.pair_id)  # answered from the store next time, not retrained
    monkeypatch.setenv("LOSSLAND_STORE", str(store.path))
    at = open_app()
    assert "diverged" in page_texts(at)
    assert [m.value for m in at.main.get("metric")][2:] == ["—", "—"]
    for page in ("views/spectrum.py", "views/runs.py"):
        open_app(page)


def test_ctrl_c_mid_training_leaves_no_rows_and_the_sweep_resumes(tmp_path):
    store = Store(tmp_path / "runs.duckdb")
    base, grid = tiny_config(), {"train.seed": [31, 32]}

    def interrupt(fraction, message):
        if message.startswith("1/2 points done") and "; " in message and "stored" not in message:
            raise KeyboardInterrupt  # Ctrl-C while the second point trains

    with pytest.raises(KeyboardInterrupt):
        sweep(base, grid, store, interrupt)
    first, second = (c.config_hash() for c in (base.with_changes(**{"train.seed": s}) for s in grid["train.seed"]))
    assert store.has_pair(first) and not store.has_pair(second)
    for table in TABLES:
        assert not store.query(f"SELECT * FROM {table} WHERE run_id LIKE '{second}%'").frame.shape[0], table
    assert store.count_runs() == 2
    assert not list(store.checkpoint_dir.glob("*.tmp")) and not list(store.checkpoint_dir.glob(f"{second}*"))
    outcomes = sweep(base, grid, store)
    assert [o.from_store for o in outcomes] == [True, False] and store.count_runs() == 4


def test_run_pair_interrupted_by_ctrl_c_stores_nothing(tmp_path):
    store = Store(tmp_path / "runs.duckdb")

    def interrupt(fraction, message):
        if fraction > 0.2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pair(tiny_config(**{"train.seed": 33}), store, interrupt)
    assert store.count_runs() == 0 and not list(store.checkpoint_dir.glob("*"))


def test_an_unwritable_store_path_is_a_clear_error_before_any_compute(tmp_path, monkeypatch):
    import lossland.experiments as experiments

    monkeypatch.setattr(experiments, "compute_pair", lambda *a, **k: pytest.fail("trained despite a bad store"))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for path in (blocker / "runs.duckdb", Path("/proc/lossland-no/runs.duckdb"), tmp_path):
        with pytest.raises(StoreError, match=re_path(path)):
            run_pair(tiny_config(), Store(path))
    if hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() != 0:  # root ignores permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(StoreError, match="writable|Permission"):
            Store(locked / "sub" / "runs.duckdb").runs()


def re_path(path: Path) -> str:
    import re

    return re.escape(str(path))


def test_a_full_disk_while_saving_is_a_clear_error_and_loses_no_earlier_run(tmp_path, monkeypatch):
    store = Store(tmp_path / "runs.duckdb")
    pair, spectra = make_pair(40)
    store.save_pair(pair, spectra)
    before = _tables(store)
    other, other_spectra = make_pair(41)
    insert = store_module._insert
    for fault in (OSError(errno.ENOSPC, "No space left on device"),
                  duckdb.IOException('Could not write file "runs.duckdb.wal": No space left on device')):
        def full(con, table, rows, fault=fault):
            insert(con, table, rows)
            if table == "curves":
                raise fault
        monkeypatch.setattr(store_module, "_insert", full)
        with pytest.raises(StoreError, match=rf"nothing was written to {re_path(store.path)}.*disk .* is full"):
            store.save_pair(other, other_spectra)
        monkeypatch.setattr(store_module, "_insert", insert)
        assert _same_tables(before, _tables(store))
    for role in ("good", "bad"):
        assert store_module.Store(store.path).has_pair(pair.pair_id)
        assert len(store.runs(run_id=f"{pair.pair_id}-{role}")) == 1

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", no_space)  # how a computed checkpoint reaches the disk
    with pytest.raises(CheckpointError, match="disk is full.*Nothing of this run was stored"):
        run_pair(tiny_config(**{"train.seed": 42}), store)
    assert _same_tables(before, _tables(store)) and not list(store.checkpoint_dir.glob("*.tmp"))


# --- 3. store faults ------------------------------------------------------------------------------

def test_a_corrupt_or_truncated_store_names_the_file_and_the_way_out_and_is_never_replaced(tmp_path):
    good = Store(tmp_path / "good.duckdb")
    for seed in range(3):
        good.save_pair(*make_pair(seed, epochs=2000))
    raw = good.path.read_bytes()
    half = len(raw) // 2
    variants = {"garbage": b"\x00garbage" * 5000, "bad header": bytes(4096) + raw[4096:],
                "truncated to a page": raw[:4096], "truncated to half": raw[:half],
                "corrupt block": raw[:half] + np.random.default_rng(0).bytes(20_000) + raw[half + 20_000:]}
    pair, spectra = make_pair(9)
    for name, data in variants.items():
        path = tmp_path / f"{name.replace(' ', '-')}.duckdb"
        path.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        store = Store(path)
        with pytest.raises(StoreError) as err:
            for table in TABLES:
                store.table(table)
            store.save_pair(pair, spectra)
        message = str(err.value)
        assert str(path) in message and "corrupt or truncated" in message, (name, message)
        assert "backup" in message and f"mv {path} {path}.corrupt" in message, name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{name}: the file was changed"



def test_missing_or_corrupt_checkpoints_are_stated_and_the_rest_of_the_app_works(copied_store):
    from lossland import analyses

    store, ids = copied_store
    store.checkpoint_path(f"{ids[0]}-good").unlink()
    store.checkpoint_path(f"{ids[1]}-bad").write_bytes(b"PK\x03\x04 truncated")
    for pair_id, problem in ((ids[0], "missing"), (ids[1], "corrupt")):
        for page in ("views/overview.py", "views/spectrum.py", "views/runs.py"):
            at = open_app(page, {"pair": pair_id})
            # the stored numbers show; only what needs the weights (the per-layer analysis) says it can't run
            errors = [e.value for e in at.error]
            assert all(problem in e and "per-layer" in e for e in errors), (page, errors)
            assert len(errors) <= (page == "views/spectrum.py"), (page, errors)
        for page in ("views/landscape.py", "views/basins.py"):
            at = open_app(page, {"pair": pair_id})
            errors = [e.value for e in at.error]
            assert errors and all(problem in e for e in errors), (page, errors)
            assert not [b for b in at.button if b.key and b.key.startswith("btn-")], "no compute offered"
        with pytest.raises((StoreError, CheckpointError), match=problem):
            analyses.compute(store, pair_id, InterpolationSpec())
    assert len(store.runs()) == 4


# --- 4. bundles from strangers ----------------------------------------------------------------------

def _members(src: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(src) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _write(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for info, data in members:
            zf.writestr(info, data)
    return path


def _special(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (mode & 0xFFFF) << 16
    return info


@pytest.mark.filterwarnings("ignore:Duplicate name")  # zipfile's, while writing the duplicate-member bundle
def test_damaged_and_tricky_bundles_are_refused_and_the_store_is_unchanged(bundle, tmp_path):
    src, ids = bundle
    members = _members(src)
    target = Store(tmp_path / "t" / "runs.duckdb")
    target.save_pair(*make_pair(13))  # a store with a run in it already
    before = _tables(target)
    raw = src.read_bytes()
    runs_sql = f"SELECT * FROM read_parquet('{(tmp_path / 'runs.parquet').as_posix()}')"
    (tmp_path / "runs.parquet").write_bytes(members["tables/runs.parquet"])
    with duckdb.connect() as con:
        doubled = tmp_path / "doubled.parquet"
        con.execute(f"COPY ({runs_sql} UNION ALL {runs_sql}) TO '{doubled.as_posix()}' (FORMAT parquet)")
    with zipfile.ZipFile(src) as zf:
        info = zf.getinfo("tables/curves.parquet")
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    damaged = bytearray(raw)
    damaged[start + 10:start + 60] = bytes(50)  # inside the deflated data; the directory is intact
    listed = list(members.items())
    cases = {
        "truncated zip": (raw[:len(raw) // 2], "not a readable run bundle"),
        "damaged member": (bytes(damaged), "can't be unpacked .*damaged or truncated"),
        "duplicate member": (_write(tmp_path / "dup.zip", listed + [("tables/runs.parquet", b"x")]).read_bytes(),
                             "duplicate member names"),
        "duplicate run rows": (_write(tmp_path / "rows.zip", [(n, d) for n, d in listed if n != "tables/runs.parquet"]
                                      + [("tables/runs.parquet", doubled.read_bytes())]).read_bytes(),
                               "importing bundle"),
        "duplicate manifest ids": (_write(tmp_path / "ids.zip", [(n, d) for n, d in listed if n != "manifest.json"]
                                          + [("manifest.json", json.dumps(json.loads(members["manifest.json"])
                                                                          | {"run_ids": ids + ids[:1]}).encode())]
                                          ).read_bytes(), "distinct run ids"),
        "symlink member": (_write(tmp_path / "link.zip", [(n, d) for n, d in listed if not n.startswith("checkpoints")]
                                  + [(_special(f"checkpoints/{ids[0]}.pt", stat.S_IFLNK | 0o777), b"/etc/passwd")]
                                  ).read_bytes(), "is a symlink"),
        "folder member": (_write(tmp_path / "dir.zip", listed + [(_special(f"checkpoints/{ids[0]}.pt/",
                                                                           stat.S_IFDIR | 0o755), b"")]).read_bytes(),
                          "is a folder"),
        "device member": (_write(tmp_path / "fifo.zip", [(n, d) for n, d in listed if n != "tables/curves.parquet"]
                                 + [(_special("tables/curves.parquet", stat.S_IFIFO | 0o644), b"")]).read_bytes(),
                          "not a plain file"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name.replace(' ', '-')}.zip"
        path.write_bytes(data)
        with pytest.raises(BundleError, match=message):
            target.import_bundle(path)
        assert _same_tables(before, _tables(target)), name
        assert not target.checkpoint_dir.exists() or not any(target.checkpoint_dir.iterdir()), name
    assert target.import_bundle(src).run_ids_added == tuple(ids)  # the genuine one still goes in


def test_the_runs_page_refuses_an_upload_over_the_cap(store_env, bundle, monkeypatch):
    src, _ = bundle
    monkeypatch.setenv("LOSSLAND_MAX_UPLOAD_MB", "1")
    at = open_app("views/runs.py")
    at.file_uploader(key="runs-import").set_value(("big.zip", b"\0" * (2 * 1024**2), "application/zip")).run()
    assert not at.exception
    assert "upload = 2.0 MB is over this dashboard's cap of 1 MB (LOSSLAND_MAX_UPLOAD_MB" in at.error[0].value
    assert not [b for b in at.button if b.key == "runs-import-go"], "no Import button for it"
    at.file_uploader(key="runs-import").set_value(("bundle.zip", src.read_bytes(), "application/zip")).run()
    assert not at.error and [b for b in at.button if b.key == "runs-import-go"]
    config = (Path(__file__).resolve().parent.parent / ".streamlit" / "config.toml").read_text()
    assert f"maxUploadSize = {Limits().max_upload_mb}" in config, "Streamlit's own limit matches the default cap"


# --- 5. the SQL console in the page ---------------------------------------------------------------------

def test_the_sql_tab_caps_huge_results_with_a_note_and_stops_runaway_queries(store_env, monkeypatch):
    monkeypatch.setenv("LOSSLAND_SQL_MAX_ROWS", "1000")
    monkeypatch.setenv("LOSSLAND_SQL_TIMEOUT_S", "1")
    at = open_app("views/runs.py")
    box = "runs-sql-mean test accuracy by role"
    at.text_area(key=box).set_value("SELECT * FROM range(25000) t(i)")
    at.button(key="runs-sql-run").click().run()
    assert len(at.dataframe[-1].value) == 1000
    assert "1000 rows" in page_texts(at) and "capped; refine the query for the rest" in page_texts(at)
    at.text_area(key=box).set_value("SELECT count(*) FROM range(10000000000) a, range(1000) b")
    start = time.monotonic()
    at.button(key="runs-sql-run").click().run()
    assert time.monotonic() - start < 10
    assert "ran past the time limit of 1 s" in at.error[0].value


# --- 7. numerics under stress ------------------------------------------------------------------------

def test_lanczos_on_an_indefinite_hessian_at_initialisation_matches_eigvalsh():
    from lossland.config import DataConfig, ModelConfig
    from lossland.curvature import HessianOperator, exact_hessian
    from lossland.data import load_dataset
    from lossland.models import build_model
    from lossland.train import loss_function

    data = load_dataset(DataConfig(name="digits", n_train=200))
    model = build_model(ModelConfig(name="mlp", widths=(12,)), data.in_shape, data.n_classes).double()
    op = HessianOperator(model, data.x_train.double(), data.y_train, loss_function("cross_entropy"))
    exact = torch.linalg.eigvalsh(exact_hessian(op)).numpy()
    assert exact[0] < -0.1 < 0.1 < exact[-1], "away from a minimum the Hessian is indefinite"
    top = top_eigenpairs(op, 5, tol=1e-8, max_steps=400)
    bottom = top_eigenpairs(op, 5, tol=1e-8, max_steps=400, which="smallest")
    assert top.converged and bottom.converged
    np.testing.assert_allclose(top.eigenvalues, exact[::-1][:5], rtol=1e-7)
    np.testing.assert_allclose(bottom.eigenvalues, exact[:5], rtol=1e-7)


def _low_rank(eigenvalues, n=30, seed=1) -> MatrixOperator:
    gen = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64)).Q
    lam = torch.tensor(list(eigenvalues) + [0.0] * (n - len(eigenvalues)), dtype=torch.float64)
    return MatrixOperator(Q @ torch.diag(lam) @ Q.T)


@pytest.mark.parametrize("block_size", [1, 3])
def test_lanczos_with_k_beyond_the_rank_converges_to_the_zero_eigenvalues(block_size):
    op = _low_rank([4.0, -3.0, 2.0])  # rank 3, indefinite
    res = top_eigenpairs(op, 6, tol=1e-8, max_steps=100, block_size=block_size)
    assert res.converged and all(map(math.isfinite, res.eigenvalues + res.residuals))
    np.testing.assert_allclose(res.eigenvalues, [4, 2, 0, 0, 0, 0], atol=1e-10)
    assert res.steps < 30, "the zeros are recognised, not ground out to the full dimension"
    low = top_eigenpairs(op, 4, tol=1e-8, which="smallest", block_size=block_size)
    assert low.converged
    np.testing.assert_allclose(low.eigenvalues, [-3, 0, 0, 0], atol=1e-10)
    zero = top_eigenpairs(MatrixOperator(torch.zeros(8, 8, dtype=torch.float64)), 3)
    assert zero.converged and zero.eigenvalues == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="k = 31 is not allowed"):
        top_eigenpairs(op, 31)


def test_lanczos_refuses_a_non_finite_operator_instead_of_returning_nan():
    for bad in (math.nan, math.inf):
        A = torch.eye(10, dtype=torch.float64)
        A[3, 3] = bad
        for block_size in (1, 2):
            with pytest.raises(ValueError, match="NaN or inf .*not finite"):
                top_eigenpairs(MatrixOperator(A), 3, block_size=block_size)
        with pytest.raises(ValueError, match="NaN or inf"):
            spectral_density(MatrixOperator(A), 2, 5)


def test_figures(record_property):
    """Bad inputs tried by the property tests above (run in the same session), for RELIABILITY.md."""
    for name, n in TRIED.items():
        record_property(name, n)
    print(f"\nhostile inputs tried: {TRIED}")
