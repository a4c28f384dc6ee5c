"""lossland as an installed package: `pip install .` gives a `lossland` command with `--version`, and the
public names import from a folder outside the repository (no `pythonpath` help from pytest)."""

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
