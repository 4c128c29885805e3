"""Cluster connection: finding the Dask scheduler, waiting for it, and the process's one client.

The backend owns at most two Dask clients for its whole life: one to the shared scheduler
(`distributed` work) and one to an in-process LocalCluster (`local` work, started on first use).
Jobs borrow them through `ClusterConnection`; they never open clients of their own.

Finding the scheduler never relies on Dask's own waiting: `Client(scheduler_file=...)` waits forever
on a missing file and a connection by address gives up after Dask's 30 s default. Instead every
attempt is bounded by ``TPOT_SCHEDULER_ATTEMPT_TIMEOUT_SECONDS``, attempts are spaced by exponential
backoff with jitter (``TPOT_SCHEDULER_BACKOFF_SECONDS`` doubling up to
``TPOT_SCHEDULER_BACKOFF_MAX_SECONDS``) and the whole wait is bounded by
``TPOT_SCHEDULER_WAIT_SECONDS``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
from distributed import Client, LocalCluster
from distributed.core import rpc

from tpot_backend.config import Settings
from tpot_backend.logs import event
from tpot_backend.runtime import BackendWorkerPlugin, prepare_process

logger = logging.getLogger(__name__)

WATCH_INTERVAL_SECONDS = 0.25
# TPOT's own choice for the clusters it builds: a task that killed two workers is given up
# (a failed evaluation) instead of killing worker after worker.
LOCAL_SCHEDULER_CONFIG = {"distributed.scheduler.allowed-failures": 1}


class SchedulerUnavailable(RuntimeError):
    """The scheduler could not be reached within the wait budget; the message says why."""

    def __init__(self, message: str, *, last_error: str | None = None) -> None:
        super().__init__(message)
        self.last_error = last_error or message


def backoff_delays(
    first_seconds: float, max_seconds: float, *, rng: random.Random | None = None
) -> Iterator[float]:
    """Exponential backoff with jitter: each delay is drawn from [d/2, d], d doubling to the cap.

    The jitter keeps many pods that lost the same scheduler from retrying in lockstep.
    """
    rng = rng or random.Random()
    delay = first_seconds
    while True:
        yield rng.uniform(delay / 2, delay)
        delay = min(delay * 2, max_seconds)


def read_scheduler_file(path: Path) -> str:
    """The address in a Dask scheduler file; `OSError`/`ValueError` when unusable."""
    data = json.loads(path.read_text())
    address = data.get("address") if isinstance(data, dict) else None
    if not isinstance(address, str) or "://" not in address:
        raise ValueError(f"scheduler file {path} has no usable 'address'")
    return address


def write_scheduler_file(address: str, path: Path) -> dict[str, Any]:
    """Write a scheduler file in Dask's format that points at `address` (atomically)."""
    content: dict[str, Any] = {
        "type": "Scheduler",
        "id": f"Scheduler-{address}",
        "address": address,
        "services": {},
        "started": time.time(),
        "workers": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(content, indent=2) + "\n")
    partial.replace(path)
    return content


def scheduler_address(settings: Settings) -> str:
    """The address to connect to now: the configured address, or the one in the scheduler file."""
    if settings.scheduler_address:
        return settings.scheduler_address
    try:
        return read_scheduler_file(settings.scheduler_file)
    except FileNotFoundError as error:
        raise OSError(f"scheduler file {settings.scheduler_file} does not exist") from error
    except ValueError as error:
        raise OSError(f"scheduler file {settings.scheduler_file} is not valid: {error}") from error


async def _identity(address: str, timeout_seconds: float) -> dict[str, Any]:
    async with rpc(address, timeout=timeout_seconds) as scheduler:
        return dict(await asyncio.wait_for(scheduler.identity(), timeout_seconds))


def probe_scheduler(address: str, timeout_seconds: float) -> dict[str, Any]:
    """Ask the scheduler at `address` who it is; `OSError` when it does not answer in time."""
    try:
        return asyncio.run(_identity(address, timeout_seconds))
    except TimeoutError as error:
        raise OSError(f"no answer from {address} within {timeout_seconds:g} s") from error


def retry_until(
    attempt: Callable[[float], Any],
    settings: Settings,
    budget_seconds: float,
    *,
    what: str,
    stop: threading.Event | None = None,
) -> Any:
    """Call `attempt(timeout)` until it returns, spacing failures with backoff, within the budget.

    Raises `SchedulerUnavailable` with the last error once the budget is spent.
    """
    started = time.monotonic()
    deadline = started + budget_seconds
    delays = backoff_delays(
        settings.scheduler_backoff_seconds, settings.scheduler_backoff_max_seconds
    )
    attempt_number = 0
    last_error = "no attempt made"
    while True:
        attempt_number += 1
        remaining = deadline - time.monotonic()
        timeout = max(0.1, min(settings.scheduler_attempt_timeout_seconds, remaining))
        try:
            return attempt(timeout)
        except (OSError, TimeoutError, ValueError) as error:
            last_error = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        elapsed = time.monotonic() - started
        delay = next(delays)
        if time.monotonic() + delay > deadline or (stop is not None and stop.is_set()):
            raise SchedulerUnavailable(
                f"scheduler not reachable at {settings.scheduler_source} after "
                f"{elapsed:.1f} s ({attempt_number} attempts): {last_error}",
                last_error=last_error,
            )
        event(
            logger,
            "scheduler_retry",
            logging.WARNING,
            what=what,
            scheduler=settings.scheduler_source,
            attempt=attempt_number,
            elapsed_seconds=round(elapsed, 3),
            retry_in_seconds=round(delay, 3),
            error=last_error,
        )
        if stop is not None:
            if stop.wait(delay):
                raise SchedulerUnavailable("stopped while waiting for the scheduler")
        else:
            time.sleep(delay)


def wait_for_scheduler(
    settings: Settings, timeout_seconds: float, *, min_workers: int = 0
) -> dict[str, Any]:
    """Block until the scheduler answers (and has `min_workers` workers); return its identity."""

    def attempt(timeout: float) -> dict[str, Any]:
        address = scheduler_address(settings)
        identity = probe_scheduler(address, timeout)
        workers = len(identity.get("workers", {}))
        if workers < min_workers:
            raise OSError(f"{workers} workers connected, waiting for {min_workers}")
        return {"address": address, **identity}

    return retry_until(attempt, settings, timeout_seconds, what="wait_for_scheduler")


def open_client(
    settings: Settings, budget_seconds: float, *, stop: threading.Event | None = None
) -> Client:
    """Connect a client to the scheduler within the budget, and prepare the workers for TPOT."""

    return retry_until(
        lambda timeout: connect_once(settings, timeout),
        settings,
        budget_seconds,
        what="connect",
        stop=stop,
    )


def connect_once(settings: Settings, timeout_seconds: float) -> Client:
    """One bounded connection attempt; the workers get the backend's worker plugin."""
    address = scheduler_address(settings)
    client = Client(address, timeout=timeout_seconds, set_as_default=False)
    try:
        client.register_plugin(BackendWorkerPlugin(), name=BackendWorkerPlugin.name)
    except Exception:
        client.close()
        raise
    return client


def worker_memory_limits_mb(client: Client) -> dict[str, int]:
    """Memory limit of every connected worker, in MiB, as the workers report it."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return {
        str(info.get("name", address)): int((info.get("memory_limit") or 0) // 2**20)
        for address, info in workers.items()
    }


@dataclass
class ConnectionStatus:
    """What `/readyz`, metrics and job records need to know about the shared scheduler."""

    state: str = "idle"  # idle | connecting | connected | unreachable | disabled
    address: str | None = None
    scheduler_id: str | None = None
    connected_since: float | None = None
    losses: int = 0
    last_error: str | None = None
    workers: int = 0
    outage_deadline: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class ClusterConnection:
    """The backend's one client to the shared scheduler, kept alive in the background.

    `start()` begins connecting at once. `acquire(wait=True)` returns the connected client, waiting
    while the current outage is younger than the wait budget. Once the budget of an outage is spent,
    `acquire` fails fast (the background loop keeps trying, so the next job sees the scheduler as
    soon as it returns). Every loss of the connection is counted, so a job can tell that the
    scheduler it started on went away even if the client has reconnected since.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        on_state_change: Callable[[ConnectionStatus], None] | None = None,
    ) -> None:
        self.settings = settings
        self._on_state_change = on_state_change
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._client: Client | None = None
        self._local_cluster: LocalCluster | None = None
        self._local_client: Client | None = None
        self._local_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.status = ConnectionStatus(
            state="disabled" if settings.parallel_mode == "local" else "idle"
        )

    # -- shared scheduler -------------------------------------------------------------------------

    def start(self) -> None:
        """Start connecting to the scheduler in the background (not in `local` mode)."""
        if self.settings.parallel_mode == "local" or self._thread is not None:
            return
        prepare_process()
        with self._lock:
            self._set_state("connecting", outage_deadline=self._deadline())
        self._thread = threading.Thread(
            target=self._keep_connected, name="scheduler-watch", daemon=True
        )
        self._thread.start()

    @property
    def connected(self) -> bool:
        return self.status.state == "connected"

    @property
    def losses(self) -> int:
        return self.status.losses

    def acquire(self, *, wait: bool = True, cancel: threading.Event | None = None) -> Client:
        """The connected client; waits while the outage is in budget, else raises.

        `cancel` ends the wait early (a cancelled job, a stopping backend): the caller checks it.
        """
        self.start()
        with self._lock:
            while True:
                client = self._client
                if (
                    self.status.state == "connected"
                    and client is not None
                    and client.status == "running"
                ):
                    return client
                remaining = self.status.outage_deadline - time.monotonic()
                cancelled = cancel is not None and cancel.is_set()
                if not wait or remaining <= 0 or self._stop.is_set() or cancelled:
                    break
                self._lock.wait(min(remaining, 1.0))
        raise SchedulerUnavailable(
            f"scheduler not reachable at {self.settings.scheduler_source} within "
            f"{self.settings.scheduler_wait_seconds:g} s: {self.status.last_error or 'no answer'}",
            last_error=self.status.last_error,
        )

    def _deadline(self) -> float:
        return time.monotonic() + self.settings.scheduler_wait_seconds

    def _set_state(self, state: str, **changes: Any) -> None:
        previous = self.status.state
        self.status.state = state
        for key, value in changes.items():
            setattr(self.status, key, value)
        self._lock.notify_all()
        if previous != state and self._on_state_change is not None:
            self._on_state_change(self.status)

    def _keep_connected(self) -> None:
        """The watcher thread: it must outlive any one failure, or the backend never reconnects."""
        while not self._stop.is_set():
            try:
                self._watch_once()
            except Exception as error:  # a Dask or plugin error we did not foresee
                event(
                    logger,
                    "scheduler_watch_failed",
                    logging.ERROR,
                    scheduler=self.settings.scheduler_source,
                    error=f"{type(error).__name__}: {error}",
                    exc_info=True,
                )
                with self._lock:
                    self.status.last_error = f"{type(error).__name__}: {error}"
                self._stop.wait(WATCH_INTERVAL_SECONDS)

    def _watch_once(self) -> None:
        """One step of the watcher: connect, notice a loss, or notice a reconnect."""
        client = self._client
        if client is None or client.status in ("closed", "closing"):
            self._connect_once()
            return

        if client.status != "running":
            self._mark_lost(f"client status {client.status}")
            # Dask's client reconnects by itself for a while; give it that chance first.
            self._stop.wait(WATCH_INTERVAL_SECONDS)
            return

        if self.status.state != "connected":
            self._mark_connected(client)
        self._stop.wait(WATCH_INTERVAL_SECONDS)

    def _connect_once(self) -> None:
        with self._lock:
            remaining = self.status.outage_deadline - time.monotonic()
        try:
            if remaining > 0:
                client = open_client(self.settings, remaining, stop=self._stop)
            else:
                # The budget of this outage is spent: keep trying, quietly and slowly.
                client = self._quiet_attempt()
                if client is None:
                    return
        except SchedulerUnavailable as error:
            with self._lock:
                self.status.last_error = error.last_error
                if self.status.outage_deadline - time.monotonic() <= 0:
                    self._set_state("unreachable")
                    event(
                        logger,
                        "scheduler_unreachable",
                        logging.ERROR,
                        scheduler=self.settings.scheduler_source,
                        wait_seconds=self.settings.scheduler_wait_seconds,
                        error=error.last_error,
                    )
            return
        with self._lock:
            old = self._client
            self._client = client
        if old is not None:
            _close_quietly(old)
        self._mark_connected(client)

    def _quiet_attempt(self) -> Client | None:
        try:
            return connect_once(self.settings, self.settings.scheduler_attempt_timeout_seconds)
        except (OSError, TimeoutError, ValueError) as error:
            with self._lock:
                self.status.last_error = f"{type(error).__name__}: {error}"
            event(logger, "scheduler_retry", logging.DEBUG, error=self.status.last_error)
            self._stop.wait(self.settings.scheduler_backoff_max_seconds)
            return None

    def _mark_connected(self, client: Client) -> None:
        try:
            identity = client.scheduler_info(n_workers=-1)
            # A restarted scheduler has forgotten the plugin; registering again is harmless.
            client.register_plugin(BackendWorkerPlugin(), name=BackendWorkerPlugin.name)
        except Exception as error:  # the scheduler vanished again between connect and identify
            self._mark_lost(f"{type(error).__name__}: {error}")
            return
        with self._lock:
            changed = identity.get("id") != self.status.scheduler_id and self.status.scheduler_id
            if changed:
                self.status.losses += 1
            self._set_state(
                "connected",
                address=client.scheduler.address,
                scheduler_id=identity.get("id"),
                connected_since=time.time(),
                workers=len(identity.get("workers", {})),
                last_error=None,
            )
        event(
            logger,
            "scheduler_connected",
            scheduler=client.scheduler.address,
            scheduler_id=identity.get("id"),
            workers=len(identity.get("workers", {})),
        )
        self.check_worker_memory(client)

    def _mark_lost(self, why: str) -> None:
        with self._lock:
            if self.status.state != "connected":
                return
            self.status.losses += 1
            self._set_state("connecting", last_error=why, outage_deadline=self._deadline())
        event(
            logger,
            "scheduler_lost",
            logging.ERROR,
            scheduler=self.status.address,
            error=why,
            losses=self.status.losses,
        )

    def check_worker_memory(self, client: Client) -> dict[str, int]:
        """Compare each worker's memory limit with TPOT__MEMORY_LIMIT_MB; log mismatches loudly."""
        try:
            limits = worker_memory_limits_mb(client)
        except Exception as error:
            event(logger, "worker_memory_check_failed", logging.WARNING, error=str(error))
            return {}
        expected = self.settings.memory_limit_mb
        wrong = {name: mb for name, mb in limits.items() if abs(mb - expected) > 1}
        if wrong:
            event(
                logger,
                "worker_memory_limit_mismatch",
                logging.ERROR,
                expected_mb=expected,
                workers=wrong,
                hint="set TPOT__MEMORY_LIMIT_MB and the workers' --memory-limit to the same value",
            )
        return limits

    # -- local cluster ----------------------------------------------------------------------------

    def local_client(self) -> Client:
        """The client of the process's LocalCluster, started on first use with process workers."""
        with self._local_lock:
            client = self._local_client
            if client is not None and client.status == "running":
                return client
            prepare_process()
            started = time.monotonic()
            with dask.config.set(LOCAL_SCHEDULER_CONFIG):
                cluster = LocalCluster(
                    n_workers=self.settings.local_workers,
                    threads_per_worker=1,
                    processes=True,
                    memory_limit=f"{self.settings.memory_limit_mb}MiB",
                    dashboard_address=None,
                    host="127.0.0.1",
                    silence_logs=logging.ERROR,
                )
            client = Client(cluster, set_as_default=False)
            client.register_plugin(BackendWorkerPlugin(), name=BackendWorkerPlugin.name)
            self._local_cluster, self._local_client = cluster, client
            event(
                logger,
                "local_cluster_started",
                workers=self.settings.local_workers,
                memory_limit_mb=self.settings.memory_limit_mb,
                elapsed_seconds=round(time.monotonic() - started, 3),
            )
            return client

    # -- shutdown ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the background loop and close both clients and the LocalCluster."""
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for client in (self._client, self._local_client):
            if client is not None:
                _close_quietly(client)
        if self._local_cluster is not None:
            try:
                self._local_cluster.close(timeout=10)
            except Exception as error:
                event(logger, "local_cluster_close_failed", logging.WARNING, error=str(error))
        self._client = self._local_client = None
        self._local_cluster = None


def _close_quietly(client: Client) -> None:
    try:
        client.close(timeout=5)
    except Exception as error:
        event(logger, "client_close_failed", logging.WARNING, error=str(error))
