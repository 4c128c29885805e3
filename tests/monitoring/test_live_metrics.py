"""Every metric the rules and the dashboard read is served by live processes, and a real Prometheus
scraping them with the documented static configuration finds every selected series, evaluates every
rule without error and fires an alert when tasks fail.

Started here, all on 127.0.0.1 with free ports: a Dask scheduler and one worker (`dask` commands,
with prometheus_client installed as in the image), `tpot-backend serve` connected to them, and
Debian's Prometheus with a temporary TSDB.
"""

from __future__ import annotations

import operator
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from distributed import Client
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.dask_cluster import DaskCluster, free_port
from tests.monitoring import artifacts

pytestmark = [pytest.mark.monitoring, pytest.mark.timeout(300)]

STATIC_CONFIG = artifacts.DOCS_DIR / "prometheus-static.yaml"
MEMORY_LIMIT_MB = 1024
STARTUP_TIMEOUT_SECONDS = 90
# Dashboard variables as Grafana would fill them for the release the shipped rules are rendered for.
DASHBOARD_VARIABLES = {
    "$namespace": artifacts.NAMESPACE,
    "$release": artifacts.RELEASE,
    "$__rate_interval": "1m",
    "$window": "1h",
}
# Alerts a healthy stack must not even have pending.
HEALTHY_QUIET = {
    "TpotSchedulerDown",
    "TpotNoWorkers",
    "TpotBackendDown",
    "TpotDaskMetricsMissing",
    "TpotWorkerMemoryHigh",
    "TpotBackendSchedulerDisconnected",
}


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _wait_for(url: str, contains: str, process: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{url}: process exited {process.returncode}:\n{log.read_text()[-4000:]}"
            )
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200 and contains in response.text:
                return response.text
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not serve {contains!r} in time:\n{log.read_text()[-4000:]}")


def _metric_names(text: str) -> set[str]:
    """Sample names in a /metrics page (`_bucket`, `_total` and friends included)."""
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("live-metrics")


@pytest.fixture(scope="module")
def cluster(workdir: Path) -> Iterator[tuple[DaskCluster, int]]:
    worker_http_port = free_port()
    with DaskCluster(
        n_workers=1,
        memory_limit_mb=MEMORY_LIMIT_MB,
        scheduler_file=False,
        work_dir=workdir / "dask",
        worker_args=["--dashboard-address", f"127.0.0.1:{worker_http_port}"],
    ) as running:
        yield running, worker_http_port


@pytest.fixture(scope="module")
def client(cluster: tuple[DaskCluster, int]) -> Iterator[Any]:
    dask_cluster, _ = cluster
    with Client(dask_cluster.address, timeout=30) as dask_client:
        # Finished, slept and failed tasks make the per-prefix series exist (Dask adds them lazily).
        assert dask_client.gather(dask_client.map(operator.add, range(10), range(10))) == list(
            range(0, 20, 2)
        )
        dask_client.gather(dask_client.map(time.sleep, [0.05] * 4, pure=False))
        failed = dask_client.submit(operator.truediv, 1, 0, pure=False)
        assert isinstance(failed.exception(timeout=30), ZeroDivisionError)
        yield dask_client


@pytest.fixture(scope="module")
def backend(cluster: tuple[DaskCluster, int], workdir: Path) -> Iterator[int]:
    command = Path(sys.executable).with_name("tpot-backend")
    if not command.exists():
        pytest.skip("needs `tpot-backend` installed in the environment (run `make bootstrap`)")
    dask_cluster, _ = cluster
    port = free_port()
    data = workdir / "backend-data"
    data.mkdir()
    env = {
        **os.environ,
        "DASK_SCHEDULER_ADDRESS": dask_cluster.address,
        "TPOT_PARALLEL_MODE": "distributed",
        "TPOT__MEMORY_LIMIT_MB": str(MEMORY_LIMIT_MB),
        "TPOT_DATA_DIR": str(data),
        "TPOT_HTTP_HOST": "127.0.0.1",
        "TPOT_HTTP_PORT": str(port),
        "TPOT_LOG_FORMAT": "json",
    }
    log = workdir / "backend.log"
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [str(command), "serve"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _wait_for(f"http://127.0.0.1:{port}/metrics", "tpot_jobs_queued", process, log)
        yield port
    finally:
        _kill_group(process)


@pytest.fixture(scope="module")
def live_pages(cluster: tuple[DaskCluster, int], client: Any, backend: int) -> dict[str, str]:
    dask_cluster, worker_port = cluster
    urls = {
        "scheduler": f"{dask_cluster.dashboard_url}/metrics",
        "worker": f"http://127.0.0.1:{worker_port}/metrics",
        "backend": f"http://127.0.0.1:{backend}/metrics",
    }
    return {component: httpx.get(url, timeout=10).text for component, url in urls.items()}


class Prometheus:
    """Debian's Prometheus on 127.0.0.1 with a temporary TSDB; queries go through its HTTP API."""

    def __init__(self, binary: str, config: dict[str, Any], workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = workdir / "prometheus.log"
        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        _wait_for(f"{self.url}/-/ready", "Ready", self.process, self.log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def wait_until(self, expr: str, timeout_seconds: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result:
                return result
            time.sleep(0.5)
        raise TimeoutError(f"Prometheus: no result for {expr!r} within {timeout_seconds:g} s")

    def stop(self) -> None:
        _kill_group(self.process)


@pytest.fixture(scope="module")
def prometheus(
    cluster: tuple[DaskCluster, int], client: Any, backend: int, workdir: Path
) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("needs Debian's `prometheus` package (apt-get install prometheus)")
    dask_cluster, worker_port = cluster
    ports = {
        "tpot-scheduler": dask_cluster.dashboard_port,
        "tpot-worker": worker_port,
        "tpot-backend": backend,
    }
    rules = workdir / "tpot-rules.yaml"
    shutil.copy(artifacts.RULES_COPY, rules)

    # The documented file as it is, pointed at these processes (one worker), scraped every second.
    config = yaml.safe_load(STATIC_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(rules)]
    for job in config["scrape_configs"]:
        first = job["static_configs"][0]
        first["targets"] = [f"127.0.0.1:{ports[job['job_name']]}"]
        job["static_configs"] = [first]

    server = Prometheus(binary, config, workdir / "prometheus")
    try:
        server.wait_until('count(up{namespace="tpot"} == 1) == 3')
        # Two scrapes of the erred counter at its first value, so a later rise is an increase.
        server.wait_until(
            'count_over_time(dask_scheduler_prefix_state_totals_total{state="erred"}[1m]) >= 2'
        )
        yield server
    finally:
        server.stop()


def _selectors(expr: str) -> list[str]:
    """`name{matchers}` selectors of an expression, as text that Prometheus can query."""
    found = []
    for name in sorted(artifacts.metric_names(expr)):
        start = 0
        while (index := expr.find(name + "{", start)) != -1:
            end = expr.index("}", index)
            found.append(expr[index : end + 1])
            start = end
    return found


def _dashboard_expressions() -> list[tuple[str, str]]:
    expressions = []
    for title, target in artifacts.dashboard_targets(artifacts.dashboard()):
        expr = target["expr"]
        for variable, value in DASHBOARD_VARIABLES.items():
            expr = expr.replace(variable, value)
        expressions.append((title, expr))
    return expressions


def _rule_expressions() -> list[tuple[str, str]]:
    groups = yaml.safe_load(artifacts.RULES_COPY.read_text())
    return [
        (rule.get("alert") or rule["record"], rule["expr"])
        for group in groups["groups"]
        for rule in group["rules"]
    ]


def test_every_metric_the_rules_and_dashboard_read_is_served_by_a_live_process(
    live_pages: dict[str, str],
) -> None:
    served = {component: _metric_names(text) for component, text in live_pages.items()}
    needed = set()
    for _, expr in _rule_expressions() + _dashboard_expressions():
        needed |= artifacts.metric_names(expr)
    # `up` comes from Prometheus itself, `tpot:*` from the recording rules (checked in Prometheus).
    needed = {n for n in needed if n != "up" and not n.startswith("tpot:")}

    assert needed, "no metric names found in the rules and the dashboard"
    assert needed - set().union(*served.values()) == set()
    assert {n for n in needed if n.startswith("dask_scheduler_")} <= served["scheduler"]
    assert {n for n in needed if n.startswith("dask_worker_")} <= served["worker"]
    assert {n for n in needed if n.startswith("tpot_")} <= served["backend"]
    assert "process_start_time_seconds" in served["worker"]


def test_documented_static_configuration_scrapes_every_process_with_namespace_and_pod(
    prometheus: Prometheus,
) -> None:
    targets = prometheus.api("targets")["activeTargets"]

    assert {t["labels"]["job"]: t["health"] for t in targets} == {
        "tpot-scheduler": "up",
        "tpot-worker": "up",
        "tpot-backend": "up",
    }
    assert {t["labels"]["pod"] for t in targets} == {
        "tpot-scheduler-0",
        "tpot-worker-1",
        "tpot-backend-0",
    }
    assert {t["labels"]["namespace"] for t in targets} == {"tpot"}


def test_every_selector_in_the_rules_and_dashboard_matches_live_series_in_prometheus(
    prometheus: Prometheus,
) -> None:
    sources: dict[str, list[str]] = {}
    for source, expr in _rule_expressions() + _dashboard_expressions():
        for selector in _selectors(expr):
            sources.setdefault(selector, []).append(source)

    missing = {s: where for s, where in sources.items() if not prometheus.query(f"count({s})")}

    assert len(sources) > 20
    assert missing == {}


def test_every_rule_evaluates_in_prometheus_without_error(prometheus: Prometheus) -> None:
    expected = {name for name, _ in _rule_expressions()}
    prometheus.wait_until('tpot:worker_memory_limit_bytes{namespace="tpot", release="tpot"}')

    rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]

    assert {r["name"] for r in rules} == expected
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []


def test_every_dashboard_query_and_alert_expression_runs_in_prometheus(
    prometheus: Prometheus,
) -> None:
    expressions = {expr for _, expr in _rule_expressions() + _dashboard_expressions()}

    with_data = [expr for expr in expressions if prometheus.query(expr)]

    # Memory, workers, queue, connection and recording-rule queries have data on a live stack.
    assert len(with_data) >= 15


def _erred_task_count(dask_scheduler: Any) -> int:
    """Erred tasks by the scheduler's own count, summed over its task prefixes."""
    return sum(
        prefix.state_counts.get("erred", 0) for prefix in dask_scheduler.task_prefixes.values()
    )


def _wait_for_alert_value(
    prometheus: Prometheus, alertname: str, expected: float, timeout_seconds: float = 30
) -> None:
    seen: list[float] = []
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        alerts = prometheus.api("alerts")["alerts"]
        seen = [float(a["value"]) for a in alerts if a["labels"]["alertname"] == alertname]
        if expected in seen:
            return
        time.sleep(0.5)
    raise AssertionError(
        f"{alertname}: value {expected:g} not reached in {timeout_seconds:g} s, last {seen}"
    )


def test_first_failures_of_a_task_prefix_fire_task_failure_alert_counting_each_task_once(
    prometheus: Prometheus, client: Any
) -> None:
    # floordiv has not failed before: Dask creates its erred series with this batch, and the first
    # sample already holds the failures, which increase() alone does not count.
    new_series = (
        'dask_scheduler_prefix_state_totals_total{state="erred", task_prefix_name="floordiv"}'
    )
    assert prometheus.query(new_series) == []

    failures = client.map(operator.floordiv, range(8), [0] * 8, pure=False)
    assert all(isinstance(f.exception(timeout=30), ZeroDivisionError) for f in failures)
    erred = client.run_on_scheduler(_erred_task_count)
    assert erred == 9, "expected the fixture's one failure and these eight"

    firing = prometheus.wait_until(
        'ALERTS{alertname="TpotTaskFailuresRising", alertstate="firing"}', timeout_seconds=30
    )
    # The scheduler started less than 10 minutes ago, so the alert counts every erred task, once.
    _wait_for_alert_value(prometheus, "TpotTaskFailuresRising", erred)

    assert prometheus.query(new_series)
    assert firing[0]["metric"]["pod"] == "tpot-scheduler-0"
    active = {a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"]}
    assert active & HEALTHY_QUIET == set()


def test_a_worker_killed_and_restarted_by_its_nanny_shows_as_restart_and_removal(
    prometheus: Prometheus, client: Any
) -> None:
    (worker_pid,) = client.run(os.getpid).values()
    before = prometheus.query('dask_scheduler_workers_removed_total{pod="tpot-scheduler-0"}')

    os.kill(worker_pid, signal.SIGKILL)

    restarted = prometheus.wait_until(
        'changes(process_start_time_seconds{pod="tpot-worker-1"}[5m]) >= 1', timeout_seconds=60
    )
    removed = prometheus.wait_until(
        'dask_scheduler_workers_removed_total{pod="tpot-scheduler-0"} >= '
        f"{float(before[0]['value'][1]) + 1}",
        timeout_seconds=30,
    )
    assert restarted and removed
    client.wait_for_workers(1, timeout=60)
    assert next(iter(client.run(os.getpid).values())) != worker_pid
