"""What the figures were measured on: hardware, operating system, package and tool versions."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

from tpot_backend.runner import package_versions

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOLS_BIN = REPO_ROOT / ".tools" / "bin"
EXTRA_PACKAGES = ("scikit-learn", "numpy", "pandas", "pyarrow", "fastapi", "uvicorn", "psutil")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _command(*argv: str, timeout_seconds: float = 20) -> str | None:
    try:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout_seconds, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages, rounded (other work on the host shows up here)."""
    return [round(value, 2) for value in os.getloadavg()]


def hardware() -> dict[str, Any]:
    cpuinfo = _read("/proc/cpuinfo")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    meminfo = _read("/proc/meminfo")
    total_kib = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.MULTILINE)
    os_release = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', _read("/etc/os-release"), re.MULTILINE)
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model.group(1).strip() if model else platform.processor() or "unknown",
        "memory_total_gib": round(int(total_kib.group(1)) / 2**20, 1) if total_kib else None,
        "kernel": platform.release(),
        "os": os_release.group(1) if os_release else platform.system(),
        "machine": platform.machine(),
    }


def versions() -> dict[str, Any]:
    from importlib import metadata

    found: dict[str, Any] = dict(package_versions())
    for name in EXTRA_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    helm = TOOLS_BIN / "helm"
    found["helm"] = _command(str(helm) if helm.exists() else "helm", "version", "--short")
    found["docker_server"] = _command("docker", "version", "--format", "{{.Server.Version}}")
    chart = _read(str(REPO_ROOT / "charts" / "tpot" / "Chart.yaml"))
    for key in ("version", "appVersion"):
        match = re.search(rf"^{key}:\s*\"?([^\"\s]+)\"?", chart, re.MULTILINE)
        found[f"chart_{key}"] = match.group(1) if match else None
    return found


def source() -> dict[str, Any]:
    """The commit measured and whether the measured code (backend, chart) differed from it."""
    commit = _command("git", "-C", str(REPO_ROOT), "rev-parse", "HEAD")
    changed = _command(
        "git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "backend", "charts"
    )
    # "XY path" lines; the status columns may be blank (and _command strips the first one), so the
    # path is whatever follows the first run of blanks.
    paths = {line.split(None, 1)[1] for line in (changed or "").splitlines() if line.strip()}
    return {"commit": commit, "uncommitted_changes_in": sorted(paths)}
