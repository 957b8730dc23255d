"""Heavy dependencies load lazily and fail with an install hint."""

from __future__ import annotations

import sys

import numpy as np
import pytest


def test_importing_analysis_does_not_import_umap_or_sklearn_estimators() -> None:
    import subprocess

    code = (
        "import sys, analysis, shoal.workflows.analyse; "
        "print('umap' in sys.modules, 'sklearn.ensemble' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_maps_need_no_umap_learn(monkeypatch) -> None:
    """UMAP's layout is Shoal's own kernel: a map is drawn where umap-learn cannot import."""
    from shoal.analysis.projection import project

    monkeypatch.setitem(sys.modules, "umap", None)
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    assert project(x).method == "umap"


def test_missing_faiss_gives_install_hint(monkeypatch) -> None:
    from shoal.analysis.knn import build_knn_graph

    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        build_knn_graph(np.eye(4))
