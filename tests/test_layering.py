"""The house's arrows point one way: read from the source (ast, nothing imported or executed).

orchestration (experiments, analyses, reproduce, ...) -> executors -> pipeline -> core compute (data,
models, train, curvature, lanczos, landscape, basins, theory, fitting); the store beside them. `lossland`
never imports streamlit; core compute knows nothing of the store, orchestration or the UI; there is
no import cycle; an import inside a function is only for an optional dependency or a documented
start-up cost (LAZY below).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = {"data", "models", "train", "ensemble", "curvature", "lanczos", "landscape", "basins", "theory", "fitting",
        "layers"}
ABOVE_CORE = {"store", "pipeline", "executors", "experiments", "analyses", "plan", "reproduce", "claims", "report",
              "frames", "charts", "cli", "specs", "layer_charts", "live_charts", "manage", "cli_manage", "leases",
              "figures3d", "contour_charts"}
UI = {"streamlit", "ui", "views", "app"}
# module -> why it may be imported inside a function
LAZY = {
    "ray": "optional dependency (requirements-ray.txt)",
    "vl_convert": "optional PNG/SVG export, slow to import",
    "torchvision": "optional, only for `lossland download`",
    "tqdm": "CLI progress bars only",
    "plotly": "the dashboard's 3-D view only (lossland.figures3d), slow to import",
    "matplotlib": "the report's static 3-D image only (lossland.figures3d), slow to import",
    "sklearn.datasets": "start-up cost (~1 s) paid only when digits is loaded",
    "mnist1d.data": "start-up cost paid only when mnist1d is generated",
    "lossland.checkpoint": "torch (start-up cost) only when a store verifies a bundle's checkpoints",
}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The absolute module names an import statement loads (a `from pkg import name` may name a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return [prefix] + [f"{prefix}.{a.name}" for a in node.names]


def imports(root: Path, package: str) -> dict[str, dict[str, list[tuple[str, bool]]]]:
    """{module: {"top": [(target, ...)], "inner": [...]}} for every module of `package` under root;
    imports under `if TYPE_CHECKING:` are left out (they never run)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        is_package = rel.name == "__init__"
        module = ".".join(rel.parts[:-1] if is_package else rel.parts)
        found: dict[str, list] = {"top": [], "inner": []}

        def visit(node: ast.AST, inner: bool, found=found, module=module, is_package=is_package) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and _is_type_checking(child):
                    continue
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    found["inner" if inner else "top"].extend(_targets(child, module, is_package))
                visit(child, inner or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

        visit(ast.parse(path.read_text()), False)
        out[module] = found
    return out


def graph(mods: dict, package: str) -> dict[str, set[str]]:
    """Edges between the package's own modules (a `from pkg import name` counts only if name is a module)."""
    return {m: {t for kind in ("top", "inner") for t in mods[m][kind] if t in mods and t != m} for m in mods}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def _short(name: str) -> str:
    return name.split(".")[1] if name.startswith("lossland.") else name.split(".")[0]


@pytest.fixture(scope="module")
def lossland_imports():
    return imports(ROOT, "lossland")


def test_lossland_never_imports_streamlit_or_the_dashboard(lossland_imports):
    bad = {(m, t) for m, f in lossland_imports.items() for t in f["top"] + f["inner"]
           if t.split(".")[0] in UI}
    assert not bad, f"lossland imports the UI: {sorted(bad)}"


def test_core_compute_knows_nothing_of_the_store_orchestration_or_ui(lossland_imports):
    bad = {(m, t) for m, f in lossland_imports.items() if _short(m) in CORE
           for t in f["top"] + f["inner"] if t.startswith("lossland.") and _short(t) in ABOVE_CORE | UI}
    assert not bad, f"core modules import above themselves: {sorted(bad)}"


@pytest.mark.parametrize("module, forbidden", [
    ("pipeline", {"executors", "experiments", "analyses", "reproduce", "store", "cli", "report"}),
    ("executors", {"experiments", "analyses", "reproduce", "store", "cli", "report"}),
    ("store", {"pipeline", "executors", "experiments", "analyses", "reproduce", "cli", "report", *CORE}),
    ("reproduce", {"report", "cli"}),
    ("plan", {"reproduce", "evidence", "experiments", "store", "report", "cli"}),
])
def test_arrows_point_one_way(lossland_imports, module, forbidden):
    bad = {(m, t) for m, f in lossland_imports.items() if _short(m) == module
           for t in f["top"] + f["inner"] if t.startswith("lossland.") and _short(t) in forbidden}
    assert not bad, f"{module} imports what stands above it: {sorted(bad)}"


def test_the_package_has_no_import_cycle(lossland_imports):
    assert cycles(graph(lossland_imports, "lossland")) == []


def test_imports_inside_functions_are_only_for_optional_or_costly_dependencies(lossland_imports):
    bad = {(m, t) for m, f in lossland_imports.items() for t in f["inner"]
           if not any(t == lazy or t.startswith(lazy + ".") for lazy in LAZY)}
    assert not bad, f"imports inside functions (move them to the top, or add a reason to LAZY): {sorted(bad)}"


def test_the_checks_fail_on_a_deliberately_introduced_cycle_and_an_upward_import(tmp_path):
    pkg = tmp_path / "lossland"
    (pkg / "store").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "store" / "__init__.py").write_text("from .rows import write\n")
    (pkg / "store" / "rows.py").write_text("from ..experiments import run_pair\n")
    (pkg / "experiments.py").write_text("from .store import Store\nfrom . import train\n")
    (pkg / "train.py").write_text("def f():\n    from .analyses import x\n")
    (pkg / "analyses.py").write_text("import streamlit\n")
    mods = imports(tmp_path, "lossland")
    assert cycles(graph(mods, "lossland")) == [["lossland.experiments", "lossland.store", "lossland.store.rows"]]
    assert "lossland.analyses" in mods["lossland.train"]["inner"]  # the upward import, hidden in a function
    assert any(_short(t) in ABOVE_CORE for t in mods["lossland.train"]["inner"] if t.startswith("lossland."))
    assert "streamlit" in mods["lossland.analyses"]["top"]
    (pkg / "store" / "rows.py").write_text("from ..pairs import ROLES\n")  # the cycle broken: none found
    assert cycles(graph(imports(tmp_path, "lossland"), "lossland")) == []
