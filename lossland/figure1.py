"""The paper's Figure 1 in the store: fitting.curve_fit kept as landscape rows of kind curve_fit under the subject
specs.CURVE_FIT (it has no pair) — fit in other_run_id, seed in direction_seed, part in normalization, x in
alpha, n in beta, the fit's value in clean_loss and the target in test_loss. lossland.analyses serves it like
every other analysis (get and compute with the subject CURVE_FIT)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import fitting
from .pairs import Progress
from .specs import CurveFitSpec
from .store import Store


def save(store: Store, subject: str, spec: CurveFitSpec, progress: Progress) -> float:
    """Fit (fitting.curve_fit) and store the rows; returns the fit's seconds."""
    progress(0.0, "fitting the points with a network and polynomials")
    res = fitting.curve_fit(**spec.settings())
    f = res.to_frame()
    rows = pd.DataFrame({"run_id": subject, "kind": spec.kind, "other_run_id": f["fit"], "direction_seed": f["seed"],
                         "normalization": f["part"], "alpha": f["x"], "beta": f["n"].astype(float),
                         "clean_loss": f["value"], "test_loss": f["target"], "point": np.arange(len(f))})
    store.save_analysis(subject, spec.analysis_id(subject), spec.kind, spec.to_json(), res.seconds, landscapes=rows)
    progress(1.0, "curve fit stored")
    return res.seconds


def read(store: Store, subject: str, aid: str) -> pd.DataFrame | None:
    """The stored curve fit as fitting.CurveFitResult.to_frame() wrote it (None when it has no rows)."""
    df = store.landscape(aid)
    if not len(df):
        return None
    return pd.DataFrame({"fit": df["other_run_id"].astype(str), "n": df["beta"].astype(int),
                         "seed": df["direction_seed"].astype(int), "part": df["normalization"].astype(str),
                         "x": df["alpha"].astype(float), "value": df["clean_loss"].astype(float),
                         "target": df["test_loss"].astype(float)})
