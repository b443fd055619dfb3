"""Classification metrics with one set of names, used by train and evaluate alike
(so `mlflow ui` lines runs up: val_roc_auc, test_roc_auc, cv_roc_auc_mean, ...)."""

from __future__ import annotations

import numpy as np
from scipy.special import expit
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
    probabilities are too extreme, slope > 1 too timid (bunched toward the middle)."""
    slopes, intercepts = calibration_lines(np.asarray(y_true)[None, :], np.asarray(probability, dtype=float)[None, :])
    return float(slopes[0]), float(intercepts[0])


# The recalibration fit's ridge on the slope, as scikit-learn's LogisticRegression(C=1e6)
# that computed it before: nearly unpenalised, yet finite when the classes are separated.
_SLOPE_RIDGE = 1e-6
_TRUSTED_STEP = 0.5  # Newton steps longer than this (in slope or intercept) are checked


def calibration_lines(y_true: np.ndarray, probability: np.ndarray, iterations: int = 100,
                      start: tuple[float, float] = (1.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """calibration_line of each row of 2-D `y_true` and `probability` at once: (slopes,
    intercepts), NaN for a row without both classes. Newton's method on the two
    parameters from `start` (slope, intercept), vectorised over the rows still moving, with
    step halving where a step would lower the likelihood: thousands of bootstrap samples
    cost milliseconds, not a fit each, and the few whose classes separate (the slope runs
    off) do not hold up the rest."""
    y_all = np.asarray(y_true, dtype=float)
    p = np.clip(np.asarray(probability, dtype=float), 1e-6, 1 - 1e-6)
    x_all = np.log(p / (1 - p))
    slope, intercept = np.full(len(y_all), float(start[0])), np.full(len(y_all), float(start[1]))

    def objective(y, x, a, b):  # penalised log-likelihood, per row
        eta = a[:, None] + b[:, None] * x
        return (y * eta - np.logaddexp(0, eta)).sum(axis=1) - 0.5 * _SLOPE_RIDGE * b ** 2

    moving = np.arange(len(y_all))
    for _ in range(iterations):
        if len(moving) == 0:
            break
        y, x, a, b = y_all[moving], x_all[moving], intercept[moving], slope[moving]
        mu = expit(a[:, None] + b[:, None] * x)
        w = mu * (1 - mu)
        residual = y - mu
        wx = w * x
        g_a, g_b = residual.sum(axis=1), (residual * x).sum(axis=1) - _SLOPE_RIDGE * b
        h_aa, h_ab, h_bb = w.sum(axis=1), wx.sum(axis=1), (wx * x).sum(axis=1) + _SLOPE_RIDGE
        det = h_aa * h_bb - h_ab ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            step_a = np.nan_to_num((h_bb * g_a - h_ab * g_b) / det)
            step_b = np.nan_to_num((h_aa * g_b - h_ab * g_a) / det)
        scale = np.ones(len(moving))
        # Near the optimum a Newton step on this concave likelihood only climbs; a long step
        # (a poor start, or classes that separate) is checked and halved until it does.
        far = np.flatnonzero(np.maximum(np.abs(step_a), np.abs(step_b)) > _TRUSTED_STEP)
        if len(far):
            yf, xf, af, bf, sa, sb = y[far], x[far], a[far], b[far], step_a[far], step_b[far]
            before, shrink = objective(yf, xf, af, bf), np.ones(len(far))
            for _ in range(30):
                worse = objective(yf, xf, af + shrink * sa, bf + shrink * sb) < before - 1e-12 * np.abs(before)
                if not worse.any():
                    break
                shrink = np.where(worse, shrink / 2, shrink)
            scale[far] = shrink
        intercept[moving], slope[moving] = a + scale * step_a, b + scale * step_b
        moving = moving[np.maximum(np.abs(scale * step_a), np.abs(scale * step_b)) >= 1e-10]
    both = (y_all.min(axis=1) == 0) & (y_all.max(axis=1) == 1)
    return np.where(both, slope, np.nan), np.where(both, intercept, np.nan)


def roc_aucs(y_true: np.ndarray, probability: np.ndarray) -> np.ndarray:
    """ROC-AUC of each row of 2-D arrays (the Mann-Whitney statistic, ties counting half,
    as scikit-learn's roc_auc_score); NaN for a row without both classes."""
    from scipy.stats import rankdata

    y = np.asarray(y_true) == 1
    ranks = rankdata(np.asarray(probability, dtype=float), axis=1)
    positives = y.sum(axis=1)
    negatives = y.shape[1] - positives
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (np.where(y, ranks, 0).sum(axis=1) - positives * (positives + 1) / 2) / (positives * negatives)
    return np.where((positives > 0) & (negatives > 0), auc, np.nan)


def sensitivities(y_true: np.ndarray, probability: np.ndarray, threshold: float) -> np.ndarray:
    """Share of each row's positives with probability >= threshold; NaN without positives."""
    y = np.asarray(y_true) == 1
    positives = y.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        found = (y & (np.asarray(probability) >= threshold)).sum(axis=1) / positives
    return np.where(positives > 0, found, np.nan)


def net_benefit(y_true, probability, thresholds) -> np.ndarray:
    """Net benefit of treating the patients whose probability reaches each threshold t:
    true positives / n - false positives / n * t / (1 - t), the harm of a false alarm
    weighed by the odds at which a clinician would treat (Vickers & Elkin 2006)."""
    y = np.asarray(y_true) == 1
    p = np.asarray(probability, dtype=float)
    t = np.asarray(thresholds, dtype=float)
    # Counted by binary search in the sorted probabilities: no (thresholds x patients) matrix.
    positives, negatives = np.sort(p[y]), np.sort(p[~y])
    true_pos = len(positives) - np.searchsorted(positives, t, side="left")
    false_pos = len(negatives) - np.searchsorted(negatives, t, side="left")
    return true_pos / len(y) - false_pos / len(y) * t / (1 - t)


def treat_all_net_benefit(prevalence: float, thresholds) -> np.ndarray:
    """Net benefit of treating everyone; treating no one is 0 at every threshold."""
    t = np.asarray(thresholds, dtype=float)
    return prevalence - (1 - prevalence) * t / (1 - t)


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

