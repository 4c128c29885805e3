"""Settings: one object built from the environment and validated once, at start-up.

Every value has a default here, in one place. A bad value raises `ConfigError` whose message is one
line naming the variable, the value and what it accepts; the command line prints it and exits.

Example::

    settings = Settings.from_env({"TPOT_PARALLEL_MODE": "local", "TPOT_DATA_DIR": "/tmp/tpot"})
    settings.parallel_mode  # "local"
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

ParallelMode = Literal["distributed", "local", "auto"]
PARALLEL_MODES: tuple[ParallelMode, ...] = ("distributed", "local", "auto")
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
RESTART_POLICIES = ("requeue", "fail")
SEARCH_SPACES = ("linear-light", "graph-light", "linear", "graph")

DEFAULT_SCHEDULER_FILE = "/var/run/tpot/scheduler.json"
DEFAULT_DATA_DIR = "/var/lib/tpot"
# A worker holds ~300 MiB once TPOT is imported; below 1 GiB most pipelines die on the limit.
MIN_MEMORY_LIMIT_MB = 1024
SCHEDULER_ADDRESS_RE = re.compile(r"^(tcp|tls)://(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):\d{1,5}$")

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting has a value the backend cannot use; the message is one line for the operator."""


@dataclass(frozen=True, kw_only=True)
class JobLimits:
    """Defaults for job parameters a request leaves out, and the hard caps a request cannot pass."""

    default_generations: int = 5
    max_generations: int = 100
    default_population_size: int = 20
    max_population_size: int = 500
    default_max_time_mins: float = 10.0
    max_max_time_mins: float = 24 * 60.0
    default_eval_time_mins: float = 5.0
    max_eval_time_mins: float = 60.0
    default_cv: int = 5
    max_cv: int = 20
    default_scoring_classification: str = "balanced_accuracy"
    default_scoring_regression: str = "neg_mean_squared_error"
    max_upload_mb: int = 100
    test_size: float = 0.2


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the backend reads from its environment (see `tpot-backend check-config`)."""

    parallel_mode: ParallelMode = "auto"
    scheduler_address: str | None = None
    scheduler_file: Path = Path(DEFAULT_SCHEDULER_FILE)
    scheduler_wait_seconds: float = 60.0
    scheduler_attempt_timeout_seconds: float = 5.0
    scheduler_backoff_seconds: float = 1.0
    scheduler_backoff_max_seconds: float = 15.0
    memory_limit_mb: int = 2048
    local_workers: int = 2
    distributed_share: float = 1.0
    search_space: str = "linear-light"
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    database_url: str = ""
    api_token: str | None = field(default=None, repr=False)
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    max_concurrent_jobs: int = 2
    max_queued_jobs: int = 1000
    restart_policy: str = "requeue"
    log_format: str = "json"
    log_level: str = "INFO"
    limits: JobLimits = field(default_factory=JobLimits)

    @property
    def scheduler_source(self) -> str:
        """Where the scheduler is looked for: its address, or the scheduler file."""
        if self.scheduler_address:
            return self.scheduler_address
        return f"file:{self.scheduler_file}"

    @property
    def memory_limit_bytes(self) -> int:
        return self.memory_limit_mb * 2**20

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build and validate the settings from `environ` (the process environment by default)."""
        env = _Env(os.environ if environ is None else environ)

        data_dir = Path(env.text("TPOT_DATA_DIR", DEFAULT_DATA_DIR))
        if not data_dir.is_absolute():
            raise ConfigError(
                f"TPOT_DATA_DIR={str(data_dir)!r} is not valid: expected an absolute path"
            )

        limits = JobLimits(
            default_generations=env.integer("TPOT_DEFAULT_GENERATIONS", 5, 1, 10_000),
            max_generations=env.integer("TPOT_MAX_GENERATIONS", 100, 1, 10_000),
            default_population_size=env.integer("TPOT_DEFAULT_POPULATION_SIZE", 20, 2, 100_000),
            max_population_size=env.integer("TPOT_MAX_POPULATION_SIZE", 500, 2, 100_000),
            default_max_time_mins=env.number("TPOT_DEFAULT_MAX_TIME_MINS", 10.0, 0.1, 10_080.0),
            max_max_time_mins=env.number("TPOT_MAX_MAX_TIME_MINS", 1440.0, 0.1, 10_080.0),
            default_eval_time_mins=env.number("TPOT_DEFAULT_EVAL_TIME_MINS", 5.0, 0.05, 1440.0),
            max_eval_time_mins=env.number("TPOT_MAX_EVAL_TIME_MINS", 60.0, 0.05, 1440.0),
            default_cv=env.integer("TPOT_DEFAULT_CV", 5, 2, 100),
            max_cv=env.integer("TPOT_MAX_CV", 20, 2, 100),
            default_scoring_classification=env.scoring(
                "TPOT_DEFAULT_SCORING_CLASSIFICATION", "balanced_accuracy"
            ),
            default_scoring_regression=env.scoring(
                "TPOT_DEFAULT_SCORING_REGRESSION", "neg_mean_squared_error"
            ),
            max_upload_mb=env.integer("TPOT_MAX_UPLOAD_MB", 100, 1, 100_000),
            test_size=env.number("TPOT_TEST_SIZE", 0.2, 0.05, 0.5),
        )
        _check_default_below_cap(
            ("TPOT_DEFAULT_GENERATIONS", limits.default_generations),
            ("TPOT_MAX_GENERATIONS", limits.max_generations),
        )
        _check_default_below_cap(
            ("TPOT_DEFAULT_POPULATION_SIZE", limits.default_population_size),
            ("TPOT_MAX_POPULATION_SIZE", limits.max_population_size),
        )
        _check_default_below_cap(
            ("TPOT_DEFAULT_MAX_TIME_MINS", limits.default_max_time_mins),
            ("TPOT_MAX_MAX_TIME_MINS", limits.max_max_time_mins),
        )
        _check_default_below_cap(
            ("TPOT_DEFAULT_EVAL_TIME_MINS", limits.default_eval_time_mins),
            ("TPOT_MAX_EVAL_TIME_MINS", limits.max_eval_time_mins),
        )
        _check_default_below_cap(
            ("TPOT_DEFAULT_CV", limits.default_cv), ("TPOT_MAX_CV", limits.max_cv)
        )

        settings = cls(
            parallel_mode=env.choice("TPOT_PARALLEL_MODE", "auto", PARALLEL_MODES),  # type: ignore[arg-type]
            scheduler_address=env.optional("DASK_SCHEDULER_ADDRESS", _check_scheduler_address),
            scheduler_file=Path(env.text("TPOT_SCHEDULER_FILE", DEFAULT_SCHEDULER_FILE)),
            scheduler_wait_seconds=env.number("TPOT_SCHEDULER_WAIT_SECONDS", 60.0, 0.0, 86_400.0),
            scheduler_attempt_timeout_seconds=env.number(
                "TPOT_SCHEDULER_ATTEMPT_TIMEOUT_SECONDS", 5.0, 0.1, 600.0
            ),
            scheduler_backoff_seconds=env.number(
                "TPOT_SCHEDULER_BACKOFF_SECONDS", 1.0, 0.01, 600.0
            ),
            scheduler_backoff_max_seconds=env.number(
                "TPOT_SCHEDULER_BACKOFF_MAX_SECONDS", 15.0, 0.01, 3600.0
            ),
            memory_limit_mb=env.integer(
                "TPOT__MEMORY_LIMIT_MB", 2048, MIN_MEMORY_LIMIT_MB, 1_048_576
            ),
            local_workers=env.integer("TPOT_LOCAL_WORKERS", _default_local_workers(), 1, 256),
            distributed_share=env.number("TPOT_DISTRIBUTED_SHARE", 1.0, 0.0, 1.0),
            search_space=env.choice("TPOT_SEARCH_SPACE", "linear-light", SEARCH_SPACES),
            data_dir=data_dir,
            database_url=_with_driver(
                env.text("TPOT_DATABASE_URL", f"sqlite:///{data_dir / 'jobs.db'}")
            ),
            api_token=env.optional("TPOT_API_TOKEN", _check_token),
            http_host=env.text("TPOT_HTTP_HOST", "0.0.0.0"),
            http_port=env.integer("TPOT_HTTP_PORT", 8080, 1, 65_535),
            max_concurrent_jobs=env.integer("TPOT_MAX_CONCURRENT_JOBS", 2, 1, 256),
            max_queued_jobs=env.integer("TPOT_MAX_QUEUED_JOBS", 1000, 1, 1_000_000),
            restart_policy=env.choice("TPOT_RESTART_POLICY", "requeue", RESTART_POLICIES),
            log_format=env.choice("TPOT_LOG_FORMAT", "json", LOG_FORMATS),
            log_level=env.choice("TPOT_LOG_LEVEL", "INFO", LOG_LEVELS, upper=True),
            limits=limits,
        )
        if settings.scheduler_backoff_max_seconds < settings.scheduler_backoff_seconds:
            raise ConfigError(
                f"TPOT_SCHEDULER_BACKOFF_MAX_SECONDS={settings.scheduler_backoff_max_seconds:g} is "
                f"not valid: expected at least TPOT_SCHEDULER_BACKOFF_SECONDS="
                f"{settings.scheduler_backoff_seconds:g}"
            )
        if not settings.database_url.startswith(("sqlite:", "postgresql+psycopg:")):
            raise ConfigError(
                f"TPOT_DATABASE_URL={_redact_url(settings.database_url)!r} is not valid: expected "
                "sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DB"
            )
        return settings

    def redacted(self) -> dict[str, Any]:
        """The resolved settings as plain data, with the token and database password hidden."""
        data = asdict(self)
        data["api_token"] = "<redacted>" if self.api_token else None
        data["database_url"] = _redact_url(self.database_url)
        data["scheduler_file"] = str(self.scheduler_file)
        data["data_dir"] = str(self.data_dir)
        data["scheduler_source"] = self.scheduler_source
        return data


class _Env:
    """Typed reads of environment variables; each failure names the variable and the range."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def _raw(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def text(self, name: str, default: str) -> str:
        return self._raw(name) or default

    def optional(self, name: str, check: Callable[[str, str], str]) -> str | None:
        value = self._raw(name)
        return None if value is None else check(name, value)

    def choice(
        self, name: str, default: str, accepted: tuple[str, ...], *, upper: bool = False
    ) -> str:
        value = self._raw(name)
        if value is None:
            return default
        normalised = value.upper() if upper else value.lower()
        if normalised not in accepted:
            raise ConfigError(
                f"{name}={value!r} is not valid: expected one of {', '.join(accepted)}"
            )
        return normalised

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        return self._bounded(name, default, low, high, int, "an integer")

    def number(self, name: str, default: float, low: float, high: float) -> float:
        return self._bounded(name, default, low, high, float, "a number")

    def scoring(self, name: str, default: str) -> str:
        value = self._raw(name)
        if value is None:
            return default
        if value not in scorer_names():
            raise ConfigError(
                f"{name}={value!r} is not valid: expected a scikit-learn scorer name "
                "such as accuracy, balanced_accuracy, roc_auc, r2, neg_mean_squared_error"
            )
        return value

    def _bounded(
        self, name: str, default: T, low: T, high: T, kind: Callable[[str], T], what: str
    ) -> T:
        value = self._raw(name)
        if value is None:
            return default
        try:
            parsed = kind(value)
        except ValueError:
            parsed = None
        if parsed is None or not (low <= parsed <= high):  # type: ignore[operator]
            raise ConfigError(
                f"{name}={value!r} is not valid: expected {what} from {low} to {high}"
            )
        return parsed


def scorer_names() -> frozenset[str]:
    """Scoring names TPOT accepts: scikit-learn's registered scorers."""
    from sklearn.metrics import get_scorer_names

    return frozenset(get_scorer_names())


def _check_scheduler_address(name: str, value: str) -> str:
    if not SCHEDULER_ADDRESS_RE.match(value):
        raise ConfigError(
            f"{name}={value!r} is not valid: expected tcp://HOST:PORT or tls://HOST:PORT, "
            "e.g. tcp://tpot-scheduler:8786"
        )
    return value


def _check_token(name: str, value: str) -> str:
    if len(value) < 16 or any(c.isspace() for c in value):
        raise ConfigError(f"{name} is not valid: expected at least 16 characters without spaces")
    return value


def _check_default_below_cap(default: tuple[str, float], cap: tuple[str, float]) -> None:
    if default[1] > cap[1]:
        raise ConfigError(
            f"{default[0]}={default[1]:g} is not valid: expected at most {cap[0]}={cap[1]:g}"
        )


def _default_local_workers() -> int:
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:
        available = os.cpu_count() or 1
    return max(1, min(available, 4))


def _with_driver(url: str) -> str:
    """`postgresql://` and `postgres://` mean the PostgreSQL driver the image ships (psycopg 3)."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def _redact_url(url: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1<redacted>@", url)
