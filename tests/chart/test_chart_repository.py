"""`helm package` and `helm repo index` make a chart repository that helm can consume over HTTP."""

from __future__ import annotations

import functools
import http.server
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.harness.helm import CHART_DIR, container, run_helm

pytestmark = pytest.mark.render

CHART = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())


@pytest.fixture(scope="module")
def chart_repository(tmp_path_factory: pytest.TempPathFactory, helm_bin: str) -> Iterator[str]:
    """The packaged chart and its index, served on a free loopback port until the module ends."""
    root = tmp_path_factory.mktemp("chart-repo")
    run_helm("package", str(CHART_DIR), "--destination", str(root))
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    run_helm("repo", "index", str(root), "--url", url)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


def _helm_home(tmp_path: Path) -> dict[str, str]:
    """A private helm configuration, so the test never touches the user's repositories."""
    return {
        "HELM_CONFIG_HOME": str(tmp_path / "config"),
        "HELM_CACHE_HOME": str(tmp_path / "cache"),
        "HELM_DATA_HOME": str(tmp_path / "data"),
        "HELM_REPOSITORY_CONFIG": str(tmp_path / "config" / "repositories.yaml"),
        "HELM_REPOSITORY_CACHE": str(tmp_path / "cache" / "repository"),
    }


def test_repository_index_lists_the_chart_at_its_version(
    chart_repository: str, tmp_path: Path
) -> None:
    env = _helm_home(tmp_path)
    run_helm("repo", "add", "tpot-charts", chart_repository, env=env)

    found = yaml.safe_load(
        run_helm("search", "repo", "tpot-charts/tpot", "--output", "yaml", env=env)
    )

    assert [(c["name"], c["version"], c["app_version"]) for c in found] == [
        ("tpot-charts/tpot", str(CHART["version"]), str(CHART["appVersion"]))
    ]


def test_chart_pulled_from_the_repository_renders_prod_and_ships_its_values_files(
    chart_repository: str, tmp_path: Path
) -> None:
    env = _helm_home(tmp_path)
    run_helm("repo", "add", "tpot-charts", chart_repository, env=env)
    run_helm("pull", "tpot-charts/tpot", "--destination", str(tmp_path), env=env)
    [archive] = tmp_path.glob("tpot-*.tgz")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())

    rendered = [
        doc
        for doc in yaml.safe_load_all(
            run_helm(
                "template", "tpot", "tpot-charts/tpot", "--values",
                str(CHART_DIR / "values-prod.yaml"), env=env,
            )
        )
        if doc
    ]  # fmt: skip

    for name in ("values.yaml", "values.schema.json", "values-dev.yaml", "values-staging.yaml",
                 "values-prod.yaml", "README.md", "templates/NOTES.txt",
                 "files/prometheus-rules.yaml", "files/grafana-dashboard.json"):  # fmt: skip
        assert f"tpot/{name}" in names, name
    args = container(rendered, "worker")["args"]
    assert args[args.index("--memory-limit") + 1] == "4096MiB"
