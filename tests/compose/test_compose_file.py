"""docker-compose.tpot.yml and .env as a user gets them: documented defaults that fit together, the
chart's commands, and a worker that refuses a container limit too small for its Dask limit, which
`up --wait` reports at once instead of waiting out its timeout.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from typing import Any

import pytest

from tests.compose import image
from tests.compose.conftest import free_port

pytestmark = pytest.mark.compose

ENV_FILE = image.REPO_ROOT / ".env"
# docs/architecture.md, "One image, three roles".
SCHEDULER_COMMAND = [
    "dask", "scheduler", "--host", "0.0.0.0", "--port", "8786", "--dashboard-address", ":8787",
    "--scheduler-file", "/var/run/tpot/scheduler.json",
]  # fmt: skip
WORKER_FLAGS = (
    "--scheduler-file /var/run/tpot/scheduler.json --nthreads 1 --nworkers 1",
    '--memory-limit "${dask_mb}MiB" --worker-port 8788 --nanny-port 8789',
    '--dashboard-address :8790 --local-directory /tmp/dask --name "${HOSTNAME}"',
)
# A worker that finds its container limit too small exits with this code (EX_CONFIG).
MEMORY_MISMATCH_EXIT_CODE = 78
# `up --wait --wait-timeout` of the mismatch test: failing sooner means compose reported the worker.
MISMATCH_WAIT_TIMEOUT_SECONDS = 180


def _env_defaults() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


@pytest.fixture(scope="module")
def compose_config() -> dict[str, Any]:
    """The compose file as compose resolves it with the committed .env defaults."""
    if not image.COMPOSE_BIN.exists():
        pytest.skip("needs .tools/bin/docker-compose (bash ci/docker.sh)")
    clean_env = {k: v for k, v in image.docker_env().items() if not k.startswith("TPOT")}
    out = subprocess.run(
        [str(image.COMPOSE_BIN), "--file", str(image.COMPOSE_FILE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=clean_env,
        cwd=image.REPO_ROOT,
        check=True,
    )
    return json.loads(out.stdout)


def test_every_env_setting_is_commented_and_used_by_the_compose_file() -> None:
    lines = ENV_FILE.read_text().splitlines()
    compose_text = image.COMPOSE_FILE.read_text()

    for number, line in enumerate(lines):
        if line.strip() and not line.startswith("#"):
            key = line.partition("=")[0]
            assert number > 0 and lines[number - 1].startswith("#"), (
                f"{key} has no comment above it"
            )
            assert "${" + key in compose_text, f"{key} is not used by docker-compose.tpot.yml"


def test_env_defaults_keep_the_dask_memory_limit_below_the_worker_container_limit(
    compose_config: dict[str, Any],
) -> None:
    defaults = _env_defaults()
    dask_mb = int(defaults["TPOT__MEMORY_LIMIT_MB"])
    container_mb = int(defaults["TPOT_WORKER_CONTAINER_MEMORY_MB"])
    worker = compose_config["services"]["worker"]

    assert container_mb >= dask_mb + max(512, dask_mb // 4)
    assert int(worker["mem_limit"]) == container_mb * 2**20
    assert worker["environment"]["TPOT__MEMORY_LIMIT_MB"] == str(dask_mb)
    assert compose_config["services"]["backend"]["environment"]["TPOT__MEMORY_LIMIT_MB"] == str(
        dask_mb
    )


def test_services_run_the_commands_of_the_architecture_contract(
    compose_config: dict[str, Any],
) -> None:
    services = compose_config["services"]
    # `config` keeps compose's `$$` escapes; the container's shell sees single dollars.
    worker_script = re.sub(r"\\\n\s*", "", services["worker"]["command"][-1]).replace("$$", "$")

    assert services["scheduler"]["command"] == SCHEDULER_COMMAND
    assert services["backend"]["command"] == ["tpot-backend", "serve"]
    assert "exec dask worker" in worker_script
    for flags in WORKER_FLAGS:
        assert flags in worker_script, flags
    assert int(services["worker"]["deploy"]["replicas"]) == int(_env_defaults()["TPOT_WORKERS"])
    assert {s["image"] for s in services.values()} == {_env_defaults()["TPOT_IMAGE"]}


def test_services_are_hardened_and_publish_only_on_loopback_by_default(
    compose_config: dict[str, Any],
) -> None:
    for name, service in compose_config["services"].items():
        assert service["user"] == "10001:10001", name
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["healthcheck"]["test"][0] == "CMD", name
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", (name, port)


def test_worker_refuses_to_start_when_its_container_limit_leaves_no_headroom(
    compose_image: str,
) -> None:
    env = {
        **image.docker_env(),
        "TPOT_IMAGE": compose_image,
        "TPOT__MEMORY_LIMIT_MB": "2048",
        "TPOT_WORKER_CONTAINER_MEMORY_MB": "2048",
    }
    command = [str(image.COMPOSE_BIN), "--project-name", "tpot-memory-guard-test", "--file",
               str(image.COMPOSE_FILE), "run", "--rm", "--no-deps", "worker"]  # fmt: skip

    result = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=image.REPO_ROOT, timeout=120
    )
    subprocess.run(
        [str(image.COMPOSE_BIN), "--project-name", "tpot-memory-guard-test", "--file",
         str(image.COMPOSE_FILE), "down", "--volumes"],
        capture_output=True, env=env, cwd=image.REPO_ROOT, timeout=120, check=False,
    )  # fmt: skip

    assert result.returncode == MEMORY_MISMATCH_EXIT_CODE, result.stderr
    assert "event=worker_memory_mismatch" in result.stderr
    assert "needed_mb=2560" in result.stderr


def _compose(
    project: str, env: dict[str, str], *args: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    command = [str(image.COMPOSE_BIN), "--project-name", project, "--file", str(image.COMPOSE_FILE)]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=image.REPO_ROOT,
        timeout=timeout,
        check=False,
    )


def test_up_wait_fails_on_the_worker_before_its_timeout_when_the_container_limit_is_too_small(
    compose_image: str,
) -> None:
    project = f"tpot-memory-wait-test-{os.getpid()}"
    env = {
        **image.docker_env(),
        "TPOT_IMAGE": compose_image,
        "TPOT_BIND_ADDRESS": "127.0.0.1",
        "TPOT_HTTP_PORT": str(free_port()),
        "TPOT_SCHEDULER_HTTP_PORT": str(free_port()),
        "TPOT_WORKERS": "1",
        "TPOT__MEMORY_LIMIT_MB": "2048",
        "TPOT_WORKER_CONTAINER_MEMORY_MB": "2048",
    }
    wait = ["--wait", "--wait-timeout", str(MISMATCH_WAIT_TIMEOUT_SECONDS)]

    started = time.monotonic()
    try:
        up = _compose(
            project, env, "up", "--detach", *wait, "--pull", "never", "--no-build",
            timeout=MISMATCH_WAIT_TIMEOUT_SECONDS + 60,
        )  # fmt: skip
        elapsed_seconds = time.monotonic() - started
        logs = _compose(project, env, "logs", "--no-color", "worker", timeout=60).stdout
    finally:
        _compose(project, env, "down", "--volumes", "--timeout", "5", timeout=120)

    assert up.returncode != 0, up.stderr
    assert f"{project}-worker-1" in up.stderr, up.stderr
    assert elapsed_seconds < MISMATCH_WAIT_TIMEOUT_SECONDS, up.stderr
    assert "event=worker_memory_mismatch" in logs
    assert "needed_mb=2560" in logs
