"""Install each environment on a real cluster, run `helm test`, submit a job, uninstall."""

from __future__ import annotations

import base64
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pytest_helm_charts.clusters import Cluster

from tests.conftest import CHART_DIR
from tests.harness.jobs import bundled_dataset, submit_job, wait_for_job

pytestmark = pytest.mark.kind

ENVIRONMENTS = ["dev", "staging", "prod"]
KIND_OVERLAY = Path(__file__).with_name("values-kind.yaml")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _helm(*args: str, kubeconfig: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["helm", "--kubeconfig", kubeconfig, *args], capture_output=True, text=True, timeout=900
    )


@pytest.fixture(params=ENVIRONMENTS)
def release(request: pytest.FixtureRequest, kube_config: str) -> Iterator[tuple[str, str]]:
    env = request.param
    name, namespace = f"tpot-{env}", f"tpot-kind-{env}"
    installed = _helm(
        "install",
        name,
        str(CHART_DIR),
        "--namespace",
        namespace,
        "--create-namespace",
        "-f",
        str(CHART_DIR / f"values-{env}.yaml"),
        "-f",
        str(KIND_OVERLAY),
        "--wait",
        "--timeout",
        "10m",
        kubeconfig=kube_config,
    )
    try:
        assert installed.returncode == 0, installed.stderr
        yield name, namespace
    finally:
        _helm("uninstall", name, "--namespace", namespace, "--wait", kubeconfig=kube_config)
        subprocess.run(
            [
                "kubectl",
                "--kubeconfig",
                kube_config,
                "delete",
                "namespace",
                namespace,
                "--wait=false",
            ],
            capture_output=True,
        )


def test_every_environment_installs_passes_helm_test_and_runs_a_job(
    release: tuple[str, str], kube_cluster: Cluster, kube_config: str
) -> None:
    name, namespace = release

    pods = kube_cluster.kubectl("get pods", namespace=namespace)["items"]
    not_ready = [
        p["metadata"]["name"]
        for p in pods
        if p["status"].get("phase") == "Running"
        and not all(c.get("ready") for c in p["status"].get("containerStatuses", []))
    ]
    assert pods and not not_ready, f"pods not ready: {not_ready}"

    tested = _helm("test", name, "--namespace", namespace, "--logs", kubeconfig=kube_config)
    assert tested.returncode == 0, tested.stdout + tested.stderr

    local_port = _free_port()
    forward = subprocess.Popen(
        [
            "kubectl",
            "--kubeconfig",
            kube_config,
            "--namespace",
            namespace,
            "port-forward",
            f"service/{name}-backend",
            f"{local_port}:http",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base_url = f"http://127.0.0.1:{local_port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass  # the port-forward is not up yet
            time.sleep(1)
        token = _api_token(kube_cluster, namespace, name)
        path, target = bundled_dataset()
        job_id = submit_job(base_url, path, target, token=token, generations=1, population_size=4)
        job = wait_for_job(base_url, job_id, token=token, timeout_seconds=600)
        assert job["status"] == "succeeded", job
        assert job["mode"] == "distributed", job
    finally:
        forward.terminate()
        forward.wait(timeout=10)


def _api_token(kube_cluster: Cluster, namespace: str, release_name: str) -> str | None:
    secrets = kube_cluster.kubectl("get secrets", namespace=namespace)["items"]
    for secret in secrets:
        data = secret.get("data") or {}
        if secret["metadata"]["name"].startswith(release_name) and "api-token" in data:
            return base64.b64decode(data["api-token"]).decode()
    return None
