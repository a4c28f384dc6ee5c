"""Nothing changed for users: the pair pipeline stores the same numbers as the code before the redesign.

`fixtures/digits_mlp_pair.npz` holds every stored number of the default `digits-mlp` pair (runs, curves,
spectra, estimates) as `fixtures/record_digits_mlp_pair.py` recorded it from the code before the
one-house redesign, with 2 torch threads. This test trains the same pair through today's pipeline
and compares each number to float tolerance.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lossland.config import preset
from lossland.experiments import run_pair
from lossland.store import Store

FIXTURE = Path(__file__).parent / "fixtures" / "digits_mlp_pair.npz"
TABLES = {  # table -> (key column, numeric columns, sort columns after the role)
    "runs": ("status", ["n_params", "epochs", "clean_loss", "clean_acc", "attack_loss", "attack_acc", "test_loss",
                        "test_acc", "top_eigenvalue", "trace", "frobenius_sq", "log_volume", "spectrum_hvps"], []),
    "curves": (None, ["epoch", "lr", "clean_loss", "clean_acc", "attack_loss", "attack_acc", "test_loss",
                      "test_acc"], ["epoch"]),
    "spectra": ("kind", ["idx", "eigenvalue", "residual"], ["kind", "idx"]),
    "estimates": ("name", ["k", "value", "stderr", "samples", "hvps", "eps"], ["name", "k"]),
}


@pytest.fixture(scope="module")
def stored_pair(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # as recorded: the thread count changes floating-point results
    try:
        store = Store(tmp_path_factory.mktemp("regression") / "runs.duckdb")
        outcome = run_pair(preset("digits-mlp"), store)
    finally:
        torch.set_num_threads(threads)
    return outcome.view


def _ordered(frame: pd.DataFrame, sort: list[str]) -> pd.DataFrame:
    frame = frame.assign(_bad=(frame["role"] == "bad").astype(int))
    return frame.sort_values(["_bad", *sort], kind="stable").reset_index(drop=True)


@pytest.mark.slow
@pytest.mark.parametrize("table", list(TABLES))
def test_the_pipeline_stores_the_numbers_the_code_before_the_redesign_stored(stored_pair, table):
    recorded = np.load(FIXTURE)
    key, columns, sort = TABLES[table]
    frame = _ordered(getattr(stored_pair, table), sort)
    assert list(frame["role"].astype(str)) == list(recorded[f"{table}__role"]), f"{table}: rows differ"
    if key is not None:
        assert list(frame[key].astype(str)) == list(recorded[f"{table}__key"]), f"{table}: {key} differs"
    for c in columns:
        got = frame[c].to_numpy(dtype=float, na_value=np.nan)
        np.testing.assert_allclose(got, recorded[f"{table}__{c}"], rtol=1e-7, atol=1e-12, equal_nan=True,
                                   err_msg=f"{table}.{c}")


def test_the_fixture_would_catch_a_changed_number():
    """The comparison can fail: one eigenvalue moved by 1e-6 relative is outside the tolerance."""
    recorded = np.load(FIXTURE)["spectra__eigenvalue"]
    moved = recorded.copy()
    moved[0] *= 1 + 1e-6
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(moved, recorded, rtol=1e-7, atol=1e-12)
