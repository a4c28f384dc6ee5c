"""The specs of two analyses of paths: the optimizer's trajectory on its PCA plane (lossland.trajectory) and the
search for the radius where escape becomes likely (lossland.escape). Registered in specs.SPECS like the others."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .config import MAX_TRAJECTORY_POINTS, _fail, _int, _num
from .pairs import ROLES
from .spec_base import Spec, _seed


@dataclass(frozen=True)
class TrajectorySpec(Spec):
    """Per minimum, the loss on an n × n grid of the plane of its training path's top two PCA directions
    (Li et al. 2018, §7), covering the path and `margin` × its extent beyond, and the path on it."""

    kind: ClassVar[str] = "trajectory"
    title: ClassVar[str] = "optimizer trajectory"
    n: int = 25
    margin: float = 0.25

    def validate(self) -> None:
        _int(self.field("n"), self.n, 2, 10_000)
        _num(self.field("margin"), self.margin, 0.0, 10.0)

    def grid_points(self) -> int:  # the grid's points and the path's (point index n² + t) of both roles
        return len(ROLES) * (self.n * self.n + MAX_TRAJECTORY_POINTS)


@dataclass(frozen=True)
class EscapeSearchSpec(Spec):
    """Per minimum, the smallest radius where the escape probability (EscapeSpec's rule, n_trials trials per
    radius) crosses 50%: `scan` radii from r_lo to r_hi, evenly in log r, the bracket moved by `factor` up to
    `expand` times when they do not hold the crossing (and r = 0 where even the smallest radius escapes), then
    `steps` bisections in log r (escape.bisect_escape)."""

    kind: ClassVar[str] = "escape_search"
    title: ClassVar[str] = "escape transition"
    r_lo: float = 0.02
    r_hi: float = 2.0
    steps: int = 3
    scan: int = 3
    expand: int = 2
    factor: float = 10.0
    n_trials: int = 4
    seed: int = 0
    retrain_epochs: int = 300
    margin: float = 0.05

    def validate(self) -> None:
        _num(self.field("r_lo"), self.r_lo, 0.0, 1000.0, lo_open=True)
        _num(self.field("r_hi"), self.r_hi, 0.0, 1000.0, lo_open=True)
        if not self.r_hi > self.r_lo:
            _fail(self.field("r_hi"), self.r_hi, f"greater than r_lo = {self.r_lo}")
        _int(self.field("steps"), self.steps, 0, 20)
        _int(self.field("scan"), self.scan, 2, 20)
        _int(self.field("expand"), self.expand, 0, 10)
        _num(self.field("factor"), self.factor, 1.0, 1000.0, lo_open=True)
        _int(self.field("n_trials"), self.n_trials, 1, 10_000)
        _seed(self, "seed")
        _int(self.field("retrain_epochs"), self.retrain_epochs, 1, 1_000_000)
        _num(self.field("margin"), self.margin, 0.0, 1.0)

    def probes(self) -> int:
        """The most radii one minimum's search evaluates."""
        return self.scan + self.expand + self.steps + 1  # + the unperturbed control, r = 0

    def trials(self) -> int:
        return len(ROLES) * self.probes() * self.n_trials


