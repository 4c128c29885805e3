"""`make demo`: the dev chart's own commands on this machine, one TPOT job, the result printed.

Renders charts/tpot with values-dev.yaml using the real helm, starts the scheduler, the two
workers and the backend exactly as those manifests command (tests/harness/localstack.py says what
is mapped to loopback), submits the bundled dataset, waits for the job and prints its summary.
Everything it starts is stopped on exit, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from tests.harness.helm import render_environment
from tests.harness.jobs import bundled_dataset, submit_job, wait_for_job
from tests.harness.localstack import LocalStack

log = logging.getLogger("demo")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=2, help="TPOT generations (default 2)")
    parser.add_argument(
        "--population-size", type=int, default=6, help="TPOT population (default 6)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    manifests = render_environment("dev")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tpot-demo-") as workdir:
        with LocalStack(manifests, workdir=Path(workdir)) as stack:
            try:
                stack.start()
            except Exception:
                sys.stderr.write(stack.logs() + "\n")
                raise
            backend = stack.url("backend", "http")
            log.info(
                "event=stack_ready elapsed_seconds=%.1f backend=%s dashboard=%s",
                time.monotonic() - started,
                backend,
                stack.url("scheduler", "dashboard") + "/status",
            )

            path, target = bundled_dataset()
            job_id = submit_job(
                backend,
                path,
                target,
                generations=args.generations,
                population_size=args.population_size,
                random_state=42,
            )
            log.info(
                "event=job_submitted job_id=%s dataset=%s target=%s", job_id, path.name, target
            )
            job = wait_for_job(backend, job_id, timeout_seconds=900)
            log.info(
                "event=job_finished job_id=%s status=%s mode=%s",
                job_id,
                job["status"],
                job.get("mode"),
            )

    result = job.get("result") or {}
    summary = {
        "job_id": job_id,
        "status": job["status"],
        "mode": job.get("mode"),
        "scheduler": result.get("scheduler"),
        "cv_score": result.get("cv_score"),
        "holdout_score": result.get("holdout_score"),
        "scoring": result.get("scoring"),
        "pipelines_evaluated": result.get("pipelines_evaluated"),
        "pipelines_failed": result.get("pipelines_failed"),
        "wall_time_seconds": result.get("wall_time_seconds"),
        "best_pipeline": result.get("best_pipeline"),
        "error": job.get("error"),
    }
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0 if job["status"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
