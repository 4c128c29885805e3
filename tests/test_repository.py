"""Repository-level promises: pinned dependencies, one version everywhere."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import REPO_ROOT

LOCK = REPO_ROOT / "backend" / "requirements.lock"


def _lock_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep, f"requirements.lock line is not an exact pin: {line!r}"
        pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_lock_pins_every_package_exactly_and_leaves_out_cuda() -> None:
    pins = _lock_pins()

    assert {"tpot", "dask", "distributed", "prometheus-client"} <= pins.keys()
    assert not [name for name in pins if name.startswith("nvidia-")]


def test_backend_exact_pins_agree_with_the_lock() -> None:
    project = tomllib.loads((REPO_ROOT / "backend" / "pyproject.toml").read_text())["project"]
    pins = _lock_pins()

    for requirement in project["dependencies"]:
        name, sep, version = requirement.partition("==")
        if sep:
            assert pins[name.lower()] == version, (
                f"{name}: pyproject {version}, lock {pins[name.lower()]}"
            )
