"""Benchmarks of the TPOT stack, measured side by side in one run; see docs/benchmarks.md.

    PYTHONPATH=. PATH=.tools/bin:$PATH .venv/bin/python -m benchmarks.run            # full, ~11 min
    PYTHONPATH=. PATH=.tools/bin:$PATH .venv/bin/python -m benchmarks.run --quick    # ~2 min

What is measured (the numbers name the items of docs/benchmarks.md):

1. throughput  pipelines per minute: TPOT on the chart's stack with two single-thread workers,
               divided by TPOT's own local mode with two jobs; same data, seed and time budget.
2. scaling     the same search on the stack with two workers divided by one worker.
3. overhead    a job through the backend API divided by the same TPOT call made directly.
4. fallback    seconds from "scheduler absent" to the first local evaluation in `auto` mode.
5. scaleout    image size; seconds from a worker container's start to its registration.
6. rows        time per job at growing row counts; data shipped per job or per evaluation.

The stack is the dev values file rendered by helm and run as local processes with the chart's own
commands (tests/harness/localstack.py). Results go to benchmarks/results/: latest.json for a full
run of every item, quick.json for --quick, partial.json otherwise; a table is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from distributed import Client

from benchmarks import backend, load, machine, scaleout, search
from tests.harness.helm import render_environment
from tests.harness.jobs import bundled_dataset
from tests.harness.localstack import LocalStack

log = logging.getLogger("benchmarks")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ITEMS = ("throughput", "scaling", "overhead", "fallback", "scaleout", "rows")
SEED = 42
# Start-up facts of every stack this run started (reported with the results).
STACKS: list[dict[str, Any]] = []
# The dev values file's per-evaluation memory (tpot.memoryLimitMb); both arms use it.
MEMORY_LIMIT_MB = 2048


@dataclass(frozen=True)
class Plan:
    """Sizes of one run; `quick` checks the script end to end, `full` produces the figures."""

    mode: str
    budget_minutes: float
    repeats: int
    overhead_values: dict[str, Any]
    overhead_repeats: int
    rows: tuple[int, ...]
    rows_values: dict[str, Any]
    fallback_wait_seconds: float
    fallback_values: dict[str, Any]
    scaleout_repeats: int
    image_gzip: bool
    notes: list[str] = field(default_factory=list)


QUICK = Plan(
    mode="quick",
    budget_minutes=0.25,
    repeats=1,
    overhead_values={"generations": 1, "population_size": 4},
    overhead_repeats=1,
    rows=(1_000, 10_000),
    rows_values={"generations": 1, "population_size": 4, "max_eval_time_mins": 0.5},
    fallback_wait_seconds=10,
    fallback_values={"generations": 1, "population_size": 4},
    scaleout_repeats=1,
    image_gzip=False,
)
FULL = Plan(
    mode="full",
    budget_minutes=1.25,
    repeats=2,
    overhead_values={"generations": 2, "population_size": 8},
    overhead_repeats=2,
    rows=(1_000, 10_000, 100_000),
    rows_values={"generations": 1, "population_size": 12, "max_eval_time_mins": 0.75},
    # The chart's default backend.schedulerWaitSeconds.
    fallback_wait_seconds=60,
    fallback_values={"generations": 1, "population_size": 4},
    scaleout_repeats=3,
    image_gzip=True,
)


def _median(values: list[float]) -> float | None:
    clean = [v for v in values if v is not None]
    return round(statistics.median(clean), 3) if clean else None


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return round(top / bottom, 3) if top is not None and bottom else None


@contextlib.contextmanager
def running_stack(workers: int, workdir: Path) -> Iterator[tuple[LocalStack, Client]]:
    """The dev chart's Deployments as local processes, with `workers` worker replicas."""
    manifests = render_environment("dev", set_values={"worker.replicas": workers})
    started = time.monotonic()
    with LocalStack(manifests, workdir=workdir) as stack:
        try:
            stack.start()
        except Exception:
            sys.stderr.write(stack.logs() + "\n")
            raise
        client = Client(stack.scheduler_address(), set_as_default=False, timeout=30)
        try:
            client.wait_for_workers(workers, timeout=120)
            ready = time.monotonic() - started
            info = client.scheduler_info(n_workers=-1)["workers"].values()
            threads = sorted({w["nthreads"] for w in info})
            # Long-lived workers have TPOT imported; a fresh one imports it with its first task.
            # Import it everywhere first, so no measurement carries that one-off cost.
            warm = time.monotonic()
            client.run(exec, "import tpot, sklearn.ensemble, sklearn.neighbors")
            stack_facts = {
                "workers": workers,
                "nthreads": threads,
                "ready_seconds": round(ready, 1),
                "worker_tpot_import_seconds": round(time.monotonic() - warm, 2),
            }
            log.info("event=stack_ready %s", " ".join(f"{k}={v}" for k, v in stack_facts.items()))
            STACKS.append(stack_facts)
            yield stack, client
        finally:
            client.close()


def _timed(what: str, function: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    with load.Busy() as busy:
        result = function()
    result["host"] = busy.result
    log.info("event=measured what=%s host=%s", what, json.dumps(busy.result))
    return result


def synthetic_dataset(rows: int, directory: Path) -> Path:
    """A seeded two-class table with 20 numeric features and a `label` column, as CSV."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=rows,
        n_features=20,
        n_informative=8,
        n_redundant=4,
        random_state=SEED,
    )
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
    frame["label"] = np.where(y == 1, "yes", "no")
    path = directory / f"synthetic-{rows}.csv"
    frame.to_csv(path, index=False, float_format="%.6g")
    return path


class Benchmarks:
    def __init__(self, plan: Plan, items: set[str], workdir: Path) -> None:
        self.plan = plan
        self.items = items
        self.workdir = workdir
        dataset, target = bundled_dataset()
        self.dataset = dataset
        self.target = target
        self.results: dict[str, Any] = {}

    # -- search arms -------------------------------------------------------------------------------

    def _throughput_input(self) -> search.SearchInput:
        return search.prepare(
            self.dataset,
            {
                "target": self.target,
                "generations": 100,
                "population_size": 20,
                "max_time_mins": self.plan.budget_minutes,
                "random_state": SEED,
            },
        )

    def _cluster_run(self, client: Client) -> dict[str, Any]:
        data = self._throughput_input()
        return _timed(
            "cluster_search",
            lambda: search.run_tpot(data, client=client, memory_limit_mb=MEMORY_LIMIT_MB),
        )

    def _local_run(self) -> dict[str, Any]:
        data = self._throughput_input()
        return _timed(
            "local_search",
            lambda: search.run_tpot(data, client=None, n_jobs=2, memory_limit_mb=MEMORY_LIMIT_MB),
        )

    # -- phases ------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        arms: dict[str, list[dict[str, Any]]] = {"cluster_2": [], "cluster_1": [], "local_2": []}
        want_1 = "scaling" in self.items
        want_2 = bool({"throughput", "scaling", "overhead", "rows"} & self.items)
        want_local = "throughput" in self.items
        want_2_search = bool({"throughput", "scaling"} & self.items)

        if want_1:
            with running_stack(1, self.workdir / "stack-1a") as (_, client):
                arms["cluster_1"].append(self._cluster_run(client))

        if want_2:
            with running_stack(2, self.workdir / "stack-2") as (stack, client):
                if want_2_search:
                    arms["cluster_2"].append(self._cluster_run(client))
                if want_local:
                    arms["local_2"].append(self._local_run())
                if "overhead" in self.items:
                    self.results["overhead"] = self._overhead(stack, client)
                if "rows" in self.items:
                    self.results["rows"] = self._rows(stack, client)
                for _ in range(self.plan.repeats - 1):
                    if want_2_search:
                        arms["cluster_2"].append(self._cluster_run(client))
                    if want_local:
                        arms["local_2"].append(self._local_run())

        if want_1 and self.plan.repeats > 1:
            with running_stack(1, self.workdir / "stack-1b") as (_, client):
                for _ in range(self.plan.repeats - 1):
                    arms["cluster_1"].append(self._cluster_run(client))

        if "throughput" in self.items:
            self.results["throughput"] = self._compare(
                arms["cluster_2"], arms["local_2"], "cluster_2_workers", "tpot_local_n_jobs_2"
            )
        if "scaling" in self.items:
            self.results["scaling"] = self._compare(
                arms["cluster_2"], arms["cluster_1"], "cluster_2_workers", "cluster_1_worker"
            )
        if "fallback" in self.items:
            self.results["fallback"] = _timed(
                "fallback",
                lambda: backend.fallback_timing(
                    wait_seconds=self.plan.fallback_wait_seconds,
                    values={"random_state": SEED, **self.plan.fallback_values},
                    workdir=self.workdir / "fallback",
                    timeout_seconds=600,
                ),
            )
        if "scaleout" in self.items:
            self.results["scaleout"] = self._scaleout()
        return self.results

    def _compare(
        self,
        top: list[dict[str, Any]],
        bottom: list[dict[str, Any]],
        top_name: str,
        bottom_name: str,
    ) -> dict[str, Any]:
        def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                "pipelines_per_minute": _median([r["pipelines_per_minute"] for r in runs]),
                "pipelines_per_minute_while_evaluating": _median(
                    [r["pipelines_per_minute_while_evaluating"] for r in runs]
                ),
                "first_evaluation_submitted_after_seconds": _median(
                    [r["first_evaluation_submitted_after_seconds"] for r in runs]
                ),
            }

        top_m, bottom_m = medians(top), medians(bottom)
        return {
            "budget_minutes": self.plan.budget_minutes,
            "dataset": f"{self.dataset.name} (target {self.target})",
            "seed": SEED,
            "ratio": _ratio(top_m["pipelines_per_minute"], bottom_m["pipelines_per_minute"]),
            "ratio_while_evaluating": _ratio(
                top_m["pipelines_per_minute_while_evaluating"],
                bottom_m["pipelines_per_minute_while_evaluating"],
            ),
            top_name: {"median": top_m, "runs": top},
            bottom_name: {"median": bottom_m, "runs": bottom},
        }

    def _overhead(self, stack: LocalStack, client: Client) -> dict[str, Any]:
        values = {
            "target": self.target,
            "random_state": SEED,
            "max_time_mins": 30,
            **self.plan.overhead_values,
        }
        base_url = stack.url("backend", "http")
        direct_runs, api_runs = [], []
        for index in range(self.plan.overhead_repeats):
            # Alternate the order so drift in the host's load does not favour one side.
            order = ("direct", "api") if index % 2 == 0 else ("api", "direct")
            for side in order:
                if side == "direct":
                    data = search.prepare(self.dataset, values)
                    direct_runs.append(
                        _timed(
                            "direct_fixed_work",
                            lambda data=data: search.run_tpot(
                                data, client=client, memory_limit_mb=MEMORY_LIMIT_MB
                            ),
                        )
                    )
                else:
                    api_values = {k: v for k, v in values.items() if k != "target"}
                    outcome = _timed(
                        "api_fixed_work",
                        lambda api_values=api_values: backend.run_api_job(
                            base_url, self.dataset, self.target, api_values, timeout_seconds=900
                        ),
                    )
                    result = outcome["job"]["result"]
                    api_runs.append(
                        {
                            "observed_seconds": outcome["observed_seconds"],
                            "upload_seconds": outcome["upload_seconds"],
                            "job_wall_time_seconds": result["wall_time_seconds"],
                            "search_seconds": result["search_seconds"],
                            "pipelines_evaluated": result["pipelines_evaluated"],
                            "mode": outcome["job"]["mode"],
                            "data_shipped": result.get("data_shipped"),
                            "host": outcome["host"],
                        }
                    )
        api_seconds = _median([r["observed_seconds"] for r in api_runs])
        direct_seconds = _median([r["fit_seconds"] for r in direct_runs])
        api_per = _median([r["observed_seconds"] / r["pipelines_evaluated"] for r in api_runs])
        direct_per = _median([r["fit_seconds"] / r["pipelines_evaluated"] for r in direct_runs])
        return {
            "params": values,
            "ratio": _ratio(api_seconds, direct_seconds),
            "ratio_per_pipeline": _ratio(api_per, direct_per),
            "api_observed_seconds_median": api_seconds,
            "direct_fit_seconds_median": direct_seconds,
            "api": api_runs,
            "direct": direct_runs,
        }

    def _rows(self, stack: LocalStack, client: Client) -> dict[str, Any]:
        from tpot_backend.bridge import materialised_counts

        base_url = stack.url("backend", "http")
        trees = {p.pod: p.popen.pid for p in stack.processes if p.popen is not None}
        values = {"task": "classification", "random_state": SEED, "max_time_mins": 30}
        values.update(self.plan.rows_values)
        runs = []
        for rows in self.plan.rows:
            path = synthetic_dataset(rows, self.workdir)
            with backend.MemorySampler(client=client, trees=trees) as sampler:
                outcome = _timed(
                    f"rows_{rows}",
                    lambda path=path: backend.run_api_job(
                        base_url, path, "label", values, timeout_seconds=1800
                    ),
                )
            job = outcome["job"]
            result = job["result"]
            # How many times each of the job's data objects was unpickled, over all workers.
            materialised: dict[str, int] = {}
            for counts in client.run(materialised_counts).values():
                for key, count in counts.items():
                    if job["id"] in key:
                        materialised[key] = materialised.get(key, 0) + count
            shipped = result.get("data_shipped") or {}
            runs.append(
                {
                    "rows": rows,
                    "csv_bytes": path.stat().st_size,
                    "mode": job["mode"],
                    "observed_seconds": outcome["observed_seconds"],
                    "search_seconds": result["search_seconds"],
                    "job_wall_time_seconds": result["wall_time_seconds"],
                    "pipelines_evaluated": result["pipelines_evaluated"],
                    "pipelines_failed": result["pipelines_failed"],
                    "seconds_per_pipeline": _ratio(
                        result["search_seconds"], result["pipelines_evaluated"]
                    ),
                    "data_shipped": shipped,
                    "bytes_per_evaluation_submitted": (
                        round(shipped["bytes"] / shipped["evaluations_submitted"])
                        if shipped.get("evaluations_submitted")
                        else None
                    ),
                    "data_materialised_times_per_object": sorted(materialised.values()),
                    "memory": sampler.summary(),
                    "host": outcome["host"],
                }
            )
        return {"params": values, "features": 20, "runs": runs}

    def _scaleout(self) -> dict[str, Any]:
        if not scaleout.engine_available():
            return {"skipped": "no Docker engine answers (bash ci/docker.sh starts one)"}
        manifests = render_environment("dev")
        image = next(
            c["image"]
            for m in manifests
            if m.get("kind") == "Deployment"
            for c in m["spec"]["template"]["spec"]["containers"]
        )
        result: dict[str, Any] = {
            "image": scaleout.image_facts(image, compressed=self.plan.image_gzip)
        }
        result.update(
            _timed(
                "scaleout",
                lambda: scaleout.worker_registration(manifests, repeats=self.plan.scaleout_repeats),
            )
        )
        return result


# -- report ----------------------------------------------------------------------------------------


def table(report: dict[str, Any]) -> str:
    """The headline figures as a fixed-width text table."""
    rows: list[tuple[str, str, str]] = []
    r = report["results"]

    if "throughput" in r:
        t = r["throughput"]
        rows.append(
            (
                "1 throughput: 2-worker stack / TPOT local n_jobs=2",
                f"{t['ratio']}",
                f"{t['cluster_2_workers']['median']['pipelines_per_minute']} vs "
                f"{t['tpot_local_n_jobs_2']['median']['pipelines_per_minute']} pipelines/min "
                f"(while evaluating: ratio {t['ratio_while_evaluating']})",
            )
        )
    if "scaling" in r:
        s = r["scaling"]
        rows.append(
            (
                "2 scaling: 2 workers / 1 worker",
                f"{s['ratio']}",
                f"{s['cluster_2_workers']['median']['pipelines_per_minute']} vs "
                f"{s['cluster_1_worker']['median']['pipelines_per_minute']} pipelines/min "
                f"(while evaluating: ratio {s['ratio_while_evaluating']})",
            )
        )
    if "overhead" in r:
        o = r["overhead"]
        rows.append(
            (
                "3 overhead: API job / direct TPOT call",
                f"{o['ratio']}",
                f"{o['api_observed_seconds_median']} s vs {o['direct_fit_seconds_median']} s "
                f"(per pipeline: {o['ratio_per_pipeline']})",
            )
        )
    if "fallback" in r:
        f = r["fallback"]
        first = f["first_job"]
        rows.append(
            (
                "4 fallback: scheduler absent -> first local evaluation",
                f"{first['local_search_started_after_start_seconds']} s",
                f"budget {f['wait_budget_seconds']:g} s; after budget spent, next job "
                f"{f['second_job']['local_search_started_after_submit_seconds']} s",
            )
        )
    if "scaleout" in r:
        s = r["scaleout"]
        if "skipped" in s:
            rows.append(("5 scale-out", "skipped", s["skipped"]))
        else:
            image = s["image"]
            gz = f", {image['gzip_mb']} MB gzip" if "gzip_mb" in image else ""
            rows.append(("5 scale-out: image size", f"{image['size_mb']} MB", f"unpacked{gz}"))
            rows.append(
                (
                    "5 scale-out: worker container start -> registered",
                    f"{s['registered_seconds_median']} s",
                    f"median of {len(s['runs'])}, max {s['registered_seconds_max']} s; "
                    f"then importing TPOT {s['runs'][-1]['first_tpot_import_seconds']} s",
                )
            )
    if "rows" in r:
        for run in r["rows"]["runs"]:
            shipped = run["data_shipped"]
            rows.append(
                (
                    f"6 rows {run['rows']:>7,}: job seconds",
                    f"{run['observed_seconds']} s",
                    f"{run['pipelines_evaluated']} pipelines, "
                    f"{run['seconds_per_pipeline']} s each; "
                    f"data shipped {shipped.get('objects')} objects / "
                    f"{round(shipped.get('bytes', 0) / 1e6, 2)} MB for "
                    f"{shipped.get('evaluations_submitted')} evaluations",
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(2)] if rows else [0, 0]
    lines = [f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c}" for a, b, c in rows]
    host = report["machine"]
    lines.append(
        f"host: {host['nproc']} CPUs ({host['cpu_model']}), {host['memory_total_gib']} GiB; "
        f"load {report['load_average_start']} -> {report['load_average_end']}"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short budgets: checks the script")
    parser.add_argument("--only", help=f"comma-separated items to run, of: {', '.join(ITEMS)}")
    parser.add_argument("--skip", help="comma-separated items to leave out")
    parser.add_argument("--budget-minutes", type=float, help="time budget of items 1 and 2")
    parser.add_argument("--repeats", type=int, help="runs per arm of items 1 and 2")
    parser.add_argument("--output", type=Path, help="results file (default by mode)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "distributed", "tests.localstack"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    plan = QUICK if args.quick else FULL
    overrides: dict[str, Any] = {}
    if args.budget_minutes:
        overrides["budget_minutes"] = args.budget_minutes
    if args.repeats:
        overrides["repeats"] = args.repeats
    if overrides:
        plan = Plan(**{**asdict(plan), **overrides})
    items = set(args.only.split(",")) if args.only else set(ITEMS)
    items -= set(args.skip.split(",")) if args.skip else set()
    unknown = items - set(ITEMS)
    if unknown:
        parser.error(f"unknown item(s) {sorted(unknown)}: expected some of {', '.join(ITEMS)}")
    # Only a full run of every item replaces the figures docs/benchmarks.md reports.
    if plan.mode == "quick":
        default_name = "quick.json"
    elif items == set(ITEMS) and not overrides:
        default_name = "latest.json"
    else:
        default_name = "partial.json"
    output = args.output or RESULTS_DIR / default_name

    report: dict[str, Any] = {
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": plan.mode,
        "items": sorted(items, key=ITEMS.index),
        "plan": asdict(plan),
        "machine": machine.hardware(),
        "versions": machine.versions(),
        "source": machine.source(),
        "load_average_start": machine.load_average(),
        "caveats": [
            "A shared 2-CPU host: other work ran beside these measurements; each measurement "
            "records the share of the machine's CPU other processes took (host.other_cpu_share).",
            "The stack runs as local processes on one host (tests/harness/localstack.py), not as "
            "pods: no container limits, no network between nodes.",
        ],
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tpot-bench-") as workdir:
        report["results"] = Benchmarks(plan, items, Path(workdir)).run()
    report["stacks"] = STACKS
    report["load_average_end"] = machine.load_average()
    report["elapsed_minutes"] = round((time.monotonic() - started) / 60, 1)

    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_suffix(".json.tmp")
    partial.write_text(json.dumps(report, indent=2, default=str) + "\n")
    partial.replace(output)
    sys.stdout.write(table(report))
    sys.stdout.write(f"written: {output} ({report['elapsed_minutes']} min)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
