"""How fast does lossland train? Its loop against a plain DataLoader loop, and an ensemble against seeds in turn.

    python benchmarks/train_throughput.py [--preset NAME] [--samples N] [--pair] [--no-ensemble]
                                          [--device cpu|cuda] [--epochs N] [--repeats R] [--threads T]
                                          [--seeds S]

(a) `train.train` on a preset (default digits-mlp, bad role: 500 clean + 500 attack = 1,000 samples;
    --pair: both roles, one pair; --samples N: N clean + N attack images, to keep a CNN epoch short on a CPU)
    against the textbook loop: TensorDataset + DataLoader(shuffle=True) and torch.optim's optimizer with
    its defaults, on the same model, data, hyperparameters, batch size and epochs. Both loops evaluate loss
    and accuracy on clean, attack and test after every epoch with the same `evaluate`, as train() does,
    so the difference is how lossland batches and steps.
(b) `train.train_ensemble` of --seeds seeds (default 16) against as many `train` calls one after another, same
    epochs (what `ensemble.ensemble_pays` decides between).

The loss target is set out of reach so every run trains exactly --epochs epochs. Each timing is the
best of --repeats after one warm-up run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lossland.config import preset  # noqa: E402
from lossland.data import load_experiment_data  # noqa: E402
from lossland.ensemble import train_ensemble  # noqa: E402
from lossland.machine import describe  # noqa: E402
from lossland.models import build_model  # noqa: E402
from lossland.train import loss_function, train  # noqa: E402

N_SEEDS = 16
TARGET_LOOP = 3.0  # lossland's loop at least this many times the DataLoader loop's samples/s
TARGET_ENSEMBLE = 4.0  # the ensemble at least this many times faster than the seeds in turn (CPU)



@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, loss_fn, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook loop's evaluation: mean loss and accuracy over (x, y) in chunks, one set at a time."""
    if len(y) == 0:
        return torch.tensor(float("nan")), torch.tensor(float("nan"))
    total_loss, correct = 0.0, 0.0
    for i in range(0, len(y), chunk):
        out, yb = model(x[i:i + chunk]), y[i:i + chunk]
        total_loss += loss_fn(out, yb) * len(yb)
        correct += (out.argmax(-1) == yb).sum().item()
    return torch.as_tensor(total_loss / len(y)), torch.as_tensor(correct / len(y))

def dataloader_loop(cfg, data, device: torch.device, role: str = "bad") -> None:
    """The textbook loop: what train() would be with a DataLoader, everything else alike."""
    tc = cfg.train
    data = data.to(device)
    x_fit, y_fit = data.train_with_attack() if role == "bad" else (data.x_train, data.y_train)
    model = build_model(cfg.model, data.in_shape, data.n_classes).to(device)
    loss_fn = loss_function(tc.loss)
    opt = (torch.optim.SGD(model.parameters(), lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
           if tc.optimizer == "sgd" else torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay))
    loader = DataLoader(TensorDataset(x_fit, y_fit), batch_size=tc.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(tc.seed))
    for _ in range(tc.max_epochs):
        model.train()
        for xb, yb in loader:
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        for x, y in ((data.x_train, data.y_train), (data.x_attack, data.y_attack), (data.x_test, data.y_test)):
            loss, acc = evaluate(model, x, y, loss_fn)
            float(loss), float(acc)  # train() reads them back to the host every epoch too


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: vmap tracing, allocator, lazy imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="digits-mlp", help="the preset whose model, data and optimiser are timed")
    ap.add_argument("--samples", type=int, default=None, help="clean and attack images each (default: the preset's)")
    ap.add_argument("--pair", action="store_true", help="(a) times one pair (good, then bad) instead of the bad role")
    ap.add_argument("--no-ensemble", action="store_true", help="skip (b)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    ap.add_argument("--seeds", type=int, default=N_SEEDS, help=f"(b)'s seeds (default {N_SEEDS})")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    changes = {"train.device": args.device, "train.max_epochs": args.epochs, "train.loss_target": 1e-9}
    if args.samples:
        changes |= {"data.n_train": args.samples, "attack.n_attack": args.samples, "data.n_test": args.samples}
    cfg = preset(args.preset).with_changes(**changes)
    data = load_experiment_data(cfg)
    roles = ("good", "bad") if args.pair else ("bad",)
    n_fit = sum(len(data.y_train) + (len(data.y_attack) if r == "bad" else 0) for r in roles)
    short = cfg.with_changes(**{"train.max_epochs": 2})
    model = build_model(cfg.model, data.in_shape, data.n_classes)

    print(f"machine: {describe(device)}")
    print(f"workload: {args.preset} ({sum(p.numel() for p in model.parameters()):,} parameters), "
          f"{' + '.join(roles)} role{'s' if args.pair else ''}, {n_fit} samples per epoch, batch "
          f"{cfg.train.batch_size}, {cfg.train.optimizer} lr {cfg.train.lr}, {args.epochs} epochs, "
          f"best of {args.repeats}, device {device}")

    t_lossland = best_seconds(lambda: [train(cfg, data, r, device=device) for r in roles], args.repeats)
    dataloader_loop(short, data, device)
    t_loader = best_seconds(lambda: [dataloader_loop(cfg, data, device, r) for r in roles], args.repeats)
    rows = [  # name, seconds, model-epochs and images in that time, note
        ("(a) lossland train()", t_lossland, args.epochs * len(roles), args.epochs * n_fit, ""),
        ("(a) DataLoader loop", t_loader, args.epochs * len(roles), args.epochs * n_fit, ""),
        ("(a) lossland / DataLoader", None, None, None, f"{t_loader / t_lossland:.1f}× (target ≥ {TARGET_LOOP:g}×)"),
    ]
    ratios = {"loop": t_loader / t_lossland}
    if not args.no_ensemble:
        ens_rows, ratios["ensemble"] = ensemble_rows(cfg, short, data, device, args)
        rows += ens_rows
    print_rows(rows)
    targets = {"loop": TARGET_LOOP, "ensemble": TARGET_ENSEMBLE}
    missed = [what for what, ratio in ratios.items()
              if ratio < targets[what] and (what == "loop" or device.type == "cpu")]
    print()
    print("targets met" if not missed else f"target(s) missed: {', '.join(missed)}")
    return 0


def ensemble_rows(cfg, short, data, device, args) -> tuple[list[tuple], float]:
    """(b): train_ensemble of --seeds seeds (bad role) against the same seeds one train() after another."""
    seeds, n = list(range(args.seeds)), args.seeds
    train_ensemble(short, data, seeds, "bad", device=device)
    t_ensemble = best_seconds(lambda: train_ensemble(cfg, data, seeds, "bad", device=device), args.repeats)
    t_sequential = best_seconds(
        lambda: [train(cfg.with_changes(**{"model.seed": s, "train.seed": s}), data, "bad", device=device)
                 for s in seeds], max(1, args.repeats - 1))
    ratio, model_epochs = t_sequential / t_ensemble, n * args.epochs
    images = model_epochs * (len(data.y_train) + len(data.y_attack))
    return [(f"(b) train_ensemble, {n} seeds", t_ensemble, model_epochs, images, ""),
            (f"(b) {n} × train() in turn", t_sequential, model_epochs, images, ""),
            ("(b) ensemble speedup", None, None, None, f"{ratio:.1f}× (target ≥ {TARGET_ENSEMBLE:g}×)")], ratio


def print_rows(rows: list[tuple]) -> None:
    print()
    print(f"{'loop':<32} {'seconds':>8} {'ms/model-epoch':>15} {'samples/s':>11}  result")
    print("-" * 90)
    for name, seconds, model_epochs, images, note in rows:
        if seconds is None:
            print(f"{name:<32} {'':>8} {'':>15} {'':>11}  {note}")
        else:
            print(f"{name:<32} {seconds:8.3f} {1e3 * seconds / model_epochs:15.2f} {images / seconds:11,.0f}")


if __name__ == "__main__":
    raise SystemExit(main())
