"""Render → run: the chart's own commands, arguments and environment, run as local processes.

The dev values are rendered with the real helm; LocalStack (tests/harness/localstack.py) runs
the scheduler, the workers and the backend from those manifests, mapping Service names to
loopback, ports to free ones and volumes to temporary folders. A TPOT job then goes through the
backend to the workers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from distributed import Client

from tests.harness.helm import CHART_DIR, objects, render, render_environment
from tests.harness.jobs import bundled_dataset, submit_job, wait_for_job
from tests.harness.localstack import LocalStack

pytestmark = pytest.mark.run
log = logging.getLogger(__name__)


def _start(manifests: list[dict], workdir: Path) -> Iterator[LocalStack]:
    stack = LocalStack(manifests, workdir=workdir)
    try:
        stack.start()
        yield stack
    except BaseException:
        log.error("event=stack_failed logs=\n%s", stack.logs())
        raise
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def dev_stack(helm_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    yield from _start(render_environment("dev"), tmp_path_factory.mktemp("dev-stack"))


def _executed_per_worker(stack: LocalStack) -> dict[str, int]:
    with Client(stack.scheduler_address(), timeout=10) as client:
        return client.run(lambda dask_worker: dask_worker.state.executed_count)


def test_dev_stack_runs_a_tpot_job_on_the_rendered_workers(dev_stack: LocalStack) -> None:
    workers = dev_stack.by_component("worker")
    before = _executed_per_worker(dev_stack)
    path, target = bundled_dataset()

    job_id = submit_job(
        dev_stack.url("backend", "http"),
        path,
        target,
        generations=1,
        population_size=4,
        random_state=7,
    )
    job = wait_for_job(dev_stack.url("backend", "http"), job_id, timeout_seconds=300)

    assert job["status"] == "succeeded", job
    assert job["mode"] == "distributed"
    assert job["result"]["scheduler"] == dev_stack.scheduler_address()
    assert job["result"]["pipelines_evaluated"] >= 1
    after = _executed_per_worker(dev_stack)
    assert len(workers) == 2 and len(after) == 2
    assert sum(after.values()) > sum(before.values()), f"no task ran on the workers: {after}"


def test_every_rendered_probe_answers_on_the_running_processes(dev_stack: LocalStack) -> None:
    checked = []

    for process in dev_stack.processes:
        for kind in process.probes:
            url = process.probe_url(kind)
            assert url is not None, f"{process.pod}/{process.container} {kind} probe is not httpGet"
            response = httpx.get(url, timeout=5)
            assert response.status_code == 200, (
                f"{process.pod} {kind} {url}: {response.status_code}"
            )
            checked.append((process.pod, kind))

    components = {pod.rsplit("-", 1)[0] for pod, _ in checked}
    assert {"tpot-scheduler", "tpot-worker", "tpot-backend"} <= components


def test_dask_metrics_endpoints_serve_real_metrics(dev_stack: LocalStack) -> None:
    scheduler = httpx.get(dev_stack.url("scheduler", "dashboard") + "/metrics", timeout=5).text
    worker = httpx.get(dev_stack.url("worker", "dashboard") + "/metrics", timeout=5).text

    assert "dask_scheduler_workers" in scheduler
    assert "dask_worker_memory_bytes" in worker


def test_helm_test_pod_passes_against_the_running_stack(dev_stack: LocalStack) -> None:
    test_pods = [
        pod
        for pod in objects(render_environment("dev"), "Pod")
        if "helm.sh/hook" in pod["metadata"].get("annotations", {})
    ]
    assert test_pods, "the chart renders no `helm test` pod"

    for pod in test_pods:
        process = dev_stack.run_pod(pod, timeout_seconds=180)
        assert process.popen is not None and process.popen.returncode == 0, process.log_tail()
        assert "computation_checked" in process.log_tail(), process.log_tail()


def test_scheduler_file_mode_connects_workers_and_backend(helm_bin: str, tmp_path: Path) -> None:
    manifests = render([CHART_DIR / "values-dev.yaml"], {"schedulerFile.enabled": True})
    worker_args = next(
        c["args"]
        for d in objects(manifests, "Deployment")
        if d["metadata"]["name"].endswith("-worker")
        for c in d["spec"]["template"]["spec"]["containers"]
    )
    assert "--scheduler-file" in worker_args

    for stack in _start(manifests, tmp_path):
        identity = httpx.get(stack.url("scheduler", "dashboard") + "/json/identity.json").json()
        ready = httpx.get(stack.url("backend", "http") + "/readyz", timeout=10)

        assert len(identity["workers"]) == 2
        assert ready.status_code == 200, ready.text
