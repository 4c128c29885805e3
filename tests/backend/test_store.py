"""The job store on SQLite and on a real PostgreSQL server: order, atomic claims, orphans."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tpot_backend.store import JobRecord, JobStore, orphaned

from tests.backend.conftest import StartBackend
from tests.harness.dask_cluster import free_port

pytestmark = pytest.mark.backend


def _postgres_binaries() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return candidates[-1].parent if candidates else None


def _as_postgres_user(argv: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on a free loopback port."""
    binaries = _postgres_binaries()
    if binaries is None:
        pytest.skip("needs PostgreSQL server binaries (Debian package `postgresql`)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("needs psycopg (pip install 'tpot-backend[postgres]')")
    root = Path(tempfile.mkdtemp(prefix="tpot-pg-", dir="/tmp"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    port = free_port()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
    subprocess.run(
        _as_postgres_user(
            [str(binaries / "initdb"), "-D", str(data), "-U", "tpot", "--auth=trust", "-E", "UTF8"]
        ),
        check=True,
        capture_output=True,
    )
    options = f"-h 127.0.0.1 -p {port} -k {sockets}"
    subprocess.run(
        _as_postgres_user(
            [
                str(binaries / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(root / "server.log"),
                "-w",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://tpot@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres_user(
                [str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]
            ),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    job_store = JobStore(url)
    with job_store.engine.begin() as conn:  # a clean table for each test
        conn.exec_driver_sql("DELETE FROM jobs")
    yield job_store
    job_store.close()


def _queued(job_id: str, created_at: float) -> JobRecord:
    return JobRecord(
        id=job_id, status="queued", target="y", params={"cv": 3}, arm="local", created_at=created_at
    )


def test_concurrent_runners_claim_each_job_once_in_submission_order(store: JobStore) -> None:
    ids = [f"job{i:02d}" for i in range(24)]
    for i, job_id in enumerate(ids):
        store.create(_queued(job_id, 1000.0 + i))
    claims: list[list[str]] = [[] for _ in range(4)]

    def runner(index: int) -> None:
        while (record := store.claim_next(f"host/{index}/x")) is not None:
            claims[index].append(record.id)

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    claimed = [job_id for per_runner in claims for job_id in per_runner]
    assert sorted(claimed) == ids  # every job exactly once
    for per_runner in claims:
        assert per_runner == sorted(per_runner)  # each runner took them in order
    assert store.count("running") == 24 and store.count("queued") == 0
    assert store.get("job00").attempts == 1  # type: ignore[union-attr]


def test_cancel_wins_over_a_late_finish_and_queued_jobs_cancel_at_once(store: JobStore) -> None:
    store.create(_queued("a", 1.0))
    store.create(_queued("b", 2.0))
    running = store.claim_next("host/1/x")
    assert running is not None and running.id == "a"

    queued, queued_ended = store.request_cancel("b")
    flagged, flagged_ended = store.request_cancel("a")
    _, again_ended = store.request_cancel("b")
    store.finish("a", "cancelled", error="cancelled")
    late = store.finish("a", "succeeded")

    assert queued is not None and queued.status == "cancelled" and queued_ended
    assert flagged is not None and flagged.status == "running" and flagged.cancel_requested
    assert not flagged_ended and not again_ended  # only the first call ended the queued job
    assert late is not None and late.status == "cancelled"
    assert store.position(store.get("b")) is None  # type: ignore[arg-type]


def _running_record(job_id: str, owner: str, heartbeat_at: float) -> JobRecord:
    return JobRecord(
        id=job_id,
        status="running",
        target="y",
        params={},
        arm="local",
        created_at=heartbeat_at,
        owner=owner,
        heartbeat_at=heartbeat_at,
    )


def test_orphans_are_jobs_of_a_gone_process_here_or_with_a_stale_heartbeat(
    store: JobStore,
) -> None:
    now = time.time()
    gone_pid = subprocess.Popen(["true"])  # its pid names no process once it has exited
    gone_pid.wait()
    neighbour = subprocess.Popen(["sleep", "60"])  # another live process on this host
    try:
        owners = {
            # An earlier incarnation of this process (a restarted container reuses its pid).
            "self-old": (f"here/{os.getpid()}/a", now),
            "here-gone": (f"here/{gone_pid.pid}/b", now),
            "here-alive": (f"here/{neighbour.pid}/c", now),
            "here-alive-stale": (f"here/{neighbour.pid}/d", now - 600),
            "other-fresh": ("there/2/e", now),
            "other-stale": ("there/3/f", now - 600),
            "me": (f"here/{os.getpid()}/z", now),
            "me-stale": (f"here/{os.getpid()}/z", now - 600),
        }
        for job_id, (owner, beat) in owners.items():
            store.create(_running_record(job_id, owner, beat))

        found = orphaned(
            store.running(), owner=f"here/{os.getpid()}/z", host="here", lease_seconds=60, now=now
        )
    finally:
        neighbour.kill()
        neighbour.wait()

    assert sorted(r.id for r in found) == [
        "here-alive-stale",
        "here-gone",
        "me-stale",
        "other-stale",
        "self-old",
    ]


def test_requeue_moves_only_a_job_still_running_for_the_owner_named(store: JobStore) -> None:
    now = time.time()
    store.create(_running_record("a", "here/1/a", now))
    store.create(_running_record("b", "here/1/a", now))
    store.finish("b", "succeeded")

    assert store.requeue("a", "requeued: test", owner="someone/else/x") is None
    assert store.requeue("b", "requeued: test", owner="here/1/a") is None
    moved = store.requeue("a", "requeued: test", owner="here/1/a")

    assert moved is not None and moved.status == "queued" and moved.owner is None
    assert moved.notes == ["requeued: test"]
    assert store.get("b").status == "succeeded"  # type: ignore[union-attr]


def test_backend_runs_a_job_with_its_records_in_postgresql(
    postgres_url: str, backend_env: dict[str, str], start_backend: StartBackend, small_csv: Path
) -> None:
    # The plain scheme, as most users write it; the backend picks the driver it ships.
    plain_url = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    env = {**backend_env, "TPOT_PARALLEL_MODE": "local", "TPOT_DATABASE_URL": plain_url}
    server = start_backend(env)

    job_id = server.submit(small_csv, target="label").json()["id"]
    job = server.wait_for(job_id, {"succeeded", "failed"})

    assert job["status"] == "succeeded", job
    assert server.http.get("/readyz").json()["checks"]["store"] == "ok"
    direct = JobStore(postgres_url)
    try:
        record = direct.get(job_id)
    finally:
        direct.close()
    assert record is not None and record.status == "succeeded" and record.result
    assert not (Path(env["TPOT_DATA_DIR"]) / "jobs.db").exists()
