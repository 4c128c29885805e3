"""The upload checks predict what scikit-learn will do with the data: what they accept splits and
folds for real, and what they refuse would have failed inside the job."""

from __future__ import annotations

import pandas as pd
import pytest
from sklearn.model_selection import StratifiedKFold, train_test_split
from tpot_backend.datasets import DatasetError, prepare_training_data

pytestmark = pytest.mark.backend

TEST_SIZE = 0.2
CV = 5


def _frame(rows: int, classes: int) -> pd.DataFrame:
    return pd.DataFrame({"a": range(rows), "label": [f"c{i % classes}" for i in range(rows)]})


def _split_and_fold(frame: pd.DataFrame) -> None:
    """What the runner and TPOT do with a classification table."""
    x_train, _, y_train, _ = train_test_split(
        frame[["a"]], frame["label"], test_size=TEST_SIZE, random_state=0, stratify=frame["label"]
    )
    list(StratifiedKFold(n_splits=CV).split(x_train, y_train))


@pytest.mark.parametrize(
    ("rows", "classes", "field"),
    [(40, 20, "target"), (20, 4, "cv"), (15, 3, "cv")],
    ids=["more-classes-than-held-out-rows", "no-class-fills-the-folds", "three-thin-classes"],
)
def test_refused_tables_would_fail_in_scikit_learn(rows: int, classes: int, field: str) -> None:
    frame = _frame(rows, classes)

    with pytest.raises(DatasetError) as refused:
        prepare_training_data(frame, target="label", task=None, cv=CV, test_size=TEST_SIZE)
    assert refused.value.field == field
    with pytest.raises(ValueError):
        _split_and_fold(frame)


@pytest.mark.filterwarnings("ignore:The least populated class")
@pytest.mark.parametrize(("rows", "classes"), [(20, 2), (30, 4), (140, 20), (14, 2), (18, 3)])
def test_accepted_tables_split_and_fold(rows: int, classes: int) -> None:
    frame = _frame(rows, classes)

    data = prepare_training_data(frame, target="label", task=None, cv=CV, test_size=TEST_SIZE)

    assert data.task == "classification"
    _split_and_fold(frame)
