"""Does each sharpness measure order the minima the same way whatever the optimizer? "holds in N of M".

Sharpness depends on the optimizer, its learning rate and the parametrisation (Dinh et al. 2017), so
each measure is compared in every setting of the plan (an optimizer, learning rate and batch size on
one dataset): it *holds* in a setting when the 95% bootstrap interval over seeds of its effect lies
above 0 — the mean log(bad / good) for λ₁, trace, ‖H‖_F and the adaptive sharpness, the mean gap
good − bad for the log-volume — over the pairs where both runs reached the loss target. The negative
control of a setting pairs its good runs with each other (seed i as "good", seed i + 1 as "bad"), the
same rule applied: a measure that holds there as often does not tell the minima apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .claims import by_role, converged, log_ratio, usable, with_frobenius
from .stats import Interval, bootstrap_mean

# column, label, the effect per seed: log(bad / good) or (good − bad)
MEASURES = (("top_eigenvalue", "λ₁", "ratio"), ("trace", "trace", "ratio"), ("frobenius", "‖H‖_F", "ratio"),
            ("log_volume", "log-volume (ε = 1e-3)", "gap"), ("adaptive_sharpness", "adaptive sharpness", "ratio"))


@dataclass(frozen=True)
class Cell:
    """One measure in one setting, on the pairs and on the control."""

    measure: str
    setting: str
    effect: str  # "+0.52 [+0.31, +0.70] over 3 seeds"
    holds: bool
    control_effect: str
    control_holds: bool
    n: int


@dataclass(frozen=True)
class Robustness:
    settings: tuple[str, ...]
    cells: tuple[Cell, ...]

    def counts(self) -> list[dict]:
        """Per measure: in how many settings it holds, on the pairs and on the control."""
        out = []
        for _, label, _ in MEASURES:
            cells = [c for c in self.cells if c.measure == label and c.n > 0]
            if cells:
                held = sum(c.holds for c in cells)
                ctrl = sum(c.control_holds for c in cells)
                out.append({"measure": label, "holds": held, "control_holds": ctrl, "settings": len(cells),
                            "text": f"holds in {held} of {len(cells)} settings (control: {ctrl} of {len(cells)})"})
        return out

    def to_dict(self) -> dict:
        return {"settings": list(self.settings), "cells": [c.__dict__ for c in self.cells], "counts": self.counts()}


def _effect(pairs: pd.DataFrame, column: str, kind: str) -> Interval:
    wide = by_role(pairs, column)
    return bootstrap_mean(log_ratio(wide) if kind == "ratio" else wide["good"] - wide["bad"])


def control_pairs(runs: pd.DataFrame) -> pd.DataFrame:
    """The good runs of one setting as pairs of consecutive seeds: seed i "good", seed i + 1 "bad"."""
    good = runs[runs["role"] == "good"].sort_values("seed").reset_index(drop=True)
    if len(good) < 2:
        return good.iloc[0:0]
    first, second = good.iloc[:-1].copy(), good.iloc[1:].copy()
    second["seed"] = first["seed"].to_numpy()
    return pd.concat([first.assign(role="good"), second.assign(role="bad")], ignore_index=True)


def robustness(runs: pd.DataFrame) -> Robustness:
    """Every measure in every setting (runs: setting, seed, role, status and the measures' columns)."""
    if len(runs) == 0:
        return Robustness((), ())
    settings = tuple(dict.fromkeys(runs["setting"].astype(str)))
    cells = []
    for setting in settings:
        mine = with_frobenius(usable(runs[runs["setting"] == setting]))
        pairs = converged(mine)
        control = control_pairs(mine[(mine["role"] == "good") & (mine["status"] == "converged")])
        for column, label, kind in MEASURES:
            if column not in mine.columns or mine[column].isna().all():
                continue
            on, off = _effect(pairs, column, kind), _effect(control, column, kind)
            cells.append(Cell(label, setting, f"{on.text()} over {on.n} seeds", on.above_zero,
                              f"{off.text()} over {off.n} pairs", off.above_zero, on.n))
    return Robustness(settings, tuple(cells))


def robustness_frame(rob: dict) -> pd.DataFrame:
    """measure × setting table of the effects (✓ where it holds), from `Robustness.to_dict()`."""
    rows: dict[str, dict] = {}
    for c in rob.get("cells", []):
        mark = "✓ " if c["holds"] else "✗ "
        rows.setdefault(c["measure"], {"measure": c["measure"]})[c["setting"]] = mark + c["effect"]
    for n in rob.get("counts", []):
        rows.setdefault(n["measure"], {"measure": n["measure"]})["holds in"] = n["text"]
    frame = pd.DataFrame(list(rows.values()))
    if "holds in" in frame:  # last, also when a setting's only cell (a diverged grid point's) came after it
        frame = frame[[c for c in frame.columns if c != "holds in"] + ["holds in"]]
    return frame.replace({np.nan: "—"}) if len(frame) else frame
