"""Estimators for failure tests; workers import them (tests put the repo on PYTHONPATH)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class MemoryHog(ClassifierMixin, BaseEstimator):
    """Allocates `megabytes` in `fit` and holds them, so the worker's nanny kills the worker."""

    def __init__(self, megabytes: int = 2048, hold_seconds: float = 5.0) -> None:
        self.megabytes = megabytes
        self.hold_seconds = hold_seconds

    def fit(self, X: Any, y: Any) -> MemoryHog:
        block = np.ones(self.megabytes * 2**20 // 8)
        time.sleep(self.hold_seconds)
        self.classes_ = np.unique(y)
        self.total_ = float(block[:10].sum())
        return self

    def predict(self, X: Any) -> Any:
        return np.full(len(X), self.classes_[0])


class SlowClassifier(ClassifierMixin, BaseEstimator):
    """Predicts the majority class after sleeping, to make searches last long enough to disturb."""

    def __init__(self, seconds: float = 1.0) -> None:
        self.seconds = seconds

    def fit(self, X: Any, y: Any) -> SlowClassifier:
        time.sleep(self.seconds)
        values, counts = np.unique(y, return_counts=True)
        self.classes_ = values
        self.majority_ = values[int(np.argmax(counts))]
        return self

    def predict(self, X: Any) -> Any:
        return np.full(len(X), self.majority_)
