"""Jobs through the backend's HTTP API, memory sampling, and the `auto` fallback timing.

The API client polls every 0.2 s (the API's own timestamps have one-second resolution), so
"observed seconds" is measured from just before the upload to the first poll that sees the job
finished.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from distributed import Client

from tests.harness.jobs import TERMINAL_STATES, bundled_dataset, get_job, submit_job
from tests.harness.localstack import free_port

log = logging.getLogger("benchmarks.backend")

POLL_SECONDS = 0.2
SAMPLE_SECONDS = 0.5


def run_api_job(
    base_url: str, dataset: Path, target: str, values: dict[str, Any], *, timeout_seconds: float
) -> dict[str, Any]:
    """Upload `dataset`, wait for the job, return the job record plus observed timings."""
    started = time.monotonic()
    job_id = submit_job(base_url, dataset, target, **values)
    submitted = time.monotonic() - started
    deadline = started + timeout_seconds
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = get_job(base_url, job_id)
        if job.get("status") in TERMINAL_STATES:
            break
        time.sleep(POLL_SECONDS)
    else:
        raise TimeoutError(f"job {job_id} did not finish in {timeout_seconds} s: {job}")
    observed = time.monotonic() - started
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('error')}")
    log.info(
        "event=api_job_finished job_id=%s mode=%s observed_seconds=%.1f",
        job_id,
        job["mode"],
        observed,
    )
    return {
        "job": job,
        "upload_seconds": round(submitted, 3),
        "observed_seconds": round(observed, 3),
    }


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (a container's processes)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total


class MemorySampler:
    """Peak memory while a block runs: Dask workers as the scheduler reports them, process trees.

    `client` reads each worker's process memory from the scheduler (what Dask compares with
    --memory-limit); `trees` maps a name to a pid whose process tree is summed with psutil (what a
    container's memory limit counts: nanny plus worker, or the backend plus its local cluster).
    """

    def __init__(
        self, *, client: Client | None = None, trees: dict[str, int] | None = None
    ) -> None:
        self._client = client
        self._trees = trees or {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)
        self.dask_worker_peak: dict[str, int] = {}
        self.tree_peak: dict[str, int] = {}

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._client is not None:
                try:
                    workers = self._client.scheduler_info(n_workers=-1).get("workers", {})
                except Exception:  # the sampler must never end the measurement it watches
                    workers = {}
                for address, info in workers.items():
                    name = str(info.get("name", address))
                    memory = int(info.get("metrics", {}).get("memory", 0))
                    self.dask_worker_peak[name] = max(self.dask_worker_peak.get(name, 0), memory)
            for name, pid in self._trees.items():
                self.tree_peak[name] = max(self.tree_peak.get(name, 0), tree_rss_bytes(pid))
            self._stop.wait(SAMPLE_SECONDS)

    def summary(self) -> dict[str, Any]:
        mib = 2**20
        return {
            "dask_worker_peak_mib": {k: round(v / mib) for k, v in self.dask_worker_peak.items()},
            "process_tree_peak_mib": {k: round(v / mib) for k, v in self.tree_peak.items()},
        }


def _events(log_path: Path) -> list[dict[str, Any]]:
    events = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "event" in record and "ts" in record:
            stamp = dt.datetime.fromisoformat(record["ts"].replace("Z", "+00:00"))
            record["_epoch"] = stamp.timestamp()
            events.append(record)
    return events


def _first(events: list[dict[str, Any]], name: str, after: float, **match: Any) -> float | None:
    for record in events:
        if record["event"] != name or record["_epoch"] < after:
            continue
        if all(record.get(k) == v for k, v in match.items()):
            return float(record["_epoch"])
    return None


def fallback_timing(
    *, wait_seconds: float, values: dict[str, Any], workdir: Path, timeout_seconds: float
) -> dict[str, Any]:
    """`tpot-backend serve` in `auto` mode with no scheduler listening; two jobs, timed.

    Job 1 is submitted as soon as the backend is ready (the scheduler has been absent since the
    backend started); job 2 right after job 1 finished, when the wait budget is already spent.
    Times come from the backend's own JSON log lines (millisecond timestamps).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    absent = f"tcp://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TPOT_", "DASK_"))}
    env.update(
        {
            "TPOT_PARALLEL_MODE": "auto",
            "DASK_SCHEDULER_ADDRESS": absent,
            "TPOT_SCHEDULER_WAIT_SECONDS": f"{wait_seconds:g}",
            "TPOT_DATA_DIR": str(workdir / "data"),
            "TPOT_HTTP_HOST": "127.0.0.1",
            "TPOT_HTTP_PORT": str(port),
            "TPOT_LOCAL_WORKERS": "2",
            "TPOT_LOG_FORMAT": "json",
        }
    )
    log_path = workdir / "backend.log"
    base_url = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).parent / "tpot-backend"), "serve"]
    dataset, target = bundled_dataset()

    started_epoch = time.time()
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        ready_after = _wait_ready(base_url, process, started_epoch)
        with MemorySampler(trees={"backend": process.pid}) as sampler:
            first = run_api_job(base_url, dataset, target, values, timeout_seconds=timeout_seconds)
            second_submitted = time.time()
            second = run_api_job(base_url, dataset, target, values, timeout_seconds=timeout_seconds)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    events = _events(log_path)
    first_submitted = _first(events, "job_queued", started_epoch) or started_epoch
    fell_back = _first(events, "job_fell_back_to_local", started_epoch)
    local_started = _first(events, "local_cluster_started", started_epoch)
    search_local = _first(events, "search_started", started_epoch, mode="local")
    second_queued = _first(events, "job_queued", second_submitted) or second_submitted
    second_search = _first(events, "search_started", second_submitted, mode="local")

    def since(moment: float | None, origin: float) -> float | None:
        return None if moment is None else round(moment - origin, 3)

    for job in (first, second):
        if job["job"]["mode"] != "local" or job["job"]["fallback_reason"] is None:
            raise RuntimeError(f"expected a local fallback, got {job['job']}")
    return {
        "wait_budget_seconds": wait_seconds,
        "scheduler_address": absent,
        "backend_ready_after_start_seconds": ready_after,
        "first_job": {
            "fallback_reason": first["job"]["fallback_reason"],
            "submitted_after_start_seconds": since(first_submitted, started_epoch),
            "fell_back_after_start_seconds": since(fell_back, started_epoch),
            "local_cluster_started_after_start_seconds": since(local_started, started_epoch),
            "local_search_started_after_start_seconds": since(search_local, started_epoch),
            "local_search_started_after_submit_seconds": since(search_local, first_submitted),
            "observed_seconds": first["observed_seconds"],
            "pipelines_evaluated": (first["job"]["result"] or {}).get("pipelines_evaluated"),
        },
        "second_job": {
            "fallback_reason": second["job"]["fallback_reason"],
            "local_search_started_after_submit_seconds": since(second_search, second_queued),
            "observed_seconds": second["observed_seconds"],
        },
        "backend_tree_peak_mib": sampler.summary()["process_tree_peak_mib"].get("backend"),
    }


def _wait_ready(base_url: str, process: subprocess.Popen[bytes], started_epoch: float) -> float:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"tpot-backend serve exited {process.returncode} before it was ready"
            )
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return round(time.time() - started_epoch, 3)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{base_url}/readyz did not answer 200 within 180 s")
