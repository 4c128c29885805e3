"""HTTP API: jobs under `/v1` (bearer token when configured), probes and metrics.

Every error is JSON ``{"error": CODE, "message": TEXT, "field": NAME|null}`` with a 4xx status
that says what is wrong; a bad upload never takes the service down. The OpenAPI document is served
at `/openapi.json`.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tpot_backend import __version__
from tpot_backend.cluster import ClusterConnection
from tpot_backend.config import Settings
from tpot_backend.datasets import DatasetError, prepare_training_data, read_table
from tpot_backend.jobs import JobService
from tpot_backend.logs import event
from tpot_backend.metrics import CONTENT_TYPE, Metrics
from tpot_backend.runner import JobParams, ParamError
from tpot_backend.store import FINAL, JobRecord

logger = logging.getLogger(__name__)

UPLOAD_CHUNK_BYTES = 1024 * 1024
# Room for the multipart envelope and the small form fields around the file.
MULTIPART_OVERHEAD_BYTES = 256 * 1024
KNOWN_SUFFIXES = {".csv": ".csv", ".parquet": ".parquet", ".pq": ".parquet"}
# The job store keeps the uploaded file name in a 512-character field.
MAX_FILENAME_CHARS = 512
# Module level: FastAPI resolves the string annotations of routes against module globals.
BEARER = HTTPBearer(auto_error=False, description="Required when TPOT_API_TOKEN is set.")


class ApiError(Exception):
    """An error answered as JSON with `status_code`."""

    def __init__(self, status_code: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.field = field


def _error_response(
    status_code: int, code: str, message: str, field: str | None = None
) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status_code == 401 else None
    return JSONResponse(
        {"error": code, "message": message, "field": field},
        status_code=status_code,
        headers=headers,
    )


class BodySizeLimit:
    """Stops reading a request body once it passes the limit (for bodies without Content-Length)."""

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, limit_mb: int, path_prefix: str = "/v1/jobs"
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.limit_mb = limit_mb
        self.path_prefix = path_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.path_prefix):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = _error_response(413, "upload_too_large", self._message(), "file")
            await response(scope, receive, send)
            return
        received = 0
        too_large = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not too_large:  # the answer to an oversized body is ours, not the app's
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large:
            response = _error_response(413, "upload_too_large", self._message(), "file")
            await response(scope, receive, send)

    def _message(self) -> str:
        return f"the upload is larger than the limit of {self.limit_mb} MiB"


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC).isoformat(timespec="seconds")


def job_view(record: JobRecord, queue_position: int | None = None) -> dict[str, Any]:
    """The public JSON form of a job record."""
    duration = None
    if record.started_at is not None:
        duration = round((record.finished_at or time.time()) - record.started_at, 3)
    return {
        "id": record.id,
        "status": record.status,
        "target": record.target,
        "task": record.task,
        "filename": record.filename,
        "params": record.params,
        "arm": record.arm,
        "mode": record.mode,
        "scheduler": record.scheduler,
        "created_at": _iso(record.created_at),
        "started_at": _iso(record.started_at),
        "finished_at": _iso(record.finished_at),
        "duration_seconds": duration,
        "attempts": record.attempts,
        "queue_position": queue_position,
        "cancel_requested": record.cancel_requested,
        "fallback_reason": record.fallback_reason,
        "notes": record.notes,
        "error": record.error,
        "result": record.result,
        "links": {
            "self": f"/v1/jobs/{record.id}",
            "model": f"/v1/jobs/{record.id}/model" if record.status == "succeeded" else None,
        },
    }


def create_app(
    settings: Settings,
    service: JobService,
    connection: ClusterConnection,
    metrics: Metrics,
    *,
    manage_lifecycle: bool = True,
) -> FastAPI:
    """The FastAPI app; with `manage_lifecycle` it starts and stops the service and client."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            connection.start()
            service.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                service.stop()
                connection.close()

    app = FastAPI(
        title="tpot-backend",
        version=__version__,
        summary="TPOT AutoML jobs on a shared Dask cluster, with a local fallback.",
        lifespan=lifespan,
    )
    max_body = settings.limits.max_upload_mb * 2**20 + MULTIPART_OVERHEAD_BYTES
    app.add_middleware(BodySizeLimit, max_bytes=max_body, limit_mb=settings.limits.max_upload_mb)

    def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> None:
        if settings.api_token is None:
            return
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise ApiError(
                401, "unauthorized", "missing bearer token (Authorization: Bearer TOKEN)"
            )
        if not hmac.compare_digest(credentials.credentials.encode(), settings.api_token.encode()):
            raise ApiError(401, "unauthorized", "the bearer token is not valid")

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, error: ApiError) -> JSONResponse:
        return _error_response(error.status_code, error.code, error.message, error.field)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        location = [
            str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")
        ]
        field = location[-1] if location else None
        message = first.get("msg", "invalid request")
        if first.get("type") == "missing":
            message = f"{field} is required"
        return _error_response(422, "invalid_request", message, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error_response(error.status_code, "http_error", str(error.detail))

    @app.middleware("http")
    async def _log_unexpected(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        try:
            return await call_next(request)
        except ApiError:
            raise
        except Exception:
            event(logger, "http_error", logging.ERROR, path=request.url.path, exc_info=True)
            return _error_response(500, "internal_error", "internal error; see the backend log")

    v1 = [Depends(require_token)]

    @app.post("/v1/jobs", status_code=202, dependencies=v1, tags=["jobs"])
    def submit_job(
        file: Annotated[UploadFile, File(description="CSV or Parquet table with a header row")],
        target: Annotated[str, Form(description="Name of the column to predict")],
        task: Annotated[str | None, Form(description="classification or regression")] = None,
        generations: Annotated[str | None, Form()] = None,
        population_size: Annotated[str | None, Form()] = None,
        max_time_mins: Annotated[str | None, Form()] = None,
        max_eval_time_mins: Annotated[str | None, Form()] = None,
        scoring: Annotated[str | None, Form(description="scikit-learn scorer name")] = None,
        cv: Annotated[str | None, Form()] = None,
        random_state: Annotated[str | None, Form()] = None,
    ) -> JSONResponse:
        """Upload a dataset and queue a TPOT search; answers 202 with the job id."""
        try:
            params = JobParams.from_values(
                {
                    "target": target,
                    "task": task,
                    "generations": generations,
                    "population_size": population_size,
                    "max_time_mins": max_time_mins,
                    "max_eval_time_mins": max_eval_time_mins,
                    "scoring": scoring,
                    "cv": cv,
                    "random_state": random_state,
                },
                settings.limits,
                search_space=settings.search_space,
            )
        except ParamError as error:
            raise ApiError(422, "invalid_parameter", str(error), error.field) from error

        if service.queued_count() >= settings.max_queued_jobs:
            raise ApiError(429, "queue_full", f"{settings.max_queued_jobs} jobs are already queued")

        suffix = KNOWN_SUFFIXES.get(Path(file.filename or "").suffix.lower(), ".data")
        upload_path = service.new_upload_path(suffix)
        try:
            _save_upload(file, upload_path, settings.limits.max_upload_mb * 2**20)
            frame = read_table(upload_path)
            data = prepare_training_data(
                frame,
                target=params.target,
                task=params.task,
                cv=params.cv,
                test_size=params.test_size,
            )
        except DatasetError as error:
            upload_path.unlink(missing_ok=True)
            raise ApiError(error.status_code, "invalid_dataset", str(error), error.field) from error
        except BaseException:
            upload_path.unlink(missing_ok=True)
            raise

        # The name is only shown back; keep its end (the extension) within the store's field.
        filename = (file.filename or "")[-MAX_FILENAME_CHARS:] or None
        try:
            record = service.submit(
                upload_path=upload_path, filename=filename, params=params, task=data.task
            )
        except BaseException:  # a store error: nothing was queued, so keep no upload either
            upload_path.unlink(missing_ok=True)
            raise
        body = job_view(record, service.store.position(record))
        return JSONResponse(body, status_code=202, headers={"Location": f"/v1/jobs/{record.id}"})

    @app.get("/v1/jobs", dependencies=v1, tags=["jobs"])
    def list_jobs(
        status: Annotated[
            str | None, Query(pattern="^(queued|running|succeeded|failed|cancelled)$")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """Jobs, newest first."""
        return {"jobs": [job_view(r) for r in service.store.list(limit=limit, status=status)]}

    @app.get("/v1/jobs/{job_id}", dependencies=v1, tags=["jobs"])
    def get_job(job_id: str) -> dict[str, Any]:
        """Status, times, mode, and the result or the error of one job."""
        record = _existing(job_id)
        return job_view(record, service.store.position(record))

    @app.get("/v1/jobs/{job_id}/model", dependencies=v1, tags=["jobs"], response_class=FileResponse)
    def get_model(job_id: str) -> FileResponse:
        """The fitted scikit-learn pipeline (joblib), once the job succeeded."""
        record = _existing(job_id)
        if record.status != "succeeded" or not record.model_path:
            raise ApiError(
                409, "no_model", f"job {job_id} is {record.status}; no model to download"
            )
        path = Path(record.model_path)
        if not path.exists():
            raise ApiError(410, "model_gone", f"the model file of job {job_id} is no longer stored")
        return FileResponse(
            path, media_type="application/octet-stream", filename=f"tpot-{job_id}.joblib"
        )

    @app.delete("/v1/jobs/{job_id}", status_code=202, dependencies=v1, tags=["jobs"])
    def cancel_job(job_id: str) -> JSONResponse:
        """Cancel a queued or running job."""
        record = _existing(job_id)
        if record.status in FINAL:
            raise ApiError(409, "already_finished", f"job {job_id} already {record.status}")
        record = service.cancel(job_id) or record
        return JSONResponse(job_view(record), status_code=202)

    @app.get("/healthz", tags=["probes"])
    def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["probes"])
    def readyz() -> JSONResponse:
        """Ready: the store is writable, and the scheduler is connected or fallback allowed."""
        checks: dict[str, Any] = {}
        ready = True
        try:
            service.store.touch()
            checks["store"] = "ok"
        except Exception as error:
            checks["store"] = f"not writable: {type(error).__name__}: {error}"
            ready = False

        status = connection.status
        checks["scheduler"] = status.state
        checks["mode"] = settings.parallel_mode
        if settings.parallel_mode == "distributed" and status.state != "connected":
            ready = False
            checks["reason"] = "TPOT_PARALLEL_MODE=distributed and the scheduler is not connected"
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["probes"])
    def prometheus_metrics() -> Response:
        """Prometheus text format."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    def _existing(job_id: str) -> JobRecord:
        record = service.store.get(job_id)
        if record is None:
            raise ApiError(404, "not_found", f"no job with id {job_id!r}")
        return record

    return app


def _save_upload(upload: UploadFile, destination: Path, max_bytes: int) -> int:
    destination.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with destination.open("wb") as out:
        while chunk := upload.file.read(UPLOAD_CHUNK_BYTES):
            written += len(chunk)
            if written > max_bytes:
                raise DatasetError(
                    f"the upload is larger than the limit of {max_bytes // 2**20} MiB",
                    status_code=413,
                )
            out.write(chunk)
    return written
