"""lossland as an installed package: `pip install .` gives a `lossland` command with `--version`, and the
public names import from a folder outside the repository (no `pythonpath` help from pytest)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lossland

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The package installed (not editable) into a folder of its own; its dependencies are this venv's."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--target", str(target), str(ROOT)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TMPDIR": str(build)}, cwd=build)
    assert done.returncode == 0, done.stderr
    return target


def _outside(installed: Path, tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(installed)}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)


def test_the_console_command_prints_the_version(installed, tmp_path):
    command = installed / "bin" / "lossland"
    assert command.is_file(), "pip install . writes a lossland command"
    done = _outside(installed, tmp_path, str(command), "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"lossland {lossland.__version__}"


def test_the_public_names_import_from_outside_the_repository(installed, tmp_path):
    code = ("import lossland, pathlib; print(pathlib.Path(lossland.__file__).parent.parent); "
            "names = [getattr(lossland, n) for n in lossland.__all__]; "
            "print(len(names), all(f.__doc__ for f in names if callable(f)))")
    done = _outside(installed, tmp_path, sys.executable, "-c", code)
    assert done.returncode == 0, done.stderr
    where, summary = done.stdout.split("\n")[:2]
    assert Path(where) == installed, "the installed copy, not the repository's"
    count, documented = summary.split()
    assert int(count) == len(lossland.__all__) and documented == "True", "every public callable has a docstring"


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path):
    """`lossland config --preset ... | head -0`: the pipe closes before the output is written."""
    p = subprocess.Popen([sys.executable, "-m", "lossland", "config", "--preset", "fashion-cnn"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before the first byte
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_the_readme_from_python_example_runs_as_written(tmp_path, monkeypatch):
    """The README's "From Python" block, executed in an empty folder: every name it uses exists and works."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### From Python"):text.index("## Layout")]
    code = section[section.index("```python") + len("```python"):section.index("```", section.index("```python") + 9)]
    monkeypatch.chdir(tmp_path)
    shown: list = []
    namespace = {"print": lambda *a: shown.append(a)}
    exec(compile(code, "README.md: From Python", "exec"), namespace)  # noqa: S102 - our own README
    runs, store = namespace["runs"], namespace["store"]
    assert sorted(runs["role"]) == ["bad", "good"] and (tmp_path / "data" / "runs.duckdb").is_file()
    assert len(shown) == 4 and sorted(shown[1][0]["role"]) == ["bad", "good"]
    assert shown[2][0] < 1e-2, "the bad minimum fits its clean set"
    assert len(shown[3][0]) == 5 and shown[3][0][0] > 0
    external = store.query("SELECT run_id FROM runs WHERE run_id LIKE 'ext-%'").frame
    assert len(external) == 1, "analyze kept the own model as an external run"


def test_the_console_command_finds_factories_in_the_current_folder(installed, tmp_path):
    """`lossland run` from a project folder imports that folder's factory modules, as `python -m lossland` does."""
    env_store = tmp_path / "runs.duckdb"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(installed),
                                                                         "LOSSLAND_STORE": str(env_store)}
    done = subprocess.run([str(installed / "bin" / "lossland"), "run", "--config", "examples/own_model/config.json",
                           "--quiet", "--json"], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["from_store"] is False and env_store.is_file()
