"""The hard failures: workers dying mid-search, and the scheduler lost mid-job."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import Client
from sklearn.linear_model import LogisticRegression
from tpot_backend.bridge import TpotClientBridge
from tpot_backend.cluster import open_client
from tpot_backend.config import Settings
from tpot_backend.datasets import bundled_dataset_path, prepare_training_data, read_table
from tpot_backend.runner import JobParams, SearchResult, run_search

from tests.backend.conftest import (
    MEMORY_LIMIT_MB,
    BackendServer,
    StartBackend,
    backend_command,
    parse_events,
)
from tests.backend.memory_hog import MemoryHog, SlowClassifier
from tests.harness.dask_cluster import DaskCluster

pytestmark = pytest.mark.backend


@pytest.fixture
def cluster_client(fresh_cluster: DaskCluster) -> Iterator[tuple[Settings, Client]]:
    settings = Settings.from_env(
        {"DASK_SCHEDULER_ADDRESS": fresh_cluster.address, "TPOT__MEMORY_LIMIT_MB": "1024"}
    )
    client = open_client(settings, 20)
    yield settings, client
    client.close()


def _bundled(settings: Settings, **overrides: Any) -> tuple[Any, JobParams]:
    values = {
        "target": "diagnosis",
        "generations": 1,
        "population_size": 6,
        "cv": 3,
        "random_state": 3,
        "max_eval_time_mins": 1,
        **overrides,
    }
    params = JobParams.from_values(values, settings.limits)
    data = prepare_training_data(
        read_table(bundled_dataset_path()),
        target="diagnosis",
        task=None,
        cv=3,
        test_size=params.test_size,
    )
    return data, params


def _times_computed(client: Client, key: str) -> int:
    return sum(1 for entry in client.story(key) if entry[2] == "memory")


def test_pipeline_killing_its_worker_by_memory_limit_fails_alone_and_the_search_goes_on(
    fresh_cluster: DaskCluster, cluster_client: tuple[Settings, Client]
) -> None:
    from tpot.search_spaces.nodes import EstimatorNode
    from tpot.search_spaces.pipelines import ChoicePipeline

    settings, client = cluster_client
    data, params = _bundled(settings)
    space = ChoicePipeline(
        [
            EstimatorNode(MemoryHog, {"megabytes": MEMORY_LIMIT_MB + 600, "hold_seconds": 3.0}),
            EstimatorNode(LogisticRegression, {"max_iter": 300}),
        ]
    )
    bridge = TpotClientBridge(client, job_id="hog")

    result = run_search(
        data,
        params,
        bridge,
        limits=settings.limits,
        memory_limit_mb=MEMORY_LIMIT_MB,
        job_id="hog",
        mode="distributed",
        search_space=space,
    )

    summary = result.summary
    assert summary["pipelines_failed"] >= 1
    assert summary["pipelines_evaluated"] > summary["pipelines_failed"]
    assert "LogisticRegression" in summary["best_pipeline"]
    assert summary["holdout_score"] > 0.8
    assert "exceeded 95% memory budget" in fresh_cluster.logs()
    assert _times_computed(client, "tpot-data-hog-0") >= 1


def test_search_survives_losing_the_worker_that_holds_the_dataset(
    fresh_cluster: DaskCluster, cluster_client: tuple[Settings, Client]
) -> None:
    from tpot.search_spaces.nodes import EstimatorNode
    from tpot.search_spaces.pipelines import ChoicePipeline

    settings, client = cluster_client
    data, params = _bundled(settings, generations=2)
    space = ChoicePipeline(
        [
            EstimatorNode(SlowClassifier, {"seconds": 1.0}),
            EstimatorNode(LogisticRegression, {"max_iter": 300}),
        ]
    )
    bridge = TpotClientBridge(client, job_id="holder")
    outcome: dict[str, Any] = {}

    def search() -> None:
        try:
            outcome["result"] = run_search(
                data,
                params,
                bridge,
                limits=settings.limits,
                memory_limit_mb=MEMORY_LIMIT_MB,
                job_id="holder",
                mode="distributed",
                search_space=space,
            )
        except BaseException as error:  # reported by the assertions below
            outcome["error"] = error

    thread = threading.Thread(target=search)
    thread.start()
    key, holders = _wait_for_data_holders(client, bridge)
    names = {addr: info["name"] for addr, info in client.scheduler_info()["workers"].items()}
    killed = [int(str(names[address]).rsplit("-", 1)[1]) for address in holders]
    for index in killed:  # every copy of the dataset goes
        fresh_cluster.kill_worker(index)
    if len(killed) == fresh_cluster.n_workers:
        fresh_cluster.restart_worker(killed[0])  # something must be left to run the search
    thread.join(timeout=240)

    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    result: SearchResult = outcome["result"]
    assert result.summary["pipelines_evaluated"] >= 2
    assert _times_computed(client, key) >= 2  # recomputed after its holders died


def _wait_for_data_holders(client: Client, bridge: TpotClientBridge) -> tuple[str, list[str]]:
    """The first dataset key of the job and the workers holding it, once evaluations started."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if bridge.evaluations_submitted >= 1 and bridge.data_keys:
            key = bridge.data_keys[0]
            holders = client.who_has().get(key) or ()
            if holders:
                return key, [str(address) for address in holders]
        time.sleep(0.1)
    raise AssertionError("the dataset never reached a worker")


def _run_and_kill_scheduler(
    cluster: DaskCluster, env: dict[str, str], delay_seconds: float = 1.5
) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    """Start a one-shot job, kill the scheduler once the search runs; exit code and report."""
    process = subprocess.Popen(
        backend_command()
        + [
            "run",
            "bundled",
            "--generations",
            "2",
            "--population-size",
            "6",
            "--cv",
            "3",
            "--random-state",
            "1",
            "--max-eval-time-mins",
            "1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    stderr_lines: list[str] = []
    try:
        assert process.stderr is not None
        for line in process.stderr:
            stderr_lines.append(line)
            if '"search_started"' in line:
                break
        time.sleep(delay_seconds)
        cluster.kill_scheduler()
        stdout, rest = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
    events = parse_events("".join(stderr_lines) + rest)
    return process.returncode, json.loads(stdout), events


def test_scheduler_lost_mid_job_in_auto_reruns_the_job_locally_once(
    fresh_cluster: DaskCluster, backend_env: dict[str, str]
) -> None:
    env = {
        **backend_env,
        "TPOT_PARALLEL_MODE": "auto",
        "DASK_SCHEDULER_ADDRESS": fresh_cluster.address,
    }

    code, report, events = _run_and_kill_scheduler(fresh_cluster, env)

    assert code == 0, report
    assert report["status"] == "succeeded"
    assert report["arm"] == "distributed" and report["mode"] == "local"
    assert report["fallback_reason"] == "scheduler_lost"
    assert any("ran locally" in note for note in report["result"]["notes"])
    attempts = [e["mode"] for e in events if e["event"] == "job_attempt_started"]
    assert attempts == ["distributed", "local"]


def test_scheduler_lost_mid_job_in_distributed_fails_the_job_with_the_reason(
    fresh_cluster: DaskCluster, backend_env: dict[str, str]
) -> None:
    env = {
        **backend_env,
        "TPOT_PARALLEL_MODE": "distributed",
        "DASK_SCHEDULER_ADDRESS": fresh_cluster.address,
    }

    code, report, events = _run_and_kill_scheduler(fresh_cluster, env)

    assert code == 1
    assert report["status"] == "failed" and report["mode"] == "distributed"
    assert "scheduler" in report["error"] and "lost" in report["error"]
    assert [e["mode"] for e in events if e["event"] == "job_attempt_started"] == ["distributed"]


def test_backend_reconnects_after_the_scheduler_restarts_and_runs_the_next_job_there(
    fresh_cluster: DaskCluster,
    backend_env: dict[str, str],
    start_backend: StartBackend,
    small_csv: Path,
) -> None:
    env = {
        **backend_env,
        "TPOT_PARALLEL_MODE": "distributed",
        "DASK_SCHEDULER_ADDRESS": fresh_cluster.address,
        "TPOT_SCHEDULER_WAIT_SECONDS": "60",
    }
    server = start_backend(env)
    _wait_ready(server, 200)

    fresh_cluster.kill_scheduler()
    _wait_ready(server, 503)
    fresh_cluster.restart_scheduler()
    fresh_cluster.restart_workers()  # as the kubelet restarts the worker containers
    _wait_ready(server, 200)

    job_id = server.submit(small_csv, target="label").json()["id"]
    job = server.wait_for(job_id, {"succeeded", "failed"})
    assert job["status"] == "succeeded", job
    assert job["mode"] == "distributed" and job["scheduler"] == fresh_cluster.address
    assert len(server.events("scheduler_lost")) == 1
    assert len(server.events("scheduler_connected")) == 2
    assert "tpot_scheduler_connected 1.0" in server.http.get("/metrics").text


def _wait_ready(server: BackendServer, status: int, timeout_seconds: float = 60) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if server.http.get("/readyz").status_code == status:
            return
        time.sleep(0.2)
    raise AssertionError(f"/readyz never answered {status}:\n{server.logs()[-5000:]}")
