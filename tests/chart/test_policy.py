"""Policy tier: security and reliability rules over every pod of every values set, checkov over the
chart, and invalid values files refused with a message that names the key."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import (
    CHECKOV_SCANS,
    INVALID_DIR,
    VALUE_SETS,
    CheckovScan,
    checkov_skips,
    load_values,
    quantity_mib,
)
from tests.harness.helm import (
    CHART_DIR,
    HelmError,
    all_containers,
    component_of,
    container,
    deployment,
    describe,
    env_of,
    objects,
    pods,
    render,
)

pytestmark = pytest.mark.policy

STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)
# Pod templates carry all but helm.sh/chart (a new chart version alone must not restart pods).
POD_LABELS = STANDARD_LABELS[:-1]
SELECTOR_LABELS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
}
# Volume types the restricted Pod Security Standard allows.
RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip
PINNED_IMAGE = re.compile(
    r"^[^\s@]+:(?!latest(@|$))[A-Za-z0-9_][A-Za-z0-9_.-]*(@sha256:[a-f0-9]{64})?$"
)


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = (
            expression["key"],
            expression["operator"],
            expression.get("values", []),
        )
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def _pod_labels(pod: dict[str, Any]) -> dict[str, str]:
    return dict(pod["metadata"].get("labels") or {})


# -- restricted Pod Security Standard -----


def test_every_pod_meets_the_restricted_pod_security_standard(manifests: list[dict]) -> None:
    problems: list[str] = []

    for owner, pod in pods(manifests):
        spec, where = pod["spec"], describe(owner)
        pod_context = spec.get("securityContext") or {}
        if pod_context.get("runAsNonRoot") is not True:
            problems.append(f"{where}: pod runAsNonRoot is not true")
        if pod_context.get("runAsUser") == 0:
            problems.append(f"{where}: pod runs as UID 0")
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                problems.append(f"{where}: {flag}")
        for volume in spec.get("volumes", []):
            kinds = set(volume) - {"name"}
            if not kinds <= RESTRICTED_VOLUME_TYPES:
                problems.append(f"{where}: volume {volume['name']} of type {kinds}")
        pod_seccomp = (pod_context.get("seccompProfile") or {}).get("type")
        for item in all_containers(pod):
            context = item.get("securityContext") or {}
            name = f"{where}/{item['name']}"
            seccomp = (context.get("seccompProfile") or {}).get("type", pod_seccomp)
            if seccomp != "RuntimeDefault":
                problems.append(f"{name}: seccomp profile {seccomp}")
            if context.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name}: allowPrivilegeEscalation is not false")
            if context.get("privileged"):
                problems.append(f"{name}: privileged")
            capabilities = context.get("capabilities") or {}
            if "ALL" not in (capabilities.get("drop") or []) or capabilities.get("add"):
                problems.append(f"{name}: capabilities {capabilities}")
            if context.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{name}: root filesystem is writable")
            if context.get("runAsNonRoot") is False or context.get("runAsUser") == 0:
                problems.append(f"{name}: may run as root")
            if item.get("ports") and any(p.get("hostPort") for p in item["ports"]):
                problems.append(f"{name}: hostPort")

    assert not problems, "\n".join(problems)


def test_writable_paths_are_emptydir_or_claims_and_tmp_is_one_of_them(
    manifests: list[dict],
) -> None:
    for owner, pod in pods(manifests):
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        for item in pod["spec"]["containers"]:
            mounts = {m["mountPath"]: volumes[m["name"]] for m in item.get("volumeMounts", [])}

            assert "emptyDir" in mounts.get("/tmp", {}), f"{describe(owner)}/{item['name']}: /tmp"
            if component_of(pod) == "worker":
                assert "emptyDir" in mounts["/tmp/dask"], "Dask's local directory"
                assert mounts["/tmp/dask"]["emptyDir"].get("sizeLimit")
            assert {"name": "HOME", "value": "/tmp"} in item["env"]


# -- resources, probes, images, labels -----


def test_every_container_has_cpu_and_memory_requests_and_limits(manifests: list[dict]) -> None:
    missing = [
        f"{describe(owner)}/{item['name']} {kind}.{resource}"
        for owner, pod in pods(manifests)
        for item in all_containers(pod)
        for kind in ("requests", "limits")
        for resource in ("cpu", "memory")
        if not (item.get("resources") or {}).get(kind, {}).get(resource)
    ]

    assert not missing, "\n".join(missing)


def _mounted_emptydir_mib(pod: dict[str, Any], item: dict[str, Any]) -> float:
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    mounted = {m["name"] for m in item.get("volumeMounts", [])}
    return sum(
        quantity_mib(volumes[name]["emptyDir"]["sizeLimit"])
        for name in mounted
        if "emptyDir" in volumes[name]
    )


def test_every_container_declares_ephemeral_storage_covering_the_emptydirs_it_mounts(
    manifests: list[dict],
) -> None:
    problems: list[str] = []

    for owner, pod in pods(manifests):
        for volume in pod["spec"].get("volumes", []):
            if "emptyDir" in volume and not volume["emptyDir"].get("sizeLimit"):
                problems.append(f"{describe(owner)}: emptyDir {volume['name']} has no sizeLimit")
        for item in all_containers(pod):
            name = f"{describe(owner)}/{item['name']}"
            resources = item.get("resources") or {}
            request = resources.get("requests", {}).get("ephemeral-storage")
            limit = resources.get("limits", {}).get("ephemeral-storage")
            if request is None or limit is None:
                problems.append(f"{name}: no ephemeral-storage request and limit")
                continue
            mounted = _mounted_emptydir_mib(pod, item)
            if quantity_mib(limit) < mounted:
                problems.append(
                    f"{name}: ephemeral-storage limit {limit} < {mounted:.0f}Mi mounted"
                )
            if quantity_mib(request) > quantity_mib(limit):
                problems.append(f"{name}: ephemeral-storage request {request} above limit {limit}")

    assert not problems, "\n".join(problems)


def test_pod_ephemeral_storage_limit_covers_every_emptydir_of_the_pod(
    manifests: list[dict],
) -> None:
    # The kubelet evicts a pod whose emptyDirs, logs and writable layers together pass the sum of
    # its containers' limits; the init containers have finished by the time the main ones write.
    for owner, pod in pods(manifests):
        volumes = pod["spec"].get("volumes", [])
        every_emptydir = sum(
            quantity_mib(v["emptyDir"]["sizeLimit"]) for v in volumes if "emptyDir" in v
        )
        pod_limit = sum(
            quantity_mib(c["resources"]["limits"]["ephemeral-storage"])
            for c in pod["spec"]["containers"]
        )

        assert pod_limit >= every_emptydir, f"{describe(owner)}: {pod_limit} < {every_emptydir}"


def test_every_long_running_container_has_readiness_liveness_and_startup_probes(
    manifests: list[dict],
) -> None:
    for workload in objects(manifests, "Deployment"):
        for item in workload["spec"]["template"]["spec"]["containers"]:
            for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                assert "httpGet" in item.get(kind, {}), (
                    f"{describe(workload)}/{item['name']}: {kind}"
                )


def test_probes_target_a_declared_port_whose_http_server_no_flag_turned_off(
    manifests: list[dict],
) -> None:
    for workload in objects(manifests, "Deployment"):
        for item in workload["spec"]["template"]["spec"]["containers"]:
            named = {p["name"]: p["containerPort"] for p in item["ports"]}
            args = item.get("args", [])
            for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                port = item[kind]["httpGet"]["port"]
                number = named[port] if isinstance(port, str) else port

                assert number in named.values(), f"{describe(workload)} {kind} port {port}"
                assert "--no-dashboard" not in args
                if "--dashboard-address" in args:
                    served = int(args[args.index("--dashboard-address") + 1].rsplit(":", 1)[1])
                    assert number == served, f"{describe(workload)}: {kind} probes {number}"


def test_liveness_is_more_patient_than_readiness(manifests: list[dict]) -> None:
    for workload in objects(manifests, "Deployment"):
        for item in workload["spec"]["template"]["spec"]["containers"]:
            live, ready = item["livenessProbe"], item["readinessProbe"]
            live_budget = live["periodSeconds"] * live["failureThreshold"]
            ready_budget = ready["periodSeconds"] * ready["failureThreshold"]

            assert live_budget >= 2 * ready_budget, describe(workload)
            assert live_budget >= 60, f"{describe(workload)}: a busy process gets under a minute"


def test_every_image_is_pinned_and_one_image_serves_every_container(manifests: list[dict]) -> None:
    images = {item["image"] for _, pod in pods(manifests) for item in all_containers(pod)}

    assert len(images) == 1, images
    assert all(PINNED_IMAGE.match(image) for image in images), images


def test_every_object_and_pod_carries_the_standard_labels(manifests: list[dict]) -> None:
    unlabelled = [
        f"{describe(obj)} lacks {label}"
        for obj in manifests
        for label in STANDARD_LABELS
        if label not in (obj.get("metadata", {}).get("labels") or {})
    ]
    for owner, pod in pods(manifests):
        labels = pod["metadata"].get("labels") or {}
        unlabelled += [f"pods of {describe(owner)} lack {x}" for x in POD_LABELS if x not in labels]

    assert not unlabelled, "\n".join(unlabelled)


def test_pod_templates_leave_out_the_chart_version_so_chart_releases_restart_nothing(
    manifests: list[dict],
) -> None:
    for workload in objects(manifests, "Deployment"):
        assert "helm.sh/chart" not in workload["spec"]["template"]["metadata"]["labels"]


def test_selectors_use_only_name_instance_and_component(manifests: list[dict]) -> None:
    for obj in manifests:
        selector = None
        if obj["kind"] in ("Deployment", "PodDisruptionBudget"):
            selector = obj["spec"]["selector"]["matchLabels"]
        elif obj["kind"] == "Service":
            selector = obj["spec"]["selector"]
        if selector is not None:
            assert set(selector) == SELECTOR_LABELS, describe(obj)


def test_every_service_selects_one_deployment_and_targets_its_named_ports(
    manifests: list[dict],
) -> None:
    for service in objects(manifests, "Service"):
        selected = [
            d
            for d in objects(manifests, "Deployment")
            if _selects(
                {"matchLabels": service["spec"]["selector"]}, _pod_labels(d["spec"]["template"])
            )
        ]

        assert len(selected) == 1, describe(service)
        ports = {
            p["name"]
            for c in selected[0]["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        }
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


# -- network policies -----


def test_a_default_deny_policy_selects_every_pod_of_the_release(manifests: list[dict]) -> None:
    policies = objects(manifests, "NetworkPolicy")
    deny_all = [
        p
        for p in policies
        if set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]

    assert deny_all, "no default-deny NetworkPolicy"
    for owner, pod in pods(manifests):
        labels = _pod_labels(pod)
        assert any(_selects(p["spec"]["podSelector"], labels) for p in deny_all), describe(owner)
        allowing = [
            p for p in policies if p not in deny_all and _selects(p["spec"]["podSelector"], labels)
        ]
        assert len(allowing) == 1, (
            f"{describe(owner)} needs exactly one policy that opens its paths"
        )


def _rules(manifests: list[dict], component: str, direction: str) -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/name": "tpot", "app.kubernetes.io/instance": "tpot",
              "app.kubernetes.io/component": component}  # fmt: skip
    return [
        rule
        for p in objects(manifests, "NetworkPolicy")
        if _selects(p["spec"]["podSelector"], labels)
        for rule in p["spec"].get(direction, [])
    ]


def _peer_components(rule: dict[str, Any], key: str) -> set[str]:
    found: set[str] = set()
    for peer in rule.get(key, []):
        for component in ("scheduler", "worker", "backend", "test"):
            labels = {"app.kubernetes.io/name": "tpot", "app.kubernetes.io/instance": "tpot",
                      "app.kubernetes.io/component": component}  # fmt: skip
            if "namespaceSelector" not in peer and _selects(peer.get("podSelector", {}), labels):
                found.add(component)
    return found


def _ports(rule: dict[str, Any]) -> set[int]:
    return {p["port"] for p in rule.get("ports", [])}


def test_network_paths_match_the_documented_matrix(environment_manifests: list[dict]) -> None:
    ingress = {
        c: [
            (_peer_components(r, "from"), _ports(r))
            for r in _rules(environment_manifests, c, "ingress")
        ]
        for c in ("scheduler", "worker", "backend")
    }

    assert ({"worker", "backend", "test"}, {8786}) in ingress["scheduler"]
    assert ({"scheduler", "worker"}, {8788, 8789}) in ingress["worker"]
    for component, metrics_port in (("scheduler", 8787), ("worker", 8790), ("backend", 8080)):
        monitoring = [
            r
            for r in _rules(environment_manifests, component, "ingress")
            if not _peer_components(r, "from")
        ]
        assert any(
            _ports(r) == {metrics_port}
            and all("namespaceSelector" in p and "podSelector" in p for p in r["from"])
            for r in monitoring
        ), f"{component}: metrics port {metrics_port} must be open to the monitoring selector only"
    every_rule = [r for c in ingress.values() for r in c]
    assert all(ports for _, ports in every_rule), "an ingress rule without ports opens every port"
    assert all(
        r.get("from")
        for c in ("scheduler", "worker", "backend")
        for r in _rules(environment_manifests, c, "ingress")
    ), "an ingress rule without `from` admits every source"


def test_egress_is_dns_and_dask_paths_only(environment_manifests: list[dict]) -> None:
    expected = {
        "scheduler": [({"worker"}, {8788, 8789})],
        "worker": [({"scheduler"}, {8786}), ({"worker"}, {8788})],
        "backend": [({"scheduler"}, {8786})],
        "test": [({"scheduler"}, {8786}), ({"backend"}, {8080})],
    }

    for component, paths in expected.items():
        rules = _rules(environment_manifests, component, "egress")
        dns = [r for r in rules if _ports(r) == {53}]
        others = [(_peer_components(r, "to"), _ports(r)) for r in rules if r not in dns]
        assert len(dns) == 1 and {p["protocol"] for p in dns[0]["ports"]} == {"UDP", "TCP"}
        assert sorted(others, key=str) == sorted(paths, key=str), component


def test_dns_extra_peers_join_the_dns_rule_of_every_policy_the_test_pod_included(
    helm_bin: str,
) -> None:
    node_local_dns = {"ipBlock": {"cidr": "169.254.20.10/32"}}
    rendered = render(set_values={"networkPolicy.dns.extraPeers": [node_local_dns]})

    for component in ("scheduler", "worker", "backend", "test"):
        [dns] = [r for r in _rules(rendered, component, "egress") if _ports(r) == {53}]
        assert node_local_dns in dns["to"], component
        assert any("podSelector" in peer for peer in dns["to"]), "kube-dns stays allowed"
    others = [
        r
        for c in ("scheduler", "worker", "backend", "test")
        for r in _rules(rendered, c, "egress")
        if _ports(r) != {53}
    ]
    assert not any(node_local_dns in r.get("to", []) for r in others), "peers only get port 53"


def test_extra_egress_rules_reach_only_the_component_they_are_for() -> None:
    rendered = render(VALUE_SETS["combo:existing-secrets-and-digest"])

    assert any(_ports(r) == {5432} for r in _rules(rendered, "backend", "egress"))
    assert not any(_ports(r) == {5432} for r in _rules(rendered, "worker", "egress"))


# -- RBAC and tokens -----


def test_no_rbac_wildcards_and_nothing_cluster_scoped_but_the_priority_class(
    manifests: list[dict],
) -> None:
    for obj in manifests:
        assert obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"), describe(obj)
        if obj["kind"] == "Role":
            for rule in obj["rules"]:
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule.get(field, []), f"{describe(obj)} {field}"
        if obj["kind"] != "PriorityClass":
            assert obj["metadata"].get("namespace"), f"{describe(obj)} has no namespace"


def test_no_pod_mounts_a_service_account_token(manifests: list[dict]) -> None:
    accounts = {a["metadata"]["name"]: a for a in objects(manifests, "ServiceAccount")}

    for owner, pod in pods(manifests):
        spec = pod["spec"]
        assert spec.get("automountServiceAccountToken") is False, describe(owner)
        assert spec.get("enableServiceLinks") is False, describe(owner)
        account = accounts.get(spec.get("serviceAccountName", "default"))
        if account is not None:
            assert account.get("automountServiceAccountToken") is False
    for name, account in accounts.items():
        assert account.get("automountServiceAccountToken") is False, name


def test_each_component_runs_under_its_own_service_account(
    environment_manifests: list[dict],
) -> None:
    names = {
        component: deployment(environment_manifests, component)["spec"]["template"]["spec"][
            "serviceAccountName"
        ]
        for component in ("scheduler", "worker", "backend")
    }

    assert len(set(names.values())) == 3
    assert set(names.values()) <= {
        a["metadata"]["name"] for a in objects(environment_manifests, "ServiceAccount")
    }


def test_helm_test_pod_runs_under_its_own_service_account_without_a_token(
    environment_manifests: list[dict],
) -> None:
    [pod] = objects(environment_manifests, "Pod")
    accounts = {a["metadata"]["name"]: a for a in objects(environment_manifests, "ServiceAccount")}
    components = {
        deployment(environment_manifests, c)["spec"]["template"]["spec"]["serviceAccountName"]
        for c in ("scheduler", "worker", "backend")
    }

    name = pod["spec"]["serviceAccountName"]
    assert name in accounts and name not in components
    assert accounts[name]["automountServiceAccountToken"] is False
    assert component_of(accounts[name]) == "test"
    assert pod["spec"]["automountServiceAccountToken"] is False


@pytest.mark.parametrize("component", ["scheduler", "worker", "backend"])
@pytest.mark.parametrize(
    "label", ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"]
)
def test_pod_labels_cannot_replace_the_selector_labels(
    component: str, label: str, helm_bin: str
) -> None:
    with pytest.raises(HelmError) as refused:
        render(set_values={f"{component}.podLabels": {label: "other"}})

    assert f"/{component}/podLabels/{label.replace('/', '~1')}" in refused.value.stderr


def test_pod_labels_outside_the_reserved_prefix_reach_the_pods(helm_bin: str) -> None:
    labels = {"team": "ml", "example.com/cost-centre": "42"}
    rendered = render(
        set_values={f"{c}.podLabels": labels for c in ("scheduler", "worker", "backend")}
    )

    for component in ("scheduler", "worker", "backend"):
        template = deployment(rendered, component)["spec"]["template"]
        assert labels.items() <= _pod_labels(template).items()
        assert component_of(template) == component


# -- reliability -----


def _budget_pods(value: int | str, replicas: int) -> int:
    """A budget count as Kubernetes resolves it: a percentage of replicas, rounded up."""
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(int(value[:-1]) * replicas / 100)
    return int(value)


def test_worker_disruption_budget_always_allows_one_eviction(manifests: list[dict]) -> None:
    worker = deployment(manifests, "worker")
    hpa = objects(manifests, "HorizontalPodAutoscaler")
    replicas = hpa[0]["spec"]["minReplicas"] if hpa else worker["spec"]["replicas"]

    for budget in objects(manifests, "PodDisruptionBudget"):
        if not _selects(budget["spec"]["selector"], _pod_labels(worker["spec"]["template"])):
            continue
        spec = budget["spec"]
        if "minAvailable" in spec:
            assert _budget_pods(spec["minAvailable"], replicas) < replicas
        else:
            assert _budget_pods(spec["maxUnavailable"], replicas) >= 1


def test_production_spreads_workers_and_protects_them_with_budgets() -> None:
    rendered = render(VALUE_SETS["prod"])
    worker = deployment(rendered, "worker")
    spec = worker["spec"]["template"]["spec"]
    budgets = {component_of(b): b for b in objects(rendered, "PodDisruptionBudget")}

    assert {"worker", "scheduler"} <= set(budgets)
    keys = {c["topologyKey"] for c in spec["topologySpreadConstraints"]}
    assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for constraint in spec["topologySpreadConstraints"]:
        assert _selects(constraint["labelSelector"], _pod_labels(worker["spec"]["template"]))
    assert spec["priorityClassName"] == objects(rendered, "PriorityClass")[0]["metadata"]["name"]
    assert worker["spec"]["replicas"] > 4
    assert objects(rendered, "NetworkPolicy")
    assert "TPOT_API_TOKEN" in {e["name"] for e in container(rendered, "backend")["env"]}
    assert objects(rendered, "PersistentVolumeClaim")


def test_worker_memory_request_equals_limit_and_sits_above_dask_memory_limit(
    environment: str, environment_manifests: list[dict]
) -> None:
    worker = container(environment_manifests, "worker")
    values = load_values(*VALUE_SETS[environment])
    limit = worker["resources"]["limits"]["memory"]

    assert worker["resources"]["requests"]["memory"] == limit
    assert int(limit.removesuffix("Mi")) > values["tpot"]["memoryLimitMb"]


# -- invalid values -----


def _expectations(path: Path) -> list[str]:
    return [
        line.split(":", 1)[1].strip()
        for line in path.read_text().splitlines()
        if line.startswith("# expect:")
    ]


@pytest.mark.parametrize("path", sorted(INVALID_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_invalid_values_file_is_refused_and_the_error_names_the_key(
    path: Path, helm_bin: str
) -> None:
    expected = _expectations(path)
    assert expected, f"{path.name} says nothing about the error it expects"

    with pytest.raises(HelmError) as refused:
        render([path])

    for text in expected:
        assert text in refused.value.stderr, refused.value.stderr


def test_invalid_values_are_refused_by_helm_install_too(helm_bin: str) -> None:
    from tests.harness.helm import run_helm

    with pytest.raises(HelmError) as refused:
        run_helm(
            "install", "tpot", str(CHART_DIR), "--dry-run=client",
            "--values", str(INVALID_DIR / "typo-key.yaml"),
        )  # fmt: skip

    assert "replicaz" in refused.value.stderr


def test_a_canary_share_given_with_plain_set_is_accepted_and_an_out_of_range_one_named(
    helm_bin: str,
) -> None:
    # `helm --set` passes 0.1 as the string "0.1"; the documented canary command must still work.
    from tests.harness.helm import run_helm

    canary = ("--set", "tpot.parallelMode=auto", "--set", "backend.resources.limits.memory=8Gi")
    rendered = run_helm(
        "template", "tpot", str(CHART_DIR), *canary, "--set", "tpot.distributedShare=0.1"
    )
    backend = container([doc for doc in yaml.safe_load_all(rendered) if doc], "backend")
    assert env_of(backend)["TPOT_DISTRIBUTED_SHARE"] == "0.1"

    with pytest.raises(HelmError) as refused:
        run_helm("template", "tpot", str(CHART_DIR), *canary, "--set", "tpot.distributedShare=1.5")
    assert "/tpot/distributedShare" in refused.value.stderr


# -- checkov -----


@pytest.mark.parametrize("scan_name", sorted(CHECKOV_SCANS))
def test_checkov_helm_scan_fails_no_check_outside_the_listed_skips(
    scan_name: str, checkov_scans: dict[str, CheckovScan]
) -> None:
    report = checkov_scans[scan_name].result()
    skips = checkov_skips()
    failed = [
        f"{f['check_id']} {f['check_name']} {f['resource']}"
        for f in report["results"]["failed_checks"]
        if f["check_id"] not in skips
    ]
    rendered = render(CHECKOV_SCANS[scan_name], release="release-name", namespace="default")
    summary = report["summary"]

    assert not failed, "\n".join(failed)
    assert summary["parsing_errors"] == 0
    # Checkov exits 0 when it finds nothing to scan: prove it read every object helm renders.
    assert summary["resource_count"] >= len(rendered), (
        f"checkov scanned {summary['resource_count']} resources, helm renders {len(rendered)}"
    )
    assert summary["passed"] >= 10 * len(objects(rendered, "Deployment"))


def test_every_checkov_skip_has_a_reason_and_still_hides_a_real_finding(
    checkov_scans: dict[str, CheckovScan],
) -> None:
    skips = checkov_skips()
    failing = {
        f["check_id"]
        for scan in checkov_scans.values()
        for f in scan.result()["results"]["failed_checks"]
    }

    assert all(len(reason) > 40 for reason in skips.values()), "each skip needs a real reason"
    assert set(skips) - failing == set(), "skips that hide nothing: remove them from the list"
