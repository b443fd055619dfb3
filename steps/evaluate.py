"""evaluate: score the trained model on the untouched test split, estimate how much
that score moves with repeated stratified cross-validation on train+val, draw the
usual plots, and decide VALIDATED or REJECTED from the criteria in conf/evaluate.

Tags the run `validation.status` and `validation.reasons`; register reads them.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from matplotlib.figure import Figure
from scipy import stats
from sklearn import metrics as skm
from sklearn.base import clone
from sklearn.calibration import calibration_curve
from sklearn.model_selection import RepeatedStratifiedKFold

from domain.criteria import OPERATORS, parse_criterion
from domain.metrics import binary_metrics, calibration_line, prefixed
from engine import names
from engine.context import StepContext
from engine.errors import PipelineError
from engine.names import REJECTED, SITE, VALIDATED


def judge(metrics: dict[str, float], criteria: list[str]) -> tuple[str, list[str]]:
    """VALIDATED if every criterion holds, else REJECTED; reasons say which and by how much."""
    reasons = []
    for text in criteria:
        name, op, bound = parse_criterion(text)
        if name not in metrics:
            raise PipelineError(f"evaluate.criteria: {text!r} names unknown metric {name!r}; known: {sorted(metrics)}")
        holds = OPERATORS[op](metrics[name], bound)
        reasons.append(f"{name} = {metrics[name]:.4f} {'meets' if holds else 'fails'} {op} {bound}")
    failed = [r for r in reasons if " fails " in r]
    return (REJECTED, failed) if failed else (VALIDATED, reasons)


def repeats_within(rows: int, folds: int, repeats: int, max_fit_rows: int) -> int:
    """How many of the configured CV repeats to run on `rows` rows: each repeat fits the
    model `folds` times on (folds - 1)/folds of them, i.e. on rows * (folds - 1) rows in
    all. Repeats stop before their fits together would pass `max_fit_rows`; one always runs."""
    return max(1, min(repeats, max_fit_rows // (rows * (folds - 1))))


def corrected_interval(values, folds: int) -> dict[str, float]:
    """Mean, standard deviation and 95 % interval of one metric over the folds of repeated
    k-fold CV, by the corrected resampled t-test (Nadeau & Bengio 2003). It widens the naive
    interval because folds share training rows: variance x (1/n + 1/(k - 1)) for n = the
    folds actually run (k per repeat), with n - 1 degrees of freedom. Fewer repeats give a
    wider interval, never a falsely narrow one."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    correction = 1 / n + 1 / (folds - 1)
    half_width = stats.t.ppf(0.975, df=n - 1) * math.sqrt(correction * values.var(ddof=1))
    mean = float(values.mean())
    return {"mean": mean, "std": float(values.std(ddof=1)), "ci_low": mean - half_width, "ci_high": mean + half_width}


def _fold_scores(pipeline, features: pd.DataFrame, label: pd.Series, train_index, test_index,
                 threshold: float) -> dict[str, float]:
    model = clone(pipeline).fit(features.iloc[train_index], label.iloc[train_index])
    return binary_metrics(label.iloc[test_index], model.predict_proba(features.iloc[test_index])[:, 1], threshold)


def cross_validate(pipeline, features: pd.DataFrame, label: pd.Series, folds: int, repeats: int,
                   seed: int, threshold: float = 0.5, max_fit_rows: Optional[int] = None,
                   n_jobs: int = 1) -> dict[str, float]:
    """Refit a fresh copy of the pipeline on each fold; decisions use the model's
    threshold, as on the test split. Reports each metric's mean, standard deviation and
    95 % interval (corrected_interval) over the folds, and `cv_repeats_run`: on large data
    only the repeats that fit within `max_fit_rows` run (repeats_within). Folds run
    `n_jobs` at a time, in threads (the rows are shared, not copied); the results do not
    depend on it."""
    if max_fit_rows is not None:
        repeats = repeats_within(len(features), folds, repeats, max_fit_rows)
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    per_fold = Parallel(n_jobs=n_jobs, prefer="threads")(
        delayed(_fold_scores)(pipeline, features, label, train_index, test_index, threshold)
        for train_index, test_index in splitter.split(features, label))
    out: dict[str, float] = {"cv_repeats_run": float(repeats)}
    for name in per_fold[0]:
        interval = corrected_interval([scores[name] for scores in per_fold], folds)
        out.update({f"cv_{name}_{statistic}": value for statistic, value in interval.items()})
    return out


def evaluation_figures(y_true, probability, threshold: float) -> dict[str, Figure]:
    """ROC, precision-recall, calibration and confusion-matrix plots of the test split."""
    figures = {}
    fpr, tpr, _ = skm.roc_curve(y_true, probability)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot(fpr, tpr, label=f"ROC-AUC {skm.roc_auc_score(y_true, probability):.3f}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve (test)")
    ax.legend(loc="lower right")
    figures["roc_curve"] = fig

    precision, recall, _ = skm.precision_recall_curve(y_true, probability)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot(recall, precision, label=f"average precision {skm.average_precision_score(y_true, probability):.3f}")
    ax.axhline(np.mean(y_true), linestyle="--", color="grey", label="prevalence")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall curve (test)")
    ax.legend(loc="lower left")
    figures["pr_curve"] = fig

    observed, predicted = calibration_curve(y_true, probability, n_bins=5, strategy="quantile")
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot(predicted, observed, marker="o", label="model")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.set(xlabel="mean predicted probability", ylabel="observed frequency", title="Calibration (test, quantile bins)")
    ax.legend(loc="upper left")
    figures["calibration"] = fig

    matrix = skm.confusion_matrix(y_true, (np.asarray(probability) >= threshold).astype(int), labels=[0, 1])
    fig = Figure(figsize=(4, 4))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, str(count), ha="center", va="center", fontsize=14)
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["healthy", "disease"], yticklabels=["healthy", "disease"],
           xlabel="predicted", ylabel="actual", title=f"Confusion matrix (test, threshold {threshold:g})")
    figures["confusion_matrix"] = fig
    return figures


def site_scores(y_true, probability) -> dict[str, float]:
    """What external validation reports for one site (and for the internal test split)."""
    slope, intercept = calibration_line(y_true, probability)
    return {"rows": float(len(y_true)), "prevalence": float(np.mean(y_true)),
            "roc_auc": skm.roc_auc_score(y_true, probability), "brier": skm.brier_score_loss(y_true, probability),
            "calibration_slope": slope, "calibration_intercept": intercept}


def external_validation(pipeline, external: pd.DataFrame, book) -> tuple[dict, dict[str, str]]:
    """Per-site scores of the model on held-out sites: ({site: scores}, {site: why not})."""
    scores, unusable = {}, {}
    for site, rows in external.groupby(SITE):
        if rows[book.label].nunique() < 2:
            unusable[site] = f"all {len(rows)} rows have label {int(rows[book.label].iloc[0])}: ROC-AUC is undefined"
            continue
        scores[site] = site_scores(rows[book.label], pipeline.predict_proba(rows[book.features])[:, 1])
    return scores, unusable


def site_comparison_figure(scores: dict[str, dict[str, float]]) -> Figure:
    """ROC-AUC, Brier score and calibration slope of the internal test split next to each external site."""
    fig = Figure(figsize=(10, 3.5))
    axes = fig.subplots(1, 3)
    names = list(scores)
    for ax, metric, reference in zip(axes, ("roc_auc", "brier", "calibration_slope"), (0.5, None, 1.0)):
        ax.bar(names, [scores[n][metric] for n in names], color=["#4c72b0"] + ["#dd8452"] * (len(names) - 1))
        if reference is not None:
            ax.axhline(reference, linestyle="--", color="grey")
        ax.set_title(metric.replace("_", " "))
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle("Internal test split vs external sites")
    fig.tight_layout()
    return fig


def run(ctx: StepContext) -> None:
    cfg = ctx.cfg
    model = ctx.read("model")
    book = model.codebook  # the model's own rules: features and label as it was trained
    label = book.label
    pipeline, threshold = model.pipeline, model.threshold
    test = ctx.read("test")
    # Train+val for CV: only the feature and label columns, copied once (the folds hold them while they run).
    train_val = [ctx.read(name) for name in ("train", "val")]
    features = pd.concat([frame[book.features] for frame in train_val], ignore_index=True)
    labels = pd.concat([frame[label] for frame in train_val], ignore_index=True)
    del train_val
    ctx.done_with("train", "val")  # under `main`, nothing after evaluate reads them: free them for the folds

    probability = pipeline.predict_proba(test[book.features])[:, 1]
    metrics = prefixed("test", binary_metrics(test[label], probability, threshold))
    metrics.update(cross_validate(pipeline, features, labels,
                                  cfg.evaluate.cv_folds, cfg.evaluate.cv_repeats, cfg.evaluate.seed, threshold,
                                  cfg.evaluate.cv_max_fit_rows, cfg.evaluate.n_jobs))
    slope, intercept = calibration_line(test[label], probability)
    metrics.update(test_calibration_slope=slope, test_calibration_intercept=intercept)
    status, reasons = judge(metrics, list(cfg.evaluate.criteria))

    external = ctx.read("external")
    if external is not None:
        site_results, unusable = external_validation(pipeline, external, book)
        # Sites ingest could not use are in its report, beside those unusable here.
        unusable |= ctx.read("validation_report")["external"]["unusable"]
        comparison = {"internal test": site_scores(test[label], probability), **site_results}
        ctx.write("external_validation_plot", site_comparison_figure(comparison))
        ctx.write("external_validation", {"scores": comparison, "unusable": unusable})
        metrics.update({f"external_{site}_{name}": value for site, scores in site_results.items()
                        for name, value in scores.items()})
        for site, reason in unusable.items():
            print(f"evaluate: external site {site} not scored: {reason}")

    ctx.log_metrics(metrics)
    for name, figure in evaluation_figures(test[label], probability, threshold).items():
        ctx.write(name, figure)
    ctx.write("test_predictions", test.assign(probability=probability))
    ctx.set_tags({names.VALIDATION_STATUS: status, names.VALIDATION_REASONS: "; ".join(reasons)})
    ctx.summary.update(status=status, test_roc_auc=round(metrics["test_roc_auc"], 4),
                       cv=f"{cfg.evaluate.cv_folds}x{int(metrics['cv_repeats_run'])}",
                       cv_roc_auc=f"{metrics['cv_roc_auc_mean']:.4f} "
                                  f"[{metrics['cv_roc_auc_ci_low']:.4f}, {metrics['cv_roc_auc_ci_high']:.4f}]")
    print(f"evaluate: {status}: " + "; ".join(reasons))


if __name__ == "__main__":
    from engine.cli import launch_step

    launch_step("evaluate")
