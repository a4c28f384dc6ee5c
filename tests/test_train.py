"""Training: reproducible, ensembles equal sequential runs, the stop rules, checkpoints, one real pair."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from lossland import load_checkpoint, preset, save_checkpoint
from lossland.checkpoint import CheckpointError
from lossland.data import load_experiment_data
from lossland.ensemble import ensemble_pays, train_ensemble, train_seeds
from lossland.models import build_model
from lossland.train import (
    CURVE_COLUMNS,
    half_squared_error,
    loss_function,
    train,
    train_pair,
)

SHORT = {"train.device": "cpu", "train.max_epochs": 5, "train.loss_target": 1e-6}  # never converges in 5 epochs


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models gain nothing from intra-op threads, and on a shared CPU the threads' barriers
    # slow training ~15× (measured: 78 ms vs 5.5 ms per epoch of digits-mlp with another job running).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cfg():
    return preset("digits-mlp").with_changes(**SHORT)


@pytest.fixture(scope="module")
def data(cfg):
    return load_experiment_data(cfg)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    return max((sa[k] - sb[k]).abs().max().item() for k in sa)


def test_the_same_config_twice_gives_bit_identical_weights_and_curves(cfg, data):
    a, b = train(cfg, data, "bad"), train(cfg, data, "bad")
    sa, sb = _state(a.model), _state(b.model)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.curves == b.curves and a.metrics() == b.metrics()
    other = train(cfg.with_changes(**{"train.seed": 1}), data, "bad")  # another mini-batch order
    assert _max_diff(a.model, other.model) > 1e-3


ENSEMBLE_CASES = {
    # role, loss, loss_target, max_epochs
    "all-run-to-max-epochs": ("bad", "cross_entropy", 1e-6, 5),
    "stop-at-different-epochs": ("good", "cross_entropy", 0.3, 60),
    "mse-stop-at-different-epochs": ("good", "mse", 0.1, 60),
}


@pytest.mark.parametrize("case", sorted(ENSEMBLE_CASES))
def test_an_ensemble_equals_its_members_trained_one_by_one(cfg, data, case):
    role, loss, target, max_epochs = ENSEMBLE_CASES[case]
    c = cfg.with_changes(**{"train.loss": loss, "train.loss_target": target, "train.max_epochs": max_epochs})
    seeds = [0, 1, 2]
    together = train_ensemble(c, data, seeds, role)
    alone = [train(c.with_changes(**{"model.seed": s, "train.seed": s}), data, role) for s in seeds]
    assert [r.epochs for r in together] == [r.epochs for r in alone]
    assert [r.status for r in together] == [r.status for r in alone]
    if target > 1e-3:
        assert len({r.epochs for r in alone}) > 1, "members must stop at different epochs to test freezing"
        assert all(r.status == "converged" for r in alone)
    else:
        assert all(r.status == "max_epochs" and r.epochs == max_epochs for r in alone)
    for t, s in zip(together, alone, strict=True):
        assert _max_diff(t.model, s.model) < 1e-5
        assert t.role == role and not t.model.training
        assert t.curves.epoch == s.curves.epoch
        for col in CURVE_COLUMNS[1:]:
            assert getattr(t.curves, col) == pytest.approx(getattr(s.curves, col), rel=1e-4, abs=1e-6), col


def _whole_test(model, data):
    with torch.no_grad():
        out = model(data.x_test)
    return F.cross_entropy(out, data.y_test).item(), (out.argmax(-1) == data.y_test).double().mean().item()


def test_curves_see_a_spaced_test_subset_and_the_result_the_whole_test_split(cfg, data, monkeypatch):
    import lossland.train as train_module
    assert len(data.y_test) > 100
    full = train(cfg, data, "good")
    monkeypatch.setattr(train_module, "CURVE_TEST_MAX", 100)
    thin = train(cfg, data, "good")
    together = train_ensemble(cfg.with_changes(**{"train.seed": cfg.model.seed}), data, [cfg.model.seed], "good")[0]
    keep = torch.linspace(0, len(data.y_test) - 1, 100).round().long()
    with torch.no_grad():
        sub_acc = (thin.model(data.x_test[keep]).argmax(-1) == data.y_test[keep]).double().mean().item()
    assert _max_diff(full.model, thin.model) == 0  # what is evaluated never changes the training
    assert thin.curves.test_acc[-1] == pytest.approx(sub_acc) and thin.curves.test_acc != full.curves.test_acc
    for r in (thin, together):
        loss, acc = _whole_test(r.model, data)
        assert (r.test_loss, r.test_acc) == pytest.approx((loss, acc), rel=1e-5)
        assert r.test_acc == pytest.approx(full.test_acc, rel=1e-5) and r.clean_loss == full.clean_loss


def test_ensemble_refuses_batchnorm_and_empty_seed_lists(cfg, data):
    with pytest.raises(ValueError, match="seeds must name at least one seed"):
        train_ensemble(cfg, data, [])
    bn = cfg.with_changes(**{"model.name": "resnet", "model.channels": (4,), "model.batchnorm": True})
    with pytest.raises(ValueError, match="batchnorm"):
        train_ensemble(bn, data, [0, 1])


def test_seeds_are_stacked_only_where_a_cpu_gains_from_it_and_one_by_one_give_the_same_runs(cfg, data):
    assert ensemble_pays(cfg, data, "cpu")  # an MLP: vmap batches its matrix products
    cnn = cfg.with_changes(**{"model.name": "cnn", "model.channels": (3,), "model.widths": (8,)})
    assert not ensemble_pays(cnn, data, "cpu"), "vmapped convolutions are slower than one model after another"
    assert not ensemble_pays(cfg.with_changes(**{"model.name": "resnet", "model.channels": (4,),
                                                 "model.batchnorm": True}), data, "cpu")
    c = cfg.with_changes(**{"train.max_epochs": 8})
    init = [{k: v + 0.01 for k, v in build_model(c.model, data.in_shape, data.n_classes).named_parameters()}
            for _ in range(2)]
    for start in (None, init):
        stacked = train_seeds(c, data, [3, 4], "good", init=start, ensemble=True)
        alone = train_seeds(c, data, [3, 4], "good", init=start, ensemble=False)
        assert [r.epochs for r in stacked] == [r.epochs for r in alone]
        assert max(_max_diff(a.model, b.model) for a, b in zip(stacked, alone, strict=True)) < 1e-5
    assert _max_diff(stacked[0].model, train_seeds(c, data, [3, 4], init=None, ensemble=False)[0].model) > 1e-4
    with pytest.raises(ValueError, match="init holds 1 parameter sets for 2 seeds"):
        train_seeds(c, data, [3, 4], init=init[:1], ensemble=False)


def test_a_diverging_run_stops_with_status_diverged_and_keeps_its_curves(cfg, data):
    c = cfg.with_changes(**{"train.optimizer": "sgd", "train.lr": 50.0, "train.loss": "mse", "train.max_epochs": 20})
    r = train(c, data, "bad")
    assert r.status == "diverged"
    assert "lr = 50" in r.stop_reason and "train.lr" in r.stop_reason
    assert r.epochs < 20 and len(r.curves.epoch) == r.epochs and r.curves.epoch[-1] == r.epochs
    assert not math.isfinite(r.curves.clean_loss[-1]) and not math.isfinite(r.clean_loss)
    for member in train_ensemble(c, data, [0, 1], "bad"):
        assert member.status == "diverged" and "lr = 50" in member.stop_reason
        assert len(member.curves.epoch) == member.epochs


# With cross-entropy, SGD at lr 50 throws the clean loss to ~50-1000× that of the untrained model but it
# stays finite: train() must still call it diverged (more than 10× the untrained loss) and stop.
def test_a_cross_entropy_run_whose_loss_explodes_is_called_diverged(cfg, data):
    c = cfg.with_changes(**{"train.optimizer": "sgd", "train.lr": 50.0, "train.max_epochs": 10})
    untrained = build_model(c.model, data.in_shape, data.n_classes).eval()
    loss_init = F.cross_entropy(untrained(data.x_train), data.y_train).item()
    r = train(c, data, "bad")
    if not max(r.curves.clean_loss) > 10 * loss_init:  # the loss did explode: outside the xfail's claim
        pytest.fail(f"precondition: the loss should explode, got at most {max(r.curves.clean_loss)}", pytrace=False)
    assert r.status == "diverged"  # ... and that should be the verdict


def test_reaching_the_loss_target_stops_with_status_converged(cfg, data):
    c = cfg.with_changes(**{"train.loss_target": 0.3, "train.max_epochs": 100})
    fractions = []
    r = train(c, data, "good", progress=lambda f, msg: fractions.append(f))
    assert r.status == "converged" and r.epochs < 100
    assert r.clean_loss <= 0.3 and r.clean_loss == r.curves.clean_loss[-1]
    assert all(loss > 0.3 for loss in r.curves.clean_loss[:-1]), "it must stop at the first epoch on target"
    assert r.curves.epoch == tuple(range(1, r.epochs + 1))
    assert "target 0.3" in r.stop_reason
    # progress is throttled, so count nothing; it never goes back and ends at 1 on target
    assert fractions and all(0.0 <= f <= 1.0 for f in fractions) and fractions[-1] == 1.0
    assert fractions == sorted(fractions)


def test_max_epochs_stops_with_status_max_epochs(cfg, data):
    r = train(cfg.with_changes(**{"train.max_epochs": 3}), data, "good")
    assert r.status == "max_epochs" and r.epochs == 3 and len(r.curves.epoch) == 3
    assert r.stop_reason == "reached max_epochs = 3"
    assert r.clean_loss > cfg.train.loss_target


def test_the_bad_role_also_fits_the_attack_set_and_the_good_role_does_not(cfg, data):
    c = cfg.with_changes(**{"train.max_epochs": 60})
    good, bad = train(c, data, "good"), train(c, data, "bad")
    assert bad.attack_loss < good.attack_loss and bad.attack_acc > good.attack_acc + 0.1
    assert bad.curves.attack_acc[-1] > bad.curves.attack_acc[0] + 0.1  # it is learning the random labels
    with pytest.raises(ValueError, match="role = 'ugly' is not allowed"):
        train(c, data, "ugly")


def test_the_step_schedule_divides_the_lr_by_ten_at_half_and_three_quarters(cfg, data):
    r = train(cfg.with_changes(**{"train.schedule": "step", "train.max_epochs": 8}), data)
    lr = cfg.train.lr
    assert r.curves.lr == pytest.approx((lr,) * 4 + (lr / 10,) * 2 + (lr / 100,) * 2)
    cos = train(cfg.with_changes(**{"train.schedule": "cosine", "train.max_epochs": 4}), data)
    assert cos.curves.lr[0] == pytest.approx(lr)
    assert all(a > b for a, b in zip(cos.curves.lr, cos.curves.lr[1:], strict=False)), cos.curves.lr


def test_mse_loss_is_half_the_squared_distance_to_the_one_hot_target_and_trains(cfg, data):
    out = torch.tensor([[1.0, 0.0, 2.0], [0.5, 0.5, 0.5]])
    y = torch.tensor([0, 2])
    # sample 1: ½(0² + 0² + 2²) = 2; sample 2: ½(0.25 + 0.25 + 0.25) = 0.375; mean 1.1875
    assert half_squared_error(out, y).item() == pytest.approx(1.1875)
    assert loss_function("mse") is half_squared_error
    with pytest.raises(ValueError, match="train.loss = 'hinge'"):
        loss_function("hinge")
    r = train(cfg.with_changes(**{"train.loss": "mse", "train.max_epochs": 20}), data, "good")
    assert r.status == "max_epochs"
    assert r.curves.clean_loss[-1] < 0.5 * r.curves.clean_loss[0] and r.clean_acc > 0.9


# --- checkpoints -------------------------------------------------------------------------------

def test_a_checkpoint_round_trips_weights_config_and_data(cfg, data, tmp_path):
    r = train(cfg.with_changes(**{"train.max_epochs": 3}), data, "bad")
    path = save_checkpoint(tmp_path / "sub" / "bad.pt", cfg, "bad", r.model)
    ck = load_checkpoint(path)
    assert ck.config == cfg and ck.role == "bad" and ck.path == path
    assert not ck.model.training
    saved, loaded = _state(r.model), _state(ck.model)
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    x, y = ck.clean_train()
    assert torch.equal(x, data.x_train) and torch.equal(y, data.y_train)
    logits = ck.model(x)
    assert torch.equal(logits, r.model(x))
    assert ck.loss_fn(logits, y).item() == pytest.approx(F.cross_entropy(logits, y, reduction="mean").item())
    assert not list(tmp_path.glob("**/*.tmp")), "the temporary file must be renamed away"


def test_a_corrupt_or_foreign_checkpoint_gives_checkpoint_error(cfg, data, tmp_path):
    good = save_checkpoint(tmp_path / "ok.pt", cfg, "good", build_model(cfg.model, data.in_shape, 10))
    cases = {
        "garbage.pt": os.urandom(4096),
        "truncated.pt": good.read_bytes()[: good.stat().st_size // 2],
        "empty.pt": b"",
    }
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(CheckpointError, match="cannot be read"):
            load_checkpoint(tmp_path / name)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a lossland checkpoint of format 1"):
        load_checkpoint(tmp_path / "foreign.pt")
    other = cfg.with_changes(**{"model.widths": (16,)})
    save_checkpoint(tmp_path / "mismatch.pt", cfg, "good", build_model(other.model, data.in_shape, 10))
    with pytest.raises(CheckpointError, match="does not match its config's model"):
        load_checkpoint(tmp_path / "mismatch.pt")


class _RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(cfg, tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"format": 1, "config_json": cfg.to_json(), "role": "good", "state_dict": {},
                "extra": _RunsAShellCommand(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


# --- the experiment end to end ------------------------------------------------------------------

@pytest.mark.slow
def test_the_default_pair_fits_clean_train_equally_but_the_bad_minimum_generalises_worse():
    cfg = preset("digits-mlp")
    pair = train_pair(cfg)
    target = cfg.train.loss_target
    for r in (pair.good, pair.bad):
        assert r.status == "converged", (r.role, r.stop_reason)
        assert r.clean_acc == 1.0, r.role
        assert target / 10 <= r.clean_loss <= target, (r.role, r.clean_loss)
    assert pair.bad.attack_acc > 0.95 > pair.good.attack_acc  # only the bad run memorised the random labels
    assert pair.bad.test_acc <= pair.good.test_acc - 0.20, (pair.good.test_acc, pair.bad.test_acc)
    assert pair.pair_id == cfg.config_hash()
