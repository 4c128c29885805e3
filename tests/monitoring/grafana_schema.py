"""Grafana's published dashboard types as JSON Schema, for validating the chart's dashboard.

`@grafana/schema` (pinned in package.json / package-lock.json next to this file) ships the
dashboard model and the panel option types as TypeScript only; `ts-json-schema-generator` turns each
type named in grafana-types.ts into a JSON Schema (draft 7, unknown properties rejected). Both steps
are cached in git-ignored folders next to this file and redone only when their inputs change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
LOCK_FILE = HERE / "package-lock.json"
TYPES_FILE = HERE / "grafana-types.ts"
NODE_MODULES = HERE / "node_modules"
SCHEMA_DIR = HERE / ".schemas"
GENERATOR = NODE_MODULES / "ts-json-schema-generator" / "bin" / "ts-json-schema-generator.js"
NPM_TIMEOUT_SECONDS = 300

# Exported names in grafana-types.ts.
DASHBOARD = "DashboardModel"
PANEL_OPTIONS = {"timeseries": "TimeseriesOptions", "stat": "StatOptions"}
PANEL_FIELD_CONFIG = {"timeseries": "TimeseriesFieldConfig"}


class NpmInstallError(RuntimeError):
    """`npm ci` failed (typically: no access to the npm registry)."""


def _digest(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def install(npm: str) -> None:
    """`npm ci` into node_modules next to this file, unless the lock file is unchanged."""
    stamp = NODE_MODULES / ".tpot-lock-digest"
    wanted = _digest(LOCK_FILE)
    if stamp.exists() and stamp.read_text() == wanted:
        return
    logger.info("event=npm_ci_start dir=%s", HERE)
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=NPM_TIMEOUT_SECONDS,
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise NpmInstallError(f"npm ci exited {result.returncode}: {last}")
    stamp.write_text(wanted)


def schemas(npm: str, node: str) -> dict[str, dict[str, Any]]:
    """JSON Schema of each exported type in grafana-types.ts, regenerated when the inputs change."""
    install(npm)
    wanted = _digest(LOCK_FILE, TYPES_FILE)
    stamp = SCHEMA_DIR / ".digest"
    names = [DASHBOARD, *PANEL_OPTIONS.values(), *PANEL_FIELD_CONFIG.values()]
    if not (stamp.exists() and stamp.read_text() == wanted):
        SCHEMA_DIR.mkdir(exist_ok=True)
        # One run per type: one run for all would merge same-named types (`Options`) of two panels.
        for name in names:
            result = subprocess.run(
                [
                    node,
                    str(GENERATOR),
                    "--path",
                    str(TYPES_FILE),
                    "--type",
                    name,
                    "--no-type-check",
                    "--out",
                    str(SCHEMA_DIR / f"{name}.json"),
                ],
                cwd=HERE,
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT_SECONDS,
            )
            if result.returncode != 0:
                raise RuntimeError(f"ts-json-schema-generator failed for {name}:\n{result.stderr}")
        stamp.write_text(wanted)
        logger.info("event=grafana_schemas_generated types=%s", ",".join(names))
    return {name: json.loads((SCHEMA_DIR / f"{name}.json").read_text()) for name in names}


def schema_version() -> str:
    """The pinned @grafana/schema version, as installed."""
    return str(
        json.loads((NODE_MODULES / "@grafana" / "schema" / "package.json").read_text())["version"]
    )
