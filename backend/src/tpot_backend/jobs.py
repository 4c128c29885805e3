"""Jobs: choosing where a job runs, running it, falling back, and the queue that feeds the runners.

`JobExecutor` runs one job from a dataset file to a fitted model, whatever calls it (the HTTP
service or the one-shot `tpot-backend run`):

* The arm (`distributed` or `local`) is chosen deterministically from the job id and
  ``TPOT_DISTRIBUTED_SHARE``; ``TPOT_PARALLEL_MODE=local`` sends everything local.
* `distributed` needs the scheduler; when it is unreachable the job fails with that reason.
  `auto` waits for it within the wait budget, then runs the job locally.
* When the scheduler is lost mid-job, `auto` reruns the job once locally and records why;
  `distributed` fails the job with the reason.

`JobService` keeps at most ``TPOT_MAX_CONCURRENT_JOBS`` jobs running, in submission order, beats a
heartbeat for them, and at start-up requeues (or fails) jobs an earlier process left `running`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib

from tpot_backend.bridge import JobCancelled, NoWorkers, SchedulerLost, TpotClientBridge
from tpot_backend.cluster import ClusterConnection, SchedulerUnavailable
from tpot_backend.config import Settings
from tpot_backend.datasets import DatasetError, prepare_training_data, read_table
from tpot_backend.logs import event
from tpot_backend.metrics import Metrics
from tpot_backend.runner import JobParams, SearchResult, run_search
from tpot_backend.store import FINAL, JobRecord, JobStore, orphaned

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10.0
LEASE_SECONDS = 60.0
REAP_SECONDS = 30.0
MAX_ATTEMPTS = 2
IDLE_POLL_SECONDS = 1.0


def new_job_id() -> str:
    return uuid.uuid4().hex


def choose_arm(job_id: str, settings: Settings) -> str:
    """`distributed` for a deterministic `TPOT_DISTRIBUTED_SHARE` of job ids, else `local`."""
    if settings.parallel_mode == "local":
        return "local"
    digest = hashlib.sha256(job_id.encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return "distributed" if position < settings.distributed_share else "local"


@dataclass
class JobOutcome:
    """How one job ended."""

    status: str
    mode: str | None = None
    scheduler: str | None = None
    error: str | None = None
    fallback_reason: str | None = None
    notes: list[str] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    model: Any = None
    duration_seconds: float = 0.0


class _Fallback(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class JobExecutor:
    """Runs one job end to end on the cluster or locally, with the fallback rules above."""

    def __init__(self, settings: Settings, connection: ClusterConnection, metrics: Metrics) -> None:
        self.settings = settings
        self.connection = connection
        self.metrics = metrics

    def execute(
        self,
        *,
        job_id: str,
        dataset_path: Path,
        params: JobParams,
        arm: str,
        cancel_event: threading.Event,
        on_mode: Callable[[str, str | None], None] | None = None,
        bridges: dict[str, TpotClientBridge] | None = None,
    ) -> JobOutcome:
        """Run the job; never raises for a job-level failure (it returns a failed outcome)."""
        started = time.monotonic()
        outcome = JobOutcome(status="failed")
        mode: str | None = None
        if self.settings.parallel_mode == "local":
            arm = "local"  # queued under another configuration; local mode has no cluster
        try:
            frame = read_table(dataset_path)
            data = prepare_training_data(
                frame,
                target=params.target,
                task=params.task,
                cv=params.cv,
                test_size=params.test_size,
            )
            del frame

            result: SearchResult | None = None
            if arm == "distributed":
                try:
                    mode = "distributed"
                    result = self._run_distributed(
                        job_id, data, params, cancel_event, on_mode, bridges, outcome
                    )
                except _Fallback as fallback:
                    if cancel_event.is_set():
                        raise JobCancelled("the job was cancelled") from fallback
                    outcome.fallback_reason = fallback.reason
                    outcome.notes.append(f"ran locally: {fallback}")
                    self.metrics.fallbacks.labels(reason=fallback.reason).inc()
                    event(
                        logger,
                        "job_fell_back_to_local",
                        job_id=job_id,
                        reason=fallback.reason,
                        error=str(fallback),
                    )
            if result is None:
                mode = "local"
                outcome.scheduler = None
                result = self._run_local(job_id, data, params, cancel_event, on_mode, bridges)

            outcome.status = "succeeded"
            outcome.summary = result.summary
            outcome.model = result.model
        except JobCancelled:
            outcome.status = "cancelled"
            outcome.error = "cancelled"
        except (DatasetError, SchedulerUnavailable, SchedulerLost, NoWorkers) as error:
            outcome.error = str(error)
        except Exception as error:
            outcome.error = f"{type(error).__name__}: {error}"
            event(logger, "job_error", logging.ERROR, job_id=job_id, mode=mode, exc_info=True)
        outcome.mode = mode
        outcome.duration_seconds = time.monotonic() - started
        if outcome.summary is not None:
            outcome.summary.update(
                {
                    "mode": mode,
                    "arm": arm,
                    "scheduler": outcome.scheduler,
                    "wall_time_seconds": round(outcome.duration_seconds, 3),
                    "fallback_reason": outcome.fallback_reason,
                    "notes": outcome.notes,
                }
            )
        return outcome

    def _run_distributed(
        self,
        job_id: str,
        data: Any,
        params: JobParams,
        cancel_event: threading.Event,
        on_mode: Callable[[str, str | None], None] | None,
        bridges: dict[str, TpotClientBridge] | None,
        outcome: JobOutcome,
    ) -> SearchResult:
        auto = self.settings.parallel_mode == "auto"
        try:
            client = self.connection.acquire(wait=True, cancel=cancel_event)
        except SchedulerUnavailable as error:
            if cancel_event.is_set():
                raise JobCancelled("cancelled while waiting for the scheduler") from error
            if auto:
                raise _Fallback("scheduler_unreachable", str(error)) from error
            raise
        address = client.scheduler.address
        outcome.scheduler = address
        self.connection.check_worker_memory(client)
        if on_mode:
            on_mode("distributed", address)

        bridge = TpotClientBridge(
            client,
            job_id=job_id,
            connection_losses=lambda: self.connection.losses,
            cancel_event=cancel_event,
        )
        if bridges is not None:
            bridges[job_id] = bridge
        self.metrics.jobs_running.labels(mode="distributed").inc()
        try:
            event(
                logger, "job_attempt_started", job_id=job_id, mode="distributed", scheduler=address
            )
            return run_search(
                data,
                params,
                bridge,
                limits=self.settings.limits,
                memory_limit_mb=self.settings.memory_limit_mb,
                job_id=job_id,
                mode="distributed",
            )
        except JobCancelled:
            raise
        except (SchedulerLost, NoWorkers) as error:
            reason = "no_workers" if isinstance(error, NoWorkers) else "scheduler_lost"
            return self._after_lost(job_id, reason, str(error), auto, error)
        except Exception as error:
            if cancel_event.is_set():
                raise JobCancelled("the job was cancelled") from error
            if bridge.scheduler_lost:
                message = f"lost the scheduler during the job ({type(error).__name__}: {error})"
                return self._after_lost(job_id, "scheduler_lost", message, auto, error)
            raise
        finally:
            bridge.release()
            self.metrics.jobs_running.labels(mode="distributed").dec()
            if bridges is not None:
                bridges.pop(job_id, None)

    def _after_lost(
        self, job_id: str, reason: str, message: str, auto: bool, error: Exception
    ) -> SearchResult:
        event(
            logger,
            "job_lost_scheduler",
            logging.ERROR,
            job_id=job_id,
            mode="distributed",
            reason=reason,
            error=message,
        )
        if auto:
            raise _Fallback(reason, message) from error
        if reason == "no_workers":
            raise NoWorkers(message) from error
        raise SchedulerLost(message) from error

    def _run_local(
        self,
        job_id: str,
        data: Any,
        params: JobParams,
        cancel_event: threading.Event,
        on_mode: Callable[[str, str | None], None] | None,
        bridges: dict[str, TpotClientBridge] | None,
    ) -> SearchResult:
        if on_mode:
            on_mode("local", None)
        client = self.connection.local_client()
        bridge = TpotClientBridge(client, job_id=job_id, cancel_event=cancel_event)
        if bridges is not None:
            bridges[job_id] = bridge
        self.metrics.jobs_running.labels(mode="local").inc()
        try:
            event(logger, "job_attempt_started", job_id=job_id, mode="local")
            return run_search(
                data,
                params,
                bridge,
                limits=self.settings.limits,
                memory_limit_mb=self.settings.memory_limit_mb,
                job_id=job_id,
                mode="local",
            )
        except Exception as error:
            if cancel_event.is_set() and not isinstance(error, JobCancelled):
                raise JobCancelled("the job was cancelled") from error
            raise
        finally:
            bridge.release()
            self.metrics.jobs_running.labels(mode="local").dec()
            if bridges is not None:
                bridges.pop(job_id, None)


def save_outcome(outcome: JobOutcome, directory: Path, job_id: str) -> Path | None:
    """Write the fitted model (joblib) and the summary (JSON) of a successful job."""
    if outcome.model is None or outcome.summary is None:
        return None
    import json

    directory.mkdir(parents=True, exist_ok=True)
    model_path = directory / f"{job_id}.joblib"
    partial = directory / f".{job_id}.joblib.partial"
    joblib.dump(outcome.model, partial)
    partial.replace(model_path)
    (directory / f"{job_id}.json").write_text(
        json.dumps(outcome.summary, indent=2, default=str) + "\n"
    )
    return model_path


def owner_identity() -> str:
    """`host/pid/random`: the host part tells a restarted process its predecessor's jobs."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


class JobService:
    """The queue: accepts jobs, runs at most N at once in order, never loses one."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        connection: ClusterConnection,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.store = store
        self.connection = connection
        self.metrics = metrics
        self.executor = JobExecutor(settings, connection, metrics)
        self.owner = owner_identity()
        self.host = socket.gethostname()
        self.uploads_dir = settings.data_dir / "uploads"
        self.models_dir = settings.data_dir / "models"
        self._stop = threading.Event()
        self._wake = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._running: dict[str, threading.Event] = {}
        self._bridges: dict[str, TpotClientBridge] = {}
        self._lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.recover(startup=True)
        self._refresh_queue_gauge()
        for index in range(self.settings.max_concurrent_jobs):
            self._spawn(self._run_loop, f"job-runner-{index}")
        self._spawn(self._housekeeping_loop, "job-housekeeping")
        event(
            logger,
            "job_service_started",
            owner=self.owner,
            max_concurrent_jobs=self.settings.max_concurrent_jobs,
            mode=self.settings.parallel_mode,
        )

    def stop(self, timeout_seconds: float = 20.0) -> None:
        """Stop taking jobs; running jobs are interrupted and put back in the queue."""
        self._stop.set()
        with self._lock:
            cancels = list(self._running.values())
            bridges = list(self._bridges.values())
        for cancel in cancels:
            cancel.set()
        for bridge in bridges:
            bridge.cancel()
        with self._wake:
            self._wake.notify_all()
        deadline = time.monotonic() + timeout_seconds
        for thread in self._threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
        event(logger, "job_service_stopped", owner=self.owner)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- requests ---------------------------------------------------------------------------------

    def submit(
        self, *, upload_path: Path, filename: str | None, params: JobParams, task: str
    ) -> JobRecord:
        """Queue a job whose dataset was already validated and stored at `upload_path`."""
        job_id = upload_path.stem
        arm = choose_arm(job_id, self.settings)
        record = JobRecord(
            id=job_id,
            status="queued",
            target=params.target,
            task=task,
            params=params.to_dict(),
            arm=arm,
            created_at=time.time(),
            filename=filename,
            dataset_path=str(upload_path),
            dataset_bytes=upload_path.stat().st_size,
        )
        record = self.store.create(record)
        self.metrics.jobs_submitted.labels(mode=arm).inc()
        self._refresh_queue_gauge()
        event(logger, "job_queued", job_id=job_id, arm=arm, task=task, bytes=record.dataset_bytes)
        with self._wake:
            self._wake.notify()
        return record

    def new_upload_path(self, suffix: str) -> Path:
        return self.uploads_dir / f"{new_job_id()}{suffix}"

    def cancel(self, job_id: str) -> JobRecord | None:
        record, ended_in_queue = self.store.request_cancel(job_id)
        if record is None:
            return None
        with self._lock:
            cancel = self._running.get(job_id)
            bridge = self._bridges.get(job_id)
        if cancel is not None:
            cancel.set()
        if bridge is not None:
            bridge.cancel()
        if ended_in_queue:
            self._discard_upload(record)
            self._refresh_queue_gauge()
            self._count_finished(record.arm, "cancelled")
        event(logger, "job_cancel_requested", job_id=job_id, status=record.status)
        return record

    def queued_count(self) -> int:
        return self.store.count("queued")

    # -- running ----------------------------------------------------------------------------------

    def _run_loop(self) -> None:
        while not self._stop.is_set():
            try:
                record = self.store.claim_next(self.owner)
            except Exception as error:
                event(logger, "claim_failed", logging.ERROR, error=str(error))
                record = None
            if record is None:
                with self._wake:
                    self._wake.wait(IDLE_POLL_SECONDS)
                continue
            self._refresh_queue_gauge()
            try:
                self._run_claimed(record)
            except Exception as error:  # the store failed even to record the failure
                # The runner thread must survive: its slot would be lost for good. The job stays
                # `running` without a heartbeat, so recovery requeues it once its lease runs out.
                event(
                    logger,
                    "job_not_recorded",
                    logging.ERROR,
                    job_id=record.id,
                    error=f"{type(error).__name__}: {error}",
                )
                self._stop.wait(IDLE_POLL_SECONDS)

    def _run_claimed(self, record: JobRecord) -> None:
        cancel_event = threading.Event()
        with self._lock:
            self._running[record.id] = cancel_event
        if record.cancel_requested:
            cancel_event.set()
        event(logger, "job_started", job_id=record.id, arm=record.arm, attempt=record.attempts)

        def on_mode(mode: str, scheduler: str | None) -> None:
            self.store.update(record.id, mode=mode, scheduler=scheduler)

        try:
            params = JobParams(**record.params)
            outcome = self.executor.execute(
                job_id=record.id,
                dataset_path=Path(record.dataset_path or ""),
                params=params,
                arm=record.arm,
                cancel_event=cancel_event,
                on_mode=on_mode,
                bridges=self._bridges,
            )
            if (
                self._stop.is_set()
                and outcome.status == "cancelled"
                and not self._cancel_was_requested(record.id)
            ):
                self.store.requeue(
                    record.id, "requeued: the backend stopped while the job ran", owner=self.owner
                )
                event(logger, "job_requeued", job_id=record.id, reason="backend stopping")
                return
            self._record_outcome(record, outcome)
        except Exception as error:  # a bug or a broken store; the job must still end
            event(logger, "job_crashed", logging.ERROR, job_id=record.id, exc_info=True)
            final = self.store.finish(record.id, "failed", error=f"{type(error).__name__}: {error}")
            if final is not None and final.status == "failed":
                self._count_finished(final.mode or record.arm, "failed")
        finally:
            with self._lock:
                self._running.pop(record.id, None)
            self._refresh_queue_gauge()

    def _cancel_was_requested(self, job_id: str) -> bool:
        record = self.store.get(job_id)
        return bool(record and record.cancel_requested)

    def _count_finished(self, mode: str, status: str, outcome: JobOutcome | None = None) -> None:
        """Count a job that reached a final status; the one place the job counters move."""
        self.metrics.jobs_finished.labels(mode=mode, status=status).inc()
        if outcome is None:  # ended without running (cancelled in the queue, failed on recovery)
            return
        self.metrics.job_duration.labels(mode=mode).observe(outcome.duration_seconds)
        if outcome.summary:
            self.metrics.pipelines_evaluated.labels(mode=mode).inc(
                outcome.summary.get("pipelines_evaluated", 0)
            )
            self.metrics.pipelines_failed.labels(mode=mode).inc(
                outcome.summary.get("pipelines_failed", 0)
            )

    def _record_outcome(self, record: JobRecord, outcome: JobOutcome) -> None:
        model_path = None
        if outcome.status == "succeeded":
            model_path = save_outcome(outcome, self.models_dir, record.id)
        final = self.store.finish(
            record.id,
            outcome.status,
            mode=outcome.mode,
            scheduler=outcome.scheduler,
            error=outcome.error,
            result=outcome.summary,
            model_path=str(model_path) if model_path else None,
            fallback_reason=outcome.fallback_reason,
            notes=[*record.notes, *outcome.notes],
        )
        if final is not None and final.status in FINAL:
            self._discard_upload(final)
            self._count_finished(outcome.mode or record.arm, final.status, outcome)
        event(
            logger,
            "job_finished",
            logging.INFO if outcome.status != "failed" else logging.ERROR,
            job_id=record.id,
            status=outcome.status,
            mode=outcome.mode,
            scheduler=outcome.scheduler,
            fallback_reason=outcome.fallback_reason,
            error=outcome.error,
            elapsed_seconds=round(outcome.duration_seconds, 3),
        )

    def _discard_upload(self, record: JobRecord) -> None:
        if record.dataset_path:
            path = Path(record.dataset_path)
            if path.parent == self.uploads_dir:
                path.unlink(missing_ok=True)

    # -- recovery and heartbeat -------------------------------------------------------------------

    def recover(self, *, startup: bool = False) -> list[str]:
        """Requeue (or fail) running jobs that nothing runs any more; return their ids."""
        with self._lock:
            mine = set(self._running)
        candidates = [r for r in self.store.running() if r.id not in mine]
        handled = []
        for record in orphaned(
            candidates, owner=self.owner, host=self.host, lease_seconds=LEASE_SECONDS
        ):
            dataset_ok = bool(record.dataset_path) and Path(record.dataset_path or "").exists()
            if (
                self.settings.restart_policy == "requeue"
                and dataset_ok
                and record.attempts < MAX_ATTEMPTS
                and not record.cancel_requested
            ):
                moved = self.store.requeue(
                    record.id, "requeued: backend restarted while the job ran", owner=record.owner
                )
                if moved is None:  # it finished or was taken over since we looked
                    continue
                action = "requeued"
            else:
                final_status = "cancelled" if record.cancel_requested else "failed"
                final = self.store.finish(record.id, final_status, error="backend restarted")
                if final is None or final.status != final_status:
                    continue  # it ended on its own since we looked
                self._discard_upload(record)
                self._count_finished(record.mode or record.arm, final_status)
                action = final_status
            handled.append(record.id)
            event(
                logger,
                "orphaned_job_recovered",
                logging.WARNING,
                job_id=record.id,
                action=action,
                previous_owner=record.owner,
                attempt=record.attempts,
                at_startup=startup,
            )
        return handled

    def _housekeeping_loop(self) -> None:
        last_reap = time.monotonic()
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                with self._lock:
                    ids = list(self._running)
                self.store.heartbeat(ids, self.owner)
                self._apply_cancel_requests(ids)
                if time.monotonic() - last_reap > REAP_SECONDS:
                    last_reap = time.monotonic()
                    if self.recover():
                        with self._wake:
                            self._wake.notify_all()
                self._refresh_queue_gauge()
            except Exception as error:
                event(logger, "housekeeping_failed", logging.ERROR, error=str(error))

    def _apply_cancel_requests(self, running_ids: list[str]) -> None:
        """Cancel requests may arrive through another backend sharing the database."""
        for job_id in running_ids:
            record = self.store.get(job_id)
            if record is not None and record.cancel_requested:
                with self._lock:
                    cancel = self._running.get(job_id)
                    bridge = self._bridges.get(job_id)
                if cancel is not None and not cancel.is_set():
                    cancel.set()
                    if bridge is not None:
                        bridge.cancel()

    def _refresh_queue_gauge(self) -> None:
        try:
            self.metrics.jobs_queued.set(self.store.count("queued"))
        except Exception as error:
            event(logger, "queue_gauge_failed", logging.WARNING, error=str(error))


def copy_dataset(source: Path, destination: Path) -> int:
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, destination)
    return destination.stat().st_size
