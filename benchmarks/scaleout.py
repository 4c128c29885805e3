"""Scale-out cost on a Docker engine: image size, and a new worker container's time to register.

The containers run the chart's rendered commands, environment, user, memory and CPU limits, with a
read-only root file system and all capabilities dropped, on a private Docker network where the
scheduler container answers to the Service's DNS names. Only the scheduler's HTTP port is
published, on 127.0.0.1; registration is read from its ``/json/identity.json``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from typing import Any

import httpx

from tests.harness.helm import container, init_containers

log = logging.getLogger("benchmarks.scaleout")

POLL_SECONDS = 0.1
# A new worker's first TPOT task: prepare the process (no update check), then import TPOT.
FIRST_IMPORT = "from tpot_backend.runtime import prepare_process; prepare_process(); import tpot"
REGISTER_TIMEOUT_SECONDS = 180
VAR_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _docker(*args: str, timeout_seconds: float = 120, check: bool = True) -> str:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout_seconds, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"docker {' '.join(args[:3])} exited {result.returncode}: {result.stderr}"
        )
    return result.stdout.strip()


def engine_available() -> bool:
    try:
        return bool(_docker("info", "--format", "{{.ServerVersion}}", timeout_seconds=20))
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        return False


def image_facts(image: str, *, compressed: bool) -> dict[str, Any]:
    """Unpacked size; with `compressed` also `docker save | gzip` bytes (what a pull moves)."""
    size, image_id, created = _docker(
        "image", "inspect", image, "--format", "{{.Size}} {{.Id}} {{.Created}}"
    ).split(" ", 2)
    facts: dict[str, Any] = {
        "image": image,
        "id": image_id,
        "created": created,
        "size_bytes": int(size),
        "size_mb": round(int(size) / 1e6),
    }
    if compressed:
        started = time.monotonic()
        out = subprocess.run(
            ["sh", "-c", f"docker save {image} | gzip -c | wc -c"],
            capture_output=True,
            text=True,
            timeout=900,
            check=True,
        )
        facts["gzip_bytes"] = int(out.stdout.strip())
        facts["gzip_mb"] = round(int(out.stdout.strip()) / 1e6)
        facts["gzip_measure_seconds"] = round(time.monotonic() - started, 1)
    return facts


def _quantity_mib(quantity: str) -> int:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(int(quantity) / 2**20)


def _cpus(quantity: str) -> str:
    return str(int(quantity[:-1]) / 1000) if quantity.endswith("m") else quantity


def run_args(
    spec: dict[str, Any], *, name: str, network: str, aliases: tuple[str, ...] = ()
) -> list[str]:
    """`docker run` arguments for a rendered container (security context, limits, env, command)."""
    security = spec.get("securityContext", {})
    limits = spec.get("resources", {}).get("limits", {})
    env: dict[str, str] = {}
    for item in spec.get("env", []):
        if "value" in item:
            env[item["name"]] = VAR_REFERENCE.sub(lambda m: env.get(m[1], m[0]), item["value"])
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[item["name"]] = name
    argv = [
        VAR_REFERENCE.sub(lambda m: env.get(m[1], m[0]), str(token))
        for token in list(spec.get("command", [])) + list(spec.get("args", []))
    ]
    args = ["run", "-d", "--name", name, "--network", network]
    for alias in aliases:
        args += ["--network-alias", alias]
    args += ["--user", f"{security.get('runAsUser', 10001)}:{security.get('runAsGroup', 10001)}"]
    if security.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if "ALL" in security.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", "ALL"]
    if security.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    if "memory" in limits:
        args += ["--memory", f"{_quantity_mib(limits['memory'])}m"]
    if "cpu" in limits:
        args += ["--cpus", _cpus(str(limits["cpu"]))]
    # emptyDir volumes of the pod: a tmpfs with the same mount point.
    args += ["--tmpfs", "/tmp:mode=1777"]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    args += ["--entrypoint", argv[0], spec["image"], *argv[1:]]
    return args


def _identity(url: str) -> dict[str, Any]:
    try:
        response = httpx.get(f"{url}/json/identity.json", timeout=2)
        return dict(response.json()) if response.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return {}


def _worker_names(url: str) -> set[str]:
    return {str(info.get("name")) for info in _identity(url).get("workers", {}).values()}


def _memory_mib(name: str) -> float | None:
    usage = _docker("stats", "--no-stream", "--format", "{{.MemUsage}}", name, check=False)
    match = re.match(r"([\d.]+)\s*([KMG]i?B)", usage)
    if not match:
        return None
    factor = {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024, "KB": 1 / 1024, "MB": 1, "GB": 1024}
    return round(float(match[1]) * factor.get(match[2], 1), 1)


def _first_import_seconds(address: str, worker_name: str) -> float:
    """Seconds a fresh worker takes to import TPOT, as its first task would (via the scheduler)."""
    from distributed import Client

    with Client(address, timeout=30, set_as_default=False) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        target = [a for a, info in workers.items() if str(info.get("name")) == worker_name]
        started = time.monotonic()
        client.run(exec, FIRST_IMPORT, workers=target)
        return round(time.monotonic() - started, 2)


def worker_registration(manifests: list[dict[str, Any]], *, repeats: int) -> dict[str, Any]:
    """Scheduler container up, then `repeats` worker containers, each timed to registration."""
    prefix = f"tpot-bench-{os.getpid()}"
    network = f"{prefix}-net"
    scheduler_spec = container(manifests, "scheduler")
    worker_spec = container(manifests, "worker")
    wait_spec = init_containers(manifests, "worker")[0]
    address = worker_spec["args"][0]
    host = re.match(r"tcp://([^:]+):", address)
    if host is None:
        raise ValueError(f"worker argument {address!r} is not a tcp:// scheduler address")
    aliases = (host[1], host[1].split(".")[0])
    created: list[str] = []
    _docker("network", "create", network)
    try:
        scheduler = f"{prefix}-scheduler"
        args = run_args(scheduler_spec, name=scheduler, network=network, aliases=aliases)
        image_index = args.index(scheduler_spec["image"])
        publish = ["--publish", "127.0.0.1::8787", "--publish", "127.0.0.1::8786"]
        args[image_index:image_index] = publish
        started = time.monotonic()
        _docker(*args)
        created.append(scheduler)
        port = _docker("port", scheduler, "8787/tcp").splitlines()[0].rsplit(":", 1)[1]
        url = f"http://127.0.0.1:{port}"
        comm_port = _docker("port", scheduler, "8786/tcp").splitlines()[0].rsplit(":", 1)[1]
        while not _identity(url):
            if time.monotonic() - started > REGISTER_TIMEOUT_SECONDS:
                raise TimeoutError(f"scheduler container did not answer on {url}")
            time.sleep(POLL_SECONDS)
        scheduler_ready = time.monotonic() - started

        runs = []
        for index in range(repeats):
            wait_name = f"{prefix}-wait-{index}"
            wait_args = run_args(wait_spec, name=wait_name, network=network)
            wait_args[wait_args.index("-d")] = "--rm"
            started = time.monotonic()
            _docker(*wait_args, timeout_seconds=REGISTER_TIMEOUT_SECONDS)
            wait_seconds = time.monotonic() - started

            name = f"{prefix}-worker-{index}"
            started = time.monotonic()
            _docker(*run_args(worker_spec, name=name, network=network))
            created.append(name)
            run_returned = time.monotonic() - started
            while name not in _worker_names(url):
                if time.monotonic() - started > REGISTER_TIMEOUT_SECONDS:
                    logs = _docker("logs", "--tail", "20", name, check=False)
                    raise TimeoutError(f"{name} did not register: {logs}")
                time.sleep(POLL_SECONDS)
            registered = time.monotonic() - started
            time.sleep(2)  # let the worker settle before reading its idle memory
            idle_mib = _memory_mib(name)
            import_seconds = _first_import_seconds(f"tcp://127.0.0.1:{comm_port}", name)
            runs.append(
                {
                    "init_wait_for_scheduler_seconds": round(wait_seconds, 2),
                    "docker_run_returned_seconds": round(run_returned, 2),
                    "registered_seconds": round(registered, 2),
                    "idle_container_memory_mib": idle_mib,
                    "first_tpot_import_seconds": import_seconds,
                    "container_memory_after_import_mib": _memory_mib(name),
                }
            )
            log.info("event=worker_registered name=%s seconds=%.2f", name, registered)
            _docker("rm", "-f", name)
            created.remove(name)
            deadline = time.monotonic() + 60
            while name in _worker_names(url) and time.monotonic() < deadline:
                time.sleep(POLL_SECONDS)
    finally:
        for name in created:
            _docker("rm", "-f", name, check=False)
        _docker("network", "rm", network, check=False)

    registered = sorted(run["registered_seconds"] for run in runs)
    return {
        "scheduler_container_ready_seconds": round(scheduler_ready, 2),
        "worker_command": json.dumps(worker_spec["command"] + worker_spec["args"]),
        "runs": runs,
        "registered_seconds_median": registered[len(registered) // 2],
        "registered_seconds_max": registered[-1],
    }
