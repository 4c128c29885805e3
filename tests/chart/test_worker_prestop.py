"""The worker's rendered preStop hook, run for real against `dask scheduler` and `dask worker`:
the worker is retired before the pod would die, its running task finishes, its results move away."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from distributed import Client

from tests.harness.dask_cluster import DaskCluster
from tests.harness.helm import container, env_of, render_environment

pytestmark = pytest.mark.run


@pytest.fixture
def cluster() -> Iterator[DaskCluster]:
    with DaskCluster(n_workers=2, memory_limit_mb=1024) as running:
        yield running


def _run_hook(
    cluster: DaskCluster, pod_name: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    """The dev chart's preStop command, as the kubelet would exec it in the worker container."""
    worker = container(render_environment("dev"), "worker")
    command = worker["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "python"
    env = {
        **os.environ,
        "POD_NAME": pod_name,
        "DASK_SCHEDULER_ADDRESS": cluster.address,
        "TPOT_RETIRE_TIMEOUT_SECONDS": env_of(worker)["TPOT_RETIRE_TIMEOUT_SECONDS"],
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, *command[1:]], env=env, capture_output=True, text=True, timeout=120
    )
    return result, time.monotonic() - started


def _events(stderr: str) -> dict[str, dict]:
    found = {}
    for line in stderr.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            found[event["event"]] = event
    return found


def test_pre_stop_hook_lets_the_running_task_finish_and_moves_results_before_the_worker_leaves(
    cluster: DaskCluster,
) -> None:
    def stored_value() -> str:
        return "computed before the drain"

    def slow_task(seconds: float) -> str:
        from distributed import get_worker

        time.sleep(seconds)
        return str(get_worker().name)

    with Client(cluster.address, timeout=30) as client:
        stored = client.submit(stored_value, workers=["worker-0"], pure=False)
        stored.result(timeout=30)
        running = client.submit(slow_task, 5, workers=["worker-0"], pure=False)
        deadline = time.monotonic() + 30
        while not any(client.processing().values()) and time.monotonic() < deadline:
            time.sleep(0.1)

        addresses = {str(w["name"]): a for a, w in client.scheduler_info()["workers"].items()}
        hook, elapsed = _run_hook(cluster, "worker-0")

        assert hook.returncode == 0, hook.stderr
        events = _events(hook.stderr)
        assert "worker_retired" in events, hook.stderr
        assert events["worker_retired"]["tasks_left"] == 0
        assert running.result(timeout=30) == "worker-0", "the task was recomputed elsewhere"
        assert elapsed >= 3, "the hook returned before the running task finished"
        names = {str(w["name"]) for w in client.scheduler_info()["workers"].values()}
        assert names == {"worker-1"}
        assert set(client.who_has([stored])[stored.key]) == {addresses["worker-1"]}
        assert stored.result(timeout=30) == "computed before the drain"


def test_pre_stop_hook_exits_cleanly_for_a_worker_the_scheduler_does_not_know(
    cluster: DaskCluster,
) -> None:
    hook, elapsed = _run_hook(cluster, "no-such-worker")

    assert hook.returncode == 0
    assert "worker_retire_skipped" in _events(hook.stderr)
    assert elapsed < 30
    with Client(cluster.address, timeout=30) as client:
        assert len(client.scheduler_info()["workers"]) == 2
