"""Config: validation messages, JSON round trip, the run id hash, with_changes, presets."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lossland
from lossland.config import (
    PRESETS,
    AttackConfig,
    ConfigError,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    SpectrumConfig,
    TrainConfig,
    preset,
)
from lossland.models import build_model, n_params
from lossland.store.verify import legacy_hash

REPO = Path(lossland.__file__).resolve().parent.parent
SECTIONS = ("data", "model", "train", "attack", "spectrum")


# --- validation messages name the field, the bad value and what is allowed ------------------

BAD_VALUES = [
    # (dotted field, bad value, the value as the message shows it, a fragment of what is allowed)
    ("model.widths", (32, -4), "(32, -4)", "integers in [1, 100000]"),
    ("model.widths", (0,), "(0,)", "integers in [1, 100000]"),
    ("train.lr", 0.0, "0.0", "(0.0, 100.0]"),
    ("train.lr", -0.1, "-0.1", "(0.0, 100.0]"),
    ("train.lr", math.nan, "nan", "a finite number"),
    ("train.lr", math.inf, "inf", "a finite number"),
    ("data.name", "imagenet", "'imagenet'", "one of digits, mnist1d, teacher, mnist, fashion-mnist, cifar10"),
    ("model.name", "transformer", "'transformer'", "one of mlp, cnn, two_layer, resnet"),
    ("train.optimizer", "lbfgs", "'lbfgs'", "one of sgd, adam"),
    ("attack.labels", "flipped", "'flipped'", "one of random, wrong"),
    ("data.n_train", 1401, "1401", "an integer in [1, 1400]"),
    ("data.n_train", 0, "0", "an integer in [1, 1400]"),
    ("train.loss_target", 0.0, "0.0", "(0.0, 10.0]"),
    ("train.loss_target", -1e-3, "-0.001", "(0.0, 10.0]"),
    ("train.batch_size", True, "True", "an integer in [1, 1000000]"),
    ("train.max_epochs", 10.0, "10.0", "an integer in [1, 1000000]"),
    ("train.lr", True, "True", "a finite number"),
    ("model.batchnorm", 1, "1", "true or false"),
    ("model.seed", "0", "'0'", "an integer in [0, 2147483647]"),
    ("attack.n_attack", -1, "-1", "an integer ≥ 0"),
    ("spectrum.max_steps", 10, "10", "at least k = 20"),
]


@pytest.mark.parametrize(("field", "value", "shown", "allowed"), BAD_VALUES,
                         ids=[f"{f}={s}" for f, _, s, _ in BAD_VALUES])
def test_a_bad_value_is_refused_with_a_message_naming_field_value_and_allowed(field, value, shown, allowed):
    with pytest.raises(ConfigError) as err:
        ExperimentConfig().with_changes(**{field: value})
    message = str(err.value)
    assert message.startswith(f"{field} = {shown} is not allowed"), message
    assert allowed in message, message


def test_a_section_refuses_a_bad_value_on_construction_too():
    with pytest.raises(ConfigError, match=r"^model\.widths = \(-3,\) is not allowed"):
        ModelConfig(widths=(-3,))
    with pytest.raises(ConfigError, match=r"^train\.lr = nan is not allowed: a finite number in \(0\.0, 100\.0\]"):
        TrainConfig(lr=float("nan"))


def test_attack_larger_than_the_held_out_pool_is_refused_and_the_message_gives_the_room_left():
    # digits: a pool of 1400, clean train takes 500, so 900 are held out for the attack.
    assert ExperimentConfig(attack=AttackConfig(n_attack=900)).attack.n_attack == 900
    with pytest.raises(ConfigError) as err:
        ExperimentConfig(attack=AttackConfig(n_attack=901))
    message = str(err.value)
    assert message.startswith("attack.n_attack = 901 is not allowed: at most 900"), message
    assert "1400" in message and "data.n_train" in message


def test_clean_train_larger_than_the_dataset_pool_is_refused_per_dataset():
    for name, pool in (("mnist1d", 4000), ("mnist", 60000), ("cifar10", 50000)):
        assert DataConfig(name=name, n_train=pool).n_train == pool
        expected = rf"^data\.n_train = {pool + 1} is not allowed: an integer in \[1, {pool}\]"
        with pytest.raises(ConfigError, match=expected):
            DataConfig(name=name, n_train=pool + 1)


def test_cnn_and_resnet_are_refused_on_a_vector_dataset_and_the_message_says_what_fits():
    for model in ("cnn", "resnet"):
        with pytest.raises(ConfigError) as err:
            ExperimentConfig(data=DataConfig(name="mnist1d", n_train=100), model=ModelConfig(name=model))
        message = str(err.value)
        assert message.startswith(f"model.name = {model!r} is not allowed"), message
        assert "'mnist1d'" in message and "mlp or two_layer" in message
    # ... and accepted on an image dataset
    assert ExperimentConfig(model=ModelConfig(name="cnn")).model.name == "cnn"


def test_a_section_of_the_wrong_type_is_refused():
    with pytest.raises(ConfigError, match=r"^train = .* is not allowed: a TrainConfig"):
        ExperimentConfig(train=ModelConfig())


def test_from_dict_refuses_unknown_fields_and_sections_by_name():
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict({"train": {"lrr": 0.1}})
    assert "train.lrr" in str(err.value)
    assert "lr" in [name.strip() for name in str(err.value).split("allowed:")[1].split(",")]
    with pytest.raises(ConfigError, match="unknown config section.*'trian'"):
        ExperimentConfig.from_dict({"trian": {"lr": 0.1}})
    with pytest.raises(ConfigError, match="unknown field.*model.depth"):
        ExperimentConfig.from_json(json.dumps({"model": {"depth": 3}}))
    with pytest.raises(ConfigError, match="train must be an object of fields, got list"):
        ExperimentConfig.from_dict({"train": [1, 2]})


def test_from_json_refuses_invalid_json_and_non_objects():
    with pytest.raises(ConfigError, match="not valid JSON"):
        ExperimentConfig.from_json('{"train": {"lr": 0.1,}')
    with pytest.raises(ConfigError, match="must be a JSON object, got list"):
        ExperimentConfig.from_json("[1, 2]")


def test_from_dict_validates_values_with_the_section_path():
    with pytest.raises(ConfigError, match=r"^train\.lr = -1 is not allowed"):
        ExperimentConfig.from_dict({"train": {"lr": -1}})


# --- serialisation and the hash -----------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_json_unchanged(name):
    cfg = preset(name)
    for text in (cfg.to_json(), cfg.to_json(indent=2)):
        back = ExperimentConfig.from_json(text)
        assert back == cfg
        assert back.config_hash() == cfg.config_hash()
        assert isinstance(back.model.widths, tuple) and isinstance(back.model.channels, tuple)


def test_a_partial_dict_fills_the_defaults():
    cfg = ExperimentConfig.from_dict({"train": {"lr": 0.01}})
    assert cfg == ExperimentConfig(train=TrainConfig(lr=0.01))


def test_config_hash_is_the_same_in_a_fresh_process():
    names = sorted(PRESETS)
    code = ("import json; from lossland import preset; "
            f"print(json.dumps([preset(n).config_hash() for n in {names!r}]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "PYTHONHASHSEED": "12345"}  # a different str hash than this process: the id must not depend on it
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [preset(n).config_hash() for n in names]


def test_config_hash_is_16_hex_digits():
    h = ExperimentConfig().config_hash()
    assert len(h) == 16 and int(h, 16) >= 0


# A valid alternative for every field of every section (on the default config).
ALTERNATIVES = {
    "data.name": "mnist1d", "data.n_train": 400, "data.n_test": 100, "data.seed": 1, "data.root": "elsewhere",
    "data.teacher_dim": 10, "data.teacher_width": 4, "data.teacher_classes": 3, "data.teacher_pool": 3000,
    "data.teacher_test": 500,
    "model.name": "cnn", "model.widths": (64, 32), "model.channels": (8, 16), "model.activation": "tanh",
    "model.batchnorm": True, "model.seed": 1,
    "train.optimizer": "sgd", "train.lr": 0.01, "train.momentum": 0.5, "train.weight_decay": 1e-4,
    "train.batch_size": 50, "train.max_epochs": 100, "train.loss_target": 1e-2, "train.schedule": "cosine",
    "train.loss": "mse", "train.seed": 1, "train.device": "cpu",
    "attack.n_attack": 100, "attack.labels": "wrong", "attack.seed": 1,
    "spectrum.k": 10, "spectrum.tol": 1e-4, "spectrum.max_steps": 100, "spectrum.slq_vectors": 2,
    "spectrum.slq_steps": 30, "spectrum.sigma": 0.1, "spectrum.trace_samples": 10, "spectrum.eps": 1e-2,
    "spectrum.chunk_size": 512, "spectrum.exact_max_params": 0, "spectrum.seed": 1,
}


def test_the_alternatives_table_covers_every_field():
    base = ExperimentConfig()
    every = {f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(getattr(base, s))
             if not f.name.startswith("factory")}  # set together with name "custom": see tests/test_byo.py
    assert set(ALTERNATIVES) == every


MEASUREMENT = {f for f in ALTERNATIVES if f.startswith("spectrum.")} | {"train.device"}  # not in the run id


def test_changing_any_field_that_determines_the_minimum_changes_the_run_id_and_no_other_does():
    base = ExperimentConfig()
    hashes, spectra = {"<base>": base.config_hash()}, {"<base>": base.spectrum_id()}
    for field, value in ALTERNATIVES.items():
        section, name = field.split(".")
        changed = base.with_changes(**{field: value})
        assert getattr(getattr(changed, section), name) == value != getattr(getattr(base, section), name)
        if field in MEASUREMENT:
            assert changed.config_hash() == changed.training_hash() == base.config_hash(), field
            assert changed.good_hash() == base.good_hash(), field
            if section == "spectrum":
                spectra[field] = changed.spectrum_id()
        else:
            hashes[field] = changed.config_hash()
            assert changed.spectrum_id() == base.spectrum_id(), field
    assert len(set(hashes.values())) == len(hashes), "two configs with different minima share a run id"
    assert len(set(spectra.values())) == len(spectra), "two different spectrum settings share a spectrum id"


def test_the_good_minimum_id_leaves_the_attack_out_and_nothing_else():
    base = ExperimentConfig()
    for field in ("attack.n_attack", "attack.labels", "attack.seed"):
        changed = base.with_changes(**{field: ALTERNATIVES[field]})
        assert changed.good_hash() == base.good_hash() and changed.training_hash() != base.training_hash(), field
    for field in ("train.lr", "model.seed", "data.seed", "train.seed"):
        assert base.with_changes(**{field: ALTERNATIVES[field]}).good_hash() != base.good_hash(), field


# --- with_changes ----------------------------------------------------------------------------

def test_with_changes_returns_a_new_validated_config_and_leaves_the_original():
    base = ExperimentConfig()
    changed = base.with_changes(**{"train.lr": 0.1, "attack.n_attack": 0, "model.widths": [64, 64]})
    assert (changed.train.lr, changed.attack.n_attack, changed.model.widths) == (0.1, 0, (64, 64))
    assert changed.train.optimizer == base.train.optimizer and changed.data == base.data
    assert base == ExperimentConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.train.lr = 1.0  # type: ignore[misc]


def test_with_changes_checks_cross_section_rules():
    # n_train 1000 leaves 400 held out, fewer than the 500 attack samples of the default
    with pytest.raises(ConfigError, match=r"^attack\.n_attack = 500 is not allowed: at most 400"):
        ExperimentConfig().with_changes(**{"data.n_train": 1000})
    assert ExperimentConfig().with_changes(**{"data.n_train": 1000, "attack.n_attack": 400}).attack.n_attack == 400


def test_with_changes_refuses_unknown_names():
    with pytest.raises(ConfigError, match="unknown config field 'lr'"):
        ExperimentConfig().with_changes(lr=0.1)
    with pytest.raises(ConfigError, match="unknown config field 'optim.lr'"):
        ExperimentConfig().with_changes(**{"optim.lr": 0.1})
    with pytest.raises(ConfigError, match="train.rate"):
        ExperimentConfig().with_changes(**{"train.rate": 0.1})


# --- presets -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_validates(name):
    cfg = preset(name)
    for section in SECTIONS:
        getattr(cfg, section).validate(section)
    assert ExperimentConfig(**{s: getattr(cfg, s) for s in SECTIONS}) == cfg


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="preset = 'nope' is not allowed: one of digits-mlp"):
        preset("nope")


def test_the_default_preset_is_small_enough_for_the_exact_hessian():
    cfg = preset("digits-mlp")
    model = build_model(cfg.model, (1, 8, 8), cfg.data.n_classes())
    assert n_params(model) == 3466 <= 5000
    assert n_params(model) <= cfg.spectrum.exact_max_params
    assert isinstance(SpectrumConfig().exact_max_params, int)


# Run ids of the presets: a new config field with a default, or a changed preset, would silently orphan
# every stored run of them. Schema 7 changed the rule (spectrum settings and device left out); the ids of
# the rule before stay what stored runs are called, and a bundle's ids are still checked against them.
PINNED_HASHES = {
    "digits-mlp": "717dfcfc3fe30e45", "mnist1d-mlp": "102f08a9afa916db", "teacher-2layer": "fbd2db15970e684c",
    "mnist-lenet": "48c35bd3259dcb14", "fashion-mlp": "5548d74906f4e4f2", "cifar10-resnet": "5373a4e964ed1122",
}
PINNED_BEFORE_SCHEMA_7 = {
    "digits-mlp": "20551c7745bf9e67", "mnist1d-mlp": "f5493e8ba78a4f89", "teacher-2layer": "3de10e22dc07c218",
    "mnist-lenet": "545bea5f4ee25ce7", "fashion-mlp": "8ab1c6de389491ca", "cifar10-resnet": "c3b7fa26c33afaf2",
}


@pytest.mark.parametrize("name", sorted(PINNED_HASHES))
def test_the_run_ids_of_the_existing_presets_do_not_change(name):
    assert preset(name).config_hash() == PINNED_HASHES[name]
    assert legacy_hash(preset(name).to_json()) == PINNED_BEFORE_SCHEMA_7[name]


FASHION = ("fashion-mlp", "fashion-lenet", "fashion-lenet-sgd", "fashion-cnn", "fashion-cnn-sgd")


@pytest.mark.parametrize("name", FASHION)
def test_fashion_presets_are_at_the_papers_scale_without_the_exact_hessian(name):
    cfg = preset(name)
    assert cfg.data.name == "fashion-mnist" and cfg.spectrum.exact_max_params == 0
    assert 1000 <= cfg.data.n_train <= 10_000
    assert cfg.data.n_train <= cfg.attack.n_attack <= 4 * cfg.data.n_train


def test_fashion_presets_cover_both_optimizers_and_a_cnn_of_about_a_million_parameters():
    counts = {name: n_params(build_model(preset(name).model, (1, 28, 28), 10)) for name in FASHION}
    assert counts == {"fashion-mlp": 235_146, "fashion-lenet": 107_786, "fashion-lenet-sgd": 107_786,
                      "fashion-cnn": 996_206, "fashion-cnn-sgd": 996_206}
    for arch in ("fashion-lenet", "fashion-cnn"):
        adam, sgd = preset(arch), preset(f"{arch}-sgd")
        assert (adam.train.optimizer, sgd.train.optimizer) == ("adam", "sgd") and sgd.train.momentum == 0.9
        assert (adam.data, adam.model, adam.attack) == (sgd.data, sgd.model, sgd.attack), "only the optimizer differs"
