"""Every knob of an experiment as frozen, self-validating plain data.

A config validates itself on construction: a bad value raises ConfigError naming the
field, the value and what is allowed. What determines the minimum hashes to the run id; the spectrum
section hashes to the id a spectrum is stored under.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from . import factory_spec
from .factory_spec import CUSTOM

# Bumped whenever stored results would change for the same config (new metric, fixed bug).
RESULT_FORMAT_VERSION = 1

# name -> (size of the train pool that clean-train and attack samples are drawn from, test size)
DATASET_SIZES: dict[str, tuple[int, int]] = {
    "digits": (1400, 397),
    "mnist1d": (4000, 1000),
    "teacher": (0, 0),  # set by DataConfig.teacher_pool / teacher_test
    "mnist": (60000, 10000),
    "fashion-mnist": (60000, 10000),
    "cifar10": (50000, 10000),
}
IMAGE_DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
MODELS = ("mlp", "cnn", "two_layer", "resnet", CUSTOM)  # custom: model.factory builds it
ACTIVATIONS = ("relu", "tanh", "gelu", "softplus")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine", "step")
LOSSES = ("cross_entropy", "mse")
DEVICES = ("auto", "cpu", "cuda")
ATTACK_LABELS = ("random", "wrong")
MAX_LAYERS = 64  # hidden widths of a model: deeper is a typo or an attack, not an experiment here
MAX_CONV_STAGES = 16
MAX_TRAJECTORY_POINTS = 200  # snapshots of an optimizer trajectory (record.trajectory_points)


# ConfigError and the field checks (names kept here: specs and the factories import them from config)
from .checks import ConfigError, _choice, _fail, _int, _is_int, _is_num, _num, _shown  # noqa: E402, F401


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    n_train: int = 500  # clean-train size
    n_test: int | None = None  # None: the whole test split
    seed: int = 0  # the split: which pool samples are clean-train
    root: str | None = None  # folder of local files (mnist, fashion-mnist, cifar10)
    teacher_dim: int = 20
    teacher_width: int = 8
    teacher_classes: int = 2
    teacher_pool: int = 4000
    teacher_test: int = 1000
    factory: str | None = None  # name "custom": "package.module:function" returning the data (lossland.factories)
    factory_kwargs: dict = field(default_factory=dict, hash=False)
    factory_sha256: str | None = None  # of the factory's module source, set by factories.pinned

    def pool_size(self) -> int:
        if self.name == CUSTOM:
            raise ConfigError(factory_spec.unloaded(self, "pool size"))
        return self.teacher_pool if self.name == "teacher" else DATASET_SIZES[self.name][0]

    def test_size(self) -> int | None:
        if self.name == CUSTOM:
            return self.n_test  # None: all of the factory's test split
        full = self.teacher_test if self.name == "teacher" else DATASET_SIZES[self.name][1]
        return full if self.n_test is None else self.n_test

    def n_classes(self) -> int:
        if self.name == CUSTOM:
            raise ConfigError(factory_spec.unloaded(self, "number of classes"))
        return self.teacher_classes if self.name == "teacher" else 10

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, p: str = "data") -> None:
        _choice(f"{p}.name", self.name, (*DATASET_SIZES, CUSTOM))
        factory_spec.check(self, p, _fail)
        _int(f"{p}.seed", self.seed, 0, 2**31 - 1)
        # teacher_* are checked whatever the dataset: a stray NaN or string must not slip into the hash
        _int(f"{p}.teacher_dim", self.teacher_dim, 1, 100_000)
        _int(f"{p}.teacher_width", self.teacher_width, 1, 100_000)
        _int(f"{p}.teacher_classes", self.teacher_classes, 2, 1000)
        _int(f"{p}.teacher_pool", self.teacher_pool, 2, 10_000_000)
        _int(f"{p}.teacher_test", self.teacher_test, 1, 10_000_000)
        pool = 10**8 if self.name == CUSTOM else self.pool_size()  # a factory's sizes are checked at loading
        _int(f"{p}.n_train", self.n_train, 1, pool)
        full_test = (pool if self.name == CUSTOM else self.teacher_test if self.name == "teacher"
                     else DATASET_SIZES[self.name][1])
        if self.n_test is not None:
            _int(f"{p}.n_test", self.n_test, 1, full_test)
        if self.root is not None and (not isinstance(self.root, str) or not self.root.strip()):
            _fail(f"{p}.root", self.root, "a folder path, or null for data/datasets/<name>/")


@dataclass(frozen=True)
class AttackConfig:
    n_attack: int = 500  # extra samples with random labels, drawn from the held-out pool
    labels: str = "random"  # "random": uniform over classes; "wrong": uniform over the other classes
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, p: str = "attack") -> None:
        _int(f"{p}.n_attack", self.n_attack, 0, None)
        _choice(f"{p}.labels", self.labels, ATTACK_LABELS)
        _int(f"{p}.seed", self.seed, 0, 2**31 - 1)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mlp"
    widths: tuple[int, ...] = (32, 32)  # hidden widths of the fully connected layers
    channels: tuple[int, ...] = (6, 16)  # conv channels (cnn, resnet)
    activation: str = "relu"
    batchnorm: bool = False  # resnet only
    seed: int = 0  # initialisation
    factory: str | None = None  # name "custom": "package.module:function" returning an nn.Module
    factory_kwargs: dict = field(default_factory=dict, hash=False)
    factory_sha256: str | None = None  # of the factory's module source, set by factories.pinned

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, p: str = "model") -> None:
        _choice(f"{p}.name", self.name, MODELS)
        factory_spec.check(self, p, _fail)
        _choice(f"{p}.activation", self.activation, ACTIVATIONS)
        for key, most in (("widths", MAX_LAYERS), ("channels", MAX_CONV_STAGES)):
            vals = getattr(self, key)
            if (not isinstance(vals, tuple) or len(vals) > most
                    or not all(_is_int(w) and 1 <= w <= 100_000 for w in vals)):
                _fail(f"{p}.{key}", vals, f"a list of at most {most} integers in [1, 100000]")
        if self.name == "two_layer" and len(self.widths) != 1:
            _fail(f"{p}.widths", self.widths, "exactly one hidden width for two_layer")
        if self.name in ("cnn", "resnet") and not self.channels:
            _fail(f"{p}.channels", self.channels, f"at least one conv width for {self.name}")
        if not isinstance(self.batchnorm, bool):
            _fail(f"{p}.batchnorm", self.batchnorm, "true or false")
        _int(f"{p}.seed", self.seed, 0, 2**31 - 1)


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = "adam"
    lr: float = 0.005
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    batch_size: int = 100
    max_epochs: int = 3000
    loss_target: float = 1e-3  # stop when the *clean* training loss reaches this
    schedule: str = "constant"
    loss: str = "cross_entropy"
    seed: int = 0  # mini-batch order
    device: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, p: str = "train") -> None:
        _choice(f"{p}.optimizer", self.optimizer, OPTIMIZERS)
        _num(f"{p}.lr", self.lr, 0.0, 100.0, lo_open=True)
        _num(f"{p}.momentum", self.momentum, 0.0, 0.999)
        _num(f"{p}.weight_decay", self.weight_decay, 0.0, 1.0)
        _int(f"{p}.batch_size", self.batch_size, 1, 1_000_000)
        _int(f"{p}.max_epochs", self.max_epochs, 1, 1_000_000)
        _num(f"{p}.loss_target", self.loss_target, 0.0, 10.0, lo_open=True)
        _choice(f"{p}.schedule", self.schedule, SCHEDULES)
        _choice(f"{p}.loss", self.loss, LOSSES)
        _int(f"{p}.seed", self.seed, 0, 2**31 - 1)
        _choice(f"{p}.device", self.device, DEVICES)


@dataclass(frozen=True)
class SpectrumConfig:
    k: int = 20  # top eigenpairs by Lanczos
    tol: float = 1e-6  # residual rule: ||Hv - λv|| <= tol·|λ| for each of the k
    max_steps: int = 300  # Lanczos steps at most (the basis is float64, fully reorthogonalised)
    slq_vectors: int = 4  # stochastic Lanczos quadrature: random vectors
    slq_steps: int = 60  # ... and steps per vector
    sigma: float = 0.05  # Gaussian smoothing of the density, relative to the spectral range
    trace_samples: int = 30  # HVPs for Hutch++ trace and the Frobenius estimate
    eps: float = 1e-3  # log-volume: -1/2 Σ log(λ_i + eps)
    chunk_size: int = 2048  # samples per chunk of the whole-dataset HVP
    exact_max_params: int = 5000  # build the exact Hessian up to this size
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, p: str = "spectrum") -> None:
        _int(f"{p}.k", self.k, 1, 10_000)
        _num(f"{p}.tol", self.tol, 0.0, 1.0, lo_open=True)
        _int(f"{p}.max_steps", self.max_steps, 2, 100_000)
        _int(f"{p}.slq_vectors", self.slq_vectors, 1, 10_000)
        _int(f"{p}.slq_steps", self.slq_steps, 2, 10_000)
        _num(f"{p}.sigma", self.sigma, 0.0, 10.0, lo_open=True)
        _int(f"{p}.trace_samples", self.trace_samples, 3, 100_000)
        _num(f"{p}.eps", self.eps, 0.0, 1e6, lo_open=True)
        _int(f"{p}.chunk_size", self.chunk_size, 1, 10_000_000)
        _int(f"{p}.exact_max_params", self.exact_max_params, 0, 50_000)
        _int(f"{p}.seed", self.seed, 0, 2**31 - 1)
        if self.max_steps < self.k:
            _fail(f"{p}.max_steps", self.max_steps, f"at least k = {self.k}")

    def spectrum_id(self) -> str:
        """The key of a spectrum under its run: the digest of these settings."""
        return digest({"spectrum": dataclasses.asdict(self)})


@dataclass(frozen=True)
class RecordConfig:
    """What training records beside the minimum; it never changes the minimum, so it is not in the run id."""

    trajectory_points: int = 40  # parameter snapshots kept for the optimizer trajectory (0: none)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, p: str = "record") -> None:
        _int(f"{p}.trajectory_points", self.trajectory_points, 0, MAX_TRAJECTORY_POINTS)
        if self.trajectory_points in (1, 2):
            _fail(f"{p}.trajectory_points", self.trajectory_points, "0 (none) or at least 3: a plane needs 3 points")


@dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    spectrum: SpectrumConfig = field(default_factory=SpectrumConfig)
    record: RecordConfig = field(default_factory=RecordConfig)

    def __post_init__(self) -> None:
        for name, kind in _SECTIONS.items():
            if not isinstance(getattr(self, name), kind):
                _fail(name, getattr(self, name), f"a {kind.__name__}")
            getattr(self, name).validate(name)
        free = math.inf if self.data.name == CUSTOM else self.data.pool_size() - self.data.n_train
        if self.attack.n_attack > free:
            _fail("attack.n_attack", self.attack.n_attack,
                  f"at most {free}: the held-out pool of {self.data.name} has "
                  f"{self.data.pool_size()} samples and data.n_train takes {self.data.n_train}")
        if self.model.name in ("cnn", "resnet") and self.data.name not in (*IMAGE_DATASETS, CUSTOM):
            _fail("model.name", self.model.name,
                  f"mlp or two_layer for the vector dataset {self.data.name!r}; "
                  f"cnn and resnet need one of {', '.join(IMAGE_DATASETS)}")
        if self.train.loss == "mse" and self.data.n_classes() < 2:
            _fail("train.loss", self.train.loss, "cross_entropy")

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict:
        return factory_spec.without_unused(dataclasses.asdict(self))  # ids made before factories stay the same

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent)

    @classmethod
    def from_dict(cls, d: dict) -> ExperimentConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"config must be a JSON object, got {type(d).__name__}")
        unknown = set(d) - set(_SECTIONS)
        if unknown:
            raise ConfigError(f"unknown config section(s) {_shown(sorted(map(str, unknown)))}; "
                              f"allowed: {list(_SECTIONS)}")
        parts = {name: _section_from_dict(name, kind, d.get(name, {})) for name, kind in _SECTIONS.items()}
        return cls(**parts)

    @classmethod
    def from_json(cls, text: str) -> ExperimentConfig:
        if not isinstance(text, (str, bytes, bytearray)):
            raise ConfigError(f"config must be JSON text, got {type(text).__name__}")
        try:
            d = json.loads(text)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, ints past the digit limit, deep nesting
            raise ConfigError(f"config is not valid JSON: {_shown(str(e), 200)}") from None
        return cls.from_dict(d)

    def id_payload(self, attack: bool = True) -> dict:
        """What a run id covers: what determines the minimum (data, model, training, attack and their
        seeds; without the attack, the good minimum's), not the spectrum settings, the device nor what is
        recorded. A factory's source hash must be pinned first (see lossland.factories.pinned)."""
        if (why := factory_spec.unpinned({"data": self.data, "model": self.model})) is not None:
            raise ConfigError(why)
        d = {k: v for k, v in self.to_dict().items() if k not in UNHASHED_SECTIONS}
        del d["train"]["device"]
        if not attack:
            del d["attack"]
        return {"v": RESULT_FORMAT_VERSION, "config": d}

    def training_hash(self) -> str:
        """The pair id (and the bad minimum's): 16 hex digits of sha256 over `id_payload()`."""
        return digest(self.id_payload())

    def good_hash(self) -> str:
        """The good minimum's id: no attack in it, so every attack size shares one good run."""
        return digest(self.id_payload(attack=False))

    config_hash = training_hash  # the pair id, by its older name

    def spectrum_id(self) -> str:
        return self.spectrum.spectrum_id()

    def with_changes(self, **dotted: Any) -> ExperimentConfig:
        """`cfg.with_changes(**{"train.lr": 0.1, "attack.n_attack": 0})` -> a new validated config."""
        sections: dict[str, dict] = {}
        for key, value in dotted.items():
            section, _, name = key.partition(".")
            if section not in _SECTIONS or not name:
                raise ConfigError(f"unknown config field {key!r}; use section.field, sections {list(_SECTIONS)}")
            sections.setdefault(section, {})[name] = value
        parts = {}
        for section, changes in sections.items():
            current = getattr(self, section).__dict__ | changes
            parts[section] = _section_from_dict(section, _SECTIONS[section], current)
        return replace(self, **parts)


def digest(payload: dict) -> str:
    """16 hex digits of sha256 over canonical JSON."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
             "attack": AttackConfig, "spectrum": SpectrumConfig, "record": RecordConfig}
UNHASHED_SECTIONS = ("record", "spectrum")  # sections that do not change the minimum: left out of the pair id


def _section_from_dict(name: str, kind: type, d: Any):
    if not isinstance(d, dict):
        raise ConfigError(f"{name} must be an object of fields, got {type(d).__name__}")
    known = {f.name for f in fields(kind)}
    unknown = set(d) - known
    if unknown:
        shown = ", ".join(f"{name}.{_shown(u, 40) if not isinstance(u, str) else u[:40]}"
                          for u in sorted(unknown, key=str)[:5])
        raise ConfigError(f"unknown field(s) {shown}; allowed: {', '.join(sorted(known))}")
    d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
    try:
        obj = kind(**d)
    except TypeError as e:
        raise ConfigError(f"{name}: {e}") from None
    obj.validate(name)
    return obj


def _fashion(n_train: int, n_attack: int, model: ModelConfig, train: TrainConfig) -> ExperimentConfig:
    """A Fashion-MNIST preset: too many parameters for the exact Hessian, so Lanczos only."""
    return ExperimentConfig(data=DataConfig(name="fashion-mnist", n_train=n_train), model=model, train=train,
                            attack=AttackConfig(n_attack=n_attack), spectrum=SpectrumConfig(exact_max_params=0))


PRESETS: dict[str, ExperimentConfig] = {
    # The default: a 64-32-32-10 MLP, 3,466 parameters, so its exact Hessian is cheap; enough
    # capacity to memorise 500 random labels (64-32-10 stalls near clean loss 0.2 on the bad run).
    "digits-mlp": ExperimentConfig(),
    "mnist1d-mlp": ExperimentConfig(
        data=DataConfig(name="mnist1d", n_train=1000),
        model=ModelConfig(name="mlp", widths=(100, 100)),
        train=TrainConfig(optimizer="adam", lr=0.003, batch_size=100, max_epochs=2000),
        attack=AttackConfig(n_attack=1000),
        spectrum=SpectrumConfig(exact_max_params=0)),
    "teacher-2layer": ExperimentConfig(
        data=DataConfig(name="teacher", n_train=500),
        model=ModelConfig(name="two_layer", widths=(64,)),
        train=TrainConfig(optimizer="adam", lr=0.01, batch_size=100, max_epochs=3000),
        attack=AttackConfig(n_attack=500)),
    "mnist-lenet": ExperimentConfig(
        data=DataConfig(name="mnist", n_train=1000),
        model=ModelConfig(name="cnn", channels=(6, 16), widths=(120, 84)),
        train=TrainConfig(optimizer="adam", lr=0.001, batch_size=100, max_epochs=1000),
        attack=AttackConfig(n_attack=1000),
        spectrum=SpectrumConfig(exact_max_params=0)),
    # Fashion-MNIST (found without configuration: see data.py): a 784-256-128-10 MLP, 235,146 parameters;
    # LeNet-5, 107,786; a wider CNN, 996,206; the CNNs with Adam and with SGD + momentum.
    "fashion-mlp": _fashion(1000, 1000, ModelConfig(name="mlp", widths=(256, 128)),
                            TrainConfig(optimizer="adam", lr=0.001, batch_size=100, max_epochs=1000)),
    "fashion-lenet": _fashion(2000, 4000, ModelConfig(name="cnn", channels=(6, 16), widths=(120, 84)),
                              TrainConfig(optimizer="adam", lr=0.001, batch_size=100, max_epochs=1000)),
    "fashion-lenet-sgd": _fashion(2000, 4000, ModelConfig(name="cnn", channels=(6, 16), widths=(120, 84)),
                                  TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=100,
                                              max_epochs=1000)),
    "fashion-cnn": _fashion(5000, 10000, ModelConfig(name="cnn", channels=(32, 64), widths=(300,)),
                            TrainConfig(optimizer="adam", lr=0.0005, batch_size=128, max_epochs=500)),
    "fashion-cnn-sgd": _fashion(5000, 10000, ModelConfig(name="cnn", channels=(32, 64), widths=(300,)),
                                TrainConfig(optimizer="sgd", lr=0.02, momentum=0.9, batch_size=128, max_epochs=500)),
    "cifar10-resnet": ExperimentConfig(
        data=DataConfig(name="cifar10", n_train=5000),
        model=ModelConfig(name="resnet", channels=(16, 32, 64), widths=(), batchnorm=True),
        train=TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=128, max_epochs=500,
                          schedule="cosine"),
        attack=AttackConfig(n_attack=5000),
        spectrum=SpectrumConfig(exact_max_params=0, chunk_size=1000)),
}
DEFAULT_PRESET = "digits-mlp"


def preset(name: str) -> ExperimentConfig:
    """The named preset config (see PRESETS); ConfigError lists the names when it is not one."""
    if name not in PRESETS:
        raise ConfigError(f"preset = {name!r} is not allowed: one of {', '.join(PRESETS)}")
    return PRESETS[name]
