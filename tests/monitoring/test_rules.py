"""The chart's Prometheus rules: promtool accepts them, every alert fires and stays quiet as its
unit tests say, thresholds follow the values, and the plain copy for non-operator Prometheus
matches the chart."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.helm import ENVIRONMENTS, MONITORING_APIS, render
from tests.monitoring import artifacts

pytestmark = pytest.mark.monitoring

ANCHOR = re.compile(r"^#{2,4}\s+(Tpot\w+)\s*$", re.MULTILINE)


@pytest.fixture(scope="module")
def default_groups(helm_bin: str) -> dict[str, Any]:
    return artifacts.rule_groups()


def _write_rules(directory: Path, groups: dict[str, Any]) -> Path:
    path = directory / "tpot-rules.yaml"
    path.write_text(artifacts.rules_text(groups))
    return path


def _promtool(promtool_bin: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool_bin, *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def _expr_test(
    alert: dict[str, Any],
    series: list[dict[str, str]],
    eval_time: str,
    expected: list[dict[str, Any]],
) -> dict[str, Any]:
    """A promtool test evaluating one alert's expression, expecting exactly `expected` samples."""
    return {
        "rule_files": ["tpot-rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {"expr": alert["expr"], "eval_time": eval_time, "exp_samples": expected}
                ],
            }
        ],
    }


def _alert(groups: dict[str, Any], name: str) -> dict[str, Any]:
    found = [a for a in artifacts.alerts(groups) if a["alert"] == name]
    assert len(found) == 1, f"{name}: expected one alert of that name, found {len(found)}"
    return found[0]


@pytest.mark.parametrize("environment", sorted(ENVIRONMENTS))
def test_rendered_rules_pass_promtool_check_in_every_environment(
    environment: str, helm_bin: str, promtool_bin: str, tmp_path: Path
) -> None:
    manifests = render(
        ENVIRONMENTS[environment],
        set_values={"monitoring.prometheusRule.enabled": True},
        api_versions=MONITORING_APIS,
    )
    (rule,) = [m for m in manifests if m["kind"] == "PrometheusRule"]
    rules = _write_rules(tmp_path, rule["spec"])

    result = _promtool(promtool_bin, "check", "rules", str(rules), cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(group["rules"]) for group in rule["spec"]["groups"])
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_every_alert_fires_and_stays_quiet_as_the_unit_tests_expect(
    default_groups: dict[str, Any], promtool_bin: str, tmp_path: Path
) -> None:
    _write_rules(tmp_path, default_groups)
    shutil.copy(artifacts.RULES_UNIT_TESTS, tmp_path / "rules-test.yaml")

    result = _promtool(promtool_bin, "test", "rules", "rules-test.yaml", cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_unit_tests_hold_a_firing_and_a_quiet_case_for_every_alert(
    default_groups: dict[str, Any],
) -> None:
    suite = yaml.safe_load(artifacts.RULES_UNIT_TESTS.read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in suite["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])

    names = {a["alert"] for a in artifacts.alerts(default_groups)}

    assert names - firing == set(), "alerts without a firing case"
    assert names - quiet == set(), "alerts without a quiet case"
    assert (firing | quiet) - names == set(), "unit tests name alerts the chart does not render"


def test_every_alert_carries_severity_summary_description_and_a_runbook_that_exists(
    default_groups: dict[str, Any],
) -> None:
    headings = {name.lower() for name in ANCHOR.findall(artifacts.RUNBOOK_DOC.read_text())}

    for alert in artifacts.alerts(default_groups):
        name = alert["alert"]
        annotations = alert["annotations"]
        assert alert["labels"]["severity"] in {"critical", "warning"}, name
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        assert re.search(r"\d|\$value", annotations["description"]), (
            f"{name}: no numbers in description"
        )
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page == "docs/monitoring.md" and anchor == name.lower(), name
        assert anchor in headings, f"{name}: docs/monitoring.md has no runbook heading '### {name}'"


def test_every_selector_names_namespace_and_release_pods(default_groups: dict[str, Any]) -> None:
    for rule in default_groups["groups"]:
        for item in rule["rules"]:
            if "alert" not in item:
                continue
            selectors = re.findall(r"[a-z_:]+\{([^}]*)\}", item["expr"])
            assert selectors, item["alert"]
            for matchers in selectors:
                assert 'namespace="tpot"' in matchers, (item["alert"], matchers)
                assert re.search(r'pod=~"tpot-[(a-z|)]+-\.\+"', matchers), (item["alert"], matchers)


def test_plain_rules_copy_in_docs_matches_the_chart_render(default_groups: dict[str, Any]) -> None:
    assert artifacts.RULES_COPY.read_text() == artifacts.rules_text(default_groups), (
        f"docs/monitoring/tpot-rules.yaml is stale; {artifacts.REGENERATE}"
    )


def test_memory_alert_follows_memory_limit_and_threshold_values(
    helm_bin: str, promtool_bin: str, tmp_path: Path
) -> None:
    groups = artifacts.rule_groups(
        {"tpot.memoryLimitMb": 1024, "monitoring.prometheusRule.memoryThresholdPercent": 60}
    )
    _write_rules(tmp_path, groups)
    mib = 1024 * 1024
    worker = 'job="tpot-worker", namespace="tpot", pod="tpot-worker-7c9d5f6b8-{}", type="unmanaged"'
    series = [
        {
            "series": f"dask_worker_memory_bytes{{{worker.format('above')}}}",
            "values": f"{700 * mib}x5",
        },
        {
            "series": f"dask_worker_memory_bytes{{{worker.format('below')}}}",
            "values": f"{600 * mib}x5",
        },
    ]
    expected = [
        {
            "labels": '{namespace="tpot", pod="tpot-worker-7c9d5f6b8-above"}',
            "value": 100 * 700 / 1024,
        }
    ]
    test = _expr_test(_alert(groups, "TpotWorkerMemoryHigh"), series, "2m", expected)
    (tmp_path / "threshold-test.yaml").write_text(yaml.safe_dump(test, sort_keys=False))

    result = _promtool(promtool_bin, "test", "rules", "threshold-test.yaml", cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "1024 MiB" in _alert(groups, "TpotWorkerMemoryHigh")["annotations"]["description"]


def test_rules_of_a_second_release_pick_only_its_own_pods(
    helm_bin: str, promtool_bin: str, tmp_path: Path
) -> None:
    manifests = render(
        set_values={"monitoring.prometheusRule.enabled": True},
        api_versions=MONITORING_APIS,
        release="tpot-canary",
        namespace="tpot",
    )
    groups = next(m for m in manifests if m["kind"] == "PrometheusRule")["spec"]
    _write_rules(tmp_path, groups)
    series = [
        {
            "series": f'tpot_jobs_queued{{job="{release}-backend", namespace="tpot", '
            f'pod="{release}-backend-6b7c8d9f5-q4r8s"}}',
            "values": "50x5",
        }
        for release in ("tpot", "tpot-canary")
    ]
    expected = [
        {"labels": '{namespace="tpot", pod="tpot-canary-backend-6b7c8d9f5-q4r8s"}', "value": 50}
    ]
    test = _expr_test(_alert(groups, "TpotJobQueueBackingUp"), series, "2m", expected)
    (tmp_path / "release-test.yaml").write_text(yaml.safe_dump(test, sort_keys=False))

    result = _promtool(promtool_bin, "test", "rules", "release-test.yaml", cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr


def test_runbook_base_url_prefixes_every_runbook_link(helm_bin: str) -> None:
    base = "https://git.example.org/tpot-k8s/blob/main/docs/monitoring.md"
    groups = artifacts.rule_groups({"monitoring.prometheusRule.runbookBaseUrl": base})

    links = {a["annotations"]["runbook_url"] for a in artifacts.alerts(groups)}

    assert links and all(link.startswith(base + "#tpot") for link in links), links


def test_local_mode_renders_no_scheduler_connection_alert(helm_bin: str) -> None:
    local = artifacts.rule_groups({"tpot.parallelMode": "local"})
    auto = artifacts.rule_groups({"tpot.parallelMode": "auto"})

    assert "TpotBackendSchedulerDisconnected" not in {a["alert"] for a in artifacts.alerts(local)}
    assert (
        "run locally until it"
        in _alert(auto, "TpotBackendSchedulerDisconnected")["annotations"]["description"]
    )
