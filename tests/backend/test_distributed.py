"""Jobs on an external scheduler: the `client.cluster` bridge, and the dataset sent once per job."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from distributed import Client
from tpot_backend.bridge import TpotClientBridge, materialised_counts
from tpot_backend.cluster import open_client
from tpot_backend.config import Settings
from tpot_backend.datasets import prepare_training_data
from tpot_backend.runner import JobParams, run_search

from tests.backend.conftest import MEMORY_LIMIT_MB, StartBackend, run_backend
from tests.harness.dask_cluster import DaskCluster

pytestmark = pytest.mark.backend

# Measured: TPOT 1.1 ships ~150 KB per evaluation (the pipeline and its search space).
EVALUATION_OVERHEAD_BYTES = 400_000


@pytest.fixture
def observer(shared_cluster: DaskCluster) -> Iterator[Client]:
    with Client(shared_cluster.address, timeout=20, set_as_default=False) as client:
        yield client


def _executed_per_worker(client: Client) -> dict[str, int]:
    return client.run(lambda dask_worker: dask_worker.state.executed_count)


def _data_materialisations(client: Client, job_id: str) -> dict[str, int]:
    totals: dict[str, int] = {}
    for counts in client.run(materialised_counts).values():
        for key, count in counts.items():
            if job_id in key:
                totals[key] = totals.get(key, 0) + count
    return totals


def test_job_runs_distributed_and_its_tasks_ran_on_the_cluster_workers(
    shared_cluster: DaskCluster, observer: Client, backend_env: dict[str, str], tmp_path: Path
) -> None:
    before = _executed_per_worker(observer)
    env = {
        **backend_env,
        "TPOT_PARALLEL_MODE": "distributed",
        "DASK_SCHEDULER_ADDRESS": shared_cluster.address,
    }

    result = run_backend(
        [
            "run",
            "bundled",
            "--generations",
            "1",
            "--population-size",
            "4",
            "--cv",
            "3",
            "--random-state",
            "1",
            "--output",
            str(tmp_path / "out"),
        ],
        env,
    )

    assert result.returncode == 0, result.stderr[-5000:]
    report = result.json()
    summary = report["result"]
    assert report["mode"] == summary["mode"] == "distributed"
    assert report["scheduler"] == summary["scheduler"] == shared_cluster.address
    assert summary["pipelines_evaluated"] >= 1
    assert 0.5 < summary["holdout_score"] <= 1.0
    assert summary["versions"]["tpot"] == "1.1.0"
    assert summary["versions"]["distributed"] == "2026.8.0"

    after = _executed_per_worker(observer)
    ran_here = sum(after.values()) - sum(before.values())
    assert ran_here >= summary["pipelines_evaluated"] + 2  # evaluations plus the two data tasks
    assert _data_materialisations(observer, report["id"]) == {
        f"tpot-data-{report['id']}-0": 1,
        f"tpot-data-{report['id']}-1": 1,
    }

    assert not [e for e in result.events if e["event"] == "worker_memory_limit_mismatch"]
    # The backend's worker plugin switched TPOT's version check off on the cluster's workers.
    checks = observer.run(_update_check_name)
    assert set(checks.values()) == {"_no_update_check"}

    model = joblib.load(report["model_path"])
    features = pd.read_csv(
        Path(__file__).resolve().parents[2] / "backend/src/tpot_backend/data/breast_cancer.csv"
    ).drop(columns=["diagnosis"])
    assert set(np.unique(model.predict(features.head(50)))) <= {0, 1}


def _update_check_name() -> str:
    import update_checker

    return str(update_checker.update_check.__name__)


def _wide_table(rows: int, features: int) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    values = rng.normal(size=(rows, features))
    frame = pd.DataFrame(values, columns=[f"f{i}" for i in range(features)])
    frame["label"] = (values[:, 0] > 0).astype(int)
    return frame


def _tiny_params(settings: Settings, **overrides: Any) -> JobParams:
    values = {
        "target": "label",
        "generations": 1,
        "population_size": 4,
        "cv": 3,
        "random_state": 1,
        "max_eval_time_mins": 1,
        **overrides,
    }
    return JobParams.from_values(values, settings.limits)


def test_dataset_goes_to_the_cluster_once_per_job_not_once_per_evaluation(
    shared_cluster: DaskCluster, observer: Client
) -> None:
    settings = Settings.from_env(
        {"DASK_SCHEDULER_ADDRESS": shared_cluster.address, "TPOT__MEMORY_LIMIT_MB": "1024"}
    )
    params = _tiny_params(settings, generations=2)
    data = prepare_training_data(
        _wide_table(1500, 120), target="label", task=None, cv=3, test_size=params.test_size
    )
    job_id = f"once{uuid.uuid4().hex[:8]}"
    client = open_client(settings, 20)
    try:
        bridge = TpotClientBridge(client, job_id=job_id)
        sent_before = client.scheduler_comm.byte_count

        result = run_search(
            data,
            params,
            bridge,
            limits=settings.limits,
            memory_limit_mb=MEMORY_LIMIT_MB,
            job_id=job_id,
            mode="distributed",
        )

        sent = client.scheduler_comm.byte_count - sent_before
    finally:
        client.close()

    shipped = result.summary["data_shipped"]
    evaluations = shipped["evaluations_submitted"]
    assert shipped["objects"] == 2 and shipped["bytes"] > 1_000_000
    assert evaluations >= 4
    # Once per job: the payload once, plus TPOT's small per-evaluation messages ...
    assert sent < shipped["bytes"] * 1.05 + evaluations * EVALUATION_OVERHEAD_BYTES
    # ... far below what shipping the data with every evaluation would take.
    assert sent < evaluations * shipped["bytes"] / 2
    assert _data_materialisations(observer, job_id) == {
        f"tpot-data-{job_id}-0": 1,
        f"tpot-data-{job_id}-1": 1,
    }


def test_worker_memory_limit_different_from_the_backend_setting_is_logged_loudly(
    shared_cluster: DaskCluster, backend_env: dict[str, str], start_backend: StartBackend
) -> None:
    env = {
        **backend_env,
        "TPOT_PARALLEL_MODE": "distributed",
        "DASK_SCHEDULER_ADDRESS": shared_cluster.address,
        "TPOT__MEMORY_LIMIT_MB": "2048",
    }
    server = start_backend(env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not server.events("worker_memory_limit_mismatch"):
        time.sleep(0.3)

    mismatches = server.events("worker_memory_limit_mismatch")
    assert mismatches, server.logs()[-3000:]
    assert mismatches[0]["level"] == "ERROR" and mismatches[0]["expected_mb"] == 2048
    assert mismatches[0]["workers"] == {"worker-0": MEMORY_LIMIT_MB, "worker-1": MEMORY_LIMIT_MB}
