"""A real Dask cluster on loopback for tests: one `dask scheduler` and N `dask worker` processes.

Every process is started with the `dask` command from the project's environment, in its own process
group, on free ports of 127.0.0.1, and is killed with its whole group on exit. Other tiers reuse
this module, so it depends on nothing but the standard library (the scheduler's HTTP `/health`
and JSON routes are used to wait for it).

Example::

    with DaskCluster(n_workers=2, memory_limit_mb=1024) as cluster:
        run_backend(env={"DASK_SCHEDULER_ADDRESS": cluster.address})
        cluster.kill_worker(0)
        cluster.wait_for_workers(1)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STARTUP_TIMEOUT_SECONDS = 90.0
DEFAULT_MEMORY_LIMIT_MB = 1024
LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on `host` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def dask_command() -> str:
    """Path of the `dask` command installed next to the running interpreter (or on PATH)."""
    candidate = Path(sys.executable).with_name("dask")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("dask")
    if found is None:
        raise FileNotFoundError("the `dask` command is not installed (run `make bootstrap`)")
    return found


def kill_process_group(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Send `sig` to the whole process group of `process` (a nanny and its worker, for example)."""
    if process.poll() is not None and sig != signal.SIGKILL:
        return
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        return
    if sig == signal.SIGKILL:
        process.wait(timeout=30)


@dataclass
class _Process:
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None


class DaskCluster:
    """One scheduler and `n_workers` single-thread workers, as separate `dask` processes.

    Parameters
    ----------
    n_workers:
        Workers to start (each `--nthreads 1 --nworkers 1`, with a nanny), default 2.
    memory_limit_mb:
        `--memory-limit` of each worker in MiB, default 1024; the nanny kills a worker above it.
    env:
        Extra environment for every process, e.g. Dask configuration as `DASK_...` variables.
    scheduler_file:
        Whether the scheduler writes a scheduler file (`.scheduler_file`), default True.
    startup_timeout_seconds:
        How long `start()` waits for the scheduler and all workers, default 90.
    work_dir:
        Folder for logs, the scheduler file and worker local directories; a fresh temporary folder
        (removed on stop) when not given.

    Attributes ``address`` (``tcp://127.0.0.1:PORT``), ``dashboard_port`` and ``scheduler_file``
    are fixed for the lifetime of the object, so a restarted scheduler comes back at the same place.
    """

    def __init__(
        self,
        *,
        n_workers: int = 2,
        memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB,
        env: Mapping[str, str] | None = None,
        scheduler_file: bool = True,
        startup_timeout_seconds: float = DEFAULT_STARTUP_TIMEOUT_SECONDS,
        work_dir: Path | None = None,
        worker_args: Sequence[str] = (),
    ) -> None:
        self.n_workers = n_workers
        self.memory_limit_mb = memory_limit_mb
        self.startup_timeout_seconds = startup_timeout_seconds
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="dask-cluster-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)

        self.scheduler_port = free_port()
        self.dashboard_port = free_port()
        self.address = f"tcp://{LOOPBACK}:{self.scheduler_port}"
        self.scheduler_file: Path | None = (
            self.work_dir / "scheduler.json" if scheduler_file else None
        )
        self.env = self._environment(env or {})

        self._scheduler = _Process(
            "scheduler", self._scheduler_argv(), self.work_dir / "scheduler.log"
        )
        self._workers = [
            _Process(
                f"worker-{i}", self._worker_argv(i, worker_args), self.work_dir / f"worker-{i}.log"
            )
            for i in range(n_workers)
        ]

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> DaskCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> DaskCluster:
        """Start the scheduler, then the workers; return when all workers are registered."""
        self._spawn(self._scheduler)
        self.wait_for_scheduler()

        for worker in self._workers:
            self._spawn(worker)
        self.wait_for_workers(self.n_workers)
        logger.info(
            "dask cluster started: address=%s workers=%s memory_limit_mb=%s",
            self.address,
            self.n_workers,
            self.memory_limit_mb,
        )
        return self

    def stop(self) -> None:
        """Kill every process group this object started, and remove its temporary folder."""
        for process in [*self._workers, self._scheduler]:
            if process.popen is not None:
                kill_process_group(process.popen)
        if self._own_work_dir and not os.environ.get("TPOT_KEEP_TEST_LOGS"):
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # -- failures on demand ----------------------------------------------------------------------

    def kill_scheduler(self, sig: int = signal.SIGKILL) -> None:
        """Kill the scheduler process (SIGKILL by default: no goodbye to clients or workers)."""
        assert self._scheduler.popen is not None, "scheduler was never started"
        kill_process_group(self._scheduler.popen, sig)

    def restart_scheduler(self, *, wait: bool = True) -> None:
        """Kill the scheduler if it still runs and start it again on the same port."""
        if self._scheduler.popen is not None and self._scheduler.popen.poll() is None:
            self.kill_scheduler()
        self._spawn(self._scheduler)
        if wait:
            self.wait_for_scheduler()

    def kill_worker(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Kill worker `index` with its nanny, as when its pod disappears (it stays gone)."""
        popen = self._workers[index].popen
        assert popen is not None, f"worker {index} was never started"
        kill_process_group(popen, sig)

    def restart_worker(self, index: int) -> None:
        """Start worker `index` again (after `kill_worker`)."""
        popen = self._workers[index].popen
        if popen is not None and popen.poll() is None:
            self.kill_worker(index)
        self._spawn(self._workers[index])

    def restart_workers(self, *, wait: bool = True) -> None:
        """Start every worker again, as Kubernetes restarts worker containers that exited.

        A Dask worker whose scheduler went away closes itself (`worker-handle-scheduler-
        connection-broken`) and does not come back on its own; call this after
        `restart_scheduler()`.
        """
        for index in range(self.n_workers):
            self.restart_worker(index)
        if wait:
            self.wait_for_workers(self.n_workers)

    # -- observation -----------------------------------------------------------------------------

    @property
    def dashboard_url(self) -> str:
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    def scheduler_alive(self) -> bool:
        return self._scheduler.popen is not None and self._scheduler.popen.poll() is None

    def worker_pids(self) -> list[int | None]:
        """Process ids of the worker groups (the nanny is the group leader)."""
        return [w.popen.pid if w.popen and w.popen.poll() is None else None for w in self._workers]

    def counts(self) -> dict[str, int]:
        """The scheduler's `/json/counts.json`: number of workers, clients and tasks."""
        with urllib.request.urlopen(
            f"{self.dashboard_url}/json/counts.json", timeout=5
        ) as response:
            return dict(json.load(response))

    def wait_for_scheduler(self, timeout_seconds: float | None = None) -> None:
        """Block until the scheduler answers `/health` (and wrote its scheduler file, if any)."""
        deadline = time.monotonic() + (timeout_seconds or self.startup_timeout_seconds)
        while time.monotonic() < deadline:
            self._raise_if_exited(self._scheduler)
            if self._http_ok("/health") and (
                self.scheduler_file is None or self.scheduler_file.exists()
            ):
                return
            time.sleep(0.2)
        raise TimeoutError(f"scheduler did not start in time; log:\n{self.logs('scheduler')}")

    def wait_for_workers(self, n: int, timeout_seconds: float | None = None) -> None:
        """Block until exactly `n` workers are registered with the scheduler."""
        deadline = time.monotonic() + (timeout_seconds or self.startup_timeout_seconds)
        seen = -1
        while time.monotonic() < deadline:
            self._raise_if_exited(self._scheduler)
            try:
                seen = int(self.counts().get("workers", -1))
            except (OSError, ValueError):
                seen = -1
            if seen == n:
                return
            time.sleep(0.3)
        raise TimeoutError(f"{seen} workers registered, expected {n}; logs:\n{self.logs()}")

    def logs(self, name: str | None = None) -> str:
        """The output of one process (`scheduler`, `worker-0`, ...) or of all of them."""
        processes = [self._scheduler, *self._workers]
        chosen = [p for p in processes if name is None or p.name == name]
        parts = []
        for process in chosen:
            text = process.log_path.read_text(errors="replace") if process.log_path.exists() else ""
            parts.append(f"--- {process.name} ---\n{text[-20000:]}")
        return "\n".join(parts)

    # -- internals -------------------------------------------------------------------------------

    def _environment(self, extra: Mapping[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        tmp = self.work_dir / "tmp"
        tmp.mkdir(exist_ok=True)
        pythonpath = [str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]
        env.update(
            {
                "PYTHONPATH": os.pathsep.join(pythonpath),
                "PYTHONUNBUFFERED": "1",
                "TMPDIR": str(tmp),
                "MPLCONFIGDIR": str(tmp / "matplotlib"),
            }
        )
        env.update(extra)
        return env

    def _scheduler_argv(self) -> list[str]:
        argv = [
            dask_command(),
            "scheduler",
            "--host",
            LOOPBACK,
            "--port",
            str(self.scheduler_port),
            "--dashboard-address",
            f"{LOOPBACK}:{self.dashboard_port}",
        ]
        if self.scheduler_file is not None:
            argv += ["--scheduler-file", str(self.scheduler_file)]
        return argv

    def _worker_argv(self, index: int, extra: Sequence[str]) -> list[str]:
        local_directory = self.work_dir / f"worker-{index}"
        return [
            dask_command(),
            "worker",
            self.address,
            "--host",
            LOOPBACK,
            "--nthreads",
            "1",
            "--nworkers",
            "1",
            "--memory-limit",
            f"{self.memory_limit_mb}MiB",
            "--dashboard-address",
            f"{LOOPBACK}:0",
            "--local-directory",
            str(local_directory),
            "--name",
            f"worker-{index}",
            *extra,
        ]

    def _spawn(self, process: _Process) -> None:
        log = process.log_path.open("ab")
        try:
            process.popen = subprocess.Popen(
                process.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.work_dir,
                start_new_session=True,
            )
        finally:
            log.close()

    def _raise_if_exited(self, process: _Process) -> None:
        if process.popen is not None and process.popen.poll() is not None:
            raise RuntimeError(
                f"{process.name} exited with {process.popen.returncode}; "
                f"log:\n{self.logs(process.name)}"
            )

    def _http_ok(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"{self.dashboard_url}{path}", timeout=2) as response:
                return int(response.status) == 200
        except (OSError, urllib.error.URLError):
            return False
