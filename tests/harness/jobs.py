"""A small client for the backend's job API, shared by the demo, the run, compose and kind tiers."""

from __future__ import annotations

import csv
import time
from importlib import resources
from pathlib import Path
from typing import Any

import httpx

TERMINAL_STATES = {"succeeded", "failed", "cancelled"}


def bundled_dataset() -> tuple[Path, str]:
    """The CSV shipped inside the backend package, and its target column (the last one)."""
    data_dir = resources.files("tpot_backend") / "data"
    path = Path(str(next(p for p in data_dir.iterdir() if p.name.endswith(".csv"))))
    with path.open(newline="") as handle:
        header = next(csv.reader(handle))
    return path, header[-1]


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def submit_job(
    base_url: str, path: Path, target: str, *, token: str | None = None, **params: Any
) -> str:
    """POST the dataset as a multipart upload; returns the job id from the 202 answer."""
    with path.open("rb") as handle:
        response = httpx.post(
            f"{base_url}/v1/jobs",
            files={"file": (path.name, handle, "text/csv")},
            data={"target": target, **{k: str(v) for k, v in params.items()}},
            headers=_headers(token),
            timeout=60,
        )
    if response.status_code != 202:
        raise AssertionError(f"job submission answered {response.status_code}: {response.text}")
    return str(response.json()["id"])


def get_job(base_url: str, job_id: str, *, token: str | None = None) -> dict[str, Any]:
    response = httpx.get(f"{base_url}/v1/jobs/{job_id}", headers=_headers(token), timeout=30)
    response.raise_for_status()
    return dict(response.json())


def wait_for_job(
    base_url: str, job_id: str, *, token: str | None = None, timeout_seconds: float = 300
) -> dict[str, Any]:
    """Poll until the job reaches a terminal state; raise with the last record on time-out."""
    deadline = time.monotonic() + timeout_seconds
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = get_job(base_url, job_id, token=token)
        if job.get("status") in TERMINAL_STATES:
            return job
        time.sleep(1)
    raise TimeoutError(f"job {job_id} did not finish in {timeout_seconds} s: {job}")
