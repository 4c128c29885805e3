"""Job runner: job parameters, and one TPOT search on one dataset with a given Dask client.

The runner knows nothing about queues, stores or fallbacks (see `tpot_backend.jobs`): it takes a
validated table and a client bridge, holds part of the table out, lets TPOT search on the rest with
cross-validation, scores the winner on the held-out part and returns the fitted pipeline with a
JSON-ready summary.
"""

from __future__ import annotations

import logging
import math
import platform
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.metrics import get_scorer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelEncoder, OneHotEncoder

from tpot_backend.config import JobLimits, scorer_names
from tpot_backend.datasets import TASKS, TrainingData
from tpot_backend.logs import event
from tpot_backend.runtime import prepare_process

logger = logging.getLogger(__name__)

MAX_ONE_HOT_CATEGORIES = 50
PIPELINE_TEXT_CHARS = 20_000
# The job store keeps the target column name in a 512-character field.
MAX_TARGET_CHARS = 512
VERSIONED_PACKAGES = (
    "tpot",
    "dask",
    "distributed",
    "scikit-learn",
    "pandas",
    "numpy",
    "tpot-backend",
)


class ParamError(ValueError):
    """A job parameter is out of range or unknown; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, kw_only=True)
class JobParams:
    """What one job asks TPOT to do; built with `from_values`, which applies defaults and caps."""

    target: str
    task: str | None
    generations: int
    population_size: int
    max_time_mins: float
    max_eval_time_mins: float
    scoring: str | None
    cv: int
    random_state: int | None
    test_size: float
    search_space: str = "linear-light"

    @classmethod
    def from_values(
        cls, values: Mapping[str, Any], limits: JobLimits, *, search_space: str = "linear-light"
    ) -> JobParams:
        """Validate raw values (strings from a form are fine); `ParamError` names the bad one."""
        target = str(values.get("target") or "").strip()
        if not target:
            raise ParamError("target", "is required: the name of the column to predict")
        if len(target) > MAX_TARGET_CHARS:
            raise ParamError("target", f"is longer than {MAX_TARGET_CHARS} characters")

        task = _optional_text(values.get("task"))
        if task is not None and task not in TASKS:
            raise ParamError("task", f"{task!r} is not valid: expected one of {', '.join(TASKS)}")

        scoring = _optional_text(values.get("scoring"))
        if scoring is not None and scoring not in scorer_names():
            raise ParamError(
                "scoring",
                f"{scoring!r} is not a known scorer: expected a scikit-learn scorer name such as "
                "accuracy, balanced_accuracy, roc_auc, f1, r2, neg_mean_squared_error",
            )

        return cls(
            target=target,
            task=task,
            generations=_bounded(
                values, "generations", int, limits.default_generations, 1, limits.max_generations
            ),
            population_size=_bounded(
                values,
                "population_size",
                int,
                limits.default_population_size,
                2,
                limits.max_population_size,
            ),
            max_time_mins=_bounded(
                values,
                "max_time_mins",
                float,
                limits.default_max_time_mins,
                0.1,
                limits.max_max_time_mins,
            ),
            max_eval_time_mins=_bounded(
                values,
                "max_eval_time_mins",
                float,
                limits.default_eval_time_mins,
                0.05,
                limits.max_eval_time_mins,
            ),
            scoring=scoring,
            cv=_bounded(values, "cv", int, limits.default_cv, 2, limits.max_cv),
            random_state=_bounded(values, "random_state", int, None, 0, 2**32 - 1),
            test_size=limits.test_size,
            search_space=search_space,
        )

    def resolved_scoring(self, task: str, limits: JobLimits) -> str:
        if self.scoring:
            return self.scoring
        if task == "classification":
            return limits.default_scoring_classification
        return limits.default_scoring_regression

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _optional_text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _bounded(
    values: Mapping[str, Any], name: str, kind: type, default: Any, low: float, high: float
) -> Any:
    raw = values.get(name)
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
        return default
    what = "an integer" if kind is int else "a number"
    try:
        if kind is int and isinstance(raw, float) and not raw.is_integer():
            raise ValueError
        parsed = kind(raw)
    except (TypeError, ValueError):
        raise ParamError(name, f"{raw!r} is not {what}") from None
    if isinstance(parsed, float) and not math.isfinite(parsed):
        raise ParamError(name, f"{raw!r} is not {what}")
    if not (low <= parsed <= high):
        raise ParamError(
            name, f"{parsed} is out of range: expected {what} from {low:g} to {high:g}"
        )
    return parsed


@dataclass
class SearchResult:
    """A finished search: the fitted pipeline (preprocessing included) and its JSON summary."""

    model: Pipeline
    summary: dict[str, Any]


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def build_preprocessor(features: pd.DataFrame) -> ColumnTransformer:
    """Impute numbers with the median; impute and one-hot encode everything else."""
    numeric = [
        c
        for c in features.columns
        if pd.api.types.is_numeric_dtype(features[c])
        and not pd.api.types.is_bool_dtype(features[c])
    ]
    other = [c for c in features.columns if c not in numeric]
    steps: list[tuple[str, Any, list[str]]] = []
    if numeric:
        steps.append(("numeric", SimpleImputer(strategy="median"), numeric))
    if other:
        encode = Pipeline(
            [
                ("impute", SimpleImputer(strategy="most_frequent")),
                (
                    "one_hot",
                    OneHotEncoder(
                        handle_unknown="infrequent_if_exist",
                        max_categories=MAX_ONE_HOT_CATEGORIES,
                        sparse_output=False,
                    ),
                ),
            ]
        )
        steps.append(("categorical", encode, other))
    return ColumnTransformer(steps, remainder="drop", sparse_threshold=0.0)


def _tpot_estimator(
    task: str,
    params: JobParams,
    scoring: str,
    client: Any,
    memory_limit_mb: int,
    search_space: Any | None = None,
) -> Any:
    prepare_process()
    from tpot import TPOTClassifier, TPOTRegressor

    common: dict[str, Any] = {
        "search_space": params.search_space if search_space is None else search_space,
        "scorers": [scoring],
        "scorers_weights": [1.0],
        "cv": params.cv,
        "generations": params.generations,
        "population_size": params.population_size,
        "max_time_mins": params.max_time_mins,
        # TPOT 1.1 crashes with None here; the backend always sets a per-evaluation limit.
        "max_eval_time_mins": params.max_eval_time_mins,
        "n_jobs": 1,
        "validation_strategy": "none",
        "preprocessing": False,
        "verbose": 0,
        "memory_limit": f"{memory_limit_mb}MiB",
        "client": client,
        "random_state": params.random_state,
    }
    if task == "classification":
        return TPOTClassifier(allow_inner_classifiers=False, **common)
    return TPOTRegressor(allow_inner_regressors=False, **common)


def _pipeline_text(model: Any) -> str:
    return model.__repr__(N_CHAR_MAX=PIPELINE_TEXT_CHARS)


def _evaluation_counts(evaluated: pd.DataFrame | None, objective: str) -> tuple[int, int]:
    if evaluated is None or len(evaluated) == 0:
        return 0, 0
    errors = (
        evaluated["Eval Error"] if "Eval Error" in evaluated else pd.Series(index=evaluated.index)
    )
    scored = evaluated[objective].notna() if objective in evaluated else errors.isna()
    attempted = scored | errors.notna()
    failed = errors.notna() & attempted
    return int(attempted.sum()), int(failed.sum())


def run_search(
    data: TrainingData,
    params: JobParams,
    client: Any,
    *,
    limits: JobLimits,
    memory_limit_mb: int,
    job_id: str,
    mode: str,
    search_space: Any | None = None,
) -> SearchResult:
    """Hold out part of `data`, let TPOT search on the rest through `client`, score the winner.

    `search_space` replaces the named space of `params` with a TPOT search space object.
    """
    started = time.monotonic()
    scoring = params.resolved_scoring(data.task, limits)

    y_all = data.target
    classes: list[Any] | None = None
    if data.task == "classification":
        encoder = LabelEncoder()
        y_all = pd.Series(encoder.fit_transform(y_all.astype(str)), index=data.target.index)
        classes = [str(c) for c in encoder.classes_]
    else:
        y_all = y_all.astype(float)

    x_train, x_test, y_train, y_test = train_test_split(
        data.features,
        y_all,
        test_size=params.test_size,
        random_state=params.random_state,
        stratify=y_all if data.task == "classification" else None,
    )
    preprocessor = build_preprocessor(x_train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x_train_ready = np.asarray(preprocessor.fit_transform(x_train), dtype=np.float64)

    estimator = _tpot_estimator(data.task, params, scoring, client, memory_limit_mb, search_space)
    event(
        logger,
        "search_started",
        job_id=job_id,
        mode=mode,
        task=data.task,
        rows=data.n_rows,
        features=int(x_train_ready.shape[1]),
        generations=params.generations,
        population_size=params.population_size,
        scoring=scoring,
    )
    # TPOT calls `distributed.as_completed`, which finds its event loop through the current client.
    with warnings.catch_warnings(), client.as_current():
        warnings.simplefilter("ignore")
        estimator.fit(x_train_ready, y_train.to_numpy())

    model = Pipeline([("prepare", preprocessor), ("search", estimator.fitted_pipeline_)])
    scorer = get_scorer(scoring)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        holdout_score = float(scorer(model, x_test, y_test.to_numpy()))

    evaluated = getattr(estimator, "evaluated_individuals", None)
    objective = (
        estimator.objective_names[0] if getattr(estimator, "objective_names", None) else scoring
    )
    n_evaluated, n_failed = _evaluation_counts(evaluated, objective)
    best = getattr(estimator, "selected_best_score", None)
    cv_score = float(best[objective]) if best is not None and objective in best else None

    summary: dict[str, Any] = {
        "task": data.task,
        "target": params.target,
        "scoring": scoring,
        "best_pipeline": _pipeline_text(estimator.fitted_pipeline_),
        "cv_score": cv_score,
        "holdout_score": holdout_score,
        "pipelines_evaluated": n_evaluated,
        "pipelines_failed": n_failed,
        "rows": data.n_rows,
        "rows_train": int(len(y_train)),
        "rows_holdout": int(len(y_test)),
        "features": int(data.features.shape[1]),
        "classes": classes,
        "search_seconds": round(time.monotonic() - started, 3),
        "params": params.to_dict(),
        "versions": package_versions(),
    }
    release = getattr(client, "release", None)
    data_bytes = getattr(client, "data_bytes", None)
    if data_bytes is not None:
        summary["data_shipped"] = {
            "objects": client.data_objects,
            "bytes": data_bytes,
            "evaluations_submitted": client.evaluations_submitted,
        }
    if callable(release):
        release()
    event(
        logger,
        "search_finished",
        job_id=job_id,
        mode=mode,
        cv_score=cv_score,
        holdout_score=holdout_score,
        pipelines_evaluated=n_evaluated,
        pipelines_failed=n_failed,
        elapsed_seconds=summary["search_seconds"],
    )
    return SearchResult(model=model, summary=summary)
