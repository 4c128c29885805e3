"""Jobs are never lost: a backend that dies or stops leaves no job `running` behind."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
from tpot_backend.store import JobRecord, JobStore

from tests.backend.conftest import StartBackend
from tests.harness.dask_cluster import free_port

pytestmark = pytest.mark.backend

LONG_SEARCH = {"generations": "40", "population_size": "8", "max_time_mins": "10"}


def _store(env: dict[str, str]) -> JobStore:
    return JobStore(f"sqlite:///{Path(env['TPOT_DATA_DIR']) / 'jobs.db'}")


def test_job_left_running_by_a_killed_backend_is_requeued_and_finishes_after_restart(
    backend_env: dict[str, str], start_backend: StartBackend, small_csv: Path
) -> None:
    env = {**backend_env, "TPOT_PARALLEL_MODE": "local", "TPOT_MAX_CONCURRENT_JOBS": "1"}
    first = start_backend(env)
    job_id = first.submit(small_csv, target="label", generations="3").json()["id"]
    first.wait_for(job_id, {"running"})

    first.kill()  # SIGKILL: no chance to clean up
    store = _store(env)
    assert store.get(job_id).status == "running"  # type: ignore[union-attr]

    second = start_backend(env)
    job = second.wait_for(job_id, {"succeeded", "failed"})

    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    assert "requeued: backend restarted while the job ran" in job["notes"]
    recovered = second.events("orphaned_job_recovered")
    assert [(e["job_id"], e["action"]) for e in recovered] == [(job_id, "requeued")]


def test_running_job_is_put_back_in_the_queue_when_the_backend_is_stopped(
    backend_env: dict[str, str], start_backend: StartBackend, small_csv: Path
) -> None:
    env = {**backend_env, "TPOT_PARALLEL_MODE": "local"}
    server = start_backend(env)
    job_id = server.submit(small_csv, target="label", **LONG_SEARCH).json()["id"]
    server.wait_for(job_id, {"running"})
    time.sleep(2)  # let the search start on the local workers

    server.stop()  # SIGTERM, as Kubernetes does

    # uvicorn re-raises the signal once its graceful shutdown is done.
    assert server.process is not None and server.process.returncode in (0, -15)
    assert server.events("job_requeued") and server.events("job_service_stopped")
    record = _store(env).get(job_id)
    assert record is not None and record.status == "queued"
    assert record.notes[-1] == "requeued: the backend stopped while the job ran"


def test_restart_policy_fail_fails_orphans_and_leaves_live_jobs_of_other_backends_alone(
    backend_env: dict[str, str], start_backend: StartBackend
) -> None:
    env = {**backend_env, "TPOT_PARALLEL_MODE": "local", "TPOT_RESTART_POLICY": "fail"}
    Path(env["TPOT_DATA_DIR"]).mkdir(parents=True)
    store = _store(env)
    now = time.time()
    earlier = subprocess.Popen(["true"])  # stands for this host's previous, exited process
    earlier.wait()
    mine = f"{socket.gethostname()}/{earlier.pid}/dead"
    rows = {
        "earlier-self": (mine, now),  # this host's previous process
        "stale-other": ("other-host/7/gone", now - 3600),  # another backend stopped beating
        "live-other": ("other-host/8/alive", now),  # another backend, still running it
    }
    for job_id, (owner, heartbeat) in rows.items():
        store.create(
            JobRecord(
                id=job_id,
                status="running",
                target="label",
                params={},
                arm="local",
                created_at=now - 60,
                started_at=now - 50,
                owner=owner,
                heartbeat_at=heartbeat,
                attempts=1,
            )
        )

    server = start_backend(env)
    jobs = {j: server.http.get(f"/v1/jobs/{j}").json() for j in rows}

    assert jobs["earlier-self"]["status"] == "failed"
    assert jobs["earlier-self"]["error"] == "backend restarted"
    assert jobs["stale-other"]["status"] == "failed"
    assert jobs["live-other"]["status"] == "running"


def test_a_job_waiting_for_the_scheduler_can_be_cancelled_or_requeued_by_a_stop(
    backend_env: dict[str, str], start_backend: StartBackend, small_csv: Path
) -> None:
    env = {
        **backend_env,
        "TPOT_PARALLEL_MODE": "distributed",
        "DASK_SCHEDULER_ADDRESS": f"tcp://127.0.0.1:{free_port()}",
        "TPOT_SCHEDULER_WAIT_SECONDS": "120",
    }
    server = start_backend(env)

    cancelled = server.submit(small_csv, target="label").json()["id"]
    server.wait_for(cancelled, {"running"})
    asked = time.monotonic()
    assert server.http.delete(f"/v1/jobs/{cancelled}").status_code == 202
    job = server.wait_for(cancelled, {"cancelled", "failed"}, timeout_seconds=30)
    assert job["status"] == "cancelled", job
    assert time.monotonic() - asked < 10  # not after the 120 s budget
    metrics = server.http.get("/metrics").text
    assert 'tpot_jobs_finished_total{mode="distributed",status="cancelled"} 1.0' in metrics
    assert 'tpot_jobs_finished_total{mode="distributed",status="failed"} 0.0' in metrics

    waiting = server.submit(small_csv, target="label").json()["id"]
    server.wait_for(waiting, {"running"})
    server.stop()  # SIGTERM while the job waits for the scheduler

    record = _store(env).get(waiting)
    assert record is not None and record.status == "queued", record
    assert record.notes[-1] == "requeued: the backend stopped while the job ran"
