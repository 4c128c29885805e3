"""values.yaml documents every key, the README's table matches it, and the schema mirrors it."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.chart.values_doc import README, VALUES, parse_keys, readme_table, table
from tests.harness.helm import CHART_DIR

pytestmark = pytest.mark.render

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())


def test_every_values_key_has_a_description_line_above_it() -> None:
    undocumented = [
        f"line {k.line}: {k.path}" for k in parse_keys(VALUES.read_text()) if not k.description
    ]

    assert not undocumented, "keys without a comment line directly above:\n" + "\n".join(
        undocumented
    )


def test_readme_values_table_is_in_step_with_values_yaml() -> None:
    assert readme_table(README.read_text()) == table(), (
        "the README's values table is out of date: run `python -m tests.chart.values_doc`"
    )


def test_values_table_generator_notices_a_changed_description() -> None:
    edited = VALUES.read_text().replace("# Threads per worker", "# Number of threads per worker", 1)

    assert "Number of threads per worker" in table(edited)
    assert table(edited) != readme_table(README.read_text())


@pytest.mark.parametrize("environment", ["dev", "staging", "prod"])
def test_every_value_an_environment_file_sets_has_a_comment_saying_why(environment: str) -> None:
    path = CHART_DIR / f"values-{environment}.yaml"
    unexplained = [
        f"line {k.line}: {k.path}"
        for k in parse_keys(path.read_text())
        if not k.is_section and not k.description
    ]

    assert not unexplained, f"{path.name}: values without a comment line directly above:\n" + (
        "\n".join(unexplained)
    )


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref:
        return _resolve(SCHEMA["definitions"][ref.rsplit("/", 1)[1]])
    return node


def _schema_paths(node: dict[str, Any], sections: set[str], prefix: str = "") -> set[str]:
    """Keys the schema names, down to the depth values.yaml documents key by key."""
    node = _resolve(node)
    paths: set[str] = set()
    for key, child in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        paths.add(path)
        if path in sections:
            paths |= _schema_paths(child, sections, f"{path}.")
    return paths


def _values_paths(values: dict[str, Any], prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for key, value in values.items():
        paths.add(f"{prefix}{key}")
        if isinstance(value, dict):
            paths |= _values_paths(value, f"{prefix}{key}.")
    return paths


def test_schema_describes_exactly_the_keys_values_yaml_has() -> None:
    keys = parse_keys(VALUES.read_text())
    sections = {k.path for k in keys if k.is_section}
    in_values = {k.path for k in keys}
    in_schema = _schema_paths(SCHEMA, sections)

    assert in_values - in_schema == set(), "values.yaml keys the schema does not know"
    assert in_schema - in_values == set(), "schema keys values.yaml does not have"


def test_values_yaml_parser_sees_every_key_yaml_sees() -> None:
    values = yaml.safe_load(VALUES.read_text())
    parsed = {k.path for k in parse_keys(VALUES.read_text())}
    leaves = {k.path for k in parse_keys(VALUES.read_text()) if not k.is_section}

    expected = {
        p for p in _values_paths(values) if not any(p.startswith(f"{leaf}.") for leaf in leaves)
    }
    assert parsed == expected


def test_schema_rejects_unknown_keys_at_every_level() -> None:
    def open_objects(node: dict[str, Any], path: str) -> list[str]:
        node = _resolve(node)
        found = []
        if "properties" in node and node.get("additionalProperties") is not False:
            found.append(path or "<root>")
        for key, child in node.get("properties", {}).items():
            found += open_objects(child, f"{path}.{key}".lstrip("."))
        return found

    assert open_objects(SCHEMA, "") == []
