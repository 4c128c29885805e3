"""Command line: `tpot-backend serve|run|wait-for-scheduler|write-scheduler-file|check-config`.

Exit codes: 0 success, 1 the work failed (job failed, scheduler not reachable), 2 bad configuration
or arguments (one line on stderr naming the variable and what it accepts).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tpot_backend import __version__
from tpot_backend.config import ConfigError, Settings

logger = logging.getLogger("tpot_backend.cli")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
BUNDLED = "bundled"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tpot-backend",
        description="TPOT AutoML jobs on a shared Dask cluster, with a local fallback.",
    )
    parser.add_argument("--version", action="version", version=f"tpot-backend {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("serve", help="run the HTTP job service (TPOT_HTTP_HOST:TPOT_HTTP_PORT)")

    run = commands.add_parser(
        "run", help="run one job and print its JSON summary (exit 0 on success, 1 on failure)"
    )
    run.add_argument("data", help=f"CSV or Parquet file, or '{BUNDLED}' for the bundled dataset")
    run.add_argument(
        "--target", help="column to predict (default for the bundled dataset: diagnosis)"
    )
    run.add_argument("--task", choices=("classification", "regression"))
    run.add_argument("--generations", type=int)
    run.add_argument("--population-size", type=int)
    run.add_argument("--max-time-mins", type=float)
    run.add_argument("--max-eval-time-mins", type=float)
    run.add_argument("--scoring")
    run.add_argument("--cv", type=int)
    run.add_argument("--random-state", type=int)
    run.add_argument("--output", type=Path, help="folder for the fitted model and summary.json")

    wait = commands.add_parser(
        "wait-for-scheduler",
        help="wait until the Dask scheduler answers (exit 1 after the timeout)",
    )
    wait.add_argument("--timeout", type=float, help="seconds (default TPOT_SCHEDULER_WAIT_SECONDS)")
    wait.add_argument("--min-workers", type=int, default=0, help="also wait for this many workers")

    write = commands.add_parser(
        "write-scheduler-file", help="write a Dask scheduler file pointing at an address"
    )
    write.add_argument("--address", required=True, help="e.g. tcp://tpot-scheduler:8786")
    write.add_argument("--path", type=Path, required=True)

    commands.add_parser("check-config", help="print the resolved settings (token redacted)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    # A scheduler file can be written before any other setting is valid (init containers).
    if args.command == "write-scheduler-file":
        return _write_scheduler_file(args)

    try:
        settings = Settings.from_env()
    except ConfigError as error:
        sys.stderr.write(f"tpot-backend: configuration error: {error}\n")
        return EXIT_CONFIG

    from tpot_backend.logs import capture_stray_output, configure_logging
    from tpot_backend.runtime import prepare_process

    prepare_process()
    configure_logging(settings.log_format, settings.log_level)
    if args.command in ("run", "serve"):
        capture_stray_output()

    if args.command == "check-config":
        sys.__stdout__.write(json.dumps(settings.redacted(), indent=2, default=str) + "\n")
        return EXIT_OK
    if args.command == "wait-for-scheduler":
        return _wait_for_scheduler(settings, args)
    if args.command == "run":
        return _run(settings, args)
    return _serve(settings)


def _write_scheduler_file(args: argparse.Namespace) -> int:
    from tpot_backend.cluster import write_scheduler_file
    from tpot_backend.config import SCHEDULER_ADDRESS_RE

    if not SCHEDULER_ADDRESS_RE.match(args.address):
        sys.stderr.write(
            f"tpot-backend: --address={args.address!r} is not valid: expected tcp://HOST:PORT\n"
        )
        return EXIT_CONFIG
    write_scheduler_file(args.address, args.path)
    sys.stderr.write(
        json.dumps(
            {"event": "scheduler_file_written", "path": str(args.path), "address": args.address}
        )
        + "\n"
    )
    return EXIT_OK


def _wait_for_scheduler(settings: Settings, args: argparse.Namespace) -> int:
    from tpot_backend.cluster import SchedulerUnavailable, wait_for_scheduler
    from tpot_backend.logs import event

    timeout = settings.scheduler_wait_seconds if args.timeout is None else args.timeout
    try:
        identity = wait_for_scheduler(settings, timeout, min_workers=args.min_workers)
    except SchedulerUnavailable as error:
        event(
            logger,
            "scheduler_wait_failed",
            logging.ERROR,
            scheduler=settings.scheduler_source,
            timeout_seconds=timeout,
            error=str(error),
        )
        return EXIT_FAILED
    event(
        logger,
        "scheduler_ready",
        scheduler=identity.get("address"),
        workers=len(identity.get("workers", {})),
    )
    return EXIT_OK


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from tpot_backend.cluster import ClusterConnection
    from tpot_backend.datasets import BUNDLED_TARGET, bundled_dataset_path
    from tpot_backend.jobs import JobExecutor, choose_arm, new_job_id, save_outcome
    from tpot_backend.logs import event
    from tpot_backend.metrics import Metrics
    from tpot_backend.runner import JobParams, ParamError

    data_path = bundled_dataset_path() if args.data == BUNDLED else Path(args.data)
    target = args.target or (BUNDLED_TARGET if args.data == BUNDLED else None)
    values: dict[str, Any] = {
        "target": target,
        "task": args.task,
        "generations": args.generations,
        "population_size": args.population_size,
        "max_time_mins": args.max_time_mins,
        "max_eval_time_mins": args.max_eval_time_mins,
        "scoring": args.scoring,
        "cv": args.cv,
        "random_state": args.random_state,
    }
    try:
        params = JobParams.from_values(values, settings.limits, search_space=settings.search_space)
    except ParamError as error:
        sys.stderr.write(f"tpot-backend: {error}\n")
        return EXIT_CONFIG
    if not data_path.is_file():
        sys.stderr.write(f"tpot-backend: {data_path} is not a file\n")
        return EXIT_CONFIG

    job_id = new_job_id()
    arm = choose_arm(job_id, settings)
    connection = ClusterConnection(settings)
    executor = JobExecutor(settings, connection, Metrics())
    event(logger, "job_started", job_id=job_id, arm=arm, data=str(data_path))
    try:
        if arm == "distributed":
            connection.start()
        outcome = executor.execute(
            job_id=job_id,
            dataset_path=data_path,
            params=params,
            arm=arm,
            cancel_event=threading.Event(),
        )
        if outcome.status == "succeeded" and args.output is not None:
            save_outcome(outcome, args.output, job_id)
    finally:
        connection.close()

    report: dict[str, Any] = {
        "id": job_id,
        "status": outcome.status,
        "arm": arm,
        "mode": outcome.mode,
        "scheduler": outcome.scheduler,
        "fallback_reason": outcome.fallback_reason,
        "error": outcome.error,
        "result": outcome.summary,
    }
    if args.output is not None and outcome.status == "succeeded":
        report["model_path"] = str(args.output / f"{job_id}.joblib")
    sys.__stdout__.write(json.dumps(report, indent=2, default=str) + "\n")
    sys.__stdout__.flush()
    event(
        logger,
        "job_finished",
        logging.INFO if outcome.status == "succeeded" else logging.ERROR,
        job_id=job_id,
        status=outcome.status,
        mode=outcome.mode,
        error=outcome.error,
        elapsed_seconds=round(outcome.duration_seconds, 3),
    )
    return EXIT_OK if outcome.status == "succeeded" else EXIT_FAILED


def _serve(settings: Settings) -> int:
    import uvicorn

    from tpot_backend.api import create_app
    from tpot_backend.cluster import ClusterConnection
    from tpot_backend.jobs import JobService
    from tpot_backend.logs import event
    from tpot_backend.metrics import Metrics
    from tpot_backend.store import JobStore

    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = JobStore(settings.database_url)
    except Exception as error:
        event(logger, "store_unavailable", logging.ERROR, error=f"{type(error).__name__}: {error}")
        return EXIT_FAILED

    metrics = Metrics()

    def on_state_change(status: Any) -> None:
        metrics.scheduler_connected.set(1 if status.state == "connected" else 0)

    connection = ClusterConnection(settings, on_state_change=on_state_change)
    service = JobService(settings, store, connection, metrics)
    app = create_app(settings, service, connection, metrics)
    event(
        logger,
        "serving",
        host=settings.http_host,
        port=settings.http_port,
        mode=settings.parallel_mode,
        scheduler=settings.scheduler_source,
    )
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    store.close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
