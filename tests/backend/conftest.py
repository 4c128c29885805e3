"""Fixtures for the backend tier: real Dask clusters on loopback, the backend as a real process,
and small datasets. Every process started here is killed with its process group afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO_ROOT
from tests.harness.dask_cluster import DaskCluster, free_port, kill_process_group

MEMORY_LIMIT_MB = 1024
# TPOT's own choice for the clusters it builds: a task that killed two workers is given up.
CLUSTER_ENV = {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"}
TINY_SEARCH = {
    "generations": "1",
    "population_size": "4",
    "cv": "3",
    "random_state": "1",
    "max_eval_time_mins": "1",
}
BACKEND_START_SECONDS = 60.0


def backend_command() -> list[str]:
    return [str(Path(sys.executable).with_name("tpot-backend"))]


@pytest.fixture(scope="session")
def shared_cluster() -> Iterator[DaskCluster]:
    """Scheduler and two single-thread workers for tests that do not break them."""
    with DaskCluster(n_workers=2, memory_limit_mb=MEMORY_LIMIT_MB, env=CLUSTER_ENV) as cluster:
        yield cluster


@pytest.fixture
def fresh_cluster() -> Iterator[DaskCluster]:
    """A cluster of its own, for tests that kill its scheduler or workers."""
    with DaskCluster(n_workers=2, memory_limit_mb=MEMORY_LIMIT_MB, env=CLUSTER_ENV) as cluster:
        yield cluster


@pytest.fixture
def backend_env(tmp_path: Path) -> dict[str, str]:
    """Environment of a backend: private data dir, home and temp dir; short scheduler waits."""
    home = tmp_path / "home"
    tmp = tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TPOT", "DASK_")) and key not in ("XDG_CACHE_HOME", "MPLCONFIGDIR")
    }
    env.update(
        {
            "HOME": str(home),
            "TMPDIR": str(tmp),
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
            "TPOT_DATA_DIR": str(tmp_path / "data"),
            "TPOT_LOG_FORMAT": "json",
            "TPOT__MEMORY_LIMIT_MB": str(MEMORY_LIMIT_MB),
            "TPOT_LOCAL_WORKERS": "1",
            "TPOT_SCHEDULER_FILE": str(tmp_path / "no-scheduler.json"),
            "TPOT_SCHEDULER_WAIT_SECONDS": "5",
            "TPOT_SCHEDULER_ATTEMPT_TIMEOUT_SECONDS": "1",
            "TPOT_SCHEDULER_BACKOFF_SECONDS": "0.2",
            "TPOT_SCHEDULER_BACKOFF_MAX_SECONDS": "1",
        }
    )
    return env


def parse_events(text: str) -> list[dict[str, Any]]:
    """The JSON log lines of a backend process (other lines are skipped)."""
    events = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


@dataclass
class CommandResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def events(self) -> list[dict[str, Any]]:
        return parse_events(self.stderr)

    def json(self) -> dict[str, Any]:
        return json.loads(self.stdout)


def run_backend(
    args: list[str], env: Mapping[str, str], *, timeout_seconds: float = 300
) -> CommandResult:
    """Run `tpot-backend ARGS` to completion in its own process group."""
    started = time.monotonic()
    process = subprocess.Popen(
        backend_command() + args,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=REPO_ROOT,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(
            f"tpot-backend {args} did not finish in time:\n{stderr[-5000:]}"
        ) from None
    finally:
        if process.poll() is None:
            kill_process_group(process)
    return CommandResult(process.returncode, stdout, stderr, time.monotonic() - started)


class BackendServer:
    """`tpot-backend serve` as a real process on a free loopback port."""

    def __init__(self, env: Mapping[str, str], log_path: Path, token: str | None = None) -> None:
        self.port = free_port()
        self.env = {**env, "TPOT_HTTP_HOST": "127.0.0.1", "TPOT_HTTP_PORT": str(self.port)}
        if token:
            self.env["TPOT_API_TOKEN"] = token
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def start(self) -> BackendServer:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                backend_command() + ["serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=REPO_ROOT,
            )
        deadline = time.monotonic() + BACKEND_START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"backend exited with {self.process.returncode}:\n{self.logs()}"
                )
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"backend did not answer /healthz in time:\n{self.logs()}")

    def kill(self) -> None:
        """SIGKILL the backend and everything it started (its local Dask workers too)."""
        if self.process is not None:
            kill_process_group(self.process)

    def stop(self) -> None:
        """SIGTERM to the main process, as Kubernetes does; SIGKILL if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            pass
        kill_process_group(self.process)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return [e for e in parse_events(self.logs()) if name is None or e.get("event") == name]

    def submit(self, dataset: Path, **fields: str) -> httpx.Response:
        form = {**TINY_SEARCH, **fields}
        with dataset.open("rb") as handle:
            return self.http.post("/v1/jobs", data=form, files={"file": (dataset.name, handle)})

    def wait_for(
        self, job_id: str, statuses: set[str], timeout_seconds: float = 180
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_seconds
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.http.get(f"/v1/jobs/{job_id}").json()
            if job.get("status") in statuses:
                return job
            time.sleep(0.3)
        raise AssertionError(
            f"job {job_id} is {job.get('status')}, not {statuses}:\n{self.logs()[-8000:]}"
        )


StartBackend = Callable[..., BackendServer]


@pytest.fixture
def start_backend(tmp_path: Path) -> Iterator[StartBackend]:
    """Factory: `start_backend(env, token=None)` starts a backend; all are killed at teardown."""
    servers: list[BackendServer] = []

    def start(env: Mapping[str, str], *, token: str | None = None) -> BackendServer:
        server = BackendServer(env, tmp_path / f"backend-{len(servers)}.log", token)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.http.close()
        server.kill()


def write_classification_csv(
    path: Path, *, rows: int = 200, features: int = 6, seed: int = 0
) -> Path:
    """A learnable two-class table with a text target `label`."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(rows, features))
    label = np.where(values[:, 0] + 0.5 * values[:, 1] > 0, "yes", "no")
    frame = pd.DataFrame(values, columns=[f"f{i}" for i in range(features)])
    frame["label"] = label
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    return write_classification_csv(tmp_path / "small.csv")
