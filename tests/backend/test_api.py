"""The HTTP API: jobs end to end, every bad input, the queue, cancellation, token, probes."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from pathlib import Path

import joblib
import pandas as pd
import pytest

from tests.backend.conftest import StartBackend, write_classification_csv
from tests.harness.dask_cluster import DaskCluster

pytestmark = pytest.mark.backend

ALLOWED_LABELS = {"mode", "status", "reason", "le"}


def test_job_over_http_runs_on_the_cluster_and_serves_its_model(
    shared_cluster: DaskCluster,
    backend_env: dict[str, str],
    start_backend: StartBackend,
    small_csv: Path,
) -> None:
    assert shared_cluster.scheduler_file is not None
    env = {
        **backend_env,
        "TPOT_PARALLEL_MODE": "distributed",
        "TPOT_SCHEDULER_FILE": str(shared_cluster.scheduler_file),
    }
    server = start_backend(env)

    response = server.submit(small_csv, target="label")

    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.headers["location"] == f"/v1/jobs/{job_id}"
    job = server.wait_for(job_id, {"succeeded", "failed"})
    assert job["status"] == "succeeded", job
    assert job["mode"] == "distributed" and job["scheduler"] == shared_cluster.address
    assert job["task"] == "classification"
    result = job["result"]
    for key in (
        "best_pipeline",
        "cv_score",
        "holdout_score",
        "pipelines_evaluated",
        "pipelines_failed",
        "wall_time_seconds",
        "mode",
        "scheduler",
        "versions",
    ):
        assert key in result, key
    assert result["classes"] == ["no", "yes"]

    model = server.http.get(f"/v1/jobs/{job_id}/model")
    assert model.status_code == 200
    pipeline = joblib.load(io.BytesIO(model.content))
    assert len(pipeline.predict(_features(small_csv).head(5))) == 5

    listed = server.http.get("/v1/jobs").json()["jobs"]
    assert [j["id"] for j in listed] == [job_id]

    metrics = server.http.get("/metrics").text
    assert 'tpot_jobs_submitted_total{mode="distributed"} 1.0' in metrics
    assert 'tpot_jobs_finished_total{mode="distributed",status="succeeded"} 1.0' in metrics
    assert 'tpot_job_duration_seconds_count{mode="distributed"} 1.0' in metrics
    assert "tpot_scheduler_connected 1.0" in metrics
    evaluated = re.search(r'tpot_pipelines_evaluated_total\{mode="distributed"\} (\S+)', metrics)
    assert evaluated and float(evaluated.group(1)) == result["pipelines_evaluated"] > 0
    _assert_no_job_id_in_labels(metrics, job_id)


def _features(path: Path) -> pd.DataFrame:
    return pd.read_csv(path).drop(columns=["label"])


def _assert_no_job_id_in_labels(metrics: str, job_id: str) -> None:
    assert job_id not in metrics
    for line in metrics.splitlines():
        if line.startswith("tpot_") and "{" in line:
            labels = set(re.findall(r'(\w+)="', line))
            assert labels <= ALLOWED_LABELS, line


def _bad_inputs(tmp_path: Path) -> list[tuple[str, Path, dict[str, str], int, str, str]]:
    good = write_classification_csv(tmp_path / "good.csv")
    binary = tmp_path / "picture.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40)
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    constant = tmp_path / "constant.csv"
    constant.write_text("a,b,label\n" + "".join(f"{i},{i * 2},same\n" for i in range(50)))
    few = tmp_path / "few.csv"
    few.write_text("a,label\n1,x\n2,y\n3,x\n4,y\n")
    large = write_classification_csv(tmp_path / "large.csv", rows=12_000, features=8)
    text_target = tmp_path / "text.csv"
    text_target.write_text("a,label\n" + "".join(f"{i},v{i % 3}\n" for i in range(60)))
    header_only = tmp_path / "header.csv"
    header_only.write_text("a,b,label\n")
    many_classes = tmp_path / "many-classes.csv"  # 20 classes x 2 rows: 8 held out
    many_classes.write_text("a,label\n" + "".join(f"{i},c{i % 20}\n" for i in range(40)))
    thin_classes = tmp_path / "thin-classes.csv"  # 4 classes x 5 rows: 4 training rows each
    thin_classes.write_text("a,label\n" + "".join(f"{i},c{i % 4}\n" for i in range(20)))
    # (what, file, fields, status, field, words in the message)
    return [
        ("not a CSV", binary, {"target": "label"}, 400, "file", "not a CSV or Parquet"),
        ("empty file", empty, {"target": "label"}, 400, "file", "empty"),
        ("header only", header_only, {"target": "label"}, 422, "file", "no rows"),
        ("missing target column", good, {"target": "price"}, 422, "target", "'price' is not in"),
        ("constant target", constant, {"target": "label"}, 422, "target", "constant"),
        ("fewer rows than folds", few, {"target": "label", "cv": "5"}, 422, "cv", "need at least"),
        ("too large", large, {"target": "label"}, 413, "file", "larger than the limit of 1 MiB"),
        (
            "generations 0",
            good,
            {"target": "label", "generations": "0"},
            422,
            "generations",
            "out of range",
        ),
        (
            "population too big",
            good,
            {"target": "label", "population_size": "100000"},
            422,
            "population_size",
            "out of range",
        ),
        ("cv 1", good, {"target": "label", "cv": "1"}, 422, "cv", "from 2"),
        (
            "negative time",
            good,
            {"target": "label", "max_time_mins": "-1"},
            422,
            "max_time_mins",
            "out of range",
        ),
        (
            "not a number",
            good,
            {"target": "label", "generations": "many"},
            422,
            "generations",
            "not an integer",
        ),
        (
            "unknown scoring",
            good,
            {"target": "label", "scoring": "happiness"},
            422,
            "scoring",
            "not a known scorer",
        ),
        (
            "unknown task",
            good,
            {"target": "label", "task": "clustering"},
            422,
            "task",
            "classification, regression",
        ),
        (
            "more classes than held-out rows",
            many_classes,
            {"target": "label"},
            422,
            "target",
            "every class needs a row on each side",
        ),
        ("no class fills the folds", thin_classes, {"target": "label"}, 422, "cv", "cv=5 folds"),
        ("target too long", good, {"target": "x" * 600}, 422, "target", "longer than 512"),
        (
            "regression on text",
            text_target,
            {"target": "label", "task": "regression"},
            422,
            "task",
            "numeric target",
        ),
    ]


def _chunked_multipart(
    path: Path, fields: dict[str, str]
) -> tuple[dict[str, str], Iterator[bytes]]:
    """A multipart upload sent without Content-Length (chunked), as streaming clients do."""
    boundary = "tpot-test-boundary"

    def body() -> Iterator[bytes]:
        for name, value in fields.items():
            yield (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
            ).encode()
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{path.name}"\r\nContent-Type: text/csv\r\n\r\n'
        ).encode()
        with path.open("rb") as handle:
            while chunk := handle.read(64 * 1024):
                yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}, body()


def test_every_bad_input_answers_4xx_with_a_json_reason_and_the_service_stays_up(
    backend_env: dict[str, str], start_backend: StartBackend, tmp_path: Path
) -> None:
    env = {**backend_env, "TPOT_PARALLEL_MODE": "local", "TPOT_MAX_UPLOAD_MB": "1"}
    server = start_backend(env)

    for what, path, fields, status, field, words in _bad_inputs(tmp_path):
        with path.open("rb") as handle:
            response = server.http.post(
                "/v1/jobs", data=fields, files={"file": (path.name, handle, "text/csv")}
            )
        assert response.status_code == status, (what, response.text)
        body = response.json()
        assert body["field"] == field, (what, body)
        assert words in body["message"], (what, body)
        assert server.http.get("/healthz").status_code == 200, what

    headers, body = _chunked_multipart(tmp_path / "large.csv", {"target": "label"})
    chunked = server.http.post("/v1/jobs", headers=headers, content=body)
    assert chunked.status_code == 413 and chunked.json()["field"] == "file", chunked.text

    missing_file = server.http.post("/v1/jobs", data={"target": "label"})
    assert missing_file.status_code == 422 and missing_file.json()["field"] == "file"
    missing_target = server.http.post(
        "/v1/jobs", files={"file": ("good.csv", (tmp_path / "good.csv").read_bytes())}
    )
    assert missing_target.status_code == 422 and missing_target.json()["field"] == "target"
    assert server.http.get("/v1/jobs/nope").status_code == 404

    parquet = tmp_path / "good.parquet"
    pd.read_csv(tmp_path / "good.csv").to_parquet(parquet)
    accepted = server.submit(parquet, target="label")
    assert accepted.status_code == 202, accepted.text
    assert server.http.get("/v1/jobs").json()["jobs"][0]["id"] == accepted.json()["id"]
    uploads = list((Path(env["TPOT_DATA_DIR"]) / "uploads").iterdir())
    assert len(uploads) <= 1  # rejected uploads are not kept

    long_name = "d" * 600 + ".csv"  # kept to the store's field, extension included
    with (tmp_path / "good.csv").open("rb") as handle:
        named = server.http.post(
            "/v1/jobs", data={"target": "label"}, files={"file": (long_name, handle, "text/csv")}
        )
    assert named.status_code == 202, named.text
    stored_name = server.http.get(f"/v1/jobs/{named.json()['id']}").json()["filename"]
    assert len(stored_name) == 512 and stored_name.endswith(".csv")


def test_queue_runs_jobs_in_order_at_most_n_at_once_and_cancels(
    backend_env: dict[str, str], start_backend: StartBackend, small_csv: Path
) -> None:
    env = {**backend_env, "TPOT_PARALLEL_MODE": "local", "TPOT_MAX_CONCURRENT_JOBS": "1"}
    server = start_backend(env)

    ids = [server.submit(small_csv, target="label").json()["id"] for _ in range(3)]
    long_job = server.submit(
        small_csv, target="label", generations="50", population_size="8", max_time_mins="10"
    ).json()["id"]

    third = server.http.get(f"/v1/jobs/{ids[2]}").json()
    assert third["status"] == "queued" and third["queue_position"] >= 2
    cancelled = server.http.delete(f"/v1/jobs/{ids[2]}")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"

    most_running = 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        jobs = {j["id"]: j for j in server.http.get("/v1/jobs").json()["jobs"]}
        most_running = max(most_running, sum(j["status"] == "running" for j in jobs.values()))
        if jobs[long_job]["status"] == "running":
            break
        time.sleep(0.2)
    assert most_running == 1
    first, second = (server.http.get(f"/v1/jobs/{i}").json() for i in ids[:2])
    assert first["status"] == second["status"] == "succeeded"
    assert first["started_at"] <= first["finished_at"] <= second["started_at"]
    assert server.http.get(f"/v1/jobs/{ids[2]}").json()["started_at"] is None

    stop = server.http.delete(f"/v1/jobs/{long_job}")
    assert stop.status_code == 202 and stop.json()["cancel_requested"] is True
    job = server.wait_for(long_job, {"cancelled", "succeeded", "failed"}, timeout_seconds=120)
    assert job["status"] == "cancelled"

    assert server.http.delete(f"/v1/jobs/{ids[0]}").status_code == 409
    metrics = server.http.get("/metrics").text
    # One cancelled in the queue, one while it ran: both are finished jobs.
    assert 'tpot_jobs_finished_total{mode="local",status="cancelled"} 2.0' in metrics
    assert 'tpot_job_duration_seconds_count{mode="local"} 3.0' in metrics  # only jobs that ran
    assert 'tpot_jobs_finished_total{mode="local",status="succeeded"} 2.0' in metrics
    assert "tpot_jobs_queued 0.0" in metrics
    assert 'tpot_jobs_running{mode="local"} 0.0' in metrics


def test_token_guards_the_job_api_but_not_probes_or_metrics(
    backend_env: dict[str, str], start_backend: StartBackend
) -> None:
    token = "a-long-enough-token-for-tests"
    server = start_backend({**backend_env, "TPOT_PARALLEL_MODE": "local"}, token=token)
    anonymous = server.http.get("/v1/jobs", headers={"Authorization": ""})
    wrong = server.http.get("/v1/jobs", headers={"Authorization": "Bearer not-the-token-at-all"})

    assert anonymous.status_code == 401 and anonymous.json()["error"] == "unauthorized"
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert wrong.status_code == 401
    assert server.http.get("/v1/jobs").status_code == 200
    assert server.http.delete("/v1/jobs/x", headers={"Authorization": ""}).status_code == 401
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert server.http.get(path, headers={"Authorization": ""}).status_code == 200, path

    spec = server.http.get("/openapi.json").json()
    assert {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/model",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= set(spec["paths"])
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_readiness_needs_the_scheduler_only_in_distributed_mode(
    backend_env: dict[str, str], start_backend: StartBackend, small_csv: Path
) -> None:
    nowhere = {"DASK_SCHEDULER_ADDRESS": "tcp://127.0.0.1:9", "TPOT_SCHEDULER_WAIT_SECONDS": "3"}
    strict = start_backend({**backend_env, **nowhere, "TPOT_PARALLEL_MODE": "distributed"})
    lenient = start_backend({**backend_env, **nowhere, "TPOT_PARALLEL_MODE": "auto"})

    not_ready = strict.http.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"]["store"] == "ok"
    assert lenient.http.get("/readyz").status_code == 200

    job_id = strict.submit(small_csv, target="label").json()["id"]
    job = strict.wait_for(job_id, {"failed", "succeeded"}, timeout_seconds=60)
    assert job["status"] == "failed" and job["mode"] == "distributed"
    assert "scheduler not reachable at tcp://127.0.0.1:9" in job["error"]
    assert 'tpot_jobs_finished_total{mode="distributed",status="failed"} 1.0' in (
        strict.http.get("/metrics").text
    )
