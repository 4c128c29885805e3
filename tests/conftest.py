"""Fixtures shared by every tier: repository paths and the tools ci/bootstrap.sh provides."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CHART_DIR = REPO_ROOT / "charts" / "tpot"
TOOLS_BIN = REPO_ROOT / ".tools" / "bin"

# The tools folder comes first so the pinned helm/kubectl win over whatever else is on PATH.
os.environ["PATH"] = f"{TOOLS_BIN}{os.pathsep}{os.environ.get('PATH', '')}"


def require_tool(name: str) -> str:
    """Path of a command-line tool; otherwise skip the test with one line naming what is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"needs `{name}` on PATH (run `make bootstrap`)")
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def chart_dir() -> Path:
    return CHART_DIR


@pytest.fixture(scope="session")
def helm_bin() -> str:
    return require_tool("helm")


@pytest.fixture(scope="session")
def promtool_bin() -> str:
    return require_tool("promtool")
