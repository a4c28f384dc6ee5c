"""Synthetic pairs for the store tests, and a subprocess driver for the multi-process ones.

    python tests/store_writer.py loop STORE ROUNDS     save pairs 0..4 ROUNDS times, then print "done"
    python tests/store_writer.py read STORE ROUNDS     list runs ROUNDS times, then print "done"
    python tests/store_writer.py hang STORE SEED       commit pair SEED, then hang inside a re-save of it
    python tests/store_writer.py forever STORE         save big pairs 0, 1, 2, ... until killed
    python tests/store_writer.py hold STORE            open STORE read-write and wait until killed
    python tests/store_writer.py lease STORE SEED GO   lease pair SEED, wait for file GO, store the pair (with
                                                        checkpoints) and let go; prints "leased", then "stored"
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

K, N_VECTORS, M_NODES, N_EXACT = 5, 2, 8, 12


def make_pair(seed: int = 0, epochs: int = 5, dataset: str = "digits", exact: bool = True):
    """A PairResult with made-up numbers and its spectra by role; the config differs per seed. The models
    are the config's (so their checkpoints verify on import), their parameter count is n_params."""
    import torch

    from lossland.checkpoint import meta_model
    from lossland.config import ExperimentConfig, SpectrumConfig
    from lossland.curvature import Estimate, SpectrumResult
    from lossland.lanczos import DensityResult, EigenResult
    from lossland.pairs import ROLES
    from lossland.train import Curves, PairResult, TrainResult

    cfg = ExperimentConfig().with_changes(**{"model.seed": seed, "data.name": dataset})
    rng = np.random.default_rng(seed)
    results, spectra = {}, {}
    for r, role in enumerate(ROLES):
        e = np.arange(1, epochs + 1)
        loss = (np.exp(-e / 3) + r).tolist()
        curves = Curves(epoch=tuple(int(i) for i in e), lr=(0.005,) * epochs, clean_loss=tuple(loss),
                        clean_acc=tuple(rng.uniform(size=epochs)), attack_loss=tuple(loss),
                        attack_acc=(float("nan"),) * epochs, test_loss=tuple(loss),
                        test_acc=tuple(rng.uniform(size=epochs)))
        torch.manual_seed(seed)
        model = meta_model(cfg).to_empty(device="cpu")
        with torch.no_grad():
            for p in model.parameters():
                p.normal_()
        results[role] = TrainResult(
            role=role, status="converged", stop_reason="clean loss ≤ target", epochs=epochs, seconds=1.5 + r,
            device="cpu", n_params=sum(p.numel() for p in model.parameters()), clean_loss=loss[-1], clean_acc=1.0,
            attack_loss=2.0 + r, attack_acc=0.1 + 0.8 * r, test_loss=0.2 + r, test_acc=0.95 - 0.5 * r, curves=curves,
            model=model)
        top = tuple(sorted(rng.uniform(1, 10, K), reverse=True))
        settings = SpectrumConfig(k=K)
        fields = dict(
            top=EigenResult(eigenvalues=top, residuals=tuple(rng.uniform(0, 1e-6, K)), hvps=40, seconds=0.1,
                            converged=True, which="largest", tol=1e-6),
            density=DensityResult(nodes=rng.normal(size=(N_VECTORS, M_NODES)),
                                  weights=np.full((N_VECTORS, M_NODES), 1 / M_NODES), n_params=8, hvps=16,
                                  seconds=0.05),
            trace=Estimate(value=12.5 + r, stderr=0.5, samples=30, hvps=30, method="hutch++"),
            frobenius_sq=Estimate(value=80.0 + r, stderr=4.0, samples=30, hvps=30, method="gaussian-frobenius"),
            log_volume_k=tuple(-0.5 * np.cumsum(np.log(np.array(top) + settings.eps))),
            log_volume_exact=-3.25 - r if exact else None,
            exact_eigenvalues=tuple(sorted(rng.normal(size=N_EXACT), reverse=True)) if exact else None,
            n_params=8, hvps=150, seconds=0.3, settings=settings)
        if exact:
            fields |= {"trace_exact": 12.0 + r, "frobenius_sq_exact": 79.0 + r}
        spectra[role] = SpectrumResult(**fields)
    return PairResult(config=cfg, good=results["good"], bad=results["bad"]), spectra


def with_checkpoints(store, pair) -> dict[str, str]:
    """Save both models of `pair` as checkpoints beside `store`; their paths by role, for save_pair."""
    from lossland.checkpoint import save_checkpoint
    from lossland.pairs import ROLES, run_id

    out = {}
    for role in ROLES:
        path = store.checkpoint_dir / f"{run_id(pair.pair_id, role)}.pt"
        save_checkpoint(path, pair.config, role, getattr(pair, role).model)
        out[role] = str(path)
    return out


def expected_counts(epochs: int = 5, exact: bool = True) -> dict[str, int]:
    """Rows per table of one run saved from make_pair(epochs=epochs, exact=exact) with spectra."""
    return {"runs": 1, "curves": epochs, "spectra": K + (N_EXACT if exact else 0), "densities": N_VECTORS * M_NODES,
            "estimates": 2 + K + (3 if exact else 0)}


def _say(text: str) -> None:
    print(text, flush=True)


def main(argv: list[str]) -> None:
    mode, path = argv[0], argv[1]
    if mode == "hold":
        import duckdb

        con = duckdb.connect(path)
        con.execute("SELECT 1").fetchall()
        _say("holding")
        time.sleep(600)
        return
    from lossland import store as store_module
    from lossland.store import Store

    store = Store(path, lock_timeout=60)
    if mode == "loop":
        pairs = [make_pair(seed) for seed in range(5)]
        for _ in range(int(argv[2])):
            for pair, spectra in pairs:
                store.save_pair(pair, spectra)
        _say("done")
    elif mode == "read":
        for _ in range(int(argv[2])):
            store.runs()
            store.count_runs()
        _say("done")
    elif mode == "hang":
        pair, spectra = make_pair(int(argv[2]), epochs=5)
        store.save_pair(pair, spectra)
        _say("committed")
        bigger, bigger_spectra = make_pair(int(argv[2]), epochs=3000)
        insert = store_module._insert

        def slow_insert(con, table, rows):
            insert(con, table, rows)
            _say(f"inserted {table}")
            if table == "curves":
                time.sleep(600)

        store_module._insert = slow_insert
        store.save_pair(bigger, bigger_spectra)
    elif mode == "forever":
        seed = 0
        while True:
            pair, spectra = make_pair(seed, epochs=20_000)
            store.save_pair(pair, spectra)
            _say(f"saved {seed}")
            seed += 1
    elif mode == "lease":
        from lossland.config import ExperimentConfig
        from lossland.leases import claimed

        go = Path(argv[3])
        pair_id = ExperimentConfig().with_changes(**{"model.seed": int(argv[2])}).config_hash()  # make_pair's
        with claimed(store, _say, heartbeat_s=0.5) as claim:
            for _ in claim.batches([pair_id]):
                _say("leased")  # before torch is imported: the test goes on at once
                pair, spectra = make_pair(int(argv[2]))
                while not go.exists():
                    time.sleep(0.05)
                store.save_pair(pair, spectra, with_checkpoints(store, pair))
        _say("stored")
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
