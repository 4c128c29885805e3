"""No scheduler: `auto` falls back inside its wait budget, `distributed` fails with the reason."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from tests.backend.conftest import run_backend
from tests.harness.dask_cluster import free_port

pytestmark = pytest.mark.backend

WAIT_SECONDS = 4.0
# Start-up of the local cluster is not part of the wait; this covers a loaded CI machine.
SLACK_SECONDS = 3.0
TINY_RUN = [
    "run",
    "bundled",
    "--generations",
    "1",
    "--population-size",
    "4",
    "--cv",
    "3",
    "--random-state",
    "1",
]


def _at(events: list[dict[str, Any]], name: str) -> dt.datetime:
    stamp = next(e["ts"] for e in events if e["event"] == name)
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_auto_without_scheduler_falls_back_to_local_within_its_wait_budget(
    backend_env: dict[str, str],
) -> None:
    env = {
        **backend_env,
        "TPOT_PARALLEL_MODE": "auto",
        "DASK_SCHEDULER_ADDRESS": f"tcp://127.0.0.1:{free_port()}",
        "TPOT_SCHEDULER_WAIT_SECONDS": str(WAIT_SECONDS),
    }

    result = run_backend(TINY_RUN, env)

    assert result.returncode == 0, result.stderr[-5000:]
    report = result.json()
    assert report["status"] == "succeeded"
    assert report["arm"] == "distributed" and report["mode"] == "local"
    assert report["fallback_reason"] == "scheduler_unreachable"
    waited = _at(result.events, "job_fell_back_to_local") - _at(result.events, "job_started")
    assert waited.total_seconds() <= WAIT_SECONDS + SLACK_SECONDS
    assert any(e["event"] == "scheduler_retry" for e in result.events)
    # Read-only root filesystem in Kubernetes: nothing may be written to the home directory.
    assert list(Path(env["HOME"]).iterdir()) == []


def test_distributed_without_scheduler_fails_the_job_with_a_clear_reason(
    backend_env: dict[str, str],
) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    env = {
        **backend_env,
        "TPOT_PARALLEL_MODE": "distributed",
        "DASK_SCHEDULER_ADDRESS": address,
        "TPOT_SCHEDULER_WAIT_SECONDS": str(WAIT_SECONDS),
    }

    result = run_backend(TINY_RUN, env)

    assert result.returncode == 1
    report = result.json()
    assert report["status"] == "failed" and report["mode"] == "distributed"
    assert report["error"].startswith(f"scheduler not reachable at {address} within 4 s")
    assert report["fallback_reason"] is None
    assert not any(e["event"] == "job_attempt_started" for e in result.events)
    waited = _at(result.events, "job_finished") - _at(result.events, "job_started")
    assert waited.total_seconds() <= WAIT_SECONDS + SLACK_SECONDS


def test_distributed_with_a_missing_scheduler_file_fails_instead_of_waiting_forever(
    backend_env: dict[str, str], tmp_path: Path
) -> None:
    missing = tmp_path / "never" / "scheduler.json"
    env = {
        **backend_env,
        "TPOT_PARALLEL_MODE": "distributed",
        "TPOT_SCHEDULER_FILE": str(missing),
        "TPOT_SCHEDULER_WAIT_SECONDS": str(WAIT_SECONDS),
    }

    result = run_backend(TINY_RUN, env, timeout_seconds=60)

    assert result.returncode == 1
    assert f"scheduler file {missing} does not exist" in result.json()["error"]
