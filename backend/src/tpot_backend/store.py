"""Job store: job records in SQLite (embedded, in the data directory) or PostgreSQL.

Built on SQLAlchemy Core, so the same statements run on both. The queue is the `jobs` table itself:
a job is claimed by a conditional update (``status='queued'`` → ``'running'``), which is atomic on
both databases, so two backends sharing one PostgreSQL database never run the same job twice.
Running jobs carry their owner and a heartbeat; a job whose owner stopped beating is an orphan and
is requeued or failed (``backend restarted``), so no job stays `running` with nothing running it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, RowMapping

from tpot_backend.logs import event as log_event

logger = logging.getLogger(__name__)

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL = frozenset({"succeeded", "failed", "cancelled"})
SQLITE_BUSY_TIMEOUT_SECONDS = 30

metadata = MetaData()

jobs_table = Table(
    "jobs",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(32), nullable=False, unique=True),
    Column("status", String(16), nullable=False, index=True),
    Column("target", String(512), nullable=False),
    Column("task", String(32)),
    Column("params", JSON, nullable=False),
    Column("arm", String(16), nullable=False),
    Column("mode", String(16)),
    Column("scheduler", String(512)),
    Column("filename", String(512)),
    Column("dataset_path", String(1024)),
    Column("dataset_bytes", Integer),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("heartbeat_at", Float),
    Column("owner", String(256)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("fallback_reason", String(64)),
    Column("notes", JSON, nullable=False),
    Column("error", Text),
    Column("result", JSON),
    Column("model_path", String(1024)),
)

probe_table = Table(
    "store_probe",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("touched_at", Float, nullable=False),
)


@dataclass
class JobRecord:
    """One row of the `jobs` table."""

    id: str
    status: str
    target: str
    params: dict[str, Any]
    arm: str
    created_at: float
    seq: int = 0
    task: str | None = None
    mode: str | None = None
    scheduler: str | None = None
    filename: str | None = None
    dataset_path: str | None = None
    dataset_bytes: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = None
    owner: str | None = None
    attempts: int = 0
    cancel_requested: bool = False
    fallback_reason: str | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    result: dict[str, Any] | None = None
    model_path: str | None = None

    @classmethod
    def from_row(cls, row: RowMapping) -> JobRecord:
        values = dict(row)
        values["notes"] = list(values.get("notes") or [])
        values["cancel_requested"] = bool(values.get("cancel_requested"))
        return cls(**values)


def _enable_sqlite_concurrency(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
        cursor.close()


class JobStore:
    """Reads and writes job records; every method is one short transaction."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        is_sqlite = database_url.startswith("sqlite")
        connect_args: dict[str, Any] = (
            {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_SECONDS}
            if is_sqlite
            else {}
        )
        self.engine = create_engine(database_url, connect_args=connect_args, pool_pre_ping=True)
        if is_sqlite:
            _enable_sqlite_concurrency(self.engine)
        metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- writes -----------------------------------------------------------------------------------

    def create(self, record: JobRecord) -> JobRecord:
        values = _values(record)
        values.pop("seq", None)
        with self.engine.begin() as conn:
            conn.execute(insert(jobs_table).values(**values))
            return self._get(conn, record.id)  # type: ignore[return-value]

    def update(self, job_id: str, **changes: Any) -> JobRecord | None:
        with self.engine.begin() as conn:
            conn.execute(update(jobs_table).where(jobs_table.c.id == job_id).values(**changes))
            return self._get(conn, job_id)

    def claim_next(self, owner: str) -> JobRecord | None:
        """Move the oldest queued job to `running` for `owner`; None when the queue is empty."""
        while True:
            with self.engine.begin() as conn:
                row = conn.execute(
                    select(jobs_table.c.id)
                    .where(jobs_table.c.status == "queued")
                    .order_by(jobs_table.c.seq)
                    .limit(1)
                ).first()
                if row is None:
                    return None
                now = time.time()
                claimed = conn.execute(
                    update(jobs_table)
                    .where(jobs_table.c.id == row.id, jobs_table.c.status == "queued")
                    .values(
                        status="running",
                        owner=owner,
                        started_at=now,
                        heartbeat_at=now,
                        finished_at=None,
                        attempts=jobs_table.c.attempts + 1,
                    )
                )
                if claimed.rowcount == 1:
                    return self._get(conn, row.id)
            # Another backend claimed it first; look at the next one.

    def finish(self, job_id: str, status: str, **changes: Any) -> JobRecord | None:
        """Set a final status, unless the job already has one (a cancel may have won the race)."""
        assert status in FINAL, status
        with self.engine.begin() as conn:
            conn.execute(
                update(jobs_table)
                .where(jobs_table.c.id == job_id, jobs_table.c.status.notin_(FINAL))
                .values(status=status, finished_at=time.time(), **changes)
            )
            return self._get(conn, job_id)

    def requeue(self, job_id: str, note: str, *, owner: str | None) -> JobRecord | None:
        """Put a running job of `owner` back in the queue; None if it is no longer exactly that.

        The condition makes the move safe against races: a job that finished, was cancelled or was
        claimed by someone else since the caller looked stays as it is.
        """
        with self.engine.begin() as conn:
            record = self._get(conn, job_id)
            if record is None:
                return None
            moved = conn.execute(
                update(jobs_table)
                .where(
                    jobs_table.c.id == job_id,
                    jobs_table.c.status == "running",
                    jobs_table.c.owner.is_(None) if owner is None else jobs_table.c.owner == owner,
                )
                .values(
                    status="queued",
                    owner=None,
                    heartbeat_at=None,
                    mode=None,
                    scheduler=None,
                    notes=[*record.notes, note],
                )
            )
            return self._get(conn, job_id) if moved.rowcount == 1 else None

    def request_cancel(self, job_id: str) -> tuple[JobRecord | None, bool]:
        """Cancel a queued job at once; mark a running job so its runner stops it.

        Returns the record and whether this call ended it (it was still queued).
        """
        with self.engine.begin() as conn:
            ended = conn.execute(
                update(jobs_table)
                .where(jobs_table.c.id == job_id, jobs_table.c.status == "queued")
                .values(status="cancelled", finished_at=time.time(), cancel_requested=True)
            )
            conn.execute(
                update(jobs_table)
                .where(jobs_table.c.id == job_id, jobs_table.c.status == "running")
                .values(cancel_requested=True)
            )
            return self._get(conn, job_id), ended.rowcount == 1

    def heartbeat(self, job_ids: Iterable[str], owner: str) -> None:
        ids = list(job_ids)
        if not ids:
            return
        with self.engine.begin() as conn:
            conn.execute(
                update(jobs_table)
                .where(jobs_table.c.id.in_(ids), jobs_table.c.owner == owner)
                .values(heartbeat_at=time.time())
            )

    def touch(self) -> None:
        """A real write, for the readiness probe: raises when the store is not writable."""
        with self.engine.begin() as conn:
            now = time.time()
            changed = conn.execute(
                update(probe_table).where(probe_table.c.name == "ready").values(touched_at=now)
            )
            if changed.rowcount == 0:
                conn.execute(insert(probe_table).values(name="ready", touched_at=now))

    # -- reads ------------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        with self.engine.connect() as conn:
            return self._get(conn, job_id)

    def list(self, *, limit: int = 100, status: str | None = None) -> list[JobRecord]:
        query = select(jobs_table).order_by(jobs_table.c.seq.desc()).limit(limit)
        if status:
            query = query.where(jobs_table.c.status == status)
        with self.engine.connect() as conn:
            return [JobRecord.from_row(row) for row in conn.execute(query).mappings()]

    def running(self) -> list[JobRecord]:
        query = (
            select(jobs_table).where(jobs_table.c.status == "running").order_by(jobs_table.c.seq)
        )
        with self.engine.connect() as conn:
            return [JobRecord.from_row(row) for row in conn.execute(query).mappings()]

    def count(self, status: str) -> int:
        query = select(func.count()).select_from(jobs_table).where(jobs_table.c.status == status)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def position(self, record: JobRecord) -> int | None:
        """1-based place of a queued job in the queue."""
        if record.status != "queued":
            return None
        query = (
            select(func.count())
            .select_from(jobs_table)
            .where(jobs_table.c.status == "queued", jobs_table.c.seq <= record.seq)
        )
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def _get(self, conn: Connection, job_id: str) -> JobRecord | None:
        row = conn.execute(select(jobs_table).where(jobs_table.c.id == job_id)).mappings().first()
        return JobRecord.from_row(row) if row is not None else None


def _values(record: JobRecord) -> dict[str, Any]:
    return {column.name: getattr(record, column.name) for column in jobs_table.columns}


def orphaned(
    records: Sequence[JobRecord],
    *,
    owner: str,
    host: str,
    lease_seconds: float,
    now: float | None = None,
) -> list[JobRecord]:
    """Running jobs nothing runs: left by a process on this host that is gone, or heartbeat stale.

    `records` are running jobs that the calling process is not running itself. Owners are
    `host/pid/random`. One of this host's owners is gone when its pid is this process's own (a
    restarted container reuses pid 1) or no process has that pid; a live process on the same host
    (two backends sharing a database on one machine) keeps its jobs while it keeps their heartbeat.
    """
    now = time.time() if now is None else now
    found = []
    for record in records:
        stale = record.heartbeat_at is None or now - record.heartbeat_at > lease_seconds
        gone = record.owner is None or (
            record.owner != owner and _owner_gone_from_host(record.owner, host)
        )
        if gone or stale:
            found.append(record)
    if found:
        log_event(logger, "orphans_found", logging.WARNING, jobs=[r.id for r in found])
    return found


def _owner_gone_from_host(record_owner: str, host: str) -> bool:
    owner_host, _, rest = record_owner.partition("/")
    if owner_host != host:
        return False
    pid_text = rest.partition("/")[0]
    if not pid_text.isdigit() or int(pid_text) == os.getpid():
        return True
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a live process of another user
        return False
    return False
