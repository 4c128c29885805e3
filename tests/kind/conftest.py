"""The kind tier: a real Kubernetes cluster from KUBECONFIG, or one that kind creates here.

Order of preference: an existing cluster named by KUBECONFIG (pytest-helm-charts'
`kube_cluster` fixture reads it); a kind cluster this harness creates when `kind` and a Docker
engine exist; otherwise every test in the tier skips with one line saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CHART_DIR, REPO_ROOT

KIND_CLUSTER_NAME = "tpot-harness"


def _reachable(kubeconfig: str) -> tuple[bool, str]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return False, "kubectl is not installed (run `make bootstrap`)"
    result = subprocess.run(
        [kubectl, "--kubeconfig", kubeconfig, "--request-timeout=10s", "get", "--raw", "/readyz"],
        capture_output=True,
        text=True,
    )
    return result.returncode == 0, (result.stderr.strip().splitlines() or ["no answer"])[-1]


def _app_version() -> str:
    for line in (CHART_DIR / "Chart.yaml").read_text().splitlines():
        if line.startswith("appVersion:"):
            return line.split(":", 1)[1].strip().strip("\"'")
    raise AssertionError("Chart.yaml has no appVersion")


@pytest.fixture(scope="session")
def kind_kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    existing = os.environ.get("KUBECONFIG")
    if existing:
        ok, why = _reachable(existing)
        if not ok:
            pytest.skip(f"kind tier: KUBECONFIG={existing} does not answer ({why})")
        yield existing
        return

    kind = shutil.which("kind")
    if kind is None:
        pytest.skip("kind tier: no Kubernetes cluster here (KUBECONFIG unset and no `kind` binary)")
    docker_ok = (
        shutil.which("docker")
        and subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    )
    if not docker_ok:
        pytest.skip("kind tier: `kind` needs a running Docker engine, and none answers")

    kubeconfig = str(tmp_path_factory.mktemp("kind") / "kubeconfig")
    created = subprocess.run(
        [
            kind,
            "create",
            "cluster",
            "--name",
            KIND_CLUSTER_NAME,
            "--kubeconfig",
            kubeconfig,
            "--config",
            str(REPO_ROOT / "ci" / "kind-config.yaml"),
            "--wait",
            "180s",
        ],
        capture_output=True,
        text=True,
    )
    if created.returncode != 0:
        reason = (created.stderr.strip().splitlines() or ["unknown error"])[-1]
        pytest.skip(f"kind tier: kind could not create a cluster here ({reason})")
    try:
        _load_image(kind)
        yield kubeconfig
    finally:
        subprocess.run(
            [kind, "delete", "cluster", "--name", KIND_CLUSTER_NAME], capture_output=True
        )


def _load_image(kind: str) -> None:
    """Build the one image and load it into the kind nodes, unless CI already did."""
    if os.environ.get("TPOT_KIND_IMAGE_LOADED") == "1":
        return
    image = f"tpot-backend:{_app_version()}"
    build = ["docker", "build", "-f", "backend/Dockerfile", "-t", image]
    base = os.environ.get("TPOT_BASE_IMAGE")
    if base:
        build += ["--build-arg", f"BASE_IMAGE={base}"]
    subprocess.run([*build, "."], cwd=REPO_ROOT, check=True)
    subprocess.run([kind, "load", "docker-image", image, "--name", KIND_CLUSTER_NAME], check=True)


@pytest.fixture(scope="session")
def kube_config(kind_kubeconfig: str) -> str:
    """Feeds pytest-helm-charts' `kube_cluster` fixture with the cluster chosen above."""
    os.environ["KUBECONFIG"] = kind_kubeconfig
    return kind_kubeconfig


@pytest.fixture(scope="session")
def values_dir() -> Path:
    return CHART_DIR
