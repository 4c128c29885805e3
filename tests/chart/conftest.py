"""Render and policy tiers: the values sets every test runs over; checkov runs in the background.

A "values set" is what a user passes to `helm install`: nothing (values.yaml alone), one of the
shipped environment files, or one of the feature combinations kept in tests/chart/values/. Each set
is rendered once per session (tests/harness/helm.py caches renders).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.helm import CHART_DIR, ENVIRONMENTS, MONITORING_APIS, REPO_ROOT, render

HERE = Path(__file__).resolve().parent
COMBINATIONS_DIR = HERE / "values"
INVALID_DIR = HERE / "invalid"
CHECKOV_SKIPS = REPO_ROOT / "ci" / "checkov-skips.yaml"
CHECKOV_BIN = REPO_ROOT / ".tools" / "bin" / "checkov"
# Checkov scans the chart as a user installs it: defaults alone, and the production overlay.
CHECKOV_SCANS: dict[str, tuple[Path, ...]] = {
    "default": (),
    "prod": (CHART_DIR / "values-prod.yaml",),
}

VALUE_SETS: dict[str, tuple[Path, ...]] = {
    **ENVIRONMENTS,
    **{f"combo:{path.stem}": (path,) for path in sorted(COMBINATIONS_DIR.glob("*.yaml"))},
}


def render_set(name: str) -> list[dict[str, Any]]:
    """A values set rendered as if prometheus-operator's CRDs were installed."""
    return render(VALUE_SETS[name], api_versions=MONITORING_APIS)


@pytest.fixture(params=sorted(VALUE_SETS), scope="session")
def value_set(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=sorted(ENVIRONMENTS), scope="session")
def environment(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def manifests(value_set: str, helm_bin: str) -> list[dict[str, Any]]:
    return render_set(value_set)


@pytest.fixture(scope="session")
def environment_manifests(environment: str, helm_bin: str) -> list[dict[str, Any]]:
    return render_set(environment)


def load_values(*paths: Path) -> dict[str, Any]:
    """values.yaml with the given files merged over it, the way helm merges maps."""

    def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
        merged = dict(base)
        for key, value in top.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = merge(merged[key], value)
            elif value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        return merged

    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    for path in paths:
        values = merge(values, yaml.safe_load(path.read_text()) or {})
    return values


def quantity_mib(quantity: str) -> float:
    """A Kubernetes byte quantity (512Mi, 2Gi, 1G, 1048576) in MiB."""
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024**2, "k": 1e3 / 2**20, "M": 1e6 / 2**20,
             "G": 1e9 / 2**20, "T": 1e12 / 2**20, "": 1 / 2**20}  # fmt: skip
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(quantity))
    if match is None or match[2] not in units:
        raise ValueError(f"{quantity!r} is not a byte quantity such as 512Mi or 2Gi")
    return float(match[1]) * units[match[2]]


# -- checkov in the background -----


@dataclass
class CheckovScan:
    name: str
    process: subprocess.Popen[bytes]
    output_path: Path
    stderr_path: Path

    def result(self, timeout_seconds: float = 240) -> dict[str, Any]:
        """Checkov's JSON report for the helm framework (waits for the scan to end)."""
        self.process.wait(timeout=timeout_seconds)
        text = self.output_path.read_text()
        if not text.strip():
            raise AssertionError(
                f"checkov ({self.name}) printed no report, exit {self.process.returncode}:\n"
                + self.stderr_path.read_text()[-3000:]
            )
        report = json.loads(text)
        reports = report if isinstance(report, list) else [report]
        helm_reports = [r for r in reports if r.get("check_type") == "helm"]
        if not helm_reports:
            raise AssertionError(f"checkov ({self.name}) ran no helm scan: {text[:500]}")
        return dict(helm_reports[0])


def checkov_skips() -> dict[str, str]:
    """Check id -> reason, from ci/checkov-skips.yaml."""
    entries = yaml.safe_load(CHECKOV_SKIPS.read_text())["skips"]
    return {entry["id"]: entry["reason"] for entry in entries}


def _start_checkov(name: str, values_files: tuple[Path, ...], workdir: Path) -> CheckovScan:
    output_path = workdir / f"checkov-{name}.json"
    stderr_path = workdir / f"checkov-{name}.err"
    args = [
        str(CHECKOV_BIN),
        "--framework",
        "helm",
        "--directory",
        str(CHART_DIR),
        "--output",
        "json",
        "--quiet",
        # Offline: no download of guidelines or policies from the vendor's service.
        "--skip-download",
    ]
    for path in values_files:
        args += ["--var-file", str(path)]
    env = {**os.environ, "PATH": f"{CHECKOV_BIN.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with output_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen(
            args, stdout=out, stderr=err, env=env, cwd=workdir, start_new_session=True
        )
    return CheckovScan(name, process, output_path, stderr_path)


_SCANS_KEY = pytest.StashKey[dict[str, CheckovScan]]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the checkov scans once a checkov test is selected, so they overlap the other tests."""
    names = (getattr(item, "originalname", item.name) for item in session.items)
    if not any(name.startswith("test_checkov") for name in names) or not CHECKOV_BIN.exists():
        return
    workdir = Path(tempfile.mkdtemp(prefix="tpot-checkov-"))
    scans = {name: _start_checkov(name, files, workdir) for name, files in CHECKOV_SCANS.items()}
    session.config.stash[_SCANS_KEY] = scans


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Never leave a scan running: kill the process group of any that is still going."""
    for scan in session.config.stash.get(_SCANS_KEY, {}).values():
        if scan.process.poll() is None:
            os.killpg(scan.process.pid, signal.SIGKILL)
            scan.process.wait()
        shutil.rmtree(scan.output_path.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def checkov_scans(pytestconfig: pytest.Config) -> dict[str, CheckovScan]:
    scans = pytestconfig.stash.get(_SCANS_KEY, None)
    if scans is None:
        pytest.skip(f"needs checkov at {CHECKOV_BIN} (run `make bootstrap`)")
    return scans
