"""Prometheus metrics of the backend, served on `/metrics`. No label ever carries a job id.

Names and labels are part of the contract in docs/architecture.md; `mode` is `distributed` or
`local`. Each `Metrics` object has its own registry, so several backends (or tests) in one process
do not share counters.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

MODES = ("distributed", "local")
FINAL_STATUSES = ("succeeded", "failed", "cancelled")
# A tiny search takes seconds, a real one hours.
DURATION_BUCKETS_SECONDS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200)

CONTENT_TYPE = CONTENT_TYPE_LATEST

# `*_created` series double the output and no dashboard or alert reads them.
disable_created_metrics()


class Metrics:
    """The backend's metric families, registered in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

        self.jobs_submitted = Counter(
            "tpot_jobs_submitted_total",
            "Jobs accepted, by the mode their arm chose.",
            ["mode"],
            registry=self.registry,
        )
        self.jobs_finished = Counter(
            "tpot_jobs_finished_total",
            "Jobs that reached a final status, by the mode they ran in.",
            ["mode", "status"],
            registry=self.registry,
        )
        self.job_duration = Histogram(
            "tpot_job_duration_seconds",
            "Wall time of finished jobs, from start to end, by mode.",
            ["mode"],
            buckets=DURATION_BUCKETS_SECONDS,
            registry=self.registry,
        )
        self.pipelines_evaluated = Counter(
            "tpot_pipelines_evaluated_total",
            "Pipelines TPOT evaluated, by mode.",
            ["mode"],
            registry=self.registry,
        )
        self.pipelines_failed = Counter(
            "tpot_pipelines_failed_total",
            "Pipeline evaluations that failed (error, time limit or killed worker), by mode.",
            ["mode"],
            registry=self.registry,
        )
        self.scheduler_connected = Gauge(
            "tpot_scheduler_connected",
            "1 while the backend is connected to the Dask scheduler, else 0.",
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "tpot_fallbacks_total",
            "Jobs that ran locally instead of on the cluster, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.jobs_queued = Gauge(
            "tpot_jobs_queued",
            "Jobs waiting for a free slot.",
            registry=self.registry,
        )
        self.jobs_running = Gauge(
            "tpot_jobs_running",
            "Jobs running now, by mode.",
            ["mode"],
            registry=self.registry,
        )

        for mode in MODES:
            self.jobs_submitted.labels(mode=mode)
            self.job_duration.labels(mode=mode)
            self.pipelines_evaluated.labels(mode=mode)
            self.pipelines_failed.labels(mode=mode)
            self.jobs_running.labels(mode=mode).set(0)
            for status in FINAL_STATUSES:
                self.jobs_finished.labels(mode=mode, status=status)
        for reason in ("scheduler_unreachable", "scheduler_lost", "no_workers"):
            self.fallbacks.labels(reason=reason)
        self.scheduler_connected.set(0)
        self.jobs_queued.set(0)

    def render(self) -> bytes:
        """The text exposition format of every metric in this registry."""
        return generate_latest(self.registry)
