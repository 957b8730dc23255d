"""The package's dependency floors exclude releases with known, exploitable vulnerabilities.

Regression: the floors admitted pyarrow 14.0.0 (CVE-2023-47248, arbitrary code on reading an
IPC/Parquet file), Pillow 10.0 (CVE-2023-50447, CVE-2024-28219) and torch below 2.6 (CVE-2025-32434:
`torch.load(weights_only=True)` could still run code), all reachable from files users upload.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
VULNERABLE = {
    "pyarrow": ["0.14.1", "14.0.0"],
    "pillow": ["10.0.0", "10.2.0"],
    "torch": ["2.3.1", "2.5.1"],
}


def _floors() -> dict[str, Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    return {r.name.lower(): r for r in requirements}


@pytest.mark.parametrize(("package", "versions"), sorted(VULNERABLE.items()))
def test_vulnerable_releases_are_excluded(package: str, versions: list[str]) -> None:
    requirement = _floors()[package]
    for version in versions:
        assert not requirement.specifier.contains(version), f"{package} {version} is allowed"
