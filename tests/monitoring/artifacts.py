"""The monitoring artifacts as the chart ships them, and the copies under docs/monitoring.

The chart is the source: `files/prometheus-rules.yaml` is a Helm template body and
`files/grafana-dashboard.json` is shipped untouched. The copies for users without
prometheus-operator or the Grafana sidecar are generated from them and compared in tests:

    .venv/bin/python -m tests.monitoring.artifacts      # rewrite docs/monitoring/tpot-*.{yaml,json}
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.harness.helm import CHART_DIR, MONITORING_APIS, REPO_ROOT, render

logger = logging.getLogger(__name__)

REGENERATE = "run `.venv/bin/python -m tests.monitoring.artifacts`"

MONITORING_DIR = Path(__file__).resolve().parent
DOCS_DIR = REPO_ROOT / "docs" / "monitoring"
RULES_COPY = DOCS_DIR / "tpot-rules.yaml"
DASHBOARD_COPY = DOCS_DIR / "tpot-dashboard.json"
DASHBOARD_SOURCE = CHART_DIR / "files" / "grafana-dashboard.json"
RUNBOOK_DOC = REPO_ROOT / "docs" / "monitoring.md"
RULES_UNIT_TESTS = MONITORING_DIR / "rules-test.yaml"

# The release the copies are rendered for; docs/monitoring.md says how to render others.
RELEASE = "tpot"
NAMESPACE = "tpot"

RULES_HEADER = """\
# Alerting and recording rules of the tpot chart for a Prometheus without prometheus-operator,
# rendered from charts/tpot/files/prometheus-rules.yaml with the default values for release "tpot"
# in namespace "tpot". Regenerate: `.venv/bin/python -m tests.monitoring.artifacts`. For another
# release, namespace or threshold see docs/monitoring.md ("Rules without the operator").
"""

# Every selector in these expressions is written `name{...}`; functions and groupings use `(`.
SELECTOR = re.compile(r"(?<![\w:])([a-zA-Z_:][\w:]*)\s*\{")


def prometheus_rule(set_values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The PrometheusRule the chart renders, monitoring.prometheusRule.enabled + `set_values`."""
    values = {"monitoring.prometheusRule.enabled": True, **(set_values or {})}
    manifests = render(
        set_values=values, api_versions=MONITORING_APIS, release=RELEASE, namespace=NAMESPACE
    )
    found = [m for m in manifests if m.get("kind") == "PrometheusRule"]
    if len(found) != 1:
        raise LookupError(f"expected one PrometheusRule in the render, found {len(found)}")
    return found[0]


def rule_groups(set_values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`spec` of the rendered PrometheusRule: the `groups:` document a plain Prometheus loads."""
    return dict(prometheus_rule(set_values)["spec"])


def _block_strings(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


class _RulesDumper(yaml.SafeDumper):
    pass


_RulesDumper.add_representer(str, _block_strings)


def rules_text(groups: Mapping[str, Any]) -> str:
    """The rules document as written to docs/monitoring/tpot-rules.yaml."""
    body = yaml.dump(dict(groups), Dumper=_RulesDumper, sort_keys=False, width=10_000)
    return RULES_HEADER + body


def alerts(groups: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in groups["groups"] for rule in group["rules"] if "alert" in rule]


def recording_rules(groups: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in groups["groups"] for rule in group["rules"] if "record" in rule]


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads, from its `name{...}` selectors (strings blanked first)."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(SELECTOR.findall(without_strings))


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD_SOURCE.read_text()))


def dashboard_targets(board: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(panel title, target) for every query of every panel, rows included."""
    found: list[tuple[str, dict[str, Any]]] = []
    for panel in board.get("panels", []):
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                found.append((inner.get("title", ""), target))
    return found


def write_copies() -> None:
    """Rewrite the docs copies from the chart."""
    DOCS_DIR.mkdir(parents=True, exist_ok=True)
    RULES_COPY.write_text(rules_text(rule_groups()))
    DASHBOARD_COPY.write_bytes(DASHBOARD_SOURCE.read_bytes())
    logger.info("event=monitoring_copies_written rules=%s dashboard=%s", RULES_COPY, DASHBOARD_COPY)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write_copies()
