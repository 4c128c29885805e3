"""Run a rendered chart's scheduler, workers and backend as local processes.

The commands, arguments and environment come from the Deployments that `helm template` rendered;
only what a single host cannot provide is translated, and each translation is explicit:

* Service host names (short and fully qualified) become 127.0.0.1.
* Container ports become free loopback ports, one set per pod, so two workers can share the host.
* Volume mount paths become folders under a work directory (emptyDir per pod, claims by name).
* Downward-API fields become the values a pod would see (pod name, namespace, 127.0.0.1 as pod IP).
* Listen addresses 0.0.0.0 become 127.0.0.1.

Init containers run first, in order, as the kubelet would run them. Readiness is decided by the
rendered readiness probes, so a probe on a path that does not exist stops the start-up.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger("tests.localstack")

COMPONENT_LABEL = "app.kubernetes.io/component"
START_ORDER = ("scheduler", "worker", "backend")
VAR_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalProcess:
    """One container of one pod, translated to a local command."""

    pod: str
    container: str
    component: str
    argv: list[str]
    env: dict[str, str]
    ports: dict[str, int]
    probes: dict[str, dict[str, Any]]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def probe_url(self, kind: str) -> str | None:
        probe = self.probes.get(kind)
        if not probe or "httpGet" not in probe:
            return None
        get = probe["httpGet"]
        port = get["port"]
        port = self.ports[port] if isinstance(port, str) else self.ports[str(port)]
        return f"http://127.0.0.1:{port}{get.get('path', '/')}"

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class _Pod:
    name: str
    component: str
    spec: dict[str, Any]
    volume_dirs: dict[str, Path] = field(default_factory=dict)
    port_map: dict[int, int] = field(default_factory=dict)


class LocalStack:
    """Starts every Deployment of a rendered chart as local processes, in dependency order.

    Example::

        with LocalStack(render(values_files=[dev]), workdir=tmp_path) as stack:
            stack.start()
            httpx.get(stack.url("backend", "http") + "/readyz")
    """

    def __init__(
        self,
        manifests: list[dict[str, Any]],
        *,
        workdir: Path,
        namespace: str = "default",
        ready_timeout_seconds: float = 180.0,
    ) -> None:
        self.manifests = [m for m in manifests if m]
        self.workdir = workdir
        self.namespace = namespace
        self.ready_timeout_seconds = ready_timeout_seconds
        self.processes: list[LocalProcess] = []
        self._pods: list[_Pod] = []
        self._service_ports: dict[int, int] = {}
        self._claims: dict[str, Path] = {}
        self._hosts = self._service_host_pattern()
        self._bin_dir = Path(sys.executable).parent

    # -- public API ----------------------------------------------------------------------------

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Run init containers, then the main containers, waiting for each component's readiness."""
        self._plan_pods()
        for component in START_ORDER:
            pods = [p for p in self._pods if p.component == component]
            for pod in pods:
                for container in pod.spec.get("initContainers", []):
                    self._run_init(pod, container)
                for container in pod.spec["containers"]:
                    self._launch(pod, container)
            for process in self.processes:
                if process.component == component:
                    self._wait_ready(process)

    def stop(self) -> None:
        """Send SIGTERM to every process group, then SIGKILL what is still there after 10 s."""
        for process in reversed(self.processes):
            if process.popen and process.popen.poll() is None:
                os.killpg(process.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self.processes:
            if process.popen is None:
                continue
            try:
                process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.popen.pid, signal.SIGKILL)
                process.popen.wait()

    def run_pod(self, pod_object: dict[str, Any], *, timeout_seconds: float = 300) -> LocalProcess:
        """Run a rendered Pod (a `helm test` hook) to completion against the running stack."""
        pod = _Pod(
            name=pod_object["metadata"]["name"],
            component=pod_object["metadata"].get("labels", {}).get(COMPONENT_LABEL, "pod"),
            spec=pod_object["spec"],
        )
        self._plan_ports(pod, first_replica=False)
        self._plan_volumes(pod)
        for container in pod.spec.get("initContainers", []):
            self._run_init(pod, container)
        process = self._translate(pod, pod.spec["containers"][0])
        process.popen = self._spawn(process)
        try:
            process.popen.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(process.popen.pid, signal.SIGKILL)
            process.popen.wait()
        return process

    def by_component(self, component: str) -> list[LocalProcess]:
        return [p for p in self.processes if p.component == component]

    def url(self, component: str, port_name: str, index: int = 0) -> str:
        return f"http://127.0.0.1:{self.by_component(component)[index].ports[port_name]}"

    def scheduler_address(self) -> str:
        return f"tcp://127.0.0.1:{self.by_component('scheduler')[0].ports['comm']}"

    def logs(self) -> str:
        return "\n".join(f"--- {p.pod}/{p.container}\n{p.log_tail()}" for p in self.processes)

    # -- planning ------------------------------------------------------------------------------

    def _objects(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m.get("kind") == kind]

    def _service_host_pattern(self) -> re.Pattern[str] | None:
        names = sorted(
            (s["metadata"]["name"] for s in self._objects("Service")), key=len, reverse=True
        )
        if not names:
            return None
        alternatives = "|".join(re.escape(n) for n in names)
        # name, name.ns, name.ns.svc, name.ns.svc.<domain>, not followed by more name characters.
        return re.compile(
            rf"(?<![\w.-])(?:{alternatives})(?:\.[a-z0-9-]+(?:\.svc(?:\.[a-z0-9.-]+)?)?)?(?![\w-])"
        )

    def _plan_pods(self) -> None:
        for service in self._objects("Service"):
            for port in service["spec"].get("ports", []):
                self._service_ports.setdefault(int(port["port"]), free_port())
                target = port.get("targetPort")
                if isinstance(target, int):
                    self._service_ports.setdefault(target, self._service_ports[int(port["port"])])
        deployments = self._objects("Deployment")
        for deployment in deployments:
            labels = deployment["spec"]["template"]["metadata"].get("labels", {})
            component = labels.get(COMPONENT_LABEL, deployment["metadata"]["name"])
            for index in range(int(deployment["spec"].get("replicas", 1))):
                name = f"{deployment['metadata']['name']}-{index}"
                pod = _Pod(
                    name=name, component=component, spec=deployment["spec"]["template"]["spec"]
                )
                self._plan_ports(pod, first_replica=index == 0)
                self._plan_volumes(pod)
                self._pods.append(pod)
        missing = [c for c in START_ORDER if not any(p.component == c for p in self._pods)]
        if missing:
            raise ValueError(f"rendered manifests have no Deployment for component(s): {missing}")

    def _plan_ports(self, pod: _Pod, *, first_replica: bool) -> None:
        # The first replica keeps the Service's loopback port so Service addresses reach it; further
        # replicas get their own ports (workers are reached through the scheduler, not a Service).
        for container in pod.spec["containers"] + pod.spec.get("initContainers", []):
            for port in container.get("ports", []):
                number = int(port["containerPort"])
                if first_replica and number in self._service_ports:
                    pod.port_map[number] = self._service_ports[number]
                else:
                    pod.port_map.setdefault(number, free_port())
        for number, local in self._service_ports.items():
            pod.port_map.setdefault(number, local)

    def _plan_volumes(self, pod: _Pod) -> None:
        for volume in pod.spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                path = self._claims.setdefault(claim, self.workdir / "claims" / claim)
            else:
                path = self.workdir / "pods" / pod.name / volume["name"]
            path.mkdir(parents=True, exist_ok=True)
            pod.volume_dirs[volume["name"]] = path

    # -- translation ---------------------------------------------------------------------------

    def _translate(self, pod: _Pod, container: dict[str, Any]) -> LocalProcess:
        mounts = sorted(
            (
                (
                    m["mountPath"].rstrip("/") or "/",
                    pod.volume_dirs[m["name"]] / m.get("subPath", ""),
                )
                for m in container.get("volumeMounts", [])
            ),
            key=lambda item: len(item[0]),
            reverse=True,
        )

        def to_loopback(match: re.Match[str]) -> str:
            # A Service name is an address only with a port after it or as a cluster DNS name; the
            # same word alone may be a command (`tpot-backend`).
            address = match[0]
            followed_by_port = match.string[match.end() : match.end() + 1] == ":"
            return "127.0.0.1" if followed_by_port or ".svc" in address else address

        def translate(text: str) -> str:
            if self._hosts is not None:
                text = self._hosts.sub(to_loopback, text)
            # Listen on loopback only: nothing here should be reachable from other hosts.
            text = "127.0.0.1" if text == "0.0.0.0" else text
            text = re.sub(
                r"(?<=:)(\d{2,5})\b", lambda m: str(pod.port_map.get(int(m[1]), m[1])), text
            )
            if mounts:
                # One pass, longest mount first: a translated path is never translated again.
                alternatives = "|".join(re.escape(path) for path, _ in mounts)
                local_of = dict(mounts)
                text = re.sub(
                    rf"(?<![\w/])({alternatives})(?=/|$|\s|:)", lambda m: str(local_of[m[1]]), text
                )
            return text

        env: dict[str, str] = {}
        for item in container.get("env", []):
            value = item["value"] if "value" in item else self._value_from(pod, item["valueFrom"])
            value = VAR_REFERENCE.sub(lambda m: env.get(m[1], m[0]), str(value))
            if item["name"].endswith("PORT") and value.isdigit():
                value = str(pod.port_map.get(int(value), value))
            env[item["name"]] = translate(value)
        for source in container.get("envFrom", []):
            env.update({k: translate(v) for k, v in self._env_from(source).items()})

        argv: list[str] = []
        for token in list(container.get("command", [])) + list(container.get("args", [])):
            token = VAR_REFERENCE.sub(lambda m: env.get(m[1], m[0]), str(token))
            if argv and argv[-1].endswith("-port") and token.isdigit():
                token = str(pod.port_map.get(int(token), token))
            argv.append(translate(token))
        if not argv:
            raise ValueError(f"{pod.name}/{container['name']}: rendered container has no command")
        argv[0] = self._executable(argv[0])

        ports = {
            **{str(k): v for k, v in pod.port_map.items()},
            **{
                p["name"]: pod.port_map[int(p["containerPort"])]
                for p in container.get("ports", [])
                if "name" in p
            },
        }
        probes = {
            kind: container[f"{kind}Probe"]
            for kind in ("readiness", "liveness", "startup")
            if f"{kind}Probe" in container
        }
        log_path = self.workdir / "logs" / f"{pod.name}-{container['name']}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        return LocalProcess(
            pod=pod.name,
            container=container["name"],
            component=pod.component,
            argv=argv,
            env=env,
            ports=ports,
            probes=probes,
            log_path=log_path,
        )

    def _value_from(self, pod: _Pod, source: dict[str, Any]) -> str:
        if "fieldRef" in source:
            field_path = source["fieldRef"]["fieldPath"]
            return {
                "metadata.name": pod.name,
                "metadata.namespace": self.namespace,
                "status.podIP": "127.0.0.1",
                "status.hostIP": "127.0.0.1",
                "spec.nodeName": socket.gethostname(),
            }[field_path]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            return self._lookup(
                "Secret", ref["name"], ref["key"], optional=ref.get("optional", False)
            )
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            return self._lookup(
                "ConfigMap", ref["name"], ref["key"], optional=ref.get("optional", False)
            )
        if "resourceFieldRef" in source:
            return ""
        raise ValueError(f"unsupported valueFrom: {source}")

    def _env_from(self, source: dict[str, Any]) -> dict[str, str]:
        kind, ref = (
            ("Secret", source["secretRef"])
            if "secretRef" in source
            else ("ConfigMap", source["configMapRef"])
        )
        obj = self._find(kind, ref["name"])
        return self._data(obj) if obj else {}

    def _find(self, kind: str, name: str) -> dict[str, Any] | None:
        return next((o for o in self._objects(kind) if o["metadata"]["name"] == name), None)

    @staticmethod
    def _data(obj: dict[str, Any]) -> dict[str, str]:
        data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        if obj.get("kind") == "ConfigMap":
            data = dict(obj.get("data") or {})
        data.update(obj.get("stringData") or {})
        return data

    def _lookup(self, kind: str, name: str, key: str, *, optional: bool) -> str:
        obj = self._find(kind, name)
        if obj is None or key not in self._data(obj):
            if optional:
                return ""
            raise ValueError(f"{kind} {name!r} with key {key!r} is not in the rendered manifests")
        return self._data(obj)[key]

    def _executable(self, name: str) -> str:
        local = self._bin_dir / name
        if local.exists():
            return str(local)
        found = shutil.which(name)
        if found is None:
            raise FileNotFoundError(f"rendered command {name!r} is not installed here")
        return found

    # -- running -------------------------------------------------------------------------------

    def _spawn(self, process: LocalProcess) -> subprocess.Popen[bytes]:
        env = {**os.environ, **process.env}
        env["PATH"] = f"{self._bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        log.info(
            "event=process_start pod=%s container=%s argv=%s",
            process.pod,
            process.container,
            " ".join(process.argv),
        )
        handle = process.log_path.open("ab")
        try:
            return subprocess.Popen(
                process.argv,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            handle.close()

    def _run_init(self, pod: _Pod, container: dict[str, Any]) -> None:
        process = self._translate(pod, container)
        popen = self._spawn(process)
        try:
            code = popen.wait(timeout=self.ready_timeout_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            raise RuntimeError(
                f"init container {pod.name}/{process.container} did not finish"
            ) from None
        if code != 0:
            raise RuntimeError(
                f"init container {pod.name}/{process.container} exited {code}:\n"
                f"{process.log_tail()}"
            )

    def _launch(self, pod: _Pod, container: dict[str, Any]) -> None:
        process = self._translate(pod, container)
        process.popen = self._spawn(process)
        self.processes.append(process)

    def _wait_ready(self, process: LocalProcess) -> None:
        url = process.probe_url("readiness")
        if url is None:
            raise AssertionError(f"{process.pod}/{process.container} has no HTTP readiness probe")
        deadline = time.monotonic() + self.ready_timeout_seconds
        last = "no answer"
        while time.monotonic() < deadline:
            if process.popen is not None and process.popen.poll() is not None:
                raise RuntimeError(
                    f"{process.pod}/{process.container} exited {process.popen.returncode} before "
                    f"it was ready:\n{process.log_tail()}"
                )
            try:
                response = httpx.get(url, timeout=2)
                if response.status_code == 200:
                    log.info("event=process_ready pod=%s url=%s", process.pod, url)
                    return
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as error:
                last = type(error).__name__
            time.sleep(0.5)
        raise TimeoutError(
            f"{process.pod}/{process.container}: {url} not ready ({last}):\n{process.log_tail()}"
        )
