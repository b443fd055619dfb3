"""Classification metrics with one set of names, used by train and evaluate alike
(so `mlflow ui` lines runs up: val_roc_auc, test_roc_auc, cv_roc_auc_mean, ...)."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def binary_metrics(y_true, probability, threshold: float = 0.5) -> dict[str, float]:
    """Threshold-free scores of the probabilities plus scores of the 0/1 decisions."""
    y_true = np.asarray(y_true)
    probability = np.asarray(probability, dtype=float)
    predicted = (probability >= threshold).astype(int)
    return {
        "roc_auc": skm.roc_auc_score(y_true, probability),
        "pr_auc": skm.average_precision_score(y_true, probability),
        "accuracy": skm.accuracy_score(y_true, predicted),
        "precision": skm.precision_score(y_true, predicted, zero_division=0),
        "recall": skm.recall_score(y_true, predicted, zero_division=0),  # sensitivity
        "specificity": skm.recall_score(y_true, predicted, pos_label=0, zero_division=0),
        "f1": skm.f1_score(y_true, predicted, zero_division=0),
        "brier": skm.brier_score_loss(y_true, probability),
        "log_loss": skm.log_loss(y_true, probability, labels=[0, 1]),
    }


def calibration_line(y_true, probability) -> tuple[float, float]:
    """(slope, intercept) of the logistic recalibration y ~ intercept + slope * logit(p).
    A well calibrated model has slope 1 and intercept 0; slope < 1 means its
    probabilities are too extreme."""
    from sklearn.linear_model import LogisticRegression

    p = np.clip(np.asarray(probability, dtype=float), 1e-6, 1 - 1e-6)
    logit = np.log(p / (1 - p)).reshape(-1, 1)
    fit = LogisticRegression(C=1e6, max_iter=1000).fit(logit, np.asarray(y_true))  # ~unpenalised
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def threshold_for_sensitivity(y_true, probability, target: float) -> float:
    """The highest threshold t at which (probability >= t) still finds `target` of the
    positives: the strictest cut that misses no more patients than allowed."""
    y_true, probability = np.asarray(y_true), np.asarray(probability, dtype=float)
    positives = np.sort(probability[y_true == 1])[::-1]
    if len(positives) == 0:
        raise ValueError("no positive rows to choose a threshold on")
    needed = int(np.ceil(target * len(positives)))
    return float(positives[max(needed, 1) - 1])


def threshold_for_specificity(y_true, probability, target: float) -> float:
    """The lowest threshold t at which (probability < t) holds for `target` of the
    negatives: above t, few healthy patients remain."""
    y_true, probability = np.asarray(y_true), np.asarray(probability, dtype=float)
    negatives = np.sort(probability[y_true == 0])
    if len(negatives) == 0:
        raise ValueError("no negative rows to choose a threshold on")
    needed = int(np.ceil(target * len(negatives)))
    return float(np.nextafter(negatives[needed - 1], np.inf)) if needed else 0.0


def prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{name}": float(value) for name, value in values.items()}

