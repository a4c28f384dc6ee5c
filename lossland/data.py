"""Datasets as float32 tensors: clean train, an attack set from the held-out pool, and test.

Every dataset is split the same way: a fixed *pool* of training samples and a test split.
`data.seed` picks which pool samples are clean-train; the attack set is drawn from the rest
of the pool (never from test, never overlapping clean train) and gets random (or wrong) labels.
Files (MNIST, Fashion-MNIST, CIFAR-10) are read from data.root when it is set, otherwise from
data/datasets/<name>/ and then where a system package puts them (Debian's dataset-fashion-mnist).
"""

from __future__ import annotations

import functools
import gzip
import pickle
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import factories
from .config import CUSTOM, IMAGE_DATASETS, AttackConfig, DataConfig, ExperimentConfig

DATASETS_DIR = Path("data/datasets")
# Where an operating-system package installs a dataset's original files, searched after DATASETS_DIR.
SYSTEM_FOLDERS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),  # Debian/Ubuntu: dataset-fashion-mnist
}
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                      "Bag", "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}
CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)[None, :, None, None]
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], np.float32)[None, :, None, None]


class DatasetError(RuntimeError):
    """A dataset's files are missing or malformed; the message says which and how to fix it."""


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: torch.Tensor  # clean train
    y_train: torch.Tensor
    x_attack: torch.Tensor  # held-out pool samples with random labels
    y_attack: torch.Tensor
    y_attack_true: torch.Tensor  # their real labels, for reference
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    train_index: np.ndarray  # positions in the pool, so splits can be checked
    attack_index: np.ndarray

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> Dataset:
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return Dataset(**moved)

    def train_with_attack(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([self.x_train, self.x_attack]), torch.cat([self.y_train, self.y_attack])


# --- raw sources: each returns (x_pool, y_pool, x_test, y_test) as numpy arrays ----------------

def _digits(cfg: DataConfig):
    from sklearn.datasets import load_digits  # start-up cost (~1 s), paid only when digits is loaded

    d = load_digits()
    x = _with_channel(d.images / 16.0)  # 1×8×8 images in [0, 1]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(12345).permutation(len(y))  # fixed pool/test split
    n_pool = 1400
    return x[order[:n_pool]], y[order[:n_pool]], x[order[n_pool:]], y[order[n_pool:]]


def _with_channel(images: np.ndarray) -> np.ndarray:
    """(n, H, W) -> float32 (n, 1, H, W) with ordinary strides: a `[:, None]` view has a zero stride that
    torch reads as channels-last, and conv backward under vmap (batched HVPs) refuses channels-last."""
    return np.ascontiguousarray(images, dtype=np.float32).reshape(len(images), 1, *images.shape[1:])


def _mnist1d(cfg: DataConfig):
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())  # generated locally; never the package's download path
    return (d["x"].astype(np.float32), d["y"].astype(np.int64),
            d["x_test"].astype(np.float32), d["y_test"].astype(np.int64))


def _teacher(cfg: DataConfig):
    """Gaussian inputs labelled by a random 2-layer ReLU teacher (for the 2-layer theory)."""
    rng = np.random.default_rng(20170630)
    d, m, c = cfg.teacher_dim, cfg.teacher_width, cfg.teacher_classes
    w1 = rng.standard_normal((d, m)) / np.sqrt(d)
    w2 = rng.standard_normal((m, c)) / np.sqrt(m)
    n = cfg.teacher_pool + cfg.teacher_test
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = (np.maximum(x @ w1, 0.0) @ w2).argmax(1).astype(np.int64)
    p = cfg.teacher_pool
    return x[:p], y[:p], x[p:], y[p:]


IDX_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
HOW_TO_GET = {
    "mnist": "the four IDX files of MNIST (e.g. from the original MNIST site or torchvision's mirror)",
    "fashion-mnist": "the four IDX files of Fashion-MNIST: `apt-get install dataset-fashion-mnist` on "
                     "Debian/Ubuntu (it puts them in /usr/share/datasets/fashion-mnist/), elsewhere from "
                     "github.com/zalandoresearch/fashion-mnist",
    "cifar10": "the 'CIFAR-10 python version' archive from cs.toronto.edu/~kriz/cifar.html, unpacked",
}


def dataset_folders(cfg: DataConfig) -> tuple[Path, ...]:
    """Where a file dataset is looked for, in order: data.root alone when it is set; otherwise
    data/datasets/<name>/, then the folders a system package installs it in."""
    if cfg.root:
        return (Path(cfg.root),)
    return (DATASETS_DIR / cfg.name, *SYSTEM_FOLDERS.get(cfg.name, ()))


def _missing_files(name: str, folder: Path) -> list[str]:
    if name == "cifar10":
        return [f for f in CIFAR_FILES if not (_cifar_folder(folder) / f).exists()]
    return [stem for stem in IDX_FILES.values() if _find(folder, stem) is None]


def locate(cfg: DataConfig) -> Path:
    """The first folder of `dataset_folders` holding all of the dataset's files; otherwise a
    DatasetError naming, for every folder looked in, the files missing there, and how to get them."""
    missing_in: dict[Path, list[str]] = {}
    for folder in dataset_folders(cfg):
        missing_in[folder] = _missing_files(cfg.name, folder)
        if not missing_in[folder]:
            return folder
    gz = "" if cfg.name == "cifar10" else " (optionally .gz)"
    looked = "; ".join(f"missing {', '.join(m)}{gz} in {f.resolve()}{'' if f.is_dir() else ' (no such folder)'}"
                       for f, m in missing_in.items())
    where = ("data.root is set, so only that folder is searched; put them there or set data.root to null"
             if cfg.root else f"put them in {DATASETS_DIR / cfg.name}/ or set data.root to the folder holding them")
    raise DatasetError(f"{cfg.name}: {looked}. Get {HOW_TO_GET[cfg.name]}; {where}; or run "
                        f"`python -m lossland download {cfg.name}` where torchvision is installed.")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08:
            raise DatasetError(f"{path} is not an unsigned-byte IDX file (magic {raw[:4].hex()})")
        dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        if data.size != int(np.prod(dims)):
            raise DatasetError(f"{path} is truncated: header says {dims}, found {data.size} bytes of data")
        return data.reshape(dims)
    except (OSError, EOFError, struct.error) as e:
        raise DatasetError(f"cannot read IDX file {path}: {e}") from None


def _find(folder: Path, stem: str) -> Path | None:
    # Also the layouts torchvision downloads into.
    for sub in ("", "raw", "MNIST/raw", "FashionMNIST/raw"):
        for candidate in (folder / sub / stem, folder / sub / f"{stem}.gz"):
            if candidate.exists():
                return candidate
    return None


def _idx_dataset(cfg: DataConfig):
    folder = locate(cfg)
    paths = {k: _find(folder, stem) for k, stem in IDX_FILES.items()}
    xs, ys = _read_idx(paths["train_x"]), _read_idx(paths["train_y"])
    xt, yt = _read_idx(paths["test_x"]), _read_idx(paths["test_y"])
    for part, images, labels in (("train", xs, ys), ("test", xt, yt)):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DatasetError(f"{cfg.name}: the {part} IDX files hold {len(images)} images but {len(labels)} labels "
                               f"(shapes {images.shape} and {labels.shape}); they must be a matching pair")
    scale = lambda a: _with_channel(a.astype(np.float32) / 255.0)  # noqa: E731
    return scale(xs), ys.astype(np.int64), scale(xt), yt.astype(np.int64)


def _cifar_folder(folder: Path) -> Path:
    return folder / "cifar-10-batches-py" if (folder / "cifar-10-batches-py").is_dir() else folder


def _cifar10(cfg: DataConfig):
    folder = _cifar_folder(locate(cfg))

    def load(name: str):
        try:
            with open(folder / name, "rb") as f:
                # The CIFAR-10 distribution is itself a pickle; read only plain arrays and lists from it.
                batch = _SafeUnpickler(f, encoding="bytes").load()
            x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(batch[b"labels"], dtype=np.int64)
            if len(x) != len(y):
                raise DatasetError(f"CIFAR-10 batch {folder / name} holds {len(x)} images but {len(y)} labels")
        except DatasetError:
            raise
        except Exception as e:  # noqa: BLE001 - any malformed file gets the same clear error
            raise DatasetError(f"cannot read CIFAR-10 batch {folder / name}: {e}") from None
        return x, y

    parts = [load(f) for f in CIFAR_FILES[:5]]
    x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    xt, yt = load("test_batch")
    norm = lambda a: ((a.astype(np.float32) / 255.0 - CIFAR_MEAN) / CIFAR_STD).astype(np.float32)  # noqa: E731
    return norm(x), y, norm(xt), yt


class _SafeUnpickler(pickle.Unpickler):
    """Allows numpy arrays and builtins only: a shared data file must never run code."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("builtins", "bytes")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DatasetError(f"refusing to load {module}.{name} from a data file")


SOURCES = {"digits": _digits, "mnist1d": _mnist1d, "teacher": _teacher,
           "mnist": _idx_dataset, "fashion-mnist": _idx_dataset, "cifar10": _cifar10}
FILE_DATASETS = ("mnist", "fashion-mnist", "cifar10")  # read from files; the rest are made here


@functools.lru_cache(maxsize=8)
def _load_source(cfg_key: DataConfig):
    return SOURCES[cfg_key.name](cfg_key)


def _source_key(cfg: DataConfig) -> DataConfig:
    """The part of the config that decides the raw arrays (the cache key for _load_source): for a
    file dataset, the folder its files were found in."""
    if cfg.name == "teacher":
        return replace(cfg, n_train=1, n_test=None, seed=0)
    if cfg.name in FILE_DATASETS:
        return DataConfig(name=cfg.name, n_train=1, root=str(locate(cfg).resolve()))
    return DataConfig(name=cfg.name, n_train=1)


# --- the split and the attack set ----------------------------------------------------------

def attack_labels(y_true: np.ndarray, n_classes: int, mode: str, seed: int) -> np.ndarray:
    """Uniformly random labels ("random") or uniformly random *other* labels ("wrong")."""
    rng = np.random.default_rng([seed, 1])
    if mode == "random":
        return rng.integers(0, n_classes, size=len(y_true)).astype(np.int64)
    shift = rng.integers(1, n_classes, size=len(y_true))
    return ((y_true + shift) % n_classes).astype(np.int64)


def _split(data: DataConfig, attack: AttackConfig, n_pool: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted pool positions of the clean-train samples (seeded by data.seed) and of the attack
    samples (seeded by attack.seed, drawn from the rest)."""
    if n_pool < data.n_train + attack.n_attack:
        raise DatasetError(f"{data.name}: pool has {n_pool} samples, fewer than "
                           f"data.n_train + attack.n_attack = {data.n_train + attack.n_attack}")
    order = np.random.default_rng([data.seed, 0]).permutation(n_pool)
    rest = order[data.n_train:]
    attack_idx = np.random.default_rng([attack.seed, 2]).choice(rest, attack.n_attack, replace=False)
    return np.sort(order[: data.n_train]), np.sort(attack_idx)


def _source(data: DataConfig, attack: AttackConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """(x_pool, y_pool, x_test, y_test, n_classes): a built-in dataset's, or data.factory's (its sizes checked
    against data.n_train, attack.n_attack and data.n_test, naming the field)."""
    if data.name != CUSTOM:
        return (*_load_source(_source_key(data)), data.n_classes())
    a = factories.load_data(data)
    pool, n_test = len(a.y_pool), len(a.y_test)
    for field, value, most in (("data.n_train", data.n_train, pool - 1 if attack.n_attack else pool),
                               ("attack.n_attack", attack.n_attack, pool - data.n_train),
                               ("data.n_test", data.n_test or 0, n_test)):
        if value > most:
            raise DatasetError(f"{field} = {value:,} is not allowed for data.factory = {data.factory!r}: at most "
                               f"{max(most, 0):,} (its train part holds {pool:,} samples, its test part {n_test:,}; "
                               f"clean-train and attack samples are drawn from the train part without overlap)")
    return a.x_pool, a.y_pool, a.x_test, a.y_test, a.n_classes


def load_dataset(data: DataConfig, attack: AttackConfig | None = None) -> Dataset:
    attack = attack or AttackConfig(n_attack=0)
    x_pool, y_pool, x_test, y_test, n_classes = _source(data, attack)
    train_idx, attack_idx = _split(data, attack, len(y_pool))
    y_att_true = y_pool[attack_idx]
    y_att = attack_labels(y_att_true, n_classes, attack.labels, attack.seed)
    n_test = data.test_size() or len(y_test)
    t = lambda a, dtype=torch.float32: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)  # noqa: E731
    return Dataset(
        name=data.name,
        x_train=t(x_pool[train_idx]), y_train=t(y_pool[train_idx], torch.int64),
        x_attack=t(x_pool[attack_idx]), y_attack=t(y_att, torch.int64),
        y_attack_true=t(y_att_true, torch.int64),
        x_test=t(x_test[:n_test]), y_test=t(y_test[:n_test], torch.int64),
        n_classes=n_classes, train_index=train_idx, attack_index=attack_idx,
    )


def load_experiment_data(cfg: ExperimentConfig) -> Dataset:
    return load_dataset(cfg.data, cfg.attack)


@dataclass(frozen=True)
class AttackSamples:
    """A few clean training images with their labels beside a few attack images with the labels the bad
    minimum is trained on and the true ones; images (n, H, W) grey or (n, H, W, 3) colour, in [0, 1]."""

    clean_images: np.ndarray
    clean_labels: np.ndarray
    attack_images: np.ndarray
    attack_given: np.ndarray
    attack_true: np.ndarray
    class_names: tuple[str, ...]


def attack_samples(cfg: ExperimentConfig, n: int = 8) -> AttackSamples:
    """The first `n` clean-train and attack samples of a config's split, as pictures (image datasets)."""
    if cfg.data.name not in IMAGE_DATASETS:
        raise DatasetError(f"data.name = {cfg.data.name!r} has no pictures: one of {', '.join(IMAGE_DATASETS)}")
    x_pool, y_pool, _, _ = _load_source(_source_key(cfg.data))
    train_idx, attack_idx = _split(cfg.data, cfg.attack, len(y_pool))
    given = attack_labels(y_pool[attack_idx], cfg.data.n_classes(), cfg.attack.labels, cfg.attack.seed)
    clean, attack = train_idx[:n], attack_idx[:n]
    names = CLASS_NAMES.get(cfg.data.name, tuple(str(c) for c in range(cfg.data.n_classes())))
    return AttackSamples(_pictures(cfg.data.name, x_pool[clean]), y_pool[clean],
                         _pictures(cfg.data.name, x_pool[attack]), given[:n], y_pool[attack], names)


def _pictures(name: str, x: np.ndarray) -> np.ndarray:
    if name == "cifar10":  # undo the per-channel normalisation; channels last for drawing
        return np.clip(x * CIFAR_STD + CIFAR_MEAN, 0.0, 1.0).transpose(0, 2, 3, 1)
    return x[:, 0]


def download(name: str, root: str | Path | None = None) -> Path:
    """Opt-in download through torchvision (only when it is installed)."""
    try:
        import torchvision  # noqa: F401
        from torchvision import datasets as tvd
    except Exception:  # noqa: BLE001
        raise DatasetError(
            f"downloading {name} needs torchvision, which is not installed. Install it "
            f"(pip install torchvision) or place the files by hand: {HOW_TO_GET.get(name, '')}") from None
    folder = Path(root) if root else DATASETS_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    if name in ("mnist", "fashion-mnist"):
        cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
        for train in (True, False):
            cls(str(folder), train=train, download=True)
        return folder
    if name == "cifar10":
        tvd.CIFAR10(str(folder), train=True, download=True)
        return folder
    raise DatasetError(f"dataset = {name!r} has no download; one of mnist, fashion-mnist, cifar10")
