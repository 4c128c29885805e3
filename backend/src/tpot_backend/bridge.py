"""The Dask client as TPOT 1.1 sees it, for one job.

What TPOT 1.1.0 needs from its `client` (read from its source):

* ``len(client.cluster.workers)`` — how many evaluations to keep in flight
  (`tpot.utils.eval_utils.parallel_eval_objective_list`). A client connected by address or
  scheduler file has ``client.cluster = None``, so TPOT fails with `AttributeError`. The bridge
  answers from the scheduler's live worker list instead, re-read every generation, so the search
  follows the cluster as it scales.
* ``client.scatter(X)`` / ``client.scatter(y)`` (`TPOTEstimator.fit`) — with Dask's scatter the data
  lives only on the workers; when a worker holding it dies, every later evaluation is cancelled for
  "lost dependencies". The bridge turns each scatter into a *task* that unpickles a payload embedded
  in the graph: the backend sends the data to the cluster once per job, and when the worker holding
  the result dies the scheduler simply recomputes it on another worker.
* ``client.submit(...)`` for each evaluation and ``client.run(gc.collect)`` after a cancelled one.
  The bridge passes them through, after checking that the job was not cancelled and that the
  scheduler the job started on is still the one it talks to (otherwise TPOT would keep submitting
  work that depends on data the new scheduler never saw).

Everything else TPOT might touch is passed through to the real client.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from distributed import Client, Future

from tpot_backend.logs import event

logger = logging.getLogger(__name__)

NO_WORKERS_WAIT_SECONDS = 30.0
DATA_TASK_PRIORITY = 100

# Per process: how many times each dataset key was unpickled here (read by tests on workers).
_materialised: Counter[str] = Counter()
_materialised_lock = threading.Lock()


class SchedulerLost(RuntimeError):
    """The connection to the scheduler dropped while the job was running."""


class JobCancelled(RuntimeError):
    """The job was cancelled while it was running."""


class NoWorkers(RuntimeError):
    """The scheduler has no workers, so nothing can be evaluated."""


def materialise_dataset(payload: bytes, name: str) -> Any:
    """Task body for a dataset: unpickle the payload the graph carries (runs on a worker)."""
    data = pickle.loads(payload)
    with _materialised_lock:
        _materialised[name] += 1
    return data


def materialised_counts() -> dict[str, int]:
    """How many times each dataset key was materialised in this process (for `client.run`)."""
    with _materialised_lock:
        return dict(_materialised)


class LiveWorkers:
    """Stands in for ``client.cluster``: `workers` is the scheduler's current worker list."""

    def __init__(self, bridge: TpotClientBridge) -> None:
        self._bridge = bridge

    @property
    def workers(self) -> dict[str, Any]:
        return self._bridge.live_workers()


class TpotClientBridge:
    """A per-job view of the process's shared client, safe to hand to `TPOTClassifier(client=...)`.

    Parameters
    ----------
    client:
        The shared Dask client (to the cluster's scheduler or to the local cluster).
    job_id:
        Names the dataset keys, so jobs never share or release each other's data.
    connection_losses:
        Returns how many times the scheduler connection was lost so far; a change during the job
        means the job's data and futures are gone. ``None`` for the local cluster.
    cancel_event:
        Set when the job is cancelled; the next call TPOT makes raises `JobCancelled`.
    """

    def __init__(
        self,
        client: Client,
        *,
        job_id: str,
        connection_losses: Callable[[], int] | None = None,
        cancel_event: threading.Event | None = None,
        no_workers_wait_seconds: float = NO_WORKERS_WAIT_SECONDS,
    ) -> None:
        self._client = client
        self._job_id = job_id
        self._connection_losses = connection_losses
        self._losses_at_start = connection_losses() if connection_losses else 0
        self._cancel_event = cancel_event or threading.Event()
        self._no_workers_wait_seconds = no_workers_wait_seconds
        self._scheduler_id: str | None = None
        self._futures: list[Future] = []
        self._data_futures: list[Future] = []
        self._lock = threading.Lock()
        self.cluster = LiveWorkers(self)
        self.data_objects = 0
        self.data_bytes = 0
        self.evaluations_submitted = 0

    # -- what TPOT calls --------------------------------------------------------------------------

    def scatter(self, data: Any, **_: Any) -> Future:
        """Ship `data` once, as a task the scheduler can recompute if its worker dies."""
        self._check()
        payload = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            index = self.data_objects
            self.data_objects += 1
            self.data_bytes += len(payload)
        key = f"tpot-data-{self._job_id}-{index}"
        future = self._client.submit(
            materialise_dataset,
            payload,
            key,
            key=key,
            pure=False,
            priority=DATA_TASK_PRIORITY,
        )
        with self._lock:
            self._data_futures.append(future)
        event(
            logger,
            "dataset_shipped",
            logging.DEBUG,
            job_id=self._job_id,
            key=key,
            bytes=len(payload),
        )
        return future

    def submit(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        self._check()
        future = self._client.submit(func, *args, **kwargs)
        with self._lock:
            self.evaluations_submitted += 1
            self._futures = [f for f in self._futures if not f.done()]
            self._futures.append(future)
        return future

    def run(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """`client.run` that tolerates a worker that is dying or restarting."""
        self._check()
        kwargs.setdefault("on_error", "return")
        results = self._client.run(func, *args, **kwargs)
        failed = {addr: str(r) for addr, r in results.items() if isinstance(r, BaseException)}
        if failed:
            event(logger, "worker_run_failed", logging.WARNING, job_id=self._job_id, workers=failed)
        self._check()
        return results

    def close(self, *_: Any, **__: Any) -> None:
        """TPOT never closes a client it was given; the shared client outlives every job anyway."""

    def shutdown(self, *_: Any, **__: Any) -> None:
        """Never shut the shared scheduler down on behalf of one job."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    # -- what the backend calls -------------------------------------------------------------------

    def live_workers(self) -> dict[str, Any]:
        """Workers connected right now; waits a little for at least one, else `NoWorkers`."""
        deadline = time.monotonic() + self._no_workers_wait_seconds
        while True:
            self._check()
            try:
                info = self._client.scheduler_info(n_workers=-1)
            except OSError as error:
                raise SchedulerLost(f"scheduler stopped answering: {error}") from error
            scheduler_id = info.get("id")
            if self._scheduler_id is None:
                self._scheduler_id = scheduler_id
            elif scheduler_id != self._scheduler_id:
                raise SchedulerLost("the scheduler was replaced during the job")
            workers = dict(info.get("workers", {}))
            if workers:
                return workers
            if time.monotonic() > deadline:
                raise NoWorkers(
                    f"the scheduler has had no workers for {self._no_workers_wait_seconds:g} s"
                )
            time.sleep(0.5)

    def cancel(self) -> None:
        """Stop the job: cancel its queued and running evaluations; TPOT's next call raises."""
        self._cancel_event.set()
        with self._lock:
            futures = list(self._futures)
        if futures:
            try:
                self._client.cancel(futures)
            except Exception as error:
                event(
                    logger, "cancel_failed", logging.WARNING, job_id=self._job_id, error=str(error)
                )

    def release(self) -> None:
        """Forget the job's data and evaluations on the cluster."""
        with self._lock:
            futures = self._futures + self._data_futures
            self._futures, self._data_futures = [], []
        for future in futures:
            try:
                future.release()
            except Exception as error:  # the client may already be gone
                event(
                    logger, "release_failed", logging.DEBUG, job_id=self._job_id, error=str(error)
                )

    @property
    def data_keys(self) -> list[str]:
        """Keys of the dataset objects this job shipped, in the order TPOT scattered them."""
        with self._lock:
            return [str(future.key) for future in self._data_futures]

    @property
    def scheduler_lost(self) -> bool:
        if (
            self._connection_losses is not None
            and self._connection_losses() != self._losses_at_start
        ):
            return True
        return self._client.status != "running"

    def _check(self) -> None:
        if self._cancel_event.is_set():
            raise JobCancelled("the job was cancelled")
        if self.scheduler_lost:
            raise SchedulerLost(
                f"lost the connection to the scheduler (client status {self._client.status})"
            )
