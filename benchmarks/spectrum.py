"""Side-by-side costs of the Hessian engine: HVP vs gradient, and top-k eigenvalues by lossland's Lanczos,
SciPy's ARPACK `eigsh` and PyHessian-style power iteration with deflation.

    python benchmarks/spectrum.py [--device cpu|cuda] [--repeats 30] [--runs 3]

(a) digits-mlp (trained to the preset's target): seconds per gradient, per HVP (single matvec and
    a 10-column matmat), for every HVP method, in float32 and float64.
(b) top-10 and top-20 on digits-mlp against eigvalsh of the exact Hessian (float64 HVPs), then on
    mnist1d-mlp (~15k parameters, briefly trained; no exact Hessian) against eigsh at tol 1e-12.
"""

from __future__ import annotations

import argparse
import copy
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lossland.config import preset  # noqa: E402
from lossland.curvature import HessianOperator, exact_hessian  # noqa: E402
from lossland.data import load_experiment_data  # noqa: E402
from lossland.lanczos import top_eigenpairs  # noqa: E402
from lossland.train import loss_function, train  # noqa: E402

LOSS = loss_function("cross_entropy")


def table(title: str, header: list[str], rows: list[list]) -> None:
    cells = [header] + [[c if isinstance(c, str) else f"{c:.3g}" if isinstance(c, float) else str(c) for c in r]
                        for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for j, r in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
        if j == 0:
            print("  ".join("-" * w for w in widths))
    sys.stdout.flush()


def timed(f, repeats: int) -> float:
    f()  # warm-up
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        f()
    sync()
    return (time.perf_counter() - start) / repeats


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# --- baselines ---------------------------------------------------------------------------------

def scipy_eigsh(op, k: int, tol: float, seed: int = 0) -> tuple[np.ndarray, int, float]:
    """ARPACK's implicitly restarted Lanczos on the same operator (float64 numpy in and out)."""
    def mv(v):
        return op.matvec(torch.as_tensor(np.ravel(v), device=op.device)).cpu().numpy()

    def mm(V):
        return op.matmat(torch.as_tensor(V, device=op.device)).cpu().numpy()

    lin = LinearOperator((op.n, op.n), matvec=mv, matmat=mm, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(op.n)
    hvps0, start = op.hvps, time.perf_counter()
    vals = eigsh(lin, k=k, which="LA", tol=tol, v0=v0, return_eigenvectors=False)
    return np.sort(vals)[::-1], op.hvps - hvps0, time.perf_counter() - start


def power_iteration(op, k: int, max_iter: int = 100, tol: float = 1e-3, seed: int = 0) -> tuple[np.ndarray, int, float]:
    """PyHessian's `eigenvalues()`: power iteration, deflated by orthogonalising against the
    eigenvectors found so far; stop an eigenvalue at relative change < tol or max_iter HVPs."""
    gen = torch.Generator().manual_seed(seed)
    hvps0, start = op.hvps, time.perf_counter()
    found: list[torch.Tensor] = []
    values = []
    for _ in range(k):
        v = torch.randn(op.n, generator=gen, dtype=torch.float64).to(op.device)
        v /= torch.linalg.vector_norm(v)
        value = None
        for _ in range(max_iter):
            for u in found:
                v = v - (u @ v) * u
            v /= torch.linalg.vector_norm(v)
            Hv = op.matvec(v)
            current = float(Hv @ v)
            v = Hv / torch.linalg.vector_norm(Hv)
            if value is not None and abs(value - current) / (abs(value) + 1e-6) < tol:
                value = current
                break
            value = current
        values.append(value)
        found.append(v)
    return np.sort(values)[::-1], op.hvps - hvps0, time.perf_counter() - start


def rel_err(values, truth) -> float:
    values, truth = np.asarray(values), np.asarray(truth)
    return float(np.max(np.abs(values - truth) / np.abs(truth)))


def graph_bytes(op: HessianOperator) -> int:
    """Bytes of the tensors one chunk's double-backward graph saves (the memory an HVP holds)."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        q, g = op._gradient_graph(0)
        torch.autograd.grad(g, q, grad_outputs=torch.ones_like(g))
    return sum(seen.values())


# --- the runs -----------------------------------------------------------------------------------

def hvp_costs(model, x, y, device, repeats: int) -> None:
    """Seconds per gradient and per HVP; the gradient is the operator's own (plain autograd, one chunk)."""
    rows = []
    for dtype in (torch.float32, torch.float64):
        m = copy.deepcopy(model).to(device=device, dtype=dtype)
        plain = HessianOperator(m, x, y, LOSS)
        grad_s = timed(plain.gradient, repeats)
        for method, cache in (("forward-over-reverse", False), ("double-backward", False),
                              ("double-backward", True)):
            op = HessianOperator(m, x, y, LOSS, method=method, cache_graph=cache, check_determinism=False)
            gen = torch.Generator().manual_seed(0)
            V = torch.randn(op.n, 10, generator=gen, dtype=torch.float64).to(device)
            one = timed(lambda op=op, V=V: op.matvec(V[:, 0]), repeats)
            ten = timed(lambda op=op, V=V: op.matmat(V), max(3, repeats // 3)) / 10
            label = method + (" (cached graph)" if cache else "")
            rows.append([str(dtype).replace("torch.", ""), label, grad_s * 1e3, one * 1e3, one / grad_s,
                         ten * 1e3, ten / grad_s])
    table(f"(a) HVP cost on digits-mlp ({len(y)} samples, {sum(p.numel() for p in model.parameters())} "
          f"params, {device}; default = double-backward with cached graph)",
          ["dtype", "HVP method", "grad ms", "matvec ms", "matvec/grad", "matmat(10) ms/vec", "per-vec/grad"], rows)


def lanczos(op, k: int, block: int, verify: bool = False):
    res = top_eigenpairs(op, k, tol=1e-6, max_steps=300, block_size=block, verify=verify)
    return np.array(res.eigenvalues), res.hvps, res.seconds, res


def best_of(runs: int, f):
    """The run with the fewest seconds (every run spends the same HVPs: all are seeded)."""
    return min((f() for _ in range(runs)), key=lambda r: r[2])


def compare_topk(op, ks, truth_fn, truth_label: str, title: str, runs: int) -> int:
    rows, largest_steps = [], 0
    for k in ks:
        truth = truth_fn(k)
        methods = [("lossland Lanczos", lambda k=k: lanczos(op, k, 1)),
                   ("lossland Lanczos, verify=True", lambda k=k: lanczos(op, k, 1, verify=True)),
                   ("lossland block Lanczos (4)", lambda k=k: lanczos(op, k, 4)),
                   ("scipy eigsh (ARPACK, tol 1e-6)", lambda k=k: scipy_eigsh(op, k, tol=1e-6)),
                   ("power iteration + deflation", lambda k=k: power_iteration(op, k))]
        for name, f in methods:
            out = best_of(runs, f)
            vals, hvps, secs = out[:3]
            conv = "-"
            if len(out) == 4:
                conv = "yes" if out[3].converged else "NO"
                if name == "lossland Lanczos":
                    largest_steps = max(largest_steps, out[3].steps)
            rows.append([k, name, hvps, secs, rel_err(vals, truth), conv])
    table(title + f" (seconds: best of {runs})",
          ["k", "method", "HVPs", "seconds", f"max rel err vs {truth_label}", "converged"], rows)
    return largest_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per HVP measurement")
    parser.add_argument("--runs", type=int, default=3, help="runs per top-k method; the fastest is shown")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")

    cfg = preset("digits-mlp")
    data = load_experiment_data(cfg)
    start = time.perf_counter()
    trained = train(cfg, data, "good", device="cpu")
    print(f"digits-mlp trained ({trained.status}, {trained.epochs} epochs, clean loss {trained.clean_loss:.2e}) "
          f"in {time.perf_counter() - start:.1f} s")
    x, y = data.x_train.to(device), data.y_train.to(device)
    hvp_costs(trained.model, x, y, device, args.repeats)

    model64 = copy.deepcopy(trained.model).to(device=device, dtype=torch.float64)
    op = HessianOperator(model64, x, y, LOSS)
    start = time.perf_counter()
    exact = torch.linalg.eigvalsh(exact_hessian(op).to(torch.float64)).flip(0).cpu().numpy()
    print(f"\nexact Hessian {op.n}×{op.n} and eigvalsh: {time.perf_counter() - start:.1f} s; "
          f"top eigenvalues {np.array2string(exact[:5], precision=4)}, λ_20 = {exact[19]:.4g}")
    compare_topk(op, (10, 20), lambda k: exact[:k], "eigvalsh",
                 f"(b) top-k on digits-mlp (n = {op.n}, float64 HVPs, {device})", args.runs)

    big_cfg = preset("mnist1d-mlp").with_changes(**{"train.max_epochs": 20})
    big_data = load_experiment_data(big_cfg)
    big = train(big_cfg, big_data, "good", device="cpu")
    bx, by = big_data.x_train.to(device), big_data.y_train.to(device)
    big_op = HessianOperator(copy.deepcopy(big.model).to(device=device, dtype=torch.float64), bx, by, LOSS)
    print(f"\nmnist1d-mlp: {big_op.n} params, {len(by)} samples, trained {big.epochs} epochs "
          f"(clean loss {big.clean_loss:.3f})")
    references: dict[int, np.ndarray] = {}

    def reference(k: int) -> np.ndarray:
        if k not in references:
            references[k] = scipy_eigsh(big_op, k, tol=1e-12, seed=1)[0]
        return references[k]

    steps = compare_topk(big_op, (10, 20), reference, "eigsh tol 1e-12",
                         f"(b') top-k on mnist1d-mlp (n = {big_op.n}, float64 HVPs, {device})", args.runs)

    basis = steps * big_op.n * 8
    model_bytes = sum(p.numel() * p.element_size() for p in big_op.model.parameters())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rows = [["Lanczos basis V (steps × n × 8 B)", f"{steps} × {big_op.n}", basis / 2 ** 20],
            ["stored products HV, for residuals (same size)", f"{steps} × {big_op.n}", basis / 2 ** 20],
            ["model parameters (float64)", f"{big_op.n}", model_bytes / 2 ** 20],
            ["one chunk's double-backward graph (saved tensors)", f"{len(by)} samples", graph_bytes(big_op) / 2 ** 20],
            ["peak RSS of this process (getrusage)", "", rss / 2 ** 20]]
    if device.type == "cuda":
        rows.append(["peak CUDA memory allocated", "", torch.cuda.max_memory_allocated() / 2 ** 20])
    table("memory of the largest run (mnist1d-mlp, top-20 by lossland Lanczos)", ["what", "size", "MiB"], rows)


if __name__ == "__main__":
    main()
