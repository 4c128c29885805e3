"""The Grafana dashboard: valid against Grafana's published types, scoped by datasource, namespace
and release, holding the panels operators need, and shipped by the chart for the Grafana sidecar."""

from __future__ import annotations

import json
import re
import shutil
from typing import Any

import jsonschema
import pytest

from tests.harness.helm import render
from tests.monitoring import artifacts, grafana_schema

pytestmark = pytest.mark.monitoring

# What the issue asks the dashboard to show, as panel titles.
REQUIRED_PANELS = {
    "Worker memory against limit",
    "Task throughput",
    "Average task duration",
    "Failed tasks and pipelines",
    "Restarting or lost workers",
    "Jobs by mode and status",
    "Job duration p50 / p95 by mode",
    "Fallbacks to local",
    "Queue depth",
}
SCOPE = re.compile(
    r'namespace="\$namespace", '
    r'(?:pod=~"\$release-(?:scheduler|worker|backend)-\.\+"|release="\$release")'
)


@pytest.fixture(scope="module")
def schemas() -> dict[str, dict[str, Any]]:
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip(
            "needs node and npm (Node 20) to read Grafana's dashboard types from @grafana/schema"
        )
    try:
        return grafana_schema.schemas(npm, node)
    except grafana_schema.NpmInstallError as error:
        pytest.skip(f"needs the npm registry to install @grafana/schema: {error}")


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    return artifacts.dashboard()


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def _errors(schema: dict[str, Any], instance: Any, where: str) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    messages = []
    for error in validator.iter_errors(instance):
        deepest = (
            jsonschema.exceptions.best_match([error, *error.context]) if error.context else error
        )
        path = "/".join(str(p) for p in deepest.absolute_path)
        messages.append(f"{where}/{path}: {deepest.message[:200]}")
    return messages


def _subschema(full: dict[str, Any], definition: str, prop: str) -> dict[str, Any] | None:
    """Schema of property `prop` of definition `definition`, with the definitions it refers to."""
    target = full["definitions"][definition]
    while "$ref" in target:
        target = full["definitions"][target["$ref"].rsplit("/", 1)[1]]
    prop_schema = target.get("properties", {}).get(prop)
    if prop_schema is None:
        return None
    return {"definitions": full["definitions"], **prop_schema}


def test_dashboard_validates_against_grafana_dashboard_schema(
    schemas: dict[str, dict[str, Any]], board: dict[str, Any]
) -> None:
    errors = _errors(schemas[grafana_schema.DASHBOARD], board, "dashboard")

    assert errors == [], f"@grafana/schema {grafana_schema.schema_version()}:\n" + "\n".join(errors)


def test_panel_options_and_field_config_validate_against_their_panel_schemas(
    schemas: dict[str, dict[str, Any]], board: dict[str, Any]
) -> None:
    errors: list[str] = []
    dashboard_schema = schemas[grafana_schema.DASHBOARD]

    for panel in _panels(board):
        kind, where = panel["type"], f"panel {panel['title']!r}"
        if kind == "row":
            continue
        assert kind in grafana_schema.PANEL_OPTIONS, (
            f"{where}: panel type {kind} is not checked here"
        )
        errors += _errors(
            schemas[grafana_schema.PANEL_OPTIONS[kind]], panel["options"], where + " options"
        )
        custom_name = grafana_schema.PANEL_FIELD_CONFIG.get(kind)
        custom = panel["fieldConfig"]["defaults"].get("custom", {})
        if custom_name:
            errors += _errors(schemas[custom_name], custom, where + " custom")
        else:
            assert not custom, f"{where}: {kind} panels take no custom field config"
        for override in panel["fieldConfig"]["overrides"]:
            for prop in override["properties"]:
                name = prop["id"]
                if name.startswith("custom."):
                    sub = _subschema(
                        schemas[custom_name], custom_name, name.removeprefix("custom.")
                    )
                else:
                    sub = _subschema(dashboard_schema, "FieldConfig", name)
                if sub is None:
                    errors.append(f"{where}: override property {name} is not a field option")
                else:
                    errors += _errors(sub, prop["value"], f"{where} override {name}")

    assert errors == [], "\n".join(errors)


def test_dashboard_has_the_panels_operators_need(board: dict[str, Any]) -> None:
    titles = {panel.get("title") for panel in _panels(board)}

    assert REQUIRED_PANELS - titles == set()


def test_datasource_namespace_and_release_are_variables(board: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in board["templating"]["list"]}

    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "release"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    # Grafana applies the /regex/ to each scheduler pod name and keeps group 1: the fullname.
    release = re.compile(variables["release"]["regex"].strip("/"))
    assert release.match("tpot-scheduler-5d8f7b9c4-k2x7p").group(1) == "tpot"
    assert release.match("tpot-canary-scheduler-6c9f8d7b5-p3w5r").group(1) == "tpot-canary"
    assert release.match("tpot-worker-7c9d5f6b8-x4v2n") is None


def test_every_query_uses_the_datasource_variable_and_is_scoped_to_namespace_and_release(
    board: dict[str, Any],
) -> None:
    targets = artifacts.dashboard_targets(board)

    assert targets
    for title, target in targets:
        assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        selectors = re.findall(r"[a-z_:]+\{([^}]*)\}", target["expr"])
        assert selectors, (title, target["expr"])
        for matchers in selectors:
            assert SCOPE.search(matchers), f"{title}: selector {{{matchers}}} is not scoped"


def test_memory_panel_draws_the_limit_and_alert_lines_the_rules_record(
    helm_bin: str, board: dict[str, Any]
) -> None:
    recorded = {rule["record"] for rule in artifacts.recording_rules(artifacts.rule_groups())}
    panel = next(p for p in _panels(board) if p["title"] == "Worker memory against limit")

    used = set().union(*(artifacts.metric_names(t["expr"]) for t in panel["targets"]))

    assert {"tpot:worker_memory_limit_bytes", "tpot:worker_memory_alert_bytes"} <= used
    assert {n for n in used if n.startswith("tpot:")} <= recorded
    assert panel["fieldConfig"]["defaults"]["unit"] == "bytes"


def test_panel_ids_are_unique_and_panels_tile_the_24_column_grid(board: dict[str, Any]) -> None:
    panels = _panels(board)
    ids = [p["id"] for p in panels]
    cells: dict[tuple[int, int], str] = {}

    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_chart_ships_the_dashboard_in_a_configmap_for_the_grafana_sidecar(
    helm_bin: str, board: dict[str, Any]
) -> None:
    manifests = render(set_values={"monitoring.grafanaDashboard.enabled": True})
    maps = [
        m
        for m in manifests
        if m["kind"] == "ConfigMap"
        and m["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]

    assert len(maps) == 1
    (content,) = maps[0]["data"].values()
    assert json.loads(content) == board
    assert not any(
        m["kind"] == "ConfigMap" and "grafana_dashboard" in m["metadata"].get("labels", {})
        for m in render()
    ), "the dashboard ConfigMap renders although grafanaDashboard.enabled is false"


def test_docs_dashboard_copy_matches_the_chart_file() -> None:
    assert artifacts.DASHBOARD_COPY.read_bytes() == artifacts.DASHBOARD_SOURCE.read_bytes(), (
        f"docs/monitoring/tpot-dashboard.json is stale; {artifacts.REGENERATE}"
    )
