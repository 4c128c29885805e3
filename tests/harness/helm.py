"""The real `helm` binary, driven from Python: render the chart, lint it, find rendered objects.

Every call runs helm itself (no template engine of our own). Renders are cached per process on the
exact arguments and the chart's file contents, so a test session renders each values set once.

Example::

    manifests = render(values_files=[CHART_DIR / "values-prod.yaml"], api_versions=MONITORING_APIS)
    worker = container(manifests, "worker")
    assert "--nthreads" in worker["args"]
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "tpot"
TOOLS_BIN = REPO_ROOT / ".tools" / "bin"
DEFAULT_RELEASE = "tpot"
DEFAULT_NAMESPACE = "tpot"
HELM_TIMEOUT_SECONDS = 120

# The CRD APIs the monitoring templates look for; pass them to render as if prometheus-operator ran.
MONITORING_APIS = (
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
)

# The environments a user installs: values.yaml alone, then each shipped overlay on top of it.
ENVIRONMENTS: dict[str, tuple[Path, ...]] = {
    "default": (),
    "dev": (CHART_DIR / "values-dev.yaml",),
    "staging": (CHART_DIR / "values-staging.yaml",),
    "prod": (CHART_DIR / "values-prod.yaml",),
}

# Kinds whose objects carry a pod template at spec.template.spec (or are pods themselves).
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet")


class HelmError(RuntimeError):
    """helm exited non-zero; `stderr` holds its message (schema errors name the key)."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"helm {' '.join(args)} exited {returncode}:\n{stderr.strip()}")
        self.args_used = list(args)
        self.returncode = returncode
        self.stderr = stderr


def helm_binary() -> str:
    """Path of helm: the bootstrap's pinned copy first, then PATH."""
    pinned = TOOLS_BIN / "helm"
    if pinned.exists():
        return str(pinned)
    found = shutil.which("helm")
    if found is None:
        raise FileNotFoundError("helm is not installed (run `make bootstrap`)")
    return found


def run_helm(
    *args: str,
    timeout_seconds: float = HELM_TIMEOUT_SECONDS,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run helm with `args` (and extra environment `env`); return stdout, raise `HelmError`."""
    started = time.monotonic()
    result = subprocess.run(
        [helm_binary(), *args],
        capture_output=True,
        text=True,
        timeout=timeout_seconds,
        env={**os.environ, **env} if env else None,
    )
    logger.debug(
        "event=helm_ran command=%s returncode=%s elapsed_seconds=%.2f",
        args[0],
        result.returncode,
        time.monotonic() - started,
    )
    if result.returncode != 0:
        raise HelmError(args, result.returncode, result.stderr)
    return result.stdout


def _chart_digest(chart: Path) -> str:
    """Hash of every file in the chart, so a cached render never outlives an edit."""
    digest = hashlib.sha256()
    for path in sorted(p for p in chart.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(chart)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _file_digest(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path).encode())
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def _set_args(set_values: Mapping[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in set_values.items():
        if isinstance(value, str):
            args += ["--set-string", f"{key}={value}"]
        else:
            args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args


def template_args(
    values_files: Sequence[Path] = (),
    set_values: Mapping[str, Any] | None = None,
    api_versions: Sequence[str] = (),
    kube_version: str | None = None,
    *,
    release: str = DEFAULT_RELEASE,
    namespace: str = DEFAULT_NAMESPACE,
    chart: Path | str = CHART_DIR,
) -> list[str]:
    """The `helm template` argument list `render` uses (handy in failure messages)."""
    args = ["template", release, str(chart), "--namespace", namespace]
    for path in values_files:
        args += ["--values", str(path)]
    args += _set_args(set_values or {})
    for api in api_versions:
        args += ["--api-versions", api]
    if kube_version:
        args += ["--kube-version", kube_version]
    return args


@functools.lru_cache(maxsize=256)
def _render_cached(args: tuple[str, ...], _chart_digest: str, _values_digest: str) -> str:
    return run_helm(*args)


def render_text(
    values_files: Sequence[Path] = (),
    set_values: Mapping[str, Any] | None = None,
    api_versions: Sequence[str] = (),
    kube_version: str | None = None,
    *,
    release: str = DEFAULT_RELEASE,
    namespace: str = DEFAULT_NAMESPACE,
    chart: Path | str = CHART_DIR,
) -> str:
    """`helm template` output as text (cached); raises `HelmError` with helm's stderr."""
    args = template_args(
        values_files,
        set_values,
        api_versions,
        kube_version,
        release=release,
        namespace=namespace,
        chart=chart,
    )
    chart_path = Path(chart)
    chart_key = _chart_digest(chart_path) if chart_path.is_dir() else str(chart_path)
    return _render_cached(tuple(args), chart_key, _file_digest([Path(p) for p in values_files]))


def render(
    values_files: Sequence[Path] = (),
    set_values: Mapping[str, Any] | None = None,
    api_versions: Sequence[str] = (),
    kube_version: str | None = None,
    *,
    release: str = DEFAULT_RELEASE,
    namespace: str = DEFAULT_NAMESPACE,
    chart: Path | str = CHART_DIR,
) -> list[dict[str, Any]]:
    """Render the chart with the real helm and return its objects (a fresh copy on every call).

    `set_values` maps dotted keys to values (`{"worker.replicas": 3}`); strings go through
    `--set-string`, everything else through `--set-json`. Raises `HelmError` on any helm failure.
    """
    text = render_text(
        values_files,
        set_values,
        api_versions,
        kube_version,
        release=release,
        namespace=namespace,
        chart=chart,
    )
    return copy.deepcopy(_parse(text))


@functools.lru_cache(maxsize=256)
def _parse(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render_environment(name: str, **kwargs: Any) -> list[dict[str, Any]]:
    """Render one of `ENVIRONMENTS` with the monitoring CRD APIs present."""
    kwargs.setdefault("api_versions", MONITORING_APIS)
    return render(ENVIRONMENTS[name], **kwargs)


def lint(values_files: Sequence[Path] = (), *, strict: bool = True, chart: Path = CHART_DIR) -> str:
    """`helm lint [--strict]`; returns its output, raises `HelmError` when the chart fails."""
    args = ["lint", str(chart)]
    if strict:
        args.append("--strict")
    for path in values_files:
        args += ["--values", str(path)]
    return run_helm(*args)


# -- finding things in rendered output ------------------------------------------------------------


def objects(manifests: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m.get("kind") == kind]


def component_of(obj: Mapping[str, Any]) -> str | None:
    return (obj.get("metadata", {}).get("labels") or {}).get("app.kubernetes.io/component")


def deployment(manifests: Sequence[dict[str, Any]], component: str) -> dict[str, Any]:
    """The one Deployment whose component label is `component`."""
    found = [d for d in objects(manifests, "Deployment") if component_of(d) == component]
    if len(found) != 1:
        raise LookupError(
            f"expected one Deployment for component {component!r}, found {len(found)}"
        )
    return found[0]


def container(
    manifests: Sequence[dict[str, Any]], component: str, name: str | None = None
) -> dict[str, Any]:
    """A container of a component's Deployment: the one named `name`, else the first (main) one."""
    spec = deployment(manifests, component)["spec"]["template"]["spec"]
    for item in spec["containers"]:
        if name is None or item["name"] == name:
            return item
    raise LookupError(f"{component} has no container named {name!r}")


def init_containers(manifests: Sequence[dict[str, Any]], component: str) -> list[dict[str, Any]]:
    return list(
        deployment(manifests, component)["spec"]["template"]["spec"].get("initContainers", [])
    )


def env_of(item: Mapping[str, Any]) -> dict[str, Any]:
    """A container's environment as name -> value (or the valueFrom mapping)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in item.get("env", [])}


def pods(manifests: Sequence[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Every pod the manifests would create: (owning object, pod template or the pod itself)."""
    for obj in manifests:
        if obj.get("kind") == "Pod":
            yield obj, obj
        elif obj.get("kind") in WORKLOAD_KINDS:
            yield obj, obj["spec"]["template"]
        elif obj.get("kind") == "CronJob":
            yield obj, obj["spec"]["jobTemplate"]["spec"]["template"]


def all_containers(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def describe(obj: Mapping[str, Any]) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
