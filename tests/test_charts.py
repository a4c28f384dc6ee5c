"""Chart builders are pure functions of DataFrames: their Vega-Lite specs are checked without Streamlit."""

import pandas as pd
import pytest

from lossland import charts
from lossland.pairs import ROLE_COLORS


def _spec(chart) -> dict:
    return chart.to_dict()


def _spectrum_df() -> pd.DataFrame:
    return pd.DataFrame({"idx": [1, 2, 3] * 2, "eigenvalue": [5.0, 1.0, -0.5, 50.0, 9.0, -2.0],
                         "residual": [1e-9] * 6, "role": ["good"] * 3 + ["bad"] * 3})


def test_spectrum_chart_uses_symlog_so_negative_eigenvalues_draw():
    spec = _spec(charts.spectrum_chart(_spectrum_df()))
    assert spec["encoding"]["y"]["scale"]["type"] == "symlog"
    assert spec["encoding"]["x"]["field"] == "idx"


def test_good_and_bad_have_the_same_colours_on_every_chart():
    colour = _spec(charts.spectrum_chart(_spectrum_df()))["encoding"]["color"]["scale"]
    assert colour == {"domain": ["good", "bad"], "range": [ROLE_COLORS["good"], ROLE_COLORS["bad"]]}
    dens = pd.DataFrame({"x": [0.0, 1.0] * 2, "density": [0.5, 0.5, 0.2, 0.8], "role": ["good"] * 2 + ["bad"] * 2})
    assert _spec(charts.density_chart(dens))["encoding"]["color"]["scale"] == colour
    lv = pd.DataFrame({"k": [1, 2] * 2, "value": [1.0, 2.0, 0.5, 0.7], "role": ["good"] * 2 + ["bad"] * 2})
    assert _spec(charts.log_volume_chart(lv))["encoding"]["color"]["scale"] == colour


def test_density_chart_is_log_scaled_and_floors_zeros():
    dens = pd.DataFrame({"x": [0.0, 1.0], "density": [0.0, 2.0], "role": ["good", "good"]})
    chart = charts.density_chart(dens, floor=1e-5)
    spec = _spec(chart)
    assert spec["encoding"]["y"]["scale"]["type"] == "log"
    assert min(chart.data["density"]) == pytest.approx(1e-5)


def test_estimate_chart_error_bars_span_two_standard_errors():
    est = pd.DataFrame({"name": ["trace", "trace"], "role": ["good", "bad"], "value": [1.0, 5.0],
                        "stderr": [0.1, 0.5]})
    chart = charts.estimate_chart(est)
    d = chart.data.set_index("role")
    assert d.loc["bad", "lo"] == pytest.approx(4.0) and d.loc["bad", "hi"] == pytest.approx(6.0)
    assert "facet" in _spec(chart)


def test_curves_chart_drops_nonpositive_losses_on_log_axes():
    df = pd.DataFrame({"epoch": [1, 2, 3], "role": ["good"] * 3, "clean_loss": [1.0, 0.0, 0.1],
                       "test_acc": [0.5, 0.6, 0.7]})
    chart = charts.curves_chart(df, ["clean_loss", "test_acc"])
    loss_panel = chart.hconcat[0]
    assert (loss_panel.data["value"] > 0).all() and len(loss_panel.data) == 2
    assert len(chart.hconcat[1].data) == 3


def test_missing_columns_name_the_chart_and_columns():
    with pytest.raises(ValueError, match="spectrum_chart.*eigenvalue"):
        charts.spectrum_chart(pd.DataFrame({"idx": [1], "role": ["good"]}))


def test_png_and_svg_export_without_a_browser():
    chart = charts.accuracy_chart(pd.DataFrame({"role": ["good", "bad"], "clean_acc": [1.0, 1.0],
                                                "attack_acc": [0.1, 1.0], "test_acc": [0.95, 0.5]}))
    assert charts.to_png(chart)[:8] == b"\x89PNG\r\n\x1a\n"
    assert charts.to_svg(chart).lstrip().startswith("<svg")


def test_surface_chart_shares_one_colour_domain_when_given():
    import numpy as np

    a, b = np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 5))
    df = pd.DataFrame({"alpha": a.ravel(), "beta": b.ravel(), "clean_loss": 10 ** (a.ravel() ** 2)})
    spec = _spec(charts.surface_chart(df, domain=(-3.0, 2.0)))
    assert spec["encoding"]["color"]["scale"]["type"] == "quantize"
    assert spec["encoding"]["color"]["scale"]["domain"] == [-3.0, 2.0]


def test_escape_chart_averages_trials_per_radius_and_role():
    df = pd.DataFrame({"role": ["bad"] * 4 + ["good"] * 4, "radius": [0.1, 0.1, 0.2, 0.2] * 2,
                       "escaped": [True, False, True, True, False, False, False, True]})
    d = charts.escape_chart(df).data.set_index(["role", "radius"])["p"]
    assert d[("bad", 0.1)] == 0.5 and d[("bad", 0.2)] == 1.0 and d[("good", 0.2)] == 0.5


def test_sweep_chart_draws_means_with_min_max_bars_per_role():
    df = pd.DataFrame({"n_attack": [0, 0, 100, 100] * 2, "role": ["good"] * 4 + ["bad"] * 4,
                       "test_acc": [0.9, 0.92, 0.91, 0.9, 0.9, 0.91, 0.6, 0.62]})
    spec = _spec(charts.sweep_chart(df, "test_acc"))
    marks = [layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"] for layer in spec["layer"]]
    assert marks == ["rule", "line"]
    bars = spec["layer"][0]["encoding"]
    assert (bars["y"]["aggregate"], bars["y2"]["aggregate"]) == ("min", "max")  # positive data: log-safe bars
    assert spec["layer"][1]["encoding"]["y"]["aggregate"] == "mean"


def test_random_init_chart_marks_the_pair_minima():
    seeds = pd.DataFrame({"test_acc": [0.95, 0.96, 0.94]})
    minima = pd.DataFrame({"role": ["good", "bad"], "test_acc": [0.95, 0.5]})
    spec = _spec(charts.random_init_chart(seeds, minima))
    assert spec["layer"][1]["mark"]["type"] == "rule" and "3 random inits" in spec["title"]
