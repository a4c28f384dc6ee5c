"""Per-layer curvature against the truth: each diagonal block of the dense float64 Hessian of a tiny model;
stored as an analysis of a pair and read back."""

from __future__ import annotations

import pytest
import torch
from conftest import open_app, wait_for_job
from torch import nn

from lossland import analyses
from lossland.curvature import HessianOperator, exact_hessian
from lossland.layer_charts import layer_chart
from lossland.layers import BlockOperator, block_curvature, layer_curvature, parameter_blocks
from lossland.pairs import ROLE_COLORS, ROLES, run_ids
from lossland.specs import LayerSpec
from lossland.store import Store
from lossland.train import loss_function

LOSS = loss_function("cross_entropy")


@pytest.fixture(scope="module")
def tiny():
    """A 5-8-3 tanh MLP (75 parameters) in float64, a few steps from its init, on 60 random samples, and its
    exact Hessian."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (60,), generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        LOSS(model(x), y).backward()
        opt.step()
    op = HessianOperator(model.eval(), x, y, LOSS)
    return model, x, y, op, exact_hessian(op).double()


def _truth(H: torch.Tensor, index: torch.Tensor) -> tuple[float, float]:
    Hb = H[index][:, index]
    return float(torch.linalg.eigvalsh(Hb)[-1]), float(torch.trace(Hb))


def test_blocks_cover_every_parameter_once_in_the_flat_order(tiny):
    model, *_ = tiny
    by_module = parameter_blocks(model, "module")
    assert [(b.name, b.parameters, b.n_params) for b in by_module] == [
        ("0", ("0.weight", "0.bias"), 48), ("2", ("2.weight", "2.bias"), 27)]
    by_tensor = parameter_blocks(model, "tensor")
    assert [b.name for b in by_tensor] == [n for n, _ in model.named_parameters()]
    for blocks in (by_module, by_tensor):
        assert torch.equal(torch.cat([b.index for b in blocks]), torch.arange(75))
    with pytest.raises(ValueError, match="by = 'layer' is not allowed: one of module, tensor"):
        parameter_blocks(model, "layer")


def test_block_operator_is_the_diagonal_block_of_the_hessian(tiny):
    _, _, _, op, H = tiny
    index = torch.arange(40, 48)  # the first layer's bias
    V = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(BlockOperator(op, index).matmat(V), H[index][:, index] @ V, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("by", ["module", "tensor"])
def test_lanczos_and_hutchpp_match_each_exact_block(tiny, by):
    """exact_max_params = 0: every block by Lanczos (λ₁ to 1e-8) and Hutch++ (within 4 of its standard errors)."""
    model, _, _, op, H = tiny
    for block in parameter_blocks(model, by):
        got = block_curvature(op, block, trace_samples=9, exact_max_params=0, tol=1e-10, max_steps=100)
        top, trace = _truth(H, block.index)
        assert got.converged and got.trace.method == "hutch++"
        assert abs(got.top_eigenvalue - top) <= 1e-8 * abs(top), (block.name, got.top_eigenvalue, top)
        assert 0 < got.trace.stderr and abs(got.trace.value - trace) <= 4 * got.trace.stderr, (block.name, got.trace)


def test_small_blocks_are_exact_and_traces_sum_to_the_full_trace(tiny):
    model, x, y, _, H = tiny
    res = layer_curvature(model, x, y, LOSS, by="tensor", exact_max_params=24, tol=1e-10)
    methods = {b.name: b.trace.method for b in res.blocks}
    assert methods == {"0.weight": "hutch++", "0.bias": "exact", "2.weight": "exact", "2.bias": "exact"}
    for block, got in zip(parameter_blocks(model, "tensor"), res.blocks, strict=True):
        top, trace = _truth(H, block.index)
        assert abs(got.top_eigenvalue - top) <= 1e-8 * abs(top)
        if got.trace.method == "exact":
            assert got.trace.stderr == 0 and got.hvps == block.n_params
            assert abs(got.trace.value - trace) <= 1e-10 * abs(trace)
    exact = layer_curvature(model, x, y, LOSS, by="module", exact_max_params=100)
    assert abs(sum(b.trace.value for b in exact.blocks) - float(torch.trace(H))) <= 1e-10 * float(torch.trace(H))
    lam1 = float(torch.linalg.eigvalsh(H)[-1])
    assert all(b.top_eigenvalue <= lam1 * (1 + 1e-10) for b in exact.blocks)  # Cauchy interlacing
    assert exact.hvps == 75 and res.n_params == 75
    frame = res.to_frame()
    assert list(frame["block"]) == ["0.weight", "0.bias", "2.weight", "2.bias"] and list(frame["idx"]) == [0, 1, 2, 3]


def test_a_float32_model_is_measured_on_a_float64_copy_and_left_untouched(tiny):
    model, x, y, _, H = tiny
    single = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    single.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    res = layer_curvature(single, x.float(), y, LOSS, exact_max_params=100)
    assert next(single.parameters()).dtype == torch.float32
    top, _ = _truth(H, parameter_blocks(model)[0].index)
    assert abs(res.blocks[0].top_eigenvalue - top) <= 1e-5 * abs(top)  # float32 weights, float64 products


def test_layer_spec_validates_and_names_its_field():
    with pytest.raises(Exception, match=r"layers\.trace_samples"):
        LayerSpec(trace_samples=1)
    with pytest.raises(Exception, match=r"layers\.blocks"):
        LayerSpec(blocks="neuron")
    assert LayerSpec().analysis_id("p") != LayerSpec(blocks="tensor").analysis_id("p")


def test_layer_analysis_is_stored_per_spec_read_back_and_carried_by_a_bundle(copied_store, tmp_path):
    store, ids = copied_store
    pair_id = ids[0]
    spec = LayerSpec(trace_samples=9, exact_max_params=200, tol=1e-8)
    seen = []
    first = analyses.compute(store, pair_id, spec, lambda f, m: seen.append(f))
    assert not first.from_store and seen[-1] == 1.0 and seen == sorted(seen)
    frame = first.frame
    assert set(frame["role"]) == {"good", "bad"} and list(frame[frame["role"] == "good"]["block"]) == ["net.1", "net.3"]
    assert list(frame["trace_method"]) == ["hutch++", "exact"] * 2
    other = analyses.compute(store, pair_id, LayerSpec(blocks="tensor", exact_max_params=0, trace_samples=9))
    assert len(other.frame) == 8
    again = analyses.get(store, pair_id, spec)  # a second spec's rows did not replace the first's
    assert again is not None and again.from_store
    cols = ["block", "n_params", "top_eigenvalue", "trace", "trace_stderr", "trace_method", "converged"]
    assert again.frame[cols].equals(frame[cols])
    assert analyses.stored(store, pair_id, "layers")[0] in (spec, other.spec)
    moved = Store(tmp_path / "elsewhere.duckdb")  # a bundle carries it, and its import verifies it
    moved.import_bundle(store.export(run_ids(pair_id), tmp_path / "layers.zip"))
    carried = analyses.get(moved, pair_id, spec)
    assert carried is not None and carried.frame[cols].equals(frame[cols])
    spec_chart = layer_chart(again.frame).to_dict()
    assert spec_chart["hconcat"][0]["encoding"]["color"]["scale"]["range"] == [ROLE_COLORS[r] for r in ROLES]


def test_spectrum_page_computes_layer_curvature_on_demand_then_reads_it_from_the_store(copied_store):
    store, ids = copied_store
    at = open_app("views/spectrum.py", {"pair": ids[1]})
    for name, value in (("trace_samples", 6), ("exact_max_params", 0), ("tol", 1e-4)):
        at.number_input(key=f"spectrum-layers-{name}").set_value(value)
    at.run()
    before = len(at.get("vega_lite_chart"))
    at.button(key="btn-layers:" + ids[1]).click().run()
    assert not at.exception
    import ui

    spec = LayerSpec(trace_samples=6, exact_max_params=0, tol=1e-4)
    job = ui.jobs().get(f"layers:{ids[1]}:{spec.analysis_id(ids[1])}")
    assert job is not None and wait_for_job(job, 60).state == "done", job.error
    at.run()
    assert not at.exception
    specs = [c.proto.spec for c in at.get("vega_lite_chart")]
    assert len(specs) == before + 1 and any("trace of each block" in s for s in specs)
    table = at.dataframe[-1].value
    assert list(table["block"]) == ["net.1", "net.1", "net.3", "net.3"] and set(table["trace_method"]) == {"hutch++"}
    assert analyses.get(store, ids[1], spec) is not None
    again = open_app("views/spectrum.py", {"pair": ids[1]})  # the stored settings are offered first
    assert again.selectbox(key="spectrum-layers-stored").value == spec
    assert len(again.get("vega_lite_chart")) == before + 1
