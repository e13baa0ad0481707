"""The engine's import contract (pyproject.toml, [tool.importlinter]) holds, and a breach fails it.

``make test`` runs ``lint-imports`` before pytest; this test shows that the contract really bites: the
same check on a copy of the tree with one forbidden import added fails and names it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT

LINT = Path(sys.executable).parent / "lint-imports"
pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (make install-test)")
PACKAGES = ("engine", "dashboard", "training", "models", "benchmarks")


def _lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def tree(tmp_path):
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_its_contracts(tree):
    done = _lint(tree)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("module, line, contract", [
    ("engine/model/device.py", "import engine.worklist.store", "The engine in layers"),
    ("engine/inputs/limits.py", "import engine.model.preprocess", "The engine in layers"),
    ("engine/inference/predictor.py", "import dashboard.state", "never imports the dashboard"),
    ("engine/inference/backends/ort.py", "import engine.inference.predictor", "Backends do not know the predictor"),
], ids=["upward", "siblings", "dashboard", "backend-to-predictor"])
def test_a_forbidden_import_fails_the_check_and_is_named(tree, module, line, contract):
    path = tree / module
    path.write_text(path.read_text() + f"\n{line}  # added by the test\n")
    done = _lint(tree)
    assert done.returncode != 0
    assert f"{contract}" in done.stdout and "BROKEN" in done.stdout, done.stdout
