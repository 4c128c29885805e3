"""docker-compose.tpot.yml on a real Docker engine: jobs on the worker containers, a killed worker,
a stopped and restarted scheduler, and a clean `down -v`.

The tests share one compose project (module fixture) and run in file order: each leaves the stack
whole again for the next. Jobs are small TPOT searches on the bundled dataset.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

from tests.compose.conftest import ComposeStack

pytestmark = pytest.mark.compose

# A small search: a few dozen pipeline evaluations, under a minute on two single-threaded workers.
QUICK_JOB = {"generations": 2, "population_size": 6, "cv": 2, "max_time_mins": 3, "random_state": 7}
# Long enough to kill a worker while evaluations are in flight.
LONGER_JOB = {
    "generations": 4,
    "population_size": 10,
    "cv": 3,
    "max_time_mins": 4,
    "random_state": 11,
}
IMAGE_SIZE_LIMIT_BYTES = 1_200_000_000

T = TypeVar("T")


def _metric(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus sample family whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if not match:
            continue
        present = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(present.get(key) == value for key, value in labels.items()):
            total += float(match.group(2))
    return total


def _wait_until(
    check: Callable[[], T | None], timeout_seconds: float, what: str, interval: float = 1.0
) -> T:
    deadline = time.monotonic() + timeout_seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_seconds} s")
        time.sleep(interval)


def test_every_service_runs_the_one_image_non_root_read_only_and_within_the_size_budget(
    compose_stack: ComposeStack, compose_image: str
) -> None:
    image_id = compose_stack.docker(
        "image", "inspect", compose_image, "--format", "{{.Id}}"
    ).strip()
    size = int(compose_stack.docker("image", "inspect", compose_image, "--format", "{{.Size}}"))
    services = ("scheduler", "worker", "backend", "backend-distributed")

    for service in services:
        for container in compose_stack.containers(service):
            info = compose_stack.inspect(container)
            assert info["Image"] == image_id, f"{container} runs another image"
            assert info["Config"]["User"] == "10001:10001", container
            assert info["HostConfig"]["ReadonlyRootfs"] is True, container
            assert info["HostConfig"]["CapDrop"] == ["ALL"], container
            assert info["State"]["Health"]["Status"] == "healthy", container
    assert size <= IMAGE_SIZE_LIMIT_BYTES, f"image is {size / 1e6:.0f} MB"


def test_worker_memory_limit_stays_below_the_worker_container_limit(
    compose_stack: ComposeStack,
) -> None:
    dask_limit_mb = int(compose_stack.env["TPOT__MEMORY_LIMIT_MB"])
    container_limit_mb = int(compose_stack.env["TPOT_WORKER_CONTAINER_MEMORY_MB"])
    workers = compose_stack.containers("worker")

    reported = compose_stack.scheduler_python(
        "info = client.scheduler_info(n_workers=-1)['workers'].values()\n"
        "print(json.dumps({w['name']: [w['memory_limit'], w['nthreads']] for w in info}))"
    )

    assert len(workers) == int(compose_stack.env["TPOT_WORKERS"])
    hostnames = {compose_stack.inspect(name)["Config"]["Hostname"] for name in workers}
    assert set(reported) == hostnames
    for memory_limit, nthreads in reported.values():
        assert memory_limit == dask_limit_mb * 2**20
        assert nthreads == 1
    for name in workers:
        assert compose_stack.inspect(name)["HostConfig"]["Memory"] == container_limit_mb * 2**20
    assert container_limit_mb >= dask_limit_mb + max(512, dask_limit_mb // 4)


def test_job_runs_on_the_worker_containers(compose_stack: ComposeStack) -> None:
    hostnames = {
        compose_stack.inspect(name)["Config"]["Hostname"]: name
        for name in compose_stack.containers("worker")
    }
    before = compose_stack.worker_task_counts()

    job_id = compose_stack.submit_job(**QUICK_JOB)
    job = compose_stack.wait_for_job(job_id)
    after = compose_stack.worker_task_counts()

    assert job["status"] == "succeeded", job
    assert job["mode"] == "distributed", job
    assert job["fallback_reason"] is None
    assert job["result"]["pipelines_evaluated"] > 0
    ran = {name: after[name] - before.get(name, 0) for name in after}
    assert set(ran) <= set(hostnames), f"tasks ran outside the worker containers: {ran}"
    assert sum(ran.values()) > 0, f"no task ran on the worker containers: {ran}"


def test_job_finishes_when_a_worker_container_is_killed_mid_job(
    compose_stack: ComposeStack,
) -> None:
    victim, survivor = compose_stack.containers("worker")[:2]
    victim_host = compose_stack.inspect(victim)["Config"]["Hostname"]
    survivor_host = compose_stack.inspect(survivor)["Config"]["Hostname"]
    before = compose_stack.worker_task_counts()

    job_id = compose_stack.submit_job(**LONGER_JOB)
    _wait_until(
        lambda: compose_stack.worker_task_counts().get(victim_host, 0) > before.get(victim_host, 0),
        120,
        "first evaluation on the worker to be killed",
    )
    assert compose_stack.job(job_id)["status"] == "running"
    compose_stack.docker("kill", victim)

    def counts_without_victim() -> dict[str, int] | None:
        if victim_host in compose_stack.worker_names():
            return None
        counts = compose_stack.worker_task_counts()
        return None if victim_host in counts else counts

    at_kill = _wait_until(counts_without_victim, 30, "the scheduler to drop the killed worker", 0.5)
    job = compose_stack.wait_for_job(job_id, timeout_seconds=300)
    after = compose_stack.worker_task_counts()

    assert job["status"] == "succeeded", job
    assert job["mode"] == "distributed", job
    assert after[survivor_host] > at_kill[survivor_host], "the surviving worker did no more work"

    # Leave two healthy workers for the next test.
    compose_stack.compose("up", "--detach", "--wait", "--no-build", "--pull", "never", "worker")


def test_without_scheduler_auto_falls_back_to_local_and_distributed_fails_with_reason(
    compose_stack: ComposeStack,
) -> None:
    compose_stack.compose("stop", "scheduler")

    auto_id = compose_stack.submit_job("backend", **QUICK_JOB)
    distributed_id = compose_stack.submit_job("backend-distributed", **QUICK_JOB)
    distributed = compose_stack.wait_for_job(distributed_id, "backend-distributed")
    auto = compose_stack.wait_for_job(auto_id, "backend")
    with compose_stack.api("backend") as api:
        metrics = api.get("/metrics").text

    assert auto["status"] == "succeeded", auto
    assert auto["mode"] == "local", auto
    assert auto["fallback_reason"], auto
    assert _metric(metrics, "tpot_fallbacks_total") >= 1
    assert distributed["status"] == "failed", distributed
    assert distributed["mode"] == "distributed", distributed
    assert "scheduler" in distributed["error"].lower(), distributed["error"]
    assert compose_stack.readiness("backend-distributed")["ready"] is False


def test_backend_reconnects_when_the_scheduler_returns(compose_stack: ComposeStack) -> None:
    compose_stack.compose("up", "--detach", "--wait", "--no-build", "--pull", "never")

    for backend in ("backend", "backend-distributed"):
        _wait_until(
            lambda backend=backend: (
                compose_stack.readiness(backend)["checks"]["scheduler"] == "connected"
            ),
            90,
            f"{backend} reconnected to the scheduler",
        )
    _wait_until(lambda: len(compose_stack.worker_task_counts()) == 2, 90, "both workers back")
    job = compose_stack.wait_for_job(
        compose_stack.submit_job("backend-distributed", **QUICK_JOB), "backend-distributed"
    )
    with compose_stack.api("backend") as api:
        connected = _metric(api.get("/metrics").text, "tpot_scheduler_connected")

    assert job["status"] == "succeeded", job
    assert job["mode"] == "distributed", job
    assert connected == 1


def test_down_removes_every_container_and_volume_of_the_project(
    compose_stack: ComposeStack,
) -> None:
    label = f"label=com.docker.compose.project={compose_stack.project}"

    compose_stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "10")

    assert compose_stack.docker("ps", "--all", "--quiet", "--filter", label).strip() == ""
    assert compose_stack.docker("volume", "ls", "--quiet", "--filter", label).strip() == ""
