"""Datasets: reading an uploaded CSV or Parquet table and checking it can train a model.

Every problem becomes a `DatasetError` whose message says what is wrong in words a user can act
on; the HTTP layer returns it as a 4xx JSON error and the service stays up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

PARQUET_MAGIC = b"PAR1"
SNIFF_BYTES = 64 * 1024
MAX_CLASSIFICATION_LEVELS = 20
BUNDLED_DATASET = "breast_cancer.csv"
BUNDLED_TARGET = "diagnosis"
TASKS = ("classification", "regression")


class DatasetError(ValueError):
    """The uploaded data cannot be used; `status_code` is the HTTP status to answer with."""

    def __init__(self, message: str, *, status_code: int = 422, field: str = "file") -> None:
        super().__init__(message)
        self.status_code = status_code
        self.field = field


@dataclass(frozen=True)
class TrainingData:
    """Features and target of a validated table, with the task they define."""

    features: pd.DataFrame
    target: pd.Series
    task: str

    @property
    def n_rows(self) -> int:
        return int(len(self.target))


def bundled_dataset_path() -> Path:
    """The small dataset shipped with the package (breast cancer, target `diagnosis`)."""
    return Path(str(resources.files("tpot_backend") / "data" / BUNDLED_DATASET))


def sniff_format(path: Path) -> str:
    """`parquet` or `csv` from the file's first bytes; `DatasetError` for empty or binary files."""
    size = path.stat().st_size
    if size == 0:
        raise DatasetError("the uploaded file is empty", status_code=400)
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    if b"\x00" in head:
        raise DatasetError(
            "the uploaded file is not a CSV or Parquet table (it contains binary data)",
            status_code=400,
        )
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        # A multi-byte character cut at the sniff boundary is fine; anything earlier is not UTF-8.
        if error.start < len(head) - 4:
            raise DatasetError(
                "the uploaded file is not a CSV or Parquet table (it is not UTF-8 text)",
                status_code=400,
            ) from error
    return "csv"


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file into a DataFrame, or raise `DatasetError` saying what is wrong."""
    kind = sniff_format(path)
    try:
        if kind == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, encoding="utf-8-sig")
    except pd.errors.EmptyDataError as error:
        raise DatasetError("the uploaded file has no columns", status_code=400) from error
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as error:
        label = "Parquet file" if kind == "parquet" else "CSV"
        raise DatasetError(
            f"the uploaded file is not a valid {label}: {error}", status_code=400
        ) from error

    if frame.shape[1] < 2:
        raise DatasetError(
            f"the table has {frame.shape[1]} column(s); it needs the target and at least one "
            "feature (is it really a comma-separated CSV?)"
        )
    if len(frame) == 0:
        raise DatasetError("the table has a header but no rows")
    frame.columns = [str(column) for column in frame.columns]
    return frame


def infer_task(target: pd.Series) -> str:
    """Classification for text, boolean or few-valued integer targets; regression otherwise."""
    if not pd.api.types.is_numeric_dtype(target) or pd.api.types.is_bool_dtype(target):
        return "classification"
    if pd.api.types.is_integer_dtype(target) and target.nunique() <= MAX_CLASSIFICATION_LEVELS:
        return "classification"
    return "regression"


def minimum_rows(cv: int, test_size: float) -> int:
    """Fewest rows that leave `cv` training rows after holding out `test_size` of them."""
    rows = cv
    while rows - math.ceil(rows * test_size) < cv or math.ceil(rows * test_size) < 1:
        rows += 1
    return rows


def prepare_training_data(
    frame: pd.DataFrame, *, target: str, task: str | None, cv: int, test_size: float
) -> TrainingData:
    """Check that `frame` can train a model for `target`; split it into features and target."""
    if target not in frame.columns:
        shown = ", ".join(list(frame.columns)[:20])
        more = f" and {len(frame.columns) - 20} more" if len(frame.columns) > 20 else ""
        raise DatasetError(
            f"target column {target!r} is not in the table; columns are: {shown}{more}",
            field="target",
        )

    labelled = frame[frame[target].notna()]
    if len(labelled) == 0:
        raise DatasetError(f"target column {target!r} has no values", field="target")
    y = labelled[target]
    features = labelled.drop(columns=[target])

    if y.nunique() < 2:
        raise DatasetError(
            f"target column {target!r} is constant (every row is {y.iloc[0]!r}); "
            "there is nothing to learn",
            field="target",
        )

    chosen_task = task or infer_task(y)
    if chosen_task == "regression" and not pd.api.types.is_numeric_dtype(y):
        raise DatasetError(
            f"task 'regression' needs a numeric target; {target!r} holds text", field="task"
        )
    if chosen_task == "regression" and not np.isfinite(y.to_numpy(dtype=float)).all():
        raise DatasetError(f"target column {target!r} holds infinite values", field="target")

    needed = minimum_rows(cv, test_size)
    if len(y) < needed:
        raise DatasetError(
            f"the table has {len(y)} labelled rows; cv={cv} folds plus a held-out "
            f"{test_size:.0%} need at least {needed}",
            field="cv",
        )

    if chosen_task == "classification":
        counts = y.value_counts()
        rare = counts[counts < 2]
        if len(rare):
            raise DatasetError(
                f"class {rare.index[0]!r} of {target!r} has a single row; every class needs at "
                "least 2 rows to appear in both the training and the held-out part",
                field="target",
            )
        # A stratified split needs a held-out row and a training row for every class.
        held_out = math.ceil(len(y) * test_size)
        if held_out < len(counts) or len(y) - held_out < len(counts):
            raise DatasetError(
                f"{target!r} has {len(counts)} classes but a held-out {test_size:.0%} of "
                f"{len(y)} rows is {held_out} rows: every class needs a row on each side of the "
                "split; add rows or merge rare classes",
                field="target",
            )
        # Stratified CV folds fail outright when no class has `cv` training rows. The split's own
        # rounding can give a class one row more, so count generously: refuse only a sure failure.
        largest_in_training = math.ceil(int(counts.max()) * (1 - test_size))
        if largest_in_training < cv:
            raise DatasetError(
                f"no class of {target!r} has {cv} training rows for cv={cv} folds (the largest "
                f"has about {largest_in_training}); lower cv or add rows",
                field="cv",
            )

    usable = [c for c in features.columns if features[c].notna().any()]
    if not usable:
        raise DatasetError("every feature column is empty")
    return TrainingData(features=features[usable], target=y, task=chosen_task)
