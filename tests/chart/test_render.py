"""Render tier: every values set lints, renders, and validates against the Kubernetes versions the
chart declares; rendered commands, ports and environment follow docs/architecture.md."""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from tests.chart.conftest import VALUE_SETS, load_values, quantity_mib, render_set
from tests.chart.crd_schemas import CUSTOM_RESOURCE_SCHEMAS, duration_seconds
from tests.harness.helm import (
    CHART_DIR,
    MONITORING_APIS,
    HelmError,
    container,
    deployment,
    env_of,
    init_containers,
    lint,
    objects,
    render,
)

pytestmark = pytest.mark.render

CHART = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
SCHEDULER_HOST = "tpot-scheduler.tpot.svc.cluster.local"


def _kube_versions_in_range() -> list[str]:
    """The kubernetes-validate schema versions that satisfy Chart.yaml's kubeVersion."""
    constraint = CHART["kubeVersion"]
    terms = re.findall(r"(>=|<=|>|<)\s*v?(\d+)\.(\d+)", constraint)
    assert terms, f"kubeVersion {constraint!r} has no comparison this test understands"

    def allowed(version: str) -> bool:
        minor = tuple(int(x) for x in version.split(".")[:2])
        for op, major, low in terms:
            bound = (int(major), int(low))
            if not {
                ">=": minor >= bound,
                ">": minor > bound,
                "<=": minor <= bound,
                "<": minor < bound,
            }[op]:
                return False
        return True

    return [v for v in all_versions() if allowed(v)]


KUBE_VERSIONS = _kube_versions_in_range()
OLDEST_AND_NEWEST = sorted({KUBE_VERSIONS[0], KUBE_VERSIONS[-1]}) if KUBE_VERSIONS else []


# -- lint, template, schema validation -----


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_strict_passes_for_every_values_set(name: str, helm_bin: str) -> None:
    output = lint(VALUE_SETS[name], strict=True)

    assert "0 chart(s) failed" in output
    assert "[WARNING]" not in output and "[ERROR]" not in output


def test_chart_yaml_declares_kube_version_app_version_and_a_semver_version() -> None:
    semver = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$"

    assert CHART["apiVersion"] == "v2"
    assert re.match(semver, str(CHART["version"])), CHART["version"]
    assert CHART["appVersion"] and str(CHART["appVersion"]) != "latest"
    assert CHART["kubeVersion"]
    assert len(KUBE_VERSIONS) >= 2, f"kubernetes-validate knows too few versions in {KUBE_VERSIONS}"
    readme = (CHART_DIR / "README.md").read_text()
    assert "## Versioning" in readme and "major" in readme and "minor" in readme


TEMPLATE_COLUMNS = 120


def test_template_lines_stay_within_120_columns() -> None:
    long_lines = [
        f"{path.relative_to(CHART_DIR)}:{number}: {len(line)} columns"
        for path in sorted((CHART_DIR / "templates").rglob("*"))
        if path.is_file()
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if len(line) > TEMPLATE_COLUMNS
    ]

    assert not long_lines, "\n".join(long_lines)


def test_chart_dependencies_are_locked_when_there_are_any(helm_bin: str) -> None:
    dependencies = CHART.get("dependencies") or []
    lock_path = CHART_DIR / "Chart.lock"

    if not dependencies:
        assert not lock_path.exists(), "Chart.lock without dependencies in Chart.yaml"
        return
    lock = yaml.safe_load(lock_path.read_text())
    locked = {d["name"]: d["version"] for d in lock["dependencies"]}
    assert set(locked) == {d["name"] for d in dependencies}


def test_kube_version_below_the_declared_range_is_refused(helm_bin: str) -> None:
    oldest_minor = int(OLDEST_AND_NEWEST[0].split(".")[1])

    with pytest.raises(HelmError, match="kubeVersion"):
        render(kube_version=f"1.{oldest_minor - 1}.0")


@pytest.fixture(scope="module")
def cached_kubernetes_schemas() -> Iterator[None]:
    """kubernetes-validate parses its 1.8 MB definitions file again for every object (~65 ms);
    keep each parsed schema file for the module instead. Validation itself is unchanged."""
    original = kubernetes_validate.utils.schema_contents
    kubernetes_validate.utils.schema_contents = functools.cache(original)
    try:
        yield
    finally:
        kubernetes_validate.utils.schema_contents = original


@pytest.mark.parametrize("kube_version", OLDEST_AND_NEWEST)
def test_every_object_is_valid_kubernetes_at_the_oldest_and_newest_declared_version(
    value_set: str, kube_version: str, helm_bin: str, cached_kubernetes_schemas: None
) -> None:
    rendered = render(
        VALUE_SETS[value_set], api_versions=MONITORING_APIS, kube_version=kube_version
    )
    errors = []

    for obj in rendered:
        if obj["kind"] in CUSTOM_RESOURCE_SCHEMAS:
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = "/".join(str(p) for p in error.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']} at {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(error.message)

    assert not errors, "\n".join(errors)


def test_custom_resources_carry_the_fields_their_operator_requires(manifests: list[dict]) -> None:
    custom = [m for m in manifests if m["kind"] in CUSTOM_RESOURCE_SCHEMAS]
    errors = []

    for obj in custom:
        validator = jsonschema.Draft7Validator(CUSTOM_RESOURCE_SCHEMAS[obj["kind"]])
        for error in validator.iter_errors(obj):
            path = "/".join(str(p) for p in error.absolute_path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']} at {path}: {error.message}")
        for endpoint in obj["spec"].get("endpoints", []):
            if "scrapeTimeout" in endpoint and "interval" in endpoint:
                assert duration_seconds(endpoint["scrapeTimeout"]) <= duration_seconds(
                    endpoint["interval"]
                ), "Prometheus refuses a scrape timeout longer than the interval"

    assert not errors, "\n".join(errors)


def test_prometheus_rule_names_groups_once_and_each_rule_once(manifests: list[dict]) -> None:
    for rule in objects(manifests, "PrometheusRule"):
        groups = [g["name"] for g in rule["spec"]["groups"]]
        names = [
            r.get("alert") or r.get("record") for g in rule["spec"]["groups"] for r in g["rules"]
        ]
        alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]

        assert len(groups) == len(set(groups)), groups
        assert len(alerts) == len(set(alerts)), alerts
        assert all(names)


# -- monitoring objects follow the CRDs the cluster has -----


def test_operator_objects_render_only_when_their_crd_exists(helm_bin: str) -> None:
    prod = VALUE_SETS["prod"]
    kinds_without = {m["kind"] for m in render(prod)}
    kinds_with = {m["kind"] for m in render(prod, api_versions=MONITORING_APIS)}

    assert not kinds_without & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds_with
    assert "ConfigMap" in kinds_without, "the dashboard ConfigMap needs no CRD"


def test_pod_monitor_replaces_the_service_monitor_when_chosen() -> None:
    rendered = render_set("combo:podmonitor")
    kinds = [m["kind"] for m in rendered]

    assert kinds.count("PodMonitor") == 1 and "ServiceMonitor" not in kinds
    ports = {e["port"] for e in objects(rendered, "PodMonitor")[0]["spec"]["podMetricsEndpoints"]}
    named = {
        p["name"]
        for d in objects(rendered, "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
        for p in c["ports"]
    }
    assert ports <= named


def test_service_monitor_endpoints_name_ports_of_the_services_it_selects(
    environment_manifests: list[dict],
) -> None:
    for monitor in objects(environment_manifests, "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [
            s
            for s in objects(environment_manifests, "Service")
            if selector.items() <= s["metadata"]["labels"].items()
        ]
        service_ports = {p["name"] for s in services for p in s["spec"]["ports"]}
        components = {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in services}

        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports
        assert components == {"scheduler", "worker", "backend"}


def test_pods_are_scraped_through_one_route_only(manifests: list[dict]) -> None:
    monitors = objects(manifests, "ServiceMonitor") + objects(manifests, "PodMonitor")
    annotated = [
        d["metadata"]["name"]
        for d in objects(manifests, "Deployment")
        if "prometheus.io/scrape" in (d["spec"]["template"]["metadata"].get("annotations") or {})
    ]

    assert not (monitors and annotated), f"monitors and scrape annotations on {annotated}"


def test_grafana_dashboard_configmap_carries_the_file_unchanged_with_the_sidecar_label() -> None:
    rendered = render_set("combo:podmonitor")
    dashboard = (CHART_DIR / "files" / "grafana-dashboard.json").read_text()
    [config_map] = [
        m
        for m in objects(rendered, "ConfigMap")
        if m["metadata"]["name"].endswith("grafana-dashboard")
    ]

    [content] = config_map["data"].values()
    assert content.rstrip("\n") == dashboard.rstrip("\n")
    json.loads(content)
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "grafana"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "TPOT"}


# -- commands, ports and environment as docs/architecture.md has them -----


def test_scheduler_runs_the_documented_command_on_the_documented_ports(
    environment_manifests: list[dict],
) -> None:
    scheduler = container(environment_manifests, "scheduler")

    assert scheduler["command"] + scheduler["args"] == [
        "dask", "scheduler", "--host", "0.0.0.0", "--port", "8786", "--dashboard-address", ":8787",
    ]  # fmt: skip
    assert {p["name"]: p["containerPort"] for p in scheduler["ports"]} == {
        "comm": 8786,
        "dashboard": 8787,
    }
    assert deployment(environment_manifests, "scheduler")["spec"]["replicas"] == 1


def test_worker_runs_the_documented_command_with_memory_limit_from_one_value(
    environment: str, environment_manifests: list[dict]
) -> None:
    values = load_values(*VALUE_SETS[environment])
    worker = container(environment_manifests, "worker")

    assert worker["command"] + worker["args"] == [
        "dask", "worker", f"tcp://{SCHEDULER_HOST}:8786",
        "--nthreads", str(values["worker"]["nthreads"]), "--nworkers", "1",
        "--memory-limit", f"{values['tpot']['memoryLimitMb']}MiB",
        "--worker-port", "8788", "--nanny-port", "8789", "--dashboard-address", ":8790",
        "--local-directory", "/tmp/dask", "--name", "$(POD_NAME)",
    ]  # fmt: skip
    assert env_of(worker)["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert {p["name"]: p["containerPort"] for p in worker["ports"]} == {
        "worker": 8788,
        "nanny": 8789,
        "dashboard": 8790,
    }


def test_worker_memory_limit_stays_below_container_limit_by_the_stated_headroom(
    environment: str, environment_manifests: list[dict]
) -> None:
    values = load_values(*VALUE_SETS[environment])
    worker = container(environment_manifests, "worker")
    dask_mib = int(worker["args"][worker["args"].index("--memory-limit") + 1].removesuffix("MiB"))
    limit_mib = quantity_mib(worker["resources"]["limits"]["memory"])
    headroom = values["worker"].get("memoryHeadroomMb") or max(512, dask_mib // 4)

    assert dask_mib == values["tpot"]["memoryLimitMb"]
    assert limit_mib == dask_mib + headroom
    assert worker["resources"]["requests"]["memory"] == worker["resources"]["limits"]["memory"]


def test_explicit_container_memory_limit_replaces_the_computed_one(helm_bin: str) -> None:
    rendered = render(
        set_values={"tpot.memoryLimitMb": 3000, "worker.containerMemoryLimitMb": 4000}
    )

    assert container(rendered, "worker")["resources"]["limits"]["memory"] == "4000Mi"


def test_backend_gets_mode_memory_limit_scheduler_address_and_data_dir(
    environment: str, environment_manifests: list[dict]
) -> None:
    values = load_values(*VALUE_SETS[environment])
    backend = container(environment_manifests, "backend")
    env = env_of(backend)

    assert backend["command"] == ["tpot-backend", "serve"]
    assert env["TPOT_PARALLEL_MODE"] == values["tpot"]["parallelMode"]
    assert env["TPOT__MEMORY_LIMIT_MB"] == str(values["tpot"]["memoryLimitMb"])
    assert env["DASK_SCHEDULER_ADDRESS"] == f"tcp://{SCHEDULER_HOST}:8786"
    assert env["TPOT_DATA_DIR"] == "/var/lib/tpot"
    assert env["TPOT_HTTP_PORT"] == "8080"
    assert {p["name"]: p["containerPort"] for p in backend["ports"]} == {"http": 8080}
    mounts = {m["mountPath"]: m["name"] for m in backend["volumeMounts"]}
    volumes = {
        v["name"]: v
        for v in deployment(environment_manifests, "backend")["spec"]["template"]["spec"]["volumes"]
    }
    data = volumes[mounts["/var/lib/tpot"]]
    assert ("persistentVolumeClaim" in data) == values["backend"]["persistence"]["enabled"]


def test_api_token_comes_from_a_secret_only_when_enabled(
    environment: str, environment_manifests: list[dict]
) -> None:
    values = load_values(*VALUE_SETS[environment])
    token = env_of(container(environment_manifests, "backend")).get("TPOT_API_TOKEN")

    if not values["backend"]["apiToken"]["enabled"]:
        assert token is None
        return
    ref = token["secretKeyRef"]
    [secret] = [
        s for s in objects(environment_manifests, "Secret") if s["metadata"]["name"] == ref["name"]
    ]
    assert len(base64.b64decode(secret["data"][ref["key"]])) >= 16


def test_existing_secret_and_claim_are_used_instead_of_chart_objects() -> None:
    rendered = render_set("combo:existing-secrets-and-digest")
    backend = container(rendered, "backend")
    volumes = deployment(rendered, "backend")["spec"]["template"]["spec"]["volumes"]

    assert env_of(backend)["TPOT_API_TOKEN"] == {
        "secretKeyRef": {"name": "tpot-api", "key": "token"}
    }
    assert not objects(rendered, "Secret") and not objects(rendered, "PersistentVolumeClaim")
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "tpot-data"}} in volumes
    assert backend["image"] == (
        "registry.example.com/ml/tpot-backend:0.1.0@sha256:" + "0123456789abcdef" * 4
    )


def test_image_tag_defaults_to_app_version_and_is_one_for_every_container(
    manifests: list[dict],
) -> None:
    images = {
        c["image"]
        for m in manifests
        for spec in [
            m.get("spec", {}).get("template", {}).get("spec")
            or (m["spec"] if m["kind"] == "Pod" else None)
        ]
        if spec
        for c in spec.get("initContainers", []) + spec["containers"]
    }

    assert len(images) == 1, images
    assert images.pop().split("@")[0].endswith(f":{CHART['appVersion']}")


def test_workers_and_backend_wait_for_the_scheduler_with_a_bounded_init_step(
    environment: str, environment_manifests: list[dict]
) -> None:
    values = load_values(*VALUE_SETS[environment])
    timeout = str(values["waitForScheduler"]["timeoutSeconds"])
    expected = ["tpot-backend", "wait-for-scheduler", "--timeout", timeout]

    assert [c["command"] for c in init_containers(environment_manifests, "worker")] == [expected]
    backend_inits = [c["command"] for c in init_containers(environment_manifests, "backend")]
    if values["tpot"]["parallelMode"] == "distributed":
        assert backend_inits == [expected]
    else:
        assert backend_inits == []


def test_auto_mode_backend_starts_without_waiting_for_the_scheduler() -> None:
    rendered = render_set("combo:auto-mode-canary")

    assert init_containers(rendered, "backend") == []
    assert env_of(container(rendered, "backend"))["TPOT_DISTRIBUTED_SHARE"] == "0.5"


def test_scheduler_file_in_an_emptydir_is_written_by_an_init_container_before_the_wait() -> None:
    rendered = render_set("combo:scheduler-file-emptydir")
    path = "/var/run/tpot/scheduler.json"

    for component in ("worker", "backend"):
        inits = init_containers(rendered, component)
        assert inits[0]["command"] == [
            "tpot-backend", "write-scheduler-file",
            "--address", f"tcp://{SCHEDULER_HOST}:8786", "--path", path,
        ]  # fmt: skip
        main = container(rendered, component)
        assert env_of(main)["TPOT_SCHEDULER_FILE"] == path
        assert "DASK_SCHEDULER_ADDRESS" not in env_of(main)
        assert {"name": "scheduler-file", "mountPath": "/var/run/tpot", "readOnly": True} in main[
            "volumeMounts"
        ]
        volumes = deployment(rendered, component)["spec"]["template"]["spec"]["volumes"]
        assert any(v["name"] == "scheduler-file" and "emptyDir" in v for v in volumes)
    worker_args = container(rendered, "worker")["args"]
    assert worker_args[:2] == ["--scheduler-file", path]
    assert "--scheduler-file" not in container(rendered, "scheduler")["args"]


def test_scheduler_file_on_a_shared_claim_is_written_by_the_scheduler_itself() -> None:
    rendered = render_set("combo:scheduler-file-claim")
    scheduler = container(rendered, "scheduler")

    assert scheduler["args"][-2:] == ["--scheduler-file", "/var/run/tpot/scheduler.json"]
    for component in ("scheduler", "worker", "backend"):
        volumes = deployment(rendered, component)["spec"]["template"]["spec"]["volumes"]
        claims = [
            v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v
        ]
        assert "tpot-scheduler-file" in claims
    for component in ("worker", "backend"):
        assert [c["name"] for c in init_containers(rendered, component)] == ["wait-for-scheduler"]


def test_cluster_domain_and_release_namespace_form_the_scheduler_address(helm_bin: str) -> None:
    rendered = render(
        set_values={"clusterDomain": "corp.example"}, namespace="ml", release="automl"
    )

    assert (
        container(rendered, "worker")["args"][0]
        == "tcp://automl-tpot-scheduler.ml.svc.corp.example:8786"
    )


def test_autoscaling_hands_the_replica_count_to_the_hpa() -> None:
    rendered = render_set("combo:autoscaling")
    [hpa] = objects(rendered, "HorizontalPodAutoscaler")

    assert "replicas" not in deployment(rendered, "worker")["spec"]
    assert (
        hpa["spec"]["scaleTargetRef"]["name"] == deployment(rendered, "worker")["metadata"]["name"]
    )
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_worker_pre_stop_hook_retires_the_worker_within_the_grace_period(
    environment_manifests: list[dict],
) -> None:
    spec = deployment(environment_manifests, "worker")["spec"]["template"]["spec"]
    worker = container(environment_manifests, "worker")
    command = worker["lifecycle"]["preStop"]["exec"]["command"]
    budget = int(env_of(worker)["TPOT_RETIRE_TIMEOUT_SECONDS"])

    assert command[:2] == ["python", "-c"]
    assert "retire_workers" in command[2]
    compile(command[2], "preStop", "exec")
    assert 0 < budget < spec["terminationGracePeriodSeconds"]


def test_helm_test_pod_runs_a_computation_and_checks_backend_readiness(
    environment_manifests: list[dict],
) -> None:
    [pod] = [
        m
        for m in objects(environment_manifests, "Pod")
        if m["metadata"]["annotations"].get("helm.sh/hook") == "test"
    ]
    [test] = pod["spec"]["containers"]
    env = env_of(test)

    assert test["command"][:2] == ["python", "-c"]
    compile(test["command"][2], "helm-test", "exec")
    assert "client.map" in test["command"][2] and "/readyz" in test["command"][2]
    assert env["TPOT_BACKEND_URL"] == "http://tpot-backend.tpot.svc.cluster.local:8080"
    assert env["DASK_SCHEDULER_ADDRESS"] == f"tcp://{SCHEDULER_HOST}:8786"
    assert pod["spec"]["restartPolicy"] == "Never"


def test_helm_test_pod_is_placed_by_its_own_scheduling_values(helm_bin: str) -> None:
    toleration = {"key": "dedicated", "operator": "Equal", "value": "ci", "effect": "NoSchedule"}
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ci"]}]}
                ]
            }
        }
    }
    rendered = render(
        set_values={
            "helmTest.nodeSelector": {"pool": "ci"},
            "helmTest.tolerations": [toleration],
            "helmTest.affinity": affinity,
            "helmTest.priorityClassName": "ci-tests",
            "helmTest.serviceAccount": {"create": False, "name": "ci-runner", "annotations": {}},
        }
    )
    [pod] = objects(rendered, "Pod")

    assert pod["spec"]["nodeSelector"] == {"pool": "ci"}
    assert pod["spec"]["tolerations"] == [toleration]
    assert pod["spec"]["affinity"] == affinity
    assert pod["spec"]["priorityClassName"] == "ci-tests"
    assert pod["spec"]["serviceAccountName"] == "ci-runner"
    assert "nodeSelector" not in deployment(rendered, "worker")["spec"]["template"]["spec"]
    assert "ci-runner" not in {a["metadata"]["name"] for a in objects(rendered, "ServiceAccount")}


def test_helm_test_pod_takes_the_chart_priority_class_when_the_chart_creates_one() -> None:
    rendered = render_set("combo:autoscaling")
    [pod] = objects(rendered, "Pod")
    [priority_class] = objects(rendered, "PriorityClass")

    assert pod["spec"]["priorityClassName"] == priority_class["metadata"]["name"]


@pytest.mark.parametrize(
    ("replicas", "budget", "allowed"),
    [
        (2, {"minAvailable": "50%"}, True),  # rounds up to 1 of 2
        (2, {"minAvailable": "51%"}, False),  # rounds up to 2 of 2
        (10, {"minAvailable": "90%"}, True),  # 9 of 10
        (10, {"minAvailable": "91%"}, False),  # rounds up to 10 of 10
        (2, {"maxUnavailable": "10%"}, True),  # rounds up to 1
        (2, {"maxUnavailable": "0%"}, False),
    ],
)
def test_worker_budget_percentages_are_checked_as_kubernetes_rounds_them(
    replicas: int, budget: dict[str, str], allowed: bool, helm_bin: str
) -> None:
    values: dict[str, Any] = {
        "worker.replicas": replicas,
        "worker.podDisruptionBudget": {
            "enabled": True,
            "minAvailable": None,
            "maxUnavailable": None,
        }
        | budget,
    }

    if allowed:
        [pdb] = objects(render(set_values=values), "PodDisruptionBudget")
        assert budget.items() <= pdb["spec"].items()
    else:
        with pytest.raises(HelmError, match=f"worker.podDisruptionBudget.{next(iter(budget))}"):
            render(set_values=values)


def test_worker_tmp_and_spill_directories_take_their_sizes_from_values(
    environment: str, environment_manifests: list[dict]
) -> None:
    values = load_values(*VALUE_SETS[environment])["worker"]
    volumes = {
        v["name"]: v
        for v in deployment(environment_manifests, "worker")["spec"]["template"]["spec"]["volumes"]
    }
    mounts = {
        m["mountPath"]: m["name"]
        for m in container(environment_manifests, "worker")["volumeMounts"]
    }

    assert volumes[mounts["/tmp"]]["emptyDir"]["sizeLimit"] == f"{values['tmpSizeLimitMb']}Mi"
    assert volumes[mounts["/tmp/dask"]]["emptyDir"]["sizeLimit"] == (
        f"{values['localDirSizeLimitMb']}Mi"
    )
    # The image's JOBLIB_TEMP_FOLDER is /tmp: a memmapped copy of the data must fit beside caches.
    assert values["tmpSizeLimitMb"] >= 1024


def test_backend_data_size_defaults_to_10gi_and_follows_the_value_for_claim_and_emptydir(
    helm_bin: str,
) -> None:
    [claim] = objects(render(), "PersistentVolumeClaim")
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"

    [claim] = objects(
        render(set_values={"backend.persistence.size": "20Gi"}), "PersistentVolumeClaim"
    )
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"

    dev = render_set("dev")
    data = next(
        v
        for v in deployment(dev, "backend")["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "data"
    )
    assert quantity_mib(data["emptyDir"]["sizeLimit"]) == quantity_mib(
        load_values(*VALUE_SETS["dev"])["backend"]["persistence"]["size"]
    )


def test_notes_say_how_to_reach_the_backend_dashboard_and_metrics(helm_bin: str) -> None:
    from tests.harness.helm import run_helm

    notes = run_helm(
        "install", "tpot", str(CHART_DIR), "--dry-run=client", "--namespace", "tpot",
        "--values", str(CHART_DIR / "values-prod.yaml"),
    ).split("NOTES:", 1)[1]  # fmt: skip

    assert "port-forward service/tpot-backend 8080:http" in notes
    assert "port-forward service/tpot-scheduler 8787:dashboard" in notes
    assert "helm test tpot" in notes and "/v1/jobs" in notes and "/metrics" in notes
    assert "get secret tpot-api-token" in notes
    assert "no ServiceMonitor CRD" in notes, "NOTES must warn when the requested CRD is missing"
    assert 'image.repository is "tpot-backend", with no registry' in notes


def test_notes_stay_quiet_about_an_image_from_a_registry(helm_bin: str) -> None:
    from tests.harness.helm import run_helm

    notes = run_helm(
        "install", "tpot", str(CHART_DIR), "--dry-run=client", "--namespace", "tpot",
        "--values", str(CHART_DIR / "values-prod.yaml"),
        "--set", "image.repository=registry.example.com/tpot-backend",
    ).split("NOTES:", 1)[1]  # fmt: skip

    assert "image.repository" not in notes


def _probe_paths(item: dict[str, Any]) -> set[str]:
    return {
        item[f"{kind}Probe"]["httpGet"]["path"]
        for kind in ("startup", "readiness", "liveness")
        if f"{kind}Probe" in item
    }


def test_probes_use_the_documented_health_paths(environment_manifests: list[dict]) -> None:
    assert _probe_paths(container(environment_manifests, "scheduler")) == {"/health"}
    assert _probe_paths(container(environment_manifests, "worker")) == {"/health"}
    backend = container(environment_manifests, "backend")
    assert backend["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert backend["livenessProbe"]["httpGet"]["path"] == "/healthz"
