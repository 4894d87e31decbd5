"""The linear-SVM protocol: a linear SVM on frozen global features (scikit-learn).

C is either given, or chosen by stratified k-fold cross-validation on the TRAIN features only;
the test features are used exactly once, to score the final model fitted on all of train.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Literal, Sequence

import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

__all__ = ["SVMResult", "fit_linear_svm", "DEFAULT_C_GRID", "accuracy_scores"]

DEFAULT_C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
SvmKind = Literal["svc", "linearsvc"]


@dataclass
class SVMResult:
    accuracy: float  # overall test accuracy
    class_mean_accuracy: float  # mean of per-class test accuracies
    C: float
    cv_accuracy: dict[str, float] | None  # mean CV accuracy per C tried (None if C was given)
    cv_folds: int
    train_size: int
    test_size: int
    feature_dim: int
    svm: str
    fit_seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _estimator(kind: SvmKind, C: float, standardize: bool, seed: int):
    if kind == "svc":
        svm = SVC(C=C, kernel="linear")  # the published protocol (one-vs-one libsvm)
    elif kind == "linearsvc":
        svm = LinearSVC(C=C, dual="auto", max_iter=20_000, random_state=seed)
    else:
        raise ValueError(f"svm must be 'svc' or 'linearsvc', got {kind!r}")
    return make_pipeline(StandardScaler(), svm) if standardize else svm


def accuracy_scores(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """(overall accuracy, mean per-class accuracy over the classes present in y_true)."""
    overall = float((y_true == y_pred).mean())
    per_class = [float((y_pred[y_true == c] == c).mean()) for c in np.unique(y_true)]
    return overall, float(np.mean(per_class))


def fit_linear_svm(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    C: float | None = None,
    C_grid: Sequence[float] = DEFAULT_C_GRID,
    folds: int = 3,
    svm: SvmKind = "svc",
    standardize: bool = False,
    seed: int = 0,
    n_jobs: int | None = None,
    log: Callable[[str], None] | None = None,
) -> SVMResult:
    """Fit on train (choosing C by CV on train when not given) and score on test once.

    train_x: (S, D), train_y: (S,), test_x: (T, D), test_y: (T,);  log: called with a line per
    C tried (the CV of a large set takes minutes).
    """
    if len(train_x) == 0 or len(test_x) == 0:
        raise ValueError("the linear SVM needs non-empty train and test features")
    start = time.perf_counter()
    cv_scores = None
    used_folds = 0
    if C is None:
        smallest_class = int(np.bincount(train_y)[np.unique(train_y)].min())
        used_folds = int(min(folds, smallest_class))
        if used_folds < 2:
            raise ValueError(f"cannot cross-validate C: a class has {smallest_class} training sample(s); pass C")
        splitter = StratifiedKFold(n_splits=used_folds, shuffle=True, random_state=seed)
        cv_scores = {}
        for i, c in enumerate(C_grid, start=1):
            tick = time.perf_counter()
            scores = cross_val_score(_estimator(svm, c, standardize, seed), train_x, train_y, cv=splitter, n_jobs=n_jobs)
            cv_scores[repr(float(c))] = float(scores.mean())
            if log:
                log(f"  C={c:g} ({i}/{len(C_grid)}): {used_folds}-fold CV accuracy on train "
                    f"{100 * scores.mean():.2f}% ({time.perf_counter() - tick:.0f} s)")
        C = float(max(C_grid, key=lambda c: (cv_scores[repr(float(c))], -c)))  # ties -> smaller C
    model = _estimator(svm, C, standardize, seed).fit(train_x, train_y)
    overall, class_mean = accuracy_scores(test_y, model.predict(test_x))
    return SVMResult(overall, class_mean, float(C), cv_scores, used_folds, len(train_x), len(test_x),
                     int(train_x.shape[1]), svm, time.perf_counter() - start)
