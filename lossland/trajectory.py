"""The optimizer's path to a minimum, on the plane of its top two PCA directions (Li et al. 2018, §7).

During training `Recorder` keeps at most `capacity` parameter snapshots, thinned so memory stays bounded
for any number of epochs: the initialisation and every `stride`-th epoch, the stride doubling (and every
other kept snapshot dropped) whenever the buffer is full, so the kept epochs stay evenly spread over the
whole run. At the end `pca_plane` takes the matrix of θ_t − θ_final over the kept snapshots (and the
final point), finds its top two principal directions (centred, as Li et al.'s PCA does) from the small
T × T Gram matrix in float64, and projects every θ_t − θ_final on them: the minimum is the origin.

What is kept, and why so: the snapshots themselves are dropped. 40 float32 snapshots of a 10⁶-parameter
network are 160 MB; the two unit directions (float32, 8 bytes per parameter: twice the weights) go into the
run's checkpoint file beside the weights, so they travel with it through bundles and need no file kind of
their own, and the path's coordinates (T × 2), epochs, clean losses and the explained variance ratios are
a few hundred bytes there too. The Landscape analysis (`specs.TrajectorySpec`) evaluates the loss on a grid
of that plane around the minimum and stores grid and path in the run store. The recording does not change
training (it only copies parameters), so `record.trajectory_points` is not part of the run id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

GRAM_CHUNK = 1 << 20  # parameters per block of the float64 Gram product (bounds the float64 copy)


@dataclass(frozen=True, eq=False)
class Trajectory:
    """The path of one run on its PCA plane: point t at coords[t] = ((θ_t − θ*)·d₁, (θ_t − θ*)·d₂), epoch
    epochs[t] (0: the initialisation; the last point is the minimum itself, at the origin)."""

    epochs: np.ndarray  # (T,) int64, increasing
    coords: np.ndarray  # (T, 2) float64
    clean_loss: np.ndarray  # (T,) float64: the clean training loss at each snapshot
    explained: np.ndarray  # (2,) fraction of the path's variance along d₁ and d₂
    directions: torch.Tensor  # (2, n) float32, orthonormal

    def payload(self) -> dict[str, torch.Tensor]:
        """Plain tensors for a checkpoint file (loadable with weights_only=True)."""
        return {"epochs": torch.as_tensor(self.epochs, dtype=torch.int64),
                "coords": torch.as_tensor(self.coords, dtype=torch.float64),
                "clean_loss": torch.as_tensor(self.clean_loss, dtype=torch.float64),
                "explained": torch.as_tensor(self.explained, dtype=torch.float64),
                "directions": self.directions.detach().to("cpu", torch.float32).contiguous()}

    @classmethod
    def from_payload(cls, payload: dict, n_params: int) -> Trajectory:
        """The trajectory of a checkpoint's entry; ValueError naming what is wrong with it."""
        check_payload(payload, n_params)
        return cls(epochs=payload["epochs"].numpy(), coords=payload["coords"].numpy(),
                   clean_loss=payload["clean_loss"].numpy(), explained=payload["explained"].numpy(),
                   directions=payload["directions"])


PAYLOAD_KEYS = {"epochs": torch.int64, "coords": torch.float64, "clean_loss": torch.float64,
                "explained": torch.float64, "directions": torch.float32}


def check_payload(payload: object, n_params: int, most: bool = False) -> None:
    """ValueError unless `payload` is a trajectory entry of a model of n_params parameters: exactly the
    tensors of PAYLOAD_KEYS, of their dtypes, T ≥ 3 points, directions (2, n_params) (with `most`: at most
    n_params, for a model known only by its tensors' elements), all finite."""
    if not isinstance(payload, dict) or set(payload) != set(PAYLOAD_KEYS):
        raise ValueError(f"a trajectory holds exactly {sorted(PAYLOAD_KEYS)}")
    for name, dtype in PAYLOAD_KEYS.items():
        t = payload[name]
        if not isinstance(t, torch.Tensor) or t.dtype != dtype or not t.is_contiguous():
            raise ValueError(f"trajectory {name} is not a contiguous {dtype} tensor")
    t = len(payload["epochs"])
    n = min(payload["directions"].shape[-1], n_params) if most and payload["directions"].dim() == 2 else n_params
    shapes = {"epochs": (t,), "coords": (t, 2), "clean_loss": (t,), "explained": (2,), "directions": (2, n)}
    for name, shape in shapes.items():
        if tuple(payload[name].shape) != shape:
            raise ValueError(f"trajectory {name} has shape {tuple(payload[name].shape)}, not {shape}")
    if t < 3 or not all(bool(torch.isfinite(payload[k]).all()) for k in ("coords", "explained", "directions")):
        raise ValueError("a trajectory needs at least 3 points and finite coordinates and directions")


class Recorder:
    """At most `capacity` snapshots (float32, CPU) of one run, evenly thinned (see the module's docstring)."""

    def __init__(self, capacity: int):
        if capacity < 3:
            raise ValueError(f"capacity = {capacity} must be at least 3 (a plane needs 3 points)")
        self.capacity, self.stride = capacity, 1
        self.epochs: list[int] = []
        self.losses: list[float] = []
        self.snapshots: list[torch.Tensor] = []

    def wants(self, epoch: int) -> bool:
        return epoch % self.stride == 0

    def add(self, epoch: int, params: torch.Tensor, clean_loss: float) -> None:
        """Keep θ at `epoch` (a flat vector) when the stride wants it; thin when the buffer is full."""
        if not self.wants(epoch):
            return
        self.epochs.append(epoch)
        self.losses.append(float(clean_loss))
        self.snapshots.append(params.detach().to("cpu", torch.float32, copy=True))
        while len(self.snapshots) > self.capacity - 1:  # one place stays free for the minimum
            self.stride *= 2
            keep = [i for i, e in enumerate(self.epochs) if e % self.stride == 0]
            self.epochs, self.losses = [self.epochs[i] for i in keep], [self.losses[i] for i in keep]
            self.snapshots = [self.snapshots[i] for i in keep]

    def record(self, epoch: int, model: nn.Module, clean_loss: float) -> None:
        """`add` of the model's parameters (flattened only when the stride wants this epoch)."""
        if self.wants(epoch):
            self.add(epoch, _flat(model), clean_loss)

    def finish(self, epoch: int, model: nn.Module | torch.Tensor, clean_loss: float) -> Trajectory | None:
        """The trajectory ending at the minimum (a model or its flat θ, reached at `epoch`); None with fewer
        than 3 distinct points."""
        final = (_flat(model) if isinstance(model, nn.Module) else model).detach().to("cpu", torch.float32, copy=True)
        kept = [i for i, e in enumerate(self.epochs) if e < epoch]
        epochs = [self.epochs[i] for i in kept] + [epoch]
        if len(epochs) < 3:
            return None
        snaps = torch.stack([self.snapshots[i] for i in kept] + [final])
        try:
            directions, coords, explained = pca_plane(snaps, final)
        except ValueError:  # the path is a line (or a point): it has no plane
            return None
        return Trajectory(epochs=np.asarray(epochs, dtype=np.int64), coords=coords,
                          clean_loss=np.asarray([self.losses[i] for i in kept] + [float(clean_loss)]),
                          explained=explained, directions=directions)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])  # landscape.flat_params' order


def pca_plane(snapshots: torch.Tensor, final: torch.Tensor) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(directions (2, n) float32 orthonormal, coords (T, 2), explained (2,)) of the rows of
    M = snapshots − final: the top two principal directions of M centred on its mean (from the
    eigenvectors of the T × T Gram matrix, d_i = Mcᵀ u_i / √λ_i), each signed so the first snapshot
    lies at a negative coordinate; coords = M d (not centred: the final point is the origin)."""
    diff = snapshots.to(torch.float32) - final.to(torch.float32)
    t, n = diff.shape
    gram = torch.zeros(t, t, dtype=torch.float64)
    for j in range(0, n, GRAM_CHUNK):
        block = diff[:, j:j + GRAM_CHUNK].double()
        block = block - block.mean(0)
        gram += block @ block.T
    lam, u = torch.linalg.eigh(gram)  # ascending
    lam, u = lam.flip(0)[:2], u.flip(1)[:, :2]
    total = float(gram.trace())
    if not (total > 0 and lam[1] > 1e-12 * lam[0]):
        raise ValueError("the snapshots span less than a plane: the path has no second direction")
    directions = torch.empty(2, n, dtype=torch.float64)
    for j in range(0, n, GRAM_CHUNK):
        block = diff[:, j:j + GRAM_CHUNK].double()
        directions[:, j:j + GRAM_CHUNK] = (u.T @ (block - block.mean(0))) / lam.sqrt()[:, None]
    coords = _project(diff, directions)
    sign = torch.where(coords[0] > 0, -1.0, 1.0).to(torch.float64)
    directions, coords = directions * sign[:, None], coords * sign
    return directions.to(torch.float32), coords.numpy(), (lam / total).numpy()


def _project(diff: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(len(diff), 2, dtype=torch.float64)
    for j in range(0, diff.shape[1], GRAM_CHUNK):
        out += diff[:, j:j + GRAM_CHUNK].double() @ directions[:, j:j + GRAM_CHUNK].T
    return out


def plane_axes(coords: np.ndarray, n: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Two axes of n points covering the path's coordinates (and the origin) plus `margin` × its extent
    on each side; an axis with no extent gets the other's (or 1)."""
    lo = np.minimum(coords.min(0), 0.0)
    hi = np.maximum(coords.max(0), 0.0)
    width = hi - lo
    fallback = float(width.max()) if width.max() > 0 else 1.0
    width = np.where(width > 0, width, fallback)
    lo, hi = lo - margin * width, hi + margin * width
    return np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)


def thinned_epochs(epochs: int, capacity: int) -> list[int]:
    """The epochs a Recorder of `capacity` keeps of a run that stops at `epochs` (from 0, the minimum last)."""
    rec = Recorder(capacity)
    for e in range(epochs):
        rec.add(e, torch.zeros(0), math.nan)
    return rec.epochs + [epochs]
