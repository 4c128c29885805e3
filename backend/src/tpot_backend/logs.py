"""Structured logs: one line per event, JSON (default) or key=value, with the event's fields.

Library code logs through `event()`::

    event(logger, "job_started", job_id=job.id, mode="distributed", attempt=1)

which writes ``{"ts": "...", "level": "INFO", "logger": "tpot_backend.jobs",
"event": "job_started", "job_id": "...", "mode": "distributed", "attempt": 1}``. Records from other
libraries (Dask, uvicorn) are rendered the same way with their message in `message`.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import sys
import threading
from typing import Any

FIELDS_ATTR = "tpot_fields"
EVENT_ATTR = "tpot_event"
# Dask logs every worker (re)connection at INFO; keep its noise one level lower than ours.
NOISY_LOGGERS = {
    "distributed": logging.WARNING,
    "distributed.client": logging.WARNING,
    "distributed.scheduler": logging.WARNING,
    "distributed.worker": logging.WARNING,
    "distributed.nanny": logging.WARNING,
    "distributed.deploy": logging.WARNING,
    "distributed.shuffle": logging.WARNING,
    "uvicorn.access": logging.WARNING,
}


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log event `name` with `fields`; `exc_info=True` among them attaches the exception."""
    exc_info = fields.pop("exc_info", None)
    if not logger.isEnabledFor(level):
        return
    logger.log(
        level,
        "%s",
        name,
        exc_info=exc_info,
        extra={EVENT_ATTR: name, FIELDS_ATTR: fields},
        stacklevel=2,
    )


def _record_fields(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    name = getattr(record, EVENT_ATTR, None)
    fields = dict(getattr(record, FIELDS_ATTR, {}) or {})
    if name is None:
        name = "log"
        fields["message"] = record.getMessage()
    if record.exc_info:
        error = record.exc_info[1]
        fields.setdefault("error", f"{type(error).__name__}: {error}")
        fields["traceback"] = logging.Formatter().formatException(record.exc_info)
    return name, fields


def _timestamp(record: logging.LogRecord) -> str:
    moment = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event, then the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        name, fields = _record_fields(record)
        payload: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "event": name,
        }
        for key, value in fields.items():
            payload.setdefault(key, value)
        return json.dumps(payload, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """One key=value line per event, for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        name, fields = _record_fields(record)
        traceback = fields.pop("traceback", None)
        parts = [_timestamp(record), record.levelname, name]
        parts += [f"{key}={_text_value(value)}" for key, value in fields.items()]
        line = " ".join(parts)
        return f"{line}\n{traceback}" if traceback else line


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text == "" or any(c.isspace() or c == '"' for c in text):
        return json.dumps(text)
    return text


def configure_logging(log_format: str = "json", level: str = "INFO") -> None:
    """Send every log record of the process to stderr, one formatted line each."""
    # Importing distributed installs Dask's own handlers; import it first so they are replaced.
    import distributed  # noqa: F401

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())

    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)

    for name, noisy_level in NOISY_LOGGERS.items():
        logger = logging.getLogger(name)
        logger.setLevel(max(noisy_level, logging.getLevelName(level)))
        # Dask installs its own handlers on import; ours on the root logger is the only one.
        for existing in list(logger.handlers):
            logger.removeHandler(existing)
        logger.propagate = True
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.ERROR)


class _StdoutToLog(io.TextIOBase):
    """Turns stray `print()` output of libraries (TPOT prints evaluation errors) into log events."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._pending = threading.local()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        buffer = getattr(self._pending, "text", "") + text
        *lines, rest = buffer.split("\n")
        self._pending.text = rest
        for line in lines:
            if line.strip():
                event(self._logger, "library_output", logging.INFO, message=line.rstrip())
        return len(text)

    def flush(self) -> None:
        rest = getattr(self._pending, "text", "")
        if rest.strip():
            event(self._logger, "library_output", logging.INFO, message=rest.rstrip())
        self._pending.text = ""


def capture_stray_output() -> None:
    """Route `sys.stdout` into the log; the command line writes results to `sys.__stdout__`."""
    sys.stdout = _StdoutToLog(logging.getLogger("tpot_backend.stdout"))
