"""Fixtures of the compose tier: the image, and one compose project per test module.

The project runs docker-compose.tpot.yml plus tests/compose/docker-compose.test.yml (a second
backend in `distributed` mode) under a unique project name, on free ports of 127.0.0.1, and is
always taken down with `down -v`, whatever the tests did.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.compose import image

TEST_OVERRIDE = Path(__file__).with_name("docker-compose.test.yml")
UP_TIMEOUT_SECONDS = 240
JOB_POLL_SECONDS = 1.0
FINAL_STATUSES = ("succeeded", "failed", "cancelled")

logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ComposeStack:
    """One running compose project and the ways a test talks to it."""

    project: str
    env: dict[str, str]
    token: str
    ports: dict[str, int]
    compose_files: tuple[Path, ...] = field(default=(image.COMPOSE_FILE, TEST_OVERRIDE))

    # -- compose and docker ----------------------------------------------------------------------
    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        command = [
            str(image.COMPOSE_BIN),
            "--project-name",
            self.project,
            "--project-directory",
            str(image.REPO_ROOT),
        ]
        for path in self.compose_files:
            command += ["--file", str(path)]
        result = subprocess.run(
            [*command, *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker-compose {' '.join(args)} failed ({result.returncode}): "
                f"{result.stderr.strip()[-3000:]}"
            )
        return result.stdout

    def containers(self, service: str) -> list[str]:
        """Names of the service's running containers."""
        out = self.compose("ps", "--format", "{{.Name}}", service)
        return sorted(line for line in out.splitlines() if line.strip())

    def docker(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        result = subprocess.run(
            ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def inspect(self, container: str) -> dict[str, Any]:
        return json.loads(self.docker("inspect", container))[0]

    def scheduler_python(self, code: str) -> Any:
        """Run `code` in the scheduler container with a Dask `client`; returns its JSON output."""
        script = (
            "import json\nfrom distributed import Client\n"
            "client = Client('tcp://127.0.0.1:8786', timeout=10, set_as_default=False)\n"
            f"{code}\nclient.close()\n"
        )
        (container,) = self.containers("scheduler")
        out = self.docker("exec", container, "python", "-c", script, timeout=60)
        return json.loads(out.strip().splitlines()[-1])

    def worker_task_counts(self) -> dict[str, int]:
        """Tasks each answering worker has executed since it started, by worker name.

        A worker the scheduler still lists but that no longer answers (just killed) is left out.
        """
        return self.scheduler_python(
            "counts = client.run(lambda dask_worker: [dask_worker.name, "
            "dask_worker.state.executed_count], on_error='ignore')\n"
            "print(json.dumps(dict(counts.values())))"
        )

    def worker_names(self) -> set[str]:
        """Names of the workers the scheduler lists."""
        return set(
            self.scheduler_python(
                "info = client.scheduler_info()\n"
                "print(json.dumps([w['name'] for w in info['workers'].values()]))"
            )
        )

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "60", check=False)

    # -- the job API ---------------------------------------------------------------------------
    def api(self, backend: str = "backend") -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.ports[backend]}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )

    def submit_job(self, backend: str = "backend", **params: Any) -> str:
        dataset = image.REPO_ROOT / "backend/src/tpot_backend/data/breast_cancer.csv"
        form = {"target": "diagnosis", **{key: str(value) for key, value in params.items()}}
        with self.api(backend) as api, dataset.open("rb") as handle:
            response = api.post("/v1/jobs", data=form, files={"file": (dataset.name, handle)})
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def job(self, job_id: str, backend: str = "backend") -> dict[str, Any]:
        with self.api(backend) as api:
            response = api.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_for_job(
        self,
        job_id: str,
        backend: str = "backend",
        *,
        timeout_seconds: float = 240,
        until: tuple[str, ...] = FINAL_STATUSES,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_seconds
        while True:
            view = self.job(job_id, backend)
            if view["status"] in until:
                return view
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job_id} on {backend} still {view['status']} after {timeout_seconds} s"
                    f"\n{self.logs()}"
                )
            time.sleep(JOB_POLL_SECONDS)

    def readiness(self, backend: str = "backend") -> dict[str, Any]:
        with self.api(backend) as api:
            return api.get("/readyz").json()


@pytest.fixture(scope="session")
def compose_image() -> str:
    """The tpot-backend image, built (offline, from the caches) once per session."""
    try:
        image.ensure_engine()
    except image.DockerUnavailable as reason:
        pytest.skip(str(reason))
    return image.prepare_image()


@pytest.fixture(scope="module")
def compose_stack(compose_image: str) -> Iterator[ComposeStack]:
    """docker-compose.tpot.yml up (--wait) under a unique project; `down -v` afterwards, always."""
    ports = {"backend": free_port(), "backend-distributed": free_port(), "scheduler": free_port()}
    token = secrets.token_hex(16)
    env = {
        **image.docker_env(),
        "TPOT_IMAGE": compose_image,
        "TPOT_BIND_ADDRESS": "127.0.0.1",
        "TPOT_HTTP_PORT": str(ports["backend"]),
        "TPOT_DISTRIBUTED_HTTP_PORT": str(ports["backend-distributed"]),
        "TPOT_SCHEDULER_HTTP_PORT": str(ports["scheduler"]),
        "TPOT_API_TOKEN": token,
        "TPOT_WORKERS": "2",
        "TPOT__MEMORY_LIMIT_MB": "1536",
        "TPOT_WORKER_CONTAINER_MEMORY_MB": "2048",
    }
    stack = ComposeStack(
        project=f"tpot-test-{os.getpid()}-{secrets.token_hex(3)}", env=env, token=token, ports=ports
    )
    started = time.monotonic()
    try:
        stack.compose(
            "up",
            "--detach",
            "--wait",
            "--wait-timeout",
            str(UP_TIMEOUT_SECONDS),
            "--pull",
            "never",
            "--no-build",
            timeout=UP_TIMEOUT_SECONDS + 60,
        )
        logger.info(
            "event=compose_up project=%s elapsed_seconds=%.1f",
            stack.project,
            time.monotonic() - started,
        )
        yield stack
    except BaseException:
        logger.error("event=compose_failed project=%s\n%s", stack.project, stack.logs())
        raise
    finally:
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)
