"""The wheel users install: built by ``python -m build``, installed into a fresh venv, and run
from a project directory that has its own ``analysis.py``, ``embedding.py``, ``registry.py`` and
``pages.py`` (each raises on import), so a Shoal module that a user's file could shadow fails here.

Shoal itself comes only from the wheel. Its third-party dependencies (torch, streamlit, ...) come
from this test's own environment through one ``.pth`` line, so the test needs no network and no
second multi-GB install; the venv's own site-packages, where the wheel lands, comes first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from benchmarks.servers import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
#: What the wheel is built from (shoal/ holds links to the kernels, the web app and the sample data).
SOURCES = ("shoal", "analysis", "embedding", "registry", "sample_data", "pages", ".streamlit")
SOURCE_FILES = ("pyproject.toml", "README.md", "app.py", "asgi.py")
SHADOWS = ("analysis", "embedding", "registry", "pages", "app")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "node_modules", "*.egg-info")
    for name in SOURCES:
        shutil.copytree(REPO / name, source / name, symlinks=True, ignore=ignore)
    for name in SOURCE_FILES:
        shutil.copy(REPO / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (path,) = out.glob("shoal-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("venv")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "--ignore-installed", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "zz_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's project: modules named like the repository's folders, each failing on import."""
    root = tmp_path_factory.mktemp("project")
    for name in SHADOWS:
        (root / f"{name}.py").write_text(
            f"raise ImportError('the project\\'s own {name}.py was imported instead of Shoal\\'s')\n"
        )
    return root


def _shoal(venv: Path, project: Path, *args: str) -> str:
    """Run the installed ``shoal`` in the project directory, as a user would."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SHOAL_WORKSPACE")}
    result = subprocess.run(
        [str(venv / "bin" / "shoal"), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"shoal {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_the_wheel_installs_shoal_under_one_name(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.startswith("shoal-")}
    assert tops == {"shoal"}, f"top-level names a user's module could shadow: {tops - {'shoal'}}"
    for expected in (
        "shoal/analysis/knn.py",
        "shoal/embedding/pipeline.py",
        "shoal/embedding/extract/loading.py",
        "shoal/registry/__init__.py",
        "shoal/webapp/app.py",
        "shoal/webapp/asgi.py",
        "shoal/webapp/pages/map.py",
        "shoal/webapp/.streamlit/config.toml",
        "shoal/app/static/map.js",
    ):
        assert expected in names, expected
    samples = [n for n in names if n.startswith("shoal/sample_data/tuxpaint/")]
    on_disk = [p for p in (REPO / "sample_data" / "tuxpaint").rglob("*") if p.is_file()]
    assert len(samples) == len(on_disk) > 300
    assert not [n for n in names if "node_modules" in n or "__pycache__" in n]


def test_shoal_runs_from_a_project_with_its_own_analysis_module(venv: Path, project: Path) -> None:
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import shoal, shoal.analysis.knn, shoal.embedding, shoal.registry, shoal.cli.demo as d;"
         "print(shoal.__file__); print(shoal.analysis.knn.__file__); print(d.SAMPLE_DIR)"],
        cwd=project, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    site = str(venv)
    package, kernel, sample_dir = where.stdout.split()
    assert package.startswith(site) and kernel.startswith(site), where.stdout
    assert sample_dir.startswith(site)

    workspace = ("--workspace", str(project / "ws"))
    assert "sample" in _shoal(venv, project, "demo", "--help")
    _shoal(venv, project, "import", sample_dir, "--dataset", "tux", *workspace)
    _shoal(venv, project, "embed", "tux", *workspace)
    info = json.loads(_shoal(venv, project, "info", "tux", "--json", *workspace))
    images = [p for p in Path(sample_dir).rglob("*") if p.suffix.lower() in (".png", ".jpg")]
    assert info["samples"] == len(images) > 300
    (embedding,) = info["embeddings"]
    assert embedding["count"] == info["samples"]


def test_the_installed_server_serves_the_app(venv: Path, project: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SHOAL_WORKSPACE")}
    server = subprocess.Popen(
        [str(venv / "bin" / "shoal"), "--workspace", str(project / "ws"), "serve",
         "--port", str(port), "--address", "127.0.0.1"],
        cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health") as reply:
                    assert reply.read() == b"ok"
                    break
            except OSError:
                assert server.poll() is None, server.communicate()[0]
                assert time.monotonic() < deadline, "the installed server did not start in 90 s"
                time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as reply:
            assert reply.status == 200 and b"<html" in reply.read().lower()
    finally:
        server.terminate()
        server.wait(timeout=30)
