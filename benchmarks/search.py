"""The TPOT call the backend makes, made directly: on a Dask cluster, or in TPOT's own local mode.

`prepare` repeats the steps `tpot_backend.runner.run_search` takes before `fit` (read, validate,
label-encode, hold out, impute and encode), and `run_tpot` builds the estimator with the runner's
own constructor, so search space, scorer, CV, seed, memory limit and time budget are the backend's.
Only the parallelism differs:

* cluster: a Dask client connected to the scheduler. TPOT 1.1 reads ``client.cluster.workers`` to
  decide how many evaluations to keep in flight, and a client connected by address has no
  ``cluster``; `DirectClient` answers that one attribute from the scheduler and passes everything
  else (Dask's own ``scatter`` included) to the real client.
* local: ``client=None, n_jobs=N``: TPOT starts its own LocalCluster of N single-threaded worker
  processes inside ``fit`` and shuts it down afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
from distributed import Client
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder
from tpot_backend.config import JobLimits
from tpot_backend.datasets import prepare_training_data, read_table
from tpot_backend.runner import JobParams, _evaluation_counts, _tpot_estimator, build_preprocessor
from tpot_backend.runtime import prepare_process

log = logging.getLogger("benchmarks.search")

# Task states TPOT writes into its objective column instead of a score.
NOT_A_SCORE = ("TIMEOUT", "INVALID")


@dataclass
class SearchInput:
    """Training data and parameters exactly as the runner hands them to TPOT."""

    x_train: np.ndarray
    y_train: np.ndarray
    task: str
    scoring: str
    params: JobParams
    rows: int


def prepare(dataset: Path, values: dict[str, Any], limits: JobLimits | None = None) -> SearchInput:
    """Read `dataset` and apply the runner's steps up to `fit` (see the module docstring)."""
    limits = limits or JobLimits()
    params = JobParams.from_values(values, limits)
    data = prepare_training_data(
        read_table(dataset),
        target=params.target,
        task=params.task,
        cv=params.cv,
        test_size=params.test_size,
    )

    y_all = data.target
    if data.task == "classification":
        y_all = pd.Series(LabelEncoder().fit_transform(y_all.astype(str)), index=y_all.index)
    else:
        y_all = y_all.astype(float)

    x_train, _, y_train, _ = train_test_split(
        data.features,
        y_all,
        test_size=params.test_size,
        random_state=params.random_state,
        stratify=y_all if data.task == "classification" else None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x_ready = np.asarray(build_preprocessor(x_train).fit_transform(x_train), dtype=np.float64)
    return SearchInput(
        x_train=x_ready,
        y_train=y_train.to_numpy(),
        task=data.task,
        scoring=params.resolved_scoring(data.task, limits),
        params=params,
        rows=data.n_rows,
    )


class _LiveWorkers:
    def __init__(self, client: Client) -> None:
        self._client = client

    @property
    def workers(self) -> dict[str, Any]:
        return dict(self._client.scheduler_info(n_workers=-1).get("workers", {}))


class DirectClient:
    """A Dask client plus the one attribute TPOT 1.1 reads from ``client.cluster``."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self.cluster = _LiveWorkers(client)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


@contextlib.contextmanager
def _local_worker_preload() -> Iterator[None]:
    # TPOT's own LocalCluster workers get the backend's process preparation (no update check
    # against PyPI on `import tpot`, caches in /tmp), as the chart's workers get it by plugin.
    with dask.config.set({"distributed.worker.preload": ["tpot_backend.runtime"]}):
        yield


def count_evaluations(evaluated: pd.DataFrame | None, objective: str) -> dict[str, int]:
    """Evaluations by outcome: scored, failed (an error), timed out or cut by the time budget."""
    if evaluated is None or len(evaluated) == 0:
        return {"scored": 0, "failed": 0, "timeout": 0}
    scores = evaluated[objective] if objective in evaluated else pd.Series(index=evaluated.index)
    errors = (
        evaluated["Eval Error"].astype(str)
        if "Eval Error" in evaluated
        else pd.Series("None", index=evaluated.index)
    )
    numeric = pd.to_numeric(scores, errors="coerce")
    timeout = (scores.astype(str) == "TIMEOUT") | (errors == "TIMEOUT")
    failed = ~timeout & ((scores.astype(str) == "INVALID") | (errors == "INVALID"))
    scored = numeric.notna() & ~timeout & ~failed
    return {"scored": int(scored.sum()), "failed": int(failed.sum()), "timeout": int(timeout.sum())}


def run_tpot(
    search: SearchInput,
    *,
    client: Client | None,
    n_jobs: int = 1,
    memory_limit_mb: int,
) -> dict[str, Any]:
    """One `fit`, timed; `client=None` is TPOT's local mode with `n_jobs` worker processes."""
    prepare_process()
    if client is None:
        estimator = _tpot_estimator(
            search.task, search.params, search.scoring, None, memory_limit_mb
        )
        estimator.set_params(n_jobs=n_jobs)
        context: contextlib.AbstractContextManager[Any] = _local_worker_preload()
        workers = n_jobs
    else:
        direct = DirectClient(client)
        estimator = _tpot_estimator(
            search.task, search.params, search.scoring, direct, memory_limit_mb
        )
        context = client.as_current()
        workers = len(direct.cluster.workers)

    started_wall = time.time()
    started = time.monotonic()
    with warnings.catch_warnings(), context:
        warnings.simplefilter("ignore")
        estimator.fit(search.x_train, search.y_train)
    fit_seconds = time.monotonic() - started

    evaluated = getattr(estimator, "evaluated_individuals", None)
    objective = estimator.objective_names[0]
    counts = count_evaluations(evaluated, objective)
    completed = counts["scored"] + counts["failed"]
    window: dict[str, float | None] = {"first_submitted": None, "last_completed": None}
    if evaluated is not None and "Submitted Timestamp" in evaluated:
        submitted = pd.to_numeric(evaluated["Submitted Timestamp"], errors="coerce").dropna()
        done = pd.to_numeric(evaluated["Completed Timestamp"], errors="coerce").dropna()
        if len(submitted):
            window["first_submitted"] = round(float(submitted.min()) - started_wall, 3)
        if len(done):
            window["last_completed"] = round(float(done.max()) - started_wall, 3)
    evaluating_seconds = None
    if window["first_submitted"] is not None and window["last_completed"] is not None:
        evaluating_seconds = window["last_completed"] - window["first_submitted"]

    result = {
        "workers": workers,
        "fit_seconds": round(fit_seconds, 3),
        "evaluations": counts,
        "evaluations_completed": completed,
        # The number the backend reports as pipelines_evaluated, counted the backend's way.
        "pipelines_evaluated": _evaluation_counts(evaluated, objective)[0],
        "pipelines_per_minute": round(completed / fit_seconds * 60, 2) if fit_seconds else None,
        "first_evaluation_submitted_after_seconds": window["first_submitted"],
        "last_evaluation_completed_after_seconds": window["last_completed"],
        "pipelines_per_minute_while_evaluating": (
            round(completed / evaluating_seconds * 60, 2) if evaluating_seconds else None
        ),
        "generations_reached": (
            int(evaluated["Generation"].max()) + 1
            if evaluated is not None and "Generation" in evaluated and len(evaluated)
            else 0
        ),
    }
    log.info(
        "event=tpot_fit_finished mode=%s workers=%s fit_seconds=%.1f completed=%s",
        "local" if client is None else "cluster",
        workers,
        fit_seconds,
        completed,
    )
    return result
