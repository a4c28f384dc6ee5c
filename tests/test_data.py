"""Datasets: shapes and dtypes, disjoint splits, seeded attack labels, and the local file formats."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lossland import data as data_module
from lossland.config import AttackConfig, DataConfig, ExperimentConfig, ModelConfig
from lossland.curvature import HessianOperator
from lossland.data import (
    CIFAR_FILES,
    IDX_FILES,
    DatasetError,
    _load_source,
    _source_key,
    attack_labels,
    attack_samples,
    load_dataset,
)
from lossland.models import build_model
from lossland.train import loss_function

BUILT_IN = {  # name -> (n_train, n_attack, input shape, classes, pool size, test size)
    "digits": (300, 200, (1, 8, 8), 10, 1400, 397),
    "mnist1d": (1000, 2000, (40,), 10, 4000, 1000),
    "teacher": (200, 300, (20,), 2, 4000, 1000),
}


def _rows(x: np.ndarray | torch.Tensor) -> set[bytes]:
    a = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(len(x), -1))
    return {row.tobytes() for row in a}


@pytest.fixture(scope="module", params=sorted(BUILT_IN))
def built_in(request):
    name = request.param
    n_train, n_attack, *_ = BUILT_IN[name]
    cfg = DataConfig(name=name, n_train=n_train)
    return name, cfg, load_dataset(cfg, AttackConfig(n_attack=n_attack))


def test_every_dataset_has_the_documented_shapes_and_dtypes(built_in):
    name, cfg, d = built_in
    n_train, n_attack, shape, classes, _, n_test = BUILT_IN[name]
    assert d.name == name and d.n_classes == classes and d.in_shape == shape
    for x, n in ((d.x_train, n_train), (d.x_attack, n_attack), (d.x_test, n_test)):
        assert x.dtype == torch.float32 and tuple(x.shape) == (n, *shape)
        assert torch.isfinite(x).all()
    for y, n in ((d.y_train, n_train), (d.y_attack, n_attack), (d.y_attack_true, n_attack), (d.y_test, n_test)):
        assert y.dtype == torch.int64 and tuple(y.shape) == (n,)
        assert int(y.min()) >= 0 and int(y.max()) < classes
    assert set(d.y_train.tolist()) == set(range(classes)), "clean train misses a class"


def test_clean_train_and_attack_are_disjoint_positions_in_the_pool(built_in):
    name, cfg, d = built_in
    x_pool, y_pool, _, _ = _load_source(_source_key(cfg))
    pool = BUILT_IN[name][4]
    assert len(y_pool) == pool
    tr, at = d.train_index, d.attack_index
    assert len(np.unique(tr)) == len(tr) and len(np.unique(at)) == len(at)
    assert np.intersect1d(tr, at).size == 0
    assert tr.min() >= 0 and at.min() >= 0 and max(tr.max(), at.max()) < pool
    # the tensors are exactly those pool rows
    assert np.array_equal(d.x_train.numpy(), x_pool[tr]) and np.array_equal(d.y_train.numpy(), y_pool[tr])
    assert np.array_equal(d.x_attack.numpy(), x_pool[at]) and np.array_equal(d.y_attack_true.numpy(), y_pool[at])


def test_no_test_sample_appears_in_the_pool(built_in):
    name, cfg, d = built_in
    x_pool, _, x_test, _ = _load_source(_source_key(cfg))
    pool_rows, test_rows = _rows(x_pool), _rows(x_test)
    assert len(pool_rows) == len(x_pool) and len(test_rows) == len(x_test), "duplicate rows: the check below is void"
    assert not pool_rows & test_rows
    assert not _rows(d.x_train) & _rows(d.x_test) and not _rows(d.x_attack) & _rows(d.x_test)


def test_the_split_is_seeded_by_data_seed_and_n_test_takes_a_prefix():
    a = load_dataset(DataConfig(n_train=300, seed=0))
    b = load_dataset(DataConfig(n_train=300, seed=0))
    c = load_dataset(DataConfig(n_train=300, seed=1))
    assert np.array_equal(a.train_index, b.train_index) and torch.equal(a.x_train, b.x_train)
    assert not np.array_equal(a.train_index, c.train_index)
    short = load_dataset(DataConfig(n_train=300, n_test=50))
    assert torch.equal(short.x_test, a.x_test[:50]) and torch.equal(short.y_test, a.y_test[:50])


def test_no_attack_gives_empty_tensors_of_the_right_shape():
    d = load_dataset(DataConfig(n_train=100), AttackConfig(n_attack=0))
    assert tuple(d.x_attack.shape) == (0, 1, 8, 8) and d.y_attack.dtype == torch.int64 and len(d.y_attack) == 0
    x, y = d.train_with_attack()
    assert torch.equal(x, d.x_train) and torch.equal(y, d.y_train)


# --- attack labels -------------------------------------------------------------------------

def _attack(labels: str, seed: int, n_attack: int = 2000):
    return load_dataset(DataConfig(name="mnist1d", n_train=1000), AttackConfig(n_attack=n_attack, labels=labels,
                                                                                seed=seed))


def _chi_square(counts: np.ndarray) -> float:
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("labels", ["random", "wrong"])
def test_attack_is_seeded_by_attack_seed(labels):
    a, b, c = _attack(labels, 0), _attack(labels, 0), _attack(labels, 1)
    assert torch.equal(a.y_attack, b.y_attack) and np.array_equal(a.attack_index, b.attack_index)
    assert not torch.equal(a.y_attack, c.y_attack)
    assert not np.array_equal(a.attack_index, c.attack_index)
    assert np.array_equal(a.train_index, c.train_index), "attack.seed must not move the clean-train split"


def test_random_attack_labels_are_uniform_over_the_classes():
    d = _attack("random", 0)
    counts = np.bincount(d.y_attack.numpy(), minlength=10)
    assert _chi_square(counts) < 27.9  # χ²(9 dof) at p = 0.001
    agree = (d.y_attack == d.y_attack_true).float().mean().item()
    assert 0.05 < agree < 0.15  # ~1/10 by chance, not the true labels
    big = attack_labels(np.zeros(100_000, np.int64), 10, "random", seed=3)
    assert _chi_square(np.bincount(big, minlength=10)) < 27.9


def test_wrong_attack_labels_never_equal_the_truth_and_reach_every_other_class():
    d = _attack("wrong", 0)
    y, truth = d.y_attack.numpy(), d.y_attack_true.numpy()
    assert not np.any(y == truth)
    for c in range(10):
        got = set(y[truth == c].tolist())
        assert got == set(range(10)) - {c}, f"true class {c} reaches only {sorted(got)}"
    big_truth = np.arange(90_000) % 10
    big = attack_labels(big_truth, 10, "wrong", seed=3)
    assert not np.any(big == big_truth)
    assert _chi_square(np.bincount((big - big_truth) % 10, minlength=10)[1:]) < 26.2  # χ²(8 dof), p = 0.001


def test_random_attack_labels_are_the_ones_every_stored_run_was_trained_on():
    # Pinned values: a change here silently changes the bad minimum of every stored config.
    assert attack_labels(np.arange(12) % 10, 10, "random", 0).tolist() == [5, 8, 9, 5, 3, 8, 2, 9, 8, 0, 0, 2]
    d = load_dataset(DataConfig(n_train=500), AttackConfig(n_attack=500))
    assert d.train_index[:8].tolist() == [2, 5, 8, 12, 20, 21, 23, 25]
    assert d.attack_index[:8].tolist() == [0, 1, 6, 11, 14, 15, 16, 19]
    assert d.y_attack[:12].tolist() == [5, 8, 9, 5, 3, 8, 2, 9, 8, 0, 0, 2]
    assert d.y_attack_true[:12].tolist() == [9, 3, 1, 8, 9, 4, 4, 6, 4, 7, 1, 9]
    wrong = load_dataset(DataConfig(n_train=500), AttackConfig(n_attack=500, labels="wrong"))
    assert np.array_equal(wrong.attack_index, d.attack_index), "the label mode must not move the attack samples"
    assert not np.any(wrong.y_attack.numpy() == wrong.y_attack_true.numpy())


def test_attack_labels_of_a_two_class_teacher_flip_every_wrong_label():
    d = load_dataset(DataConfig(name="teacher", n_train=200), AttackConfig(n_attack=300, labels="wrong"))
    assert torch.equal(d.y_attack, 1 - d.y_attack_true)


def test_a_pool_too_small_for_train_plus_attack_is_refused(tmp_path):
    _write_idx_dataset(tmp_path, n_train=30, n_test=10)
    with pytest.raises(DatasetError, match=r"pool has 30 samples, fewer than data\.n_train \+ attack\.n_attack = 35"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path), n_train=20), AttackConfig(n_attack=15))


# --- MNIST / Fashion-MNIST IDX files -------------------------------------------------------

def _idx_bytes(a: np.ndarray) -> bytes:
    return struct.pack(">HBB", 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(np.uint8).tobytes()


def _write_idx_dataset(folder, n_train=60, n_test=20, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {"train_x": rng.integers(0, 256, (n_train, 28, 28)), "train_y": rng.integers(0, 10, n_train),
              "test_x": rng.integers(0, 256, (n_test, 28, 28)), "test_y": rng.integers(0, 10, n_test)}
    folder.mkdir(parents=True, exist_ok=True)
    for key, a in arrays.items():
        raw = _idx_bytes(a)
        if gz:
            (folder / f"{IDX_FILES[key]}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / IDX_FILES[key]).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize(("gz", "sub"), [(False, ""), (True, ""), (True, "raw"), (False, "MNIST/raw")])
def test_idx_files_load_scaled_to_the_unit_interval(tmp_path, name, gz, sub):
    arrays = _write_idx_dataset(tmp_path / sub if sub else tmp_path, gz=gz)
    d = load_dataset(DataConfig(name=name, root=str(tmp_path), n_train=30, n_test=15), AttackConfig(n_attack=20))
    assert d.in_shape == (1, 28, 28) and d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert len(d.y_train) == 30 and len(d.y_attack) == 20 and len(d.y_test) == 15
    scaled = arrays["train_x"].astype(np.float32)[:, None] / 255.0
    assert np.allclose(d.x_train.numpy(), scaled[d.train_index])
    assert np.array_equal(d.y_train.numpy(), arrays["train_y"][d.train_index])
    assert np.allclose(d.x_attack.numpy(), scaled[d.attack_index])
    assert np.allclose(d.x_test.numpy(), arrays["test_x"][:15, None] / 255.0)
    assert np.array_equal(d.y_test.numpy(), arrays["test_y"][:15])
    assert 0.0 <= float(d.x_train.min()) and float(d.x_train.max()) <= 1.0


@pytest.mark.parametrize("name", ["digits", "mnist"])
def test_image_tensors_have_ordinary_strides_so_batched_hvps_through_conv_and_pool_work(tmp_path, name):
    _write_idx_dataset(tmp_path)
    d = load_dataset(DataConfig(name=name, root=str(tmp_path) if name == "mnist" else None, n_train=20),
                     AttackConfig(n_attack=5))
    for x in (d.x_train, d.x_attack, d.x_test):
        assert x.stride() == torch.empty(x.shape).stride(), "a stray stride on the channel reads as channels-last"
    model = build_model(ModelConfig(name="cnn", channels=(2,), widths=(4,)), d.in_shape, 10).eval()
    op = HessianOperator(model, d.x_train, d.y_train, loss_function("cross_entropy"))
    assert op.matmat(torch.randn(op.n, 2, dtype=torch.float64)).shape == (op.n, 2)


def test_missing_idx_files_name_the_folder_and_the_exact_files(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset(DataConfig(name="mnist", root=str(tmp_path), n_train=10))
    message = str(err.value)
    assert str(tmp_path.resolve()) in message
    for stem in IDX_FILES.values():
        assert stem in message
    # with three of the four present only the missing one is named
    _write_idx_dataset(tmp_path / "partial")
    (tmp_path / "partial" / IDX_FILES["test_y"]).unlink()
    with pytest.raises(DatasetError) as err:
        load_dataset(DataConfig(name="fashion-mnist", root=str(tmp_path / "partial"), n_train=10))
    message = str(err.value)
    assert f"missing {IDX_FILES['test_y']} (optionally .gz)" in message
    assert IDX_FILES["train_x"] not in message and "fashion-mnist" in message.lower()


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """The project's and the system's dataset folders moved under tmp_path: (project, system)."""
    project, system = tmp_path / "project", tmp_path / "system"
    monkeypatch.setattr(data_module, "DATASETS_DIR", project)
    monkeypatch.setattr(data_module, "SYSTEM_FOLDERS", {"fashion-mnist": (system / "fashion-mnist",)})
    return project, system


def test_fashion_mnist_is_found_in_the_system_folder_without_configuration(folders):
    _, system = folders
    arrays = _write_idx_dataset(system / "fashion-mnist", gz=True)
    d = load_dataset(DataConfig(name="fashion-mnist", n_train=30), AttackConfig(n_attack=20))
    assert np.array_equal(d.y_train.numpy(), arrays["train_y"][d.train_index])
    assert np.allclose(d.x_test.numpy()[:, 0], arrays["test_x"] / 255.0)


def test_the_project_folder_comes_before_the_system_folder(folders):
    project, system = folders
    _write_idx_dataset(system / "fashion-mnist", seed=1)
    mine = _write_idx_dataset(project / "fashion-mnist", seed=2)
    d = load_dataset(DataConfig(name="fashion-mnist", n_train=30))
    assert np.array_equal(d.y_train.numpy(), mine["train_y"][d.train_index])


def test_a_partial_project_folder_does_not_hide_a_complete_system_folder(folders):
    project, system = folders
    theirs = _write_idx_dataset(system / "fashion-mnist", seed=1)
    _write_idx_dataset(project / "fashion-mnist", seed=2)
    (project / "fashion-mnist" / IDX_FILES["test_x"]).unlink()
    d = load_dataset(DataConfig(name="fashion-mnist", n_train=30))
    assert np.array_equal(d.y_train.numpy(), theirs["train_y"][d.train_index])


def test_data_root_when_set_is_the_only_folder_searched(folders, tmp_path):
    _, system = folders
    _write_idx_dataset(system / "fashion-mnist")
    (tmp_path / "mine").mkdir()
    with pytest.raises(DatasetError) as err:
        load_dataset(DataConfig(name="fashion-mnist", root=str(tmp_path / "mine"), n_train=10))
    message = str(err.value)
    assert str((tmp_path / "mine").resolve()) in message and "data.root is set" in message
    assert str(system) not in message


def test_nothing_found_names_every_folder_looked_in_the_files_and_how_to_get_them(folders):
    project, system = folders
    with pytest.raises(DatasetError) as err:
        load_dataset(DataConfig(name="fashion-mnist", n_train=10))
    message = str(err.value)
    for folder in (project / "fashion-mnist", system / "fashion-mnist"):
        assert f"in {folder.resolve()} (no such folder)" in message
    for stem in IDX_FILES.values():
        assert stem in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "github.com/zalandoresearch/fashion-mnist" in message
    with pytest.raises(DatasetError) as err:  # no system package for MNIST: only the project folder
        load_dataset(DataConfig(name="mnist", n_train=10))
    assert str((project / "mnist").resolve()) in str(err.value) and str(system) not in str(err.value)


def test_the_system_folder_is_debians():
    assert Path("/usr/share/datasets/fashion-mnist") in data_module.SYSTEM_FOLDERS["fashion-mnist"]


def test_a_truncated_idx_file_is_refused(tmp_path):
    _write_idx_dataset(tmp_path)
    path = tmp_path / IDX_FILES["train_x"]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="is truncated"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path), n_train=10))


def test_a_truncated_gzip_idx_file_is_refused(tmp_path):
    _write_idx_dataset(tmp_path, gz=True)
    path = tmp_path / f"{IDX_FILES['train_y']}.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DatasetError, match=IDX_FILES["train_y"]):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path), n_train=10))


def test_a_file_that_is_not_idx_is_refused(tmp_path):
    _write_idx_dataset(tmp_path)
    (tmp_path / IDX_FILES["test_x"]).write_bytes(b"<html>not found</html>")
    with pytest.raises(DatasetError, match="not an unsigned-byte IDX file"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path), n_train=10))


def test_images_and_labels_of_different_counts_are_refused(tmp_path):
    arrays = _write_idx_dataset(tmp_path)
    (tmp_path / IDX_FILES["train_y"]).write_bytes(_idx_bytes(arrays["train_y"][:50]))
    with pytest.raises(DatasetError, match="60 images but 50 labels"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path), n_train=10))


# --- CIFAR-10 python batches ---------------------------------------------------------------

def _py2_pickle(d: dict) -> bytes:
    """A pickle as the CIFAR-10 distribution has them: protocol 2 from Python 2 (str keys, numpy 1 names)."""
    def s(b: bytes) -> bytes:  # a Python 2 str
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)

    def i(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    out = [b"\x80\x02}("]
    for key, v in d.items():
        out.append(s(key))
        if isinstance(v, np.ndarray):  # numpy's own reduce: _reconstruct(ndarray, (0,), 'b') + BUILD state
            out += [b"cnumpy.core.multiarray\n_reconstruct\n", b"cnumpy\nndarray\n", i(0), b"\x85", s(b"b"), b"\x87R",
                    b"(", i(1), i(v.shape[0]), i(v.shape[1]), b"\x86",
                    b"cnumpy\ndtype\n", s(b"u1"), i(0), i(1), b"\x87R",
                    b"(", i(3), s(b"|"), b"NNN", i(-1), i(-1), i(0), b"tb",
                    b"\x89", s(v.astype(np.uint8).tobytes()), b"tb"]
        elif isinstance(v, list):
            out += [b"](", *[i(int(x)) for x in v], b"e"]
        else:
            out.append(s(v))
    return b"".join([*out, b"u."])


def _write_cifar(folder, per_batch=12, n_test=20, py2=True, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in CIFAR_FILES:
        n = n_test if name == "test_batch" else per_batch
        x, y = rng.integers(0, 256, (n, 3072)).astype(np.uint8), rng.integers(0, 10, n).tolist()
        batch = {b"batch_label": name.encode(), b"labels": y, b"data": x}
        (folder / name).write_bytes(_py2_pickle(batch) if py2 else pickle.dumps(batch, protocol=4))
        written[name] = (x, np.array(y))
    return written


CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)[None, :, None, None]
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], np.float32)[None, :, None, None]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 warns on the numpy.core names of real files
@pytest.mark.parametrize(("py2", "sub"), [(True, ""), (False, ""), (True, "cifar-10-batches-py")])
def test_cifar_batches_load_normalised_per_channel(tmp_path, py2, sub):
    written = _write_cifar(tmp_path / sub if sub else tmp_path, py2=py2)
    d = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), n_train=25, n_test=10), AttackConfig(n_attack=15))
    assert d.in_shape == (3, 32, 32) and d.x_train.dtype == torch.float32 and d.y_attack.dtype == torch.int64
    x_pool = np.concatenate([written[f][0] for f in CIFAR_FILES[:5]]).reshape(-1, 3, 32, 32)
    y_pool = np.concatenate([written[f][1] for f in CIFAR_FILES[:5]])
    norm = lambda a: (a.astype(np.float32) / 255.0 - CIFAR_MEAN) / CIFAR_STD  # noqa: E731
    assert np.allclose(d.x_train.numpy(), norm(x_pool[d.train_index]), atol=1e-6)
    assert np.array_equal(d.y_train.numpy(), y_pool[d.train_index])
    assert np.allclose(d.x_attack.numpy(), norm(x_pool[d.attack_index]), atol=1e-6)
    x_test, y_test = written["test_batch"]
    assert np.allclose(d.x_test.numpy(), norm(x_test[:10].reshape(-1, 3, 32, 32)), atol=1e-6)
    assert np.array_equal(d.y_test.numpy(), y_test[:10])


def test_missing_cifar_files_name_the_folder_and_the_exact_files(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), n_train=10))
    message = str(err.value)
    assert str(tmp_path.resolve()) in message
    assert f"missing {', '.join(CIFAR_FILES)} in" in message


class _RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_cifar_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    _write_cifar(tmp_path, py2=False)
    marker = tmp_path / "code-ran"
    evil = {b"labels": [0] * 12, b"data": _RunsAShellCommand(marker)}
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps(evil, protocol=4))
    with pytest.raises(DatasetError, match=r"refusing to load (posix|os|nt)\.system"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), n_train=10))
    assert not marker.exists()


def test_a_corrupt_cifar_batch_is_refused_with_its_path(tmp_path):
    _write_cifar(tmp_path, py2=False)
    (tmp_path / "test_batch").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DatasetError, match="cannot read CIFAR-10 batch .*test_batch"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), n_train=10))


def test_a_cifar_batch_with_fewer_labels_than_images_is_refused(tmp_path):
    _write_cifar(tmp_path, py2=False)
    x = np.zeros((12, 3072), np.uint8)
    (tmp_path / "data_batch_2").write_bytes(pickle.dumps({b"labels": [0] * 11, b"data": x}, protocol=4))
    with pytest.raises(DatasetError, match="data_batch_2 holds 12 images but 11 labels"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), n_train=10))


# --- attack samples: what the attack set is, as pictures -------------------------------------

def test_attack_samples_are_the_first_clean_and_attack_images_with_their_labels():
    cfg = ExperimentConfig().with_changes(**{"data.n_train": 300, "attack.n_attack": 200, "attack.labels": "wrong"})
    d = load_dataset(cfg.data, cfg.attack)
    s = attack_samples(cfg, n=6)
    assert s.clean_images.shape == (6, 8, 8) and s.attack_images.shape == (6, 8, 8)
    assert np.array_equal(s.clean_images, d.x_train[:6, 0].numpy())
    assert np.array_equal(s.attack_images, d.x_attack[:6, 0].numpy())
    assert s.clean_labels.tolist() == d.y_train[:6].tolist()
    assert s.attack_given.tolist() == d.y_attack[:6].tolist()
    assert s.attack_true.tolist() == d.y_attack_true[:6].tolist()
    assert not np.any(s.attack_given == s.attack_true)
    assert s.class_names == tuple("0123456789")


def test_attack_samples_of_cifar_are_the_original_colours(tmp_path):
    written = _write_cifar(tmp_path, py2=False)
    cfg = ExperimentConfig(data=DataConfig(name="cifar10", root=str(tmp_path), n_train=20),
                           model=ModelConfig(name="cnn"), attack=AttackConfig(n_attack=10))
    s = attack_samples(cfg, n=3)
    x_pool = np.concatenate([written[f][0] for f in CIFAR_FILES[:5]]).reshape(-1, 3, 32, 32)
    idx = load_dataset(cfg.data, cfg.attack).train_index[:3]
    assert s.clean_images.shape == (3, 32, 32, 3)
    assert np.allclose(s.clean_images, x_pool[idx].transpose(0, 2, 3, 1) / 255.0, atol=1e-5)
    assert s.class_names[0] == "airplane"


def test_attack_samples_of_a_vector_dataset_are_refused():
    with pytest.raises(DatasetError, match="'teacher' has no pictures"):
        attack_samples(ExperimentConfig(data=DataConfig(name="teacher", n_train=100),
                                        model=ModelConfig(name="mlp")))
