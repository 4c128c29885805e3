"""The kind overlay keeps every environment installable on a small CI runner (by rendering)."""

from __future__ import annotations

import pytest

from tests.harness.helm import CHART_DIR, objects, render
from tests.kind.test_kind_install import ENVIRONMENTS, KIND_OVERLAY

pytestmark = pytest.mark.render

RUNNER_MEMORY_MIB = 7 * 1024
# GitHub-hosted Linux runners guarantee 14 GB of SSD, shared by the kind nodes: were every pod to
# fill its ephemeral-storage request, the runner must still have the disk.
RUNNER_DISK_MIB = 14 * 1000**3 / 2**20
UNITS_MIB = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}


def _mib(quantity: str) -> float:
    for suffix, factor in UNITS_MIB.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity) / 2**20


@pytest.mark.parametrize(
    ("resource", "budget_mib"),
    [("memory", RUNNER_MEMORY_MIB), ("ephemeral-storage", RUNNER_DISK_MIB)],
)
@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_kind_overlay_fits_every_environment_on_a_small_runner(
    helm_bin: str, environment: str, resource: str, budget_mib: float
) -> None:
    manifests = render([CHART_DIR / f"values-{environment}.yaml", KIND_OVERLAY])

    requested = 0.0
    for deployment in objects(manifests, "Deployment"):
        replicas = deployment["spec"].get("replicas", 1)
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            requested += replicas * _mib(container["resources"]["requests"][resource])

    assert 0 < requested <= budget_mib, f"{environment}: {requested:.0f} MiB of {resource}"
