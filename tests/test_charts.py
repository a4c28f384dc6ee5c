"""Chart builders are pure functions of DataFrames: their Vega-Lite specs are checked without Streamlit."""

import altair as alt
import numpy as np
import pandas as pd
import pytest

from lossland import charts, contour_charts, contours
from lossland.pairs import ROLE_COLORS, ROLES, SPLIT_COLORS, SPLITS


def _spec(chart) -> dict:
    return chart.to_dict()


def _mark(layer: dict) -> str:
    return layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"]


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


def test_png_svg_and_pdf_export_without_a_browser():
    chart = charts.accuracy_chart(pd.DataFrame({"role": ["good", "bad"], "clean_acc": [1.0, 1.0],
                                                "attack_acc": [0.1, 1.0], "test_acc": [0.95, 0.5]}))
    assert charts.to_png(chart)[:8] == b"\x89PNG\r\n\x1a\n"
    assert charts.to_svg(chart).lstrip().startswith("<svg")
    assert charts.to_pdf(chart)[:5] == b"%PDF-"


def test_every_chart_carries_one_theme_of_fonts_and_sizes():
    chart = charts.spectrum_chart(_spectrum_df())
    config = _spec(chart)["config"]
    assert config["font"] == charts.FONT and config["axis"]["labelFontSize"] == 11
    assert config["title"]["fontSize"] == 14 and config["range"]["category"] == list(charts.OTHER_COLORS)


def test_escape_chart_averages_trials_per_radius_and_role():
    df = pd.DataFrame({"role": ["bad"] * 4 + ["good"] * 4, "radius": [0.1, 0.1, 0.2, 0.2] * 2,
                       "escaped": [True, False, True, True, False, False, False, True]})
    d = charts.escape_chart(df).data.set_index(["role", "radius"])["p"]
    assert d[("bad", 0.1)] == 0.5 and d[("bad", 0.2)] == 1.0 and d[("good", 0.2)] == 0.5


def test_sweep_chart_draws_every_seed_as_a_point_over_the_mean_line():
    df = pd.DataFrame({"n_attack": [0, 0, 100, 100] * 2, "role": ["good"] * 4 + ["bad"] * 4,
                       "seed": [0, 1] * 4, "test_acc": [0.9, 0.92, 0.91, 0.9, 0.9, 0.91, 0.6, 0.62]})
    spec = _spec(charts.sweep_chart(df, "test_acc"))
    assert [_mark(layer) for layer in spec["layer"]] == ["line", "circle"]  # points drawn over the line
    assert spec["layer"][0]["encoding"]["y"]["aggregate"] == "mean"
    seeds = spec["layer"][1]["encoding"]
    assert seeds["y"]["field"] == "test_acc" and "aggregate" not in seeds["y"]  # one point per row, i.e. per seed
    assert {"field": "seed", "type": "quantitative"} in seeds["tooltip"] or any(
        t.get("field") == "seed" for t in seeds["tooltip"])


def test_log_sweeps_drop_nonpositive_seeds_and_gap_charts_show_seeds():
    df = pd.DataFrame({"n_attack": [0, 0, 100], "role": ["good", "good", "bad"], "trace": [0.0, 2.0, 5.0]})
    assert (charts.sweep_chart(df, "trace", log=True).data["trace"] > 0).all()
    gap = pd.DataFrame({"dataset": ["digits"] * 4, "seed": [0, 1, 0, 1], "k": [1, 1, 2, 2], "gap": [0.1, 0.3, 1, 2]})
    marks = [_mark(layer) for layer in _spec(charts.log_volume_gap_chart(gap))["layer"]]
    assert marks == ["rule", "line", "circle"]


def test_random_init_chart_marks_the_pair_minima():
    seeds = pd.DataFrame({"test_acc": [0.95, 0.96, 0.94]})
    minima = pd.DataFrame({"role": ["good", "bad"], "test_acc": [0.95, 0.5]})
    spec = _spec(charts.random_init_chart(seeds, minima))
    assert spec["layer"][1]["mark"]["type"] == "rule" and "3 random inits" in spec["title"]


# --- contours ------------------------------------------------------------------------------------------

def _bowl(scale: float, span: float = 1.0, n: int = 21) -> pd.DataFrame:
    a, b = np.meshgrid(np.linspace(-span, span, n), np.linspace(-span, span, n))
    loss = 1e-3 * 10 ** (scale * (a**2 + 4 * b**2))
    return pd.DataFrame({"alpha": a.ravel(), "beta": b.ravel(), "clean_loss": loss.ravel()})


def _layers(spec: dict) -> dict[str, dict]:
    """The layers of a contour chart by what they draw (bands, isolines, labels, minimum)."""
    out = {}
    for layer in spec["layer"]:
        enc, mark = layer["encoding"], layer["mark"]
        if "fill" in enc:
            out["bands"] = layer
        elif enc.get("detail", {}).get("field") == "line":
            out["isolines"] = layer
        elif "text" in enc and mark.get("color"):
            out["labels"] = layer
        elif "color" in enc:
            out["minimum"] = layer
    return out


def test_surface_charts_draw_isolines_with_their_level_labels_on_one_shared_scale():
    found = contour_charts.surface_charts({"good": _bowl(0.5), "bad": _bowl(3.0)})
    levels, edges = contours.shared_levels([contours.grid_of(_bowl(0.5)), contours.grid_of(_bowl(3.0))])
    specs = {role: _spec(c) for role, c in found.items()}
    for role, spec in specs.items():
        layers = _layers(spec)
        assert set(layers) == {"bands", "isolines", "labels", "minimum"}, role
        fill = layers["bands"]["encoding"]["fill"]
        assert fill["scale"]["domain"] == pytest.approx([np.log10(edges[0]), np.log10(edges[-1])])  # log₁₀ of the edges
        assert fill["field"] == "log" and "pow(10" in fill["legend"]["labelExpr"]  # labelled in loss units
        data = spec["datasets"][layers["labels"]["data"]["name"]]
        assert {d["text"] for d in data} <= {contours.level_text(v) for v in levels} and data
        mark = spec["datasets"][layers["minimum"]["data"]["name"]][0]
        assert (mark["alpha"], mark["beta"], mark["role"]) == (0.0, 0.0, role)  # θ* at the origin, in its colour
    good = {d["text"] for d in specs["good"]["datasets"][_layers(specs["good"])["labels"]["data"]["name"]]}
    bad = {d["text"] for d in specs["bad"]["datasets"][_layers(specs["bad"])["labels"]["data"]["name"]]}
    assert good < bad  # the sharp minimum crosses more of the shared levels


def test_a_refined_grid_is_merged_in_and_its_box_drawn():
    fine = _bowl(3.0, span=0.25)
    spec = _spec(contour_charts.surface_charts({"good": _bowl(0.5), "bad": _bowl(3.0)}, refined={"bad": fine})["bad"])
    assert len(spec["layer"]) == 6  # the dashed box of the refined region
    box = spec["datasets"][spec["layer"][-1]["data"]["name"]]
    assert {(d["alpha"], d["beta"]) for d in box} == {(-0.25, -0.25), (0.25, -0.25), (0.25, 0.25), (-0.25, 0.25)}


# --- one visual language --------------------------------------------------------------------------------

ROLE_HEX = {c.lower() for c in ROLE_COLORS.values()}
COLOUR_CHANNELS = ("color", "fill", "stroke")


def _rgb(hex_colour: str) -> np.ndarray:
    h = hex_colour.lstrip("#")
    return np.array([int(h[i:i + 2], 16) for i in (0, 2, 4)], dtype=float)


def palette_problems(spec, path=()) -> list[str]:
    """Where a spec breaks the palette rule: a role colour anywhere but in the range of a colour scale of a
    `role` field, and a split field (`set`) coloured by anything but the split palette."""
    out = []
    if isinstance(spec, dict):
        for channel, enc in (spec.get("encoding") or {}).items():
            if channel in COLOUR_CHANNELS and isinstance(enc, dict) and enc.get("field") == "set":
                rng = (enc.get("scale") or {}).get("range")
                if rng != [SPLIT_COLORS[s] for s in SPLITS]:
                    out.append(f"{'/'.join(path)}: split field coloured by {rng or 'the default scheme'}")
        for k, v in spec.items():
            out += palette_problems(v, (*path, str(k)))
    elif isinstance(spec, list):
        for i, v in enumerate(spec):
            out += palette_problems(v, (*path, str(i)))
    elif isinstance(spec, str) and spec.lower() in ROLE_HEX:
        ok = len(path) >= 4 and path[-2] == "range" and path[-3] == "scale" and path[-4] in COLOUR_CHANNELS
        if not ok:
            out.append(f"{'/'.join(path)}: role colour {spec} outside a role scale")
    return out


def _role_scales_are_on_role_fields(spec) -> list[str]:
    bad = []
    if isinstance(spec, dict):
        for channel, enc in (spec.get("encoding") or {}).items():
            rng = (enc.get("scale") or {}).get("range") if isinstance(enc, dict) else None
            if channel in COLOUR_CHANNELS and rng and ROLE_HEX & {str(c).lower() for c in rng}:
                if enc.get("field") != "role" or enc["scale"].get("domain") != list(ROLES):
                    bad.append(f"{channel}: {enc.get('field')}")
        for v in spec.values():
            bad += _role_scales_are_on_role_fields(v)
    elif isinstance(spec, list):
        for v in spec:
            bad += _role_scales_are_on_role_fields(v)
    return bad


def every_chart() -> dict[str, object]:
    """One chart of every builder in lossland.charts (and the report's own), drawn from small frames."""
    from lossland import report

    roles = ["good"] * 2 + ["bad"] * 2
    six = {f"{s}_{m}": [1.0, 0.5, 0.2] for s in ("clean", "attack", "test") for m in ("loss", "acc")}
    trials = pd.DataFrame({"role": roles, "radius": [0.1, 0.2] * 2, "escaped": [False, True] * 2,
                           "test_acc": [0.9, 0.8, 0.5, 0.4], "trial": [0, 1] * 2})
    curves = pd.DataFrame({"fit": ["net", "net", "target", "poly3"], "n": [4, 4, 0, 4], "seed": 0,
                           "part": ["grid", "points", "grid", "grid"], "x": [0.0, 0.5, 0.0, 0.0],
                           "value": [0.1, 0.2, 0.0, 0.3], "target": [0.0, 0.2, 0.0, 0.0]})
    summary = pd.DataFrame({"fit": ["net", "poly3"], "n": [4, 4], "seed": 0, "test_mse": [0.1, 0.3],
                            "roughness": [1.0, 9.0]})
    gap = pd.DataFrame({"dataset": ["digits"] * 2, "seed": [0, 1], "k": [1, 1], "eps": [1e-3, 1e-3], "gap": [0.1, 0.2]})
    return {
        "spectrum_chart": charts.spectrum_chart(_spectrum_df()),
        "density_chart": charts.density_chart(pd.DataFrame({"x": [0.0, 1.0] * 2, "density": [1.0] * 4, "role": roles})),
        "estimate_chart": charts.estimate_chart(pd.DataFrame({"name": "trace", "role": ["good", "bad"],
                                                              "value": [1.0, 2.0], "stderr": [0.1, 0.1]})),
        "log_volume_chart": charts.log_volume_chart(pd.DataFrame({"k": [1, 2] * 2, "value": [1.0] * 4, "role": roles})),
        "curves_chart": charts.curves_chart(pd.DataFrame({"epoch": [1, 2] * 2, "role": roles, "clean_loss": [1.0] * 4,
                                                          "test_acc": [0.5] * 4})),
        "accuracy_chart": charts.accuracy_chart(pd.DataFrame({"role": ["good", "bad"], "clean_acc": [1.0, 1.0],
                                                              "attack_acc": [0.1, 1.0], "test_acc": [0.9, 0.5]})),
        "interpolation_chart": charts.interpolation_chart(pd.DataFrame({"alpha": [0.0, 0.5, 1.0], **six})),
        "slice_chart": charts.slice_chart(pd.DataFrame({"alpha": [0.0, 1.0] * 2, "role": roles,
                                                        "clean_loss": [1.0] * 4})),
        "surface_charts": alt.hconcat(*contour_charts.surface_charts({"good": _bowl(0.5), "bad": _bowl(3.0)}).values()),
        "escape_chart": charts.escape_chart(trials), "retrain_chart": charts.retrain_chart(trials),
        "random_init_chart": charts.random_init_chart(pd.DataFrame({"test_acc": [0.9, 0.95]}),
                                                      pd.DataFrame({"role": ["good", "bad"], "test_acc": [0.9, 0.5]})),
        "radius_chart": charts.radius_chart(trials),
        "bound_chart": charts.bound_chart(pd.DataFrame({"role": ["good", "bad"], "complexity": [1.0, 2.0],
                                                        "rhs": [10.0, 20.0]})),
        "sweep_chart": charts.sweep_chart(pd.DataFrame({"n_attack": [0, 100] * 2, "role": roles,
                                                        "test_acc": [0.9] * 4}), "test_acc"),
        "log_volume_gap_chart": charts.log_volume_gap_chart(gap),
        "two_layer_chart": charts.two_layer_chart(pd.DataFrame({"role": ["good", "bad"], "complexity": [1.0, 2.0],
                                                                "hessian_frobenius": [1.0, 3.0]})),
        "curve_fit_chart": charts.curve_fit_chart(curves, summary),
        "contour_chart": contour_charts.contour_chart(contours.contours(contours.grid_of(_bowl(1.0))), "good"),
        "seeds_over_mean": charts.seeds_over_mean(gap, "k", "k", "gap", "gap", ""),
        "report.log_volume_eps_chart": report.log_volume_eps_chart(gap),
        "report.robustness_chart": report.robustness_chart(pd.DataFrame({
            "measure": ["trace"] * 2, "setting": ["a", "b"], "holds": [True, False], "effect": [1, 2],
            "control_effect": [0, 0]})),
    }


def test_role_colours_mean_good_and_bad_only_and_splits_have_their_own_palette():
    made = every_chart()
    builders = {n for m in (charts, contour_charts) for n in dir(m) if n.endswith(("_chart", "_charts"))}
    builders |= {"seeds_over_mean"}
    assert builders <= set(made), f"add the new chart builders to every_chart(): {sorted(builders - set(made))}"
    for name, chart in made.items():
        spec = _spec(chart)
        assert palette_problems(spec) == [], name
        assert _role_scales_are_on_role_fields(spec) == [], name


def test_the_palette_rule_fails_on_the_old_interpolation_chart():
    """The interpolation chart before the split palette coloured `set` with the default scheme, whose
    red stood for the test split beside the bad role's red: the rule must catch that."""
    long = pd.DataFrame({"alpha": [0.0, 1.0] * 3, "set": ["clean train"] * 2 + ["attack"] * 2 + ["test"] * 2,
                         "loss": [1.0] * 6})
    old = alt.Chart(long).mark_line().encode(x="alpha:Q", y="loss:Q", color=alt.Color("set:N"))
    assert palette_problems(_spec(old))
    wrong = alt.Chart(long).mark_line(color=ROLE_COLORS["bad"]).encode(x="alpha:Q", y="loss:Q")
    assert palette_problems(_spec(wrong))


def test_the_theme_palette_keeps_clear_of_the_role_colours():
    for other in charts.OTHER_COLORS:
        for role in ROLE_COLORS.values():
            assert np.linalg.norm(_rgb(other) - _rgb(role)) > 60, (other, role)
    assert not ROLE_HEX & {c.lower() for c in SPLIT_COLORS.values()}
