"""The layers contract (pyproject's [tool.importlinter]) holds, and a back-arrow breaks it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# shoal/analysis, shoal/embedding and shoal/registry are links to the top-level folders
PACKAGES = ("shoal", "analysis", "embedding", "registry")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not LINT_IMPORTS.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    root = tmp_path_factory.mktemp("tree")
    for package in PACKAGES:
        shutil.copytree(
            REPO / package,
            root / package,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__", "frontend", "sample_data"),
        )
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_tree_keeps_every_contract(tree_copy: Path) -> None:
    result = _lint_imports(tree_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" in result.stdout and "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "back_arrow", "expected"),
    [
        ("analysis/knn.py", "import shoal.store", "shoal.analysis.knn -> shoal.store"),
        (
            "embedding/pipeline.py",
            "import shoal.analysis.knn",
            "shoal.embedding.pipeline -> shoal.analysis.knn",
        ),
        ("shoal/store/dataset.py", "import shoal.jobs", "shoal.store.dataset -> shoal.jobs"),
        (
            "shoal/jobs/runner.py",
            "import shoal.jobs.tasks",
            "shoal.jobs.runner -> shoal.jobs.tasks",
        ),
        ("shoal/workflows/cache.py", "import streamlit", "shoal.workflows.cache -> streamlit"),
    ],
)
def test_a_back_arrow_breaks_the_build(
    tree_copy: Path, module: str, back_arrow: str, expected: str
) -> None:
    path = tree_copy / module
    original = path.read_text()
    try:
        path.write_text(original + f"\n{back_arrow}  # a back-arrow\n")
        result = _lint_imports(tree_copy)
    finally:
        path.write_text(original)
    assert result.returncode != 0
    assert expected in result.stdout, result.stdout
