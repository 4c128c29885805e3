"""Finding the scheduler: `wait-for-scheduler`, the wait budget, and the scheduler file."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.backend.conftest import StartBackend, backend_command, parse_events, run_backend
from tests.harness.dask_cluster import DaskCluster, free_port

pytestmark = pytest.mark.backend


def test_wait_for_scheduler_returns_at_once_when_the_scheduler_answers(
    shared_cluster: DaskCluster, backend_env: dict[str, str]
) -> None:
    env = {**backend_env, "DASK_SCHEDULER_ADDRESS": shared_cluster.address}

    result = run_backend(["wait-for-scheduler", "--timeout", "20", "--min-workers", "2"], env)

    assert result.returncode == 0, result.stderr
    ready = [e for e in result.events if e["event"] == "scheduler_ready"]
    assert ready and ready[0]["scheduler"] == shared_cluster.address and ready[0]["workers"] == 2


def test_wait_for_scheduler_gives_up_after_its_timeout_with_backoff(
    backend_env: dict[str, str],
) -> None:
    env = {**backend_env, "DASK_SCHEDULER_ADDRESS": f"tcp://127.0.0.1:{free_port()}"}

    result = run_backend(["wait-for-scheduler", "--timeout", "4"], env)

    assert result.returncode == 1
    retries = [e for e in result.events if e["event"] == "scheduler_retry"]
    assert len(retries) >= 2
    assert [e["attempt"] for e in retries] == list(range(1, len(retries) + 1))
    assert result.seconds < 4 + 10  # the budget, plus interpreter start-up
    assert any(e["event"] == "scheduler_wait_failed" for e in result.events)


def test_wait_for_scheduler_file_that_appears_later_succeeds(
    backend_env: dict[str, str], tmp_path: Path
) -> None:
    """A missing scheduler file is retried within the budget (Dask's own client waits forever)."""
    cluster = DaskCluster(n_workers=1, work_dir=tmp_path / "cluster")
    env = {**backend_env, "TPOT_SCHEDULER_FILE": str(cluster.scheduler_file)}
    process = subprocess.Popen(
        backend_command() + ["wait-for-scheduler", "--timeout", "60"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert process.stderr is not None
        for line in process.stderr:  # the backend is looking for the file and not finding it
            lines.append(line)
            if '"scheduler_retry"' in line:
                break
        assert process.poll() is None, "gave up although the budget is not spent"
        with cluster:
            _, rest = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    stderr = "".join(lines) + rest

    assert process.returncode == 0, stderr
    events = parse_events(stderr)
    assert any(
        "does not exist" in e.get("error", "") for e in events if e["event"] == "scheduler_retry"
    )
    assert any(e["event"] == "scheduler_ready" for e in events)


def test_backend_started_before_the_scheduler_connects_when_it_appears(
    backend_env: dict[str, str], tmp_path: Path, start_backend: StartBackend
) -> None:
    cluster = DaskCluster(n_workers=1, work_dir=tmp_path / "cluster")
    env = {
        **backend_env,
        "TPOT_PARALLEL_MODE": "distributed",
        "TPOT_SCHEDULER_FILE": str(cluster.scheduler_file),
        "TPOT_SCHEDULER_WAIT_SECONDS": "60",
    }
    server = start_backend(env)
    assert server.http.get("/readyz").status_code == 503

    with cluster:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and server.http.get("/readyz").status_code != 200:
            time.sleep(0.3)
        ready = server.http.get("/readyz")
        metrics = server.http.get("/metrics").text

    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["scheduler"] == "connected"
    assert "tpot_scheduler_connected 1.0" in metrics
