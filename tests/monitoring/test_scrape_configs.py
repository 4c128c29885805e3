"""The documented scrape configurations: promtool accepts them, and the Kubernetes one turns the
chart's rendered pods into exactly the scheduler, worker and backend metrics targets, with the
`namespace` and `pod` labels the rules select on."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml

from tests.harness.helm import objects, render
from tests.monitoring import artifacts

pytestmark = pytest.mark.monitoring

STATIC_CONFIG = artifacts.DOCS_DIR / "prometheus-static.yaml"
KUBERNETES_CONFIG = artifacts.DOCS_DIR / "prometheus-kubernetes.yaml"
# Debian builds Prometheus without Kubernetes service discovery.
NO_KUBERNETES_SD = "field kubernetes_sd_configs not found"


def _promtool_check_config(promtool_bin: str, path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool_bin, "check", "config", path], capture_output=True, text=True, timeout=60
    )


def _relabel(labels: dict[str, str], rules: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus relabelling (keep, drop, replace) of one target; None when it is dropped."""
    labels = dict(labels)
    for rule in rules:
        value = rule.get("separator", ";").join(
            labels.get(s, "") for s in rule.get("source_labels", [])
        )
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        action = rule.get("action", "replace")
        if action == "keep" and match is None or action == "drop" and match is not None:
            return None
        if action == "replace" and match is not None:
            replacement = re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", rule.get("replacement", "$1"))
            labels[rule["target_label"]] = match.expand(replacement)
    return {k: v for k, v in labels.items() if not k.startswith("__")}


def _discovered_pod_targets(
    manifests: list[dict[str, Any]], namespace: str
) -> list[dict[str, str]]:
    """What Kubernetes pod discovery offers for one running pod of each rendered Deployment."""
    targets = []
    for deployment in objects(manifests, "Deployment"):
        template = deployment["spec"]["template"]
        pod = f"{deployment['metadata']['name']}-6d5f7c8b9-x2x4z"
        meta = {
            "__meta_kubernetes_namespace": namespace,
            "__meta_kubernetes_pod_name": pod,
            "__meta_kubernetes_pod_phase": "Running",
        }
        for key, value in template["metadata"]["labels"].items():
            meta["__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)] = value
        for container in template["spec"]["containers"]:
            for port in container.get("ports", []):
                targets.append(
                    {
                        **meta,
                        "__address__": f"10.42.0.7:{port['containerPort']}",
                        "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                    }
                )
    return targets


def test_static_configuration_passes_promtool_with_the_plain_rules(promtool_bin: str) -> None:
    result = _promtool_check_config(promtool_bin, str(STATIC_CONFIG))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "tpot-rules.yaml" in result.stdout


def test_kubernetes_configuration_passes_promtool(promtool_bin: str) -> None:
    result = _promtool_check_config(promtool_bin, str(KUBERNETES_CONFIG))

    if result.returncode != 0 and NO_KUBERNETES_SD in result.stdout + result.stderr:
        pytest.skip("needs a promtool built with Kubernetes discovery (Debian's package has none)")
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_configuration_keeps_one_metrics_target_per_chart_pod_with_namespace_and_pod(
    helm_bin: str,
) -> None:
    (job,) = yaml.safe_load(KUBERNETES_CONFIG.read_text())["scrape_configs"]
    manifests = render(release="tpot", namespace="tpot")
    discovered = _discovered_pod_targets(manifests, "tpot")
    foreign = {
        "__address__": "10.42.0.9:8080",
        "__meta_kubernetes_namespace": "tpot",
        "__meta_kubernetes_pod_name": "other-app-7d9f-abcde",
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": "other",
        "__meta_kubernetes_pod_container_port_name": "http",
    }
    pending = {**discovered[0], "__meta_kubernetes_pod_phase": "Pending"}

    kept = [
        labels
        for target in [*discovered, foreign, pending]
        if (labels := _relabel(target, job["relabel_configs"])) is not None
    ]

    assert sorted((t["component"], t["job"]) for t in kept) == [
        ("backend", "tpot-backend"),
        ("scheduler", "tpot-scheduler"),
        ("worker", "tpot-worker"),
    ]
    for target in kept:
        assert target["namespace"] == "tpot"
        assert re.fullmatch(rf"tpot-{target['component']}-.+", target["pod"]), target
