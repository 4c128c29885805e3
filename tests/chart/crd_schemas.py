"""What prometheus-operator (monitoring.coreos.com/v1) requires of the objects the chart renders.

kubernetes-validate knows only built-in kinds, so these JSON Schemas state the parts of the
ServiceMonitor, PodMonitor and PrometheusRule CRDs that the operator enforces and the chart uses:
required fields, field types, the duration syntax and the relabeling rules. Unknown fields at the
levels the chart fills are rejected, as the API server's structural schema pruning would drop them.
"""

from __future__ import annotations

import re
from typing import Any

# Prometheus durations as the CRDs accept them: "30s", "1m30s", "2h".
DURATION = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
LABEL_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
_UNITS = {"y": 31536000, "w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}


def duration_seconds(text: str) -> float:
    """A Prometheus duration in seconds ("1m30s" -> 90)."""
    return sum(float(n) * _UNITS[u] for n, u in re.findall(r"([0-9]+)(ms|y|w|d|h|m|s)", text))


_string_map: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}
_duration: dict[str, Any] = {"type": "string", "pattern": DURATION}
_label_selector: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": _string_map,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_relabeling: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": LABEL_NAME}},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer", "minimum": 1},
        "replacement": {"type": "string"},
        "action": {
            "enum": [
                "replace",
                "Replace",
                "keep",
                "Keep",
                "drop",
                "Drop",
                "hashmod",
                "HashMod",
                "labelmap",
                "LabelMap",
                "labeldrop",
                "LabelDrop",
                "labelkeep",
                "LabelKeep",
                "lowercase",
                "Lowercase",
                "uppercase",
                "Uppercase",
                "keepequal",
                "KeepEqual",
                "dropequal",
                "DropEqual",
            ]  # fmt: skip
        },
    },
    # The operator refuses replace (the default action) without a target label.
    "if": {"not": {"required": ["action"]}},
    "then": {"required": ["targetLabel"]},
}
_namespace_selector: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "any": {"type": "boolean"},
        "matchNames": {"type": "array", "items": {"type": "string"}},
    },
}
_endpoint_common: dict[str, Any] = {
    "port": {"type": "string", "minLength": 1},
    "path": {"type": "string", "pattern": "^/"},
    "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
    "interval": _duration,
    "scrapeTimeout": _duration,
    "honorLabels": {"type": "boolean"},
    "relabelings": {"type": "array", "items": _relabeling},
    "metricRelabelings": {"type": "array", "items": _relabeling},
}


def _resource(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": {
                "type": "object",
                "required": ["name", "namespace"],
                "properties": {
                    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
                    "namespace": {"type": "string", "minLength": 1},
                    "labels": _string_map,
                },
            },
            "spec": spec,
        },
    }


_rule: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["expr"],
    "properties": {
        "alert": {"type": "string", "pattern": LABEL_NAME},
        "record": {"type": "string", "pattern": r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
        "expr": {"type": ["string", "integer"], "minLength": 1},
        "for": _duration,
        "keep_firing_for": _duration,
        "labels": _string_map,
        "annotations": _string_map,
    },
    # Exactly one of alert and record; recording rules carry no annotations or `for`.
    "oneOf": [
        {"required": ["alert"], "not": {"required": ["record"]}},
        {
            "required": ["record"],
            "not": {
                "anyOf": [
                    {"required": ["alert"]},
                    {"required": ["for"]},
                    {"required": ["annotations"]},
                ]
            },
        },
    ],
}

CUSTOM_RESOURCE_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": _resource(
        "ServiceMonitor",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": _label_selector,
                "namespaceSelector": _namespace_selector,
                "jobLabel": {"type": "string"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": _endpoint_common,
                    },
                },
            },
        },
    ),
    "PodMonitor": _resource(
        "PodMonitor",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "selector": _label_selector,
                "namespaceSelector": _namespace_selector,
                "jobLabel": {"type": "string"},
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": _endpoint_common,
                    },
                },
            },
        },
    ),
    "PrometheusRule": _resource(
        "PrometheusRule",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": _duration,
                            "limit": {"type": "integer", "minimum": 0},
                            "partial_response_strategy": {"type": "string"},
                            "rules": {"type": "array", "items": _rule},
                        },
                    },
                }
            },
        },
    ),
}
