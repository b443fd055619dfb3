"""evaluate: score the trained model on the untouched test split, estimate how much
that score moves with repeated stratified cross-validation on train+val, measure
calibration and subgroups on the cross-validation's out-of-fold predictions, draw the
usual plots, and decide VALIDATED or REJECTED from the criteria in conf/evaluate.

Tags the run `validation.status` and `validation.reasons`; register reads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from matplotlib.figure import Figure
from scipy import stats
from sklearn import metrics as skm
from sklearn.base import clone
from sklearn.calibration import calibration_curve
from sklearn.model_selection import RepeatedStratifiedKFold

from domain.criteria import (
    OPERATORS,
    OUT_OF_FOLD_METRICS,
    SUBGROUP_EXTREMES,
    SUBGROUP_METRICS,
    Subgroup,
    parse_criterion,
    subgroups,
)
from domain.metrics import (
    binary_metrics,
    calibration_line,
    calibration_lines,
    net_benefit,
    prefixed,
    roc_aucs,
    sensitivities,
    treat_all_net_benefit,
)
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
    mean = float(values.mean())
    low, high = interval_around(mean, float(values.var(ddof=1)), folds, len(values))
    return {"mean": mean, "std": float(values.std(ddof=1)), "ci_low": low, "ci_high": high}


def interval_around(estimate: float, fold_variance: float, folds: int, folds_run: int) -> tuple[float, float]:
    """The corrected resampled t interval (corrected_interval) of an estimate whose
    per-fold variance is `fold_variance`, from `folds_run` folds of `folds`-fold CV."""
    half_width = stats.t.ppf(0.975, df=folds_run - 1) * math.sqrt((1 / folds_run + 1 / (folds - 1)) * fold_variance)
    return estimate - half_width, estimate + half_width


@dataclass
class CrossValidation:
    metrics: dict[str, float]  # cv_<metric>_<statistic> over the folds, and cv_repeats_run
    # (repeats run, rows): each row's probability from the model of the fold that held it
    # out, one line per repeat. What calibration and subgroups are measured on.
    out_of_fold: np.ndarray


def _fold_scores(pipeline, features: pd.DataFrame, label: pd.Series, train_index, test_index,
                 threshold: float) -> tuple[dict[str, float], np.ndarray]:
    model = clone(pipeline).fit(features.iloc[train_index], label.iloc[train_index])
    probability = model.predict_proba(features.iloc[test_index])[:, 1]
    return binary_metrics(label.iloc[test_index], probability, threshold), probability


def cross_validate(pipeline, features: pd.DataFrame, label: pd.Series, folds: int, repeats: int,
                   seed: int, threshold: float = 0.5, max_fit_rows: Optional[int] = None,
                   n_jobs: int = 1) -> CrossValidation:
    """Refit a fresh copy of the pipeline on each fold; decisions use the model's
    threshold, as on the test split. Reports each metric's mean, standard deviation and
    95 % interval (corrected_interval) over the folds, and `cv_repeats_run`: on large data
    only the repeats that fit within `max_fit_rows` run (repeats_within), and keeps the
    out-of-fold probabilities. Folds run `n_jobs` at a time, in threads (the rows are
    shared, not copied); the results do not depend on it."""
    if max_fit_rows is not None:
        repeats = repeats_within(len(features), folds, repeats, max_fit_rows)
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    splits = list(splitter.split(features, label))
    per_fold = Parallel(n_jobs=n_jobs, prefer="threads")(
        delayed(_fold_scores)(pipeline, features, label, train_index, test_index, threshold)
        for train_index, test_index in splits)
    out: dict[str, float] = {"cv_repeats_run": float(repeats)}
    for name in per_fold[0][0]:
        interval = corrected_interval([scores[name] for scores, _ in per_fold], folds)
        out.update({f"cv_{name}_{statistic}": value for statistic, value in interval.items()})
    out_of_fold = np.empty((repeats, len(features)))
    for fold, ((_, test_index), (_, probability)) in enumerate(zip(splits, per_fold)):
        out_of_fold[fold // folds, test_index] = probability
    return CrossValidation(out, out_of_fold)


# --------------------------------------------------------------------------- out of fold


def _group_metrics(y: np.ndarray, probability: np.ndarray, threshold: float, names: tuple[str, ...],
                   line: tuple[float, float] = (1.0, 0.0)) -> dict[str, np.ndarray]:
    """Each named metric of every row of 2-D (samples, patients) arrays; calibration lines
    are fitted from `line` (slope, intercept): resamples start from the pooled estimate."""
    out = {}
    if "roc_auc" in names:
        out["roc_auc"] = roc_aucs(y, probability)
    if {"calibration_slope", "calibration_intercept"} & set(names):
        out["calibration_slope"], out["calibration_intercept"] = calibration_lines(y, probability, start=line)
    if "sensitivity" in names:
        out["sensitivity"] = sensitivities(y, probability, threshold)
    return {name: out[name] for name in names}


# Resampled patients are measured this many cells at a time: memory stays in megabytes
# whatever the rounds and rows (as fast_path's TREE_CELLS_PER_SLICE).
CELLS_PER_SLICE = 1 << 21


def _resampled_metrics(y: np.ndarray, out_of_fold: np.ndarray, threshold: float, names: tuple[str, ...],
                       rounds: int, size: int, seed: int, line: tuple[float, float]) -> dict[str, np.ndarray]:
    """Each metric on `rounds` resamples of `size` patients drawn with replacement, round r
    from repeat r mod repeats, measured a slice of rounds at a time."""
    rng = np.random.default_rng(seed)
    repeats, patients = out_of_fold.shape
    per_slice = max(1, CELLS_PER_SLICE // size)
    parts = []
    for start in range(0, rounds, per_slice):
        count = min(per_slice, rounds - start)
        drawn = rng.integers(0, patients, size=(count, size))
        repeat = np.arange(start, start + count) % repeats
        parts.append(_group_metrics(y[drawn], out_of_fold[repeat[:, None], drawn], threshold, names, line))
    return {name: np.concatenate([part[name] for part in parts]) for name in names}


def out_of_fold_estimates(y, out_of_fold: np.ndarray, threshold: float, folds: int, rounds: int,
                          seed: int, names: tuple[str, ...],
                          max_rows: Optional[int] = None) -> dict[str, dict[str, float]]:
    """{metric: {estimate, ci_low, ci_high}} of a set of patients from their out-of-fold
    probabilities (repeats, patients).

    The estimate is the mean over repeats of the metric on each repeat's pooled
    out-of-fold predictions: a calibration slope fitted on one fold's ~50 patients (or a
    subgroup's ~15) is biased and unstable, on all of them it is not. The interval is the
    corrected resampled t interval the per-fold metrics get (interval_around), for the
    folds run; the per-fold variance it needs is `folds` x the variance of the pooled
    metric over `rounds` resamples of the patients (spread over the repeats), since a
    fold holds 1/folds of them. That variance is read off the resamples' central 95 %
    range (its width / 2 x 1.96, squared): the same as their variance when they are
    normal, but not blown up by the few resamples of a small subgroup whose classes
    separate and whose slope runs off to 80. Resamples lacking a class are left out; a
    metric they cannot spread is given without interval (NaN). ROC-AUC and sensitivity
    intervals stop at 0 and 1.

    On large data a resample holds `max_rows` patients, not all of them, and its variance
    is scaled by max_rows / patients (these metrics' variance falls as 1 / patients): a
    million-row evaluate resamples thousands of rows, not a thousand times a million."""
    y = np.asarray(y)
    repeats, patients = out_of_fold.shape
    per_repeat = _group_metrics(np.broadcast_to(y, out_of_fold.shape), out_of_fold, threshold, names)
    size = patients if max_rows is None else min(patients, max_rows)
    line = tuple(float(np.nanmean(per_repeat[name])) if name in per_repeat and np.isfinite(per_repeat[name]).any()
                 else default for name, default in (("calibration_slope", 1.0), ("calibration_intercept", 0.0)))
    spread = _resampled_metrics(y, out_of_fold, threshold, names, rounds, size, seed, line)
    out = {}
    for name in names:
        estimate = float(np.nanmean(per_repeat[name])) if np.isfinite(per_repeat[name]).any() else math.nan
        defined = spread[name][np.isfinite(spread[name])]
        if math.isnan(estimate) or len(defined) < _MIN_RESAMPLES:
            out[name] = {"estimate": estimate, "ci_low": math.nan, "ci_high": math.nan}
            continue
        bottom, top = np.quantile(defined, [0.025, 0.975])
        sd = (top - bottom) / (2 * stats.norm.ppf(0.975))
        low, high = interval_around(estimate, folds * float(sd) ** 2 * size / patients, folds, repeats * folds)
        if name in _PROPORTIONS:
            low, high = max(low, 0.0), min(high, 1.0)
        out[name] = {"estimate": estimate, "ci_low": low, "ci_high": high}
    return out


_PROPORTIONS = ("roc_auc", "sensitivity")  # bounded by 0 and 1
_MIN_RESAMPLES = 40  # fewer defined resamples cannot place a 95 % range


def _interval_metrics(estimates: dict[str, dict[str, float]], group: str = "") -> dict[str, float]:
    """cv_<metric>[_<group>] and its _ci_low and _ci_high, for each estimate."""
    out = {}
    for name, values in estimates.items():
        key = f"cv_{name}_{group}" if group else f"cv_{name}"
        out.update({key: values["estimate"], f"{key}_ci_low": values["ci_low"], f"{key}_ci_high": values["ci_high"]})
    return out


def out_of_fold_report(y, out_of_fold: np.ndarray, groups: list[tuple[Subgroup, np.ndarray]], threshold: float,
                       folds: int, rounds: int, seed: int,
                       max_rows: Optional[int] = None) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics, subgroup table) from the out-of-fold probabilities: the calibration of all
    patients (cv_calibration_slope, cv_calibration_intercept with intervals) and, for each
    (subgroup, patient mask), its size, prevalence, ROC-AUC, calibration and sensitivity at
    the decision threshold (cv_roc_auc_sex_0, ...), with the extremes over subgroups the
    criteria can gate on (cv_roc_auc_subgroup_min, ...). A subgroup whose patients lack a
    class is reported as not measured, with the reason."""
    y = np.asarray(y)
    metrics = _interval_metrics(out_of_fold_estimates(y, out_of_fold, threshold, folds, rounds, seed,
                                                      OUT_OF_FOLD_METRICS, max_rows))
    table: dict[str, Any] = {"subgroups": [], "not_measured": {}}
    for group, mask in groups:
        labels = y[mask]
        if len(set(labels.tolist())) < 2:
            table["not_measured"][group.name] = (f"{len(labels)} patients, "
                                                 f"{int(labels.sum()) if len(labels) else 0} with disease: "
                                                 "both classes are needed")
            continue
        estimates = out_of_fold_estimates(labels, out_of_fold[:, mask], threshold, folds, rounds, seed,
                                          SUBGROUP_METRICS, max_rows)
        metrics.update({f"cv_rows_{group.name}": float(len(labels)),
                        f"cv_prevalence_{group.name}": float(labels.mean()),
                        **_interval_metrics(estimates, group.name)})
        table["subgroups"].append({"name": group.name, "label": group.label, "rows": int(len(labels)),
                                   "prevalence": float(labels.mean()), "metrics": estimates})
    if table["subgroups"]:
        for name, extreme in SUBGROUP_EXTREMES:
            values = [row["metrics"][name]["estimate"] for row in table["subgroups"]]
            metrics[f"cv_{name}_subgroup_{extreme}"] = float(np.nanmin(values) if extreme == "min"
                                                             else np.nanmax(values))
    return {k: float(v) for k, v in metrics.items()}, table


def subgroup_masks(features: pd.DataFrame, spec, columns) -> list[tuple[Subgroup, np.ndarray]]:
    """Each subgroup evaluate.subgroups asks for, with the mask of its patients in `features`."""
    return [(group, group.contains(features[group.column].to_numpy(dtype=np.float64, na_value=np.nan)))
            for group in subgroups(spec, columns)]


def evaluation_figures(y_true, probability, threshold: float) -> dict[str, Figure]:
    """ROC, precision-recall and confusion-matrix plots of the test split."""
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


def reliability_figure(y, out_of_fold: np.ndarray, test_y, test_probability, metrics: dict[str, float]) -> Figure:
    """Observed against predicted risk in quantile bins: the out-of-fold predictions of every
    CV repeat (each patient once per repeat, 10 bins), the test split beside them (5 bins)."""
    fig = Figure(figsize=(5.5, 5.5))
    ax = fig.subplots()
    observed, predicted = calibration_curve(np.tile(np.asarray(y), len(out_of_fold)), out_of_fold.ravel(),
                                            n_bins=10, strategy="quantile")
    ax.plot(predicted, observed, marker="o",
            label=f"cross-validated: slope {metrics['cv_calibration_slope']:.2f} "
                  f"[{metrics['cv_calibration_slope_ci_low']:.2f}, {metrics['cv_calibration_slope_ci_high']:.2f}], "
                  f"intercept {metrics['cv_calibration_intercept']:.2f}")
    observed, predicted = calibration_curve(test_y, test_probability, n_bins=5, strategy="quantile")
    ax.plot(predicted, observed, marker="s", linestyle=":",
            label=f"test split ({len(test_y)} rows): slope {metrics['test_calibration_slope']:.2f}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.set(xlabel="mean predicted probability", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1),
           title="Calibration (quantile bins)")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def decision_curve(y, out_of_fold: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Net benefit over thresholds of the out-of-fold predictions (mean over repeats), of
    treating everyone and of treating no one."""
    model = np.mean([net_benefit(y, repeat, thresholds) for repeat in out_of_fold], axis=0)
    return {"model": model, "treat_all": treat_all_net_benefit(float(np.mean(y)), thresholds),
            "treat_none": np.zeros(len(thresholds))}


def decision_curve_figure(thresholds: np.ndarray, curves: dict[str, np.ndarray], threshold: float) -> Figure:
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    ax.plot(thresholds, curves["model"], label="model (cross-validated)")
    ax.plot(thresholds, curves["treat_all"], linestyle="--", color="grey", label="treat all")
    ax.plot(thresholds, curves["treat_none"], linestyle=":", color="black", label="treat none")
    ax.axvline(threshold, color="#dd8452", linewidth=1, label=f"decision threshold {threshold:.3f}")
    top = float(max(curves["model"].max(), curves["treat_all"].max()))
    ax.set(xlabel="threshold probability (treat if risk at least this)", ylabel="net benefit",
           ylim=(-0.05, top + 0.05), title="Decision curve")
    ax.legend(loc="upper right", fontsize="small")
    return fig


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
    evaluate = cfg.evaluate
    cv = cross_validate(pipeline, features, labels, evaluate.cv_folds, evaluate.cv_repeats, evaluate.seed, threshold,
                        evaluate.cv_max_fit_rows, evaluate.n_jobs)
    metrics.update(cv.metrics)
    slope, intercept = calibration_line(test[label], probability)
    metrics.update(test_calibration_slope=slope, test_calibration_intercept=intercept)
    y = labels.to_numpy()
    groups = subgroup_masks(features, evaluate.subgroups, cfg.schema.columns)
    out_of_fold, subgroup_table = out_of_fold_report(y, cv.out_of_fold, groups, threshold, evaluate.cv_folds,
                                                     evaluate.bootstrap_rounds, evaluate.seed,
                                                     evaluate.bootstrap_max_rows)
    metrics.update(out_of_fold)
    for group, reason in subgroup_table["not_measured"].items():
        print(f"evaluate: subgroup {group} not measured: {reason}")
    status, reasons = judge(metrics, list(evaluate.criteria))

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
    ctx.write("calibration", reliability_figure(y, cv.out_of_fold, test[label], probability, metrics))
    thresholds = np.arange(evaluate.decision_curve.low, evaluate.decision_curve.high + 1e-9,
                           evaluate.decision_curve.step)
    ctx.write("decision_curve", decision_curve_figure(thresholds, decision_curve(y, cv.out_of_fold, thresholds),
                                                      threshold))
    ctx.write("subgroups", {**subgroup_table, "threshold": threshold, "method": SUBGROUP_METHOD})
    ctx.write("explanation", global_explanation(model, features))
    ctx.write("test_predictions", test.assign(probability=probability))
    ctx.set_tags({names.VALIDATION_STATUS: status, names.VALIDATION_REASONS: "; ".join(reasons)})
    ctx.summary.update(status=status, test_roc_auc=round(metrics["test_roc_auc"], 4),
                       cv=f"{evaluate.cv_folds}x{int(metrics['cv_repeats_run'])}",
                       cv_roc_auc=_with_interval(metrics, "cv_roc_auc_mean", "cv_roc_auc"),
                       cv_calibration_slope=_with_interval(metrics, "cv_calibration_slope", "cv_calibration_slope"))
    print(f"evaluate: {status}: " + "; ".join(reasons))


SUBGROUP_METHOD = ("Out-of-fold predictions of every CV repeat; estimate: the mean over repeats of the metric on "
                   "each repeat's pooled predictions; 95 % interval: corrected resampled t, per-fold variance from "
                   "resampled patients.")


def _with_interval(metrics: dict[str, float], estimate: str, prefix: str) -> str:
    return f"{metrics[estimate]:.4f} [{metrics[prefix + '_ci_low']:.4f}, {metrics[prefix + '_ci_high']:.4f}]"


def global_explanation(model, features: pd.DataFrame) -> dict[str, Any]:
    """How much each field moves the answers, on average: the mean absolute contribution to
    the log-odds over `features` (train+val rows), from the loaded model's own
    explanations, largest first; or why the model has none."""
    if not hasattr(model, "contributions"):
        return {"unavailable": "the model was logged before answers could be explained"}
    if model.explanation_unavailable:
        return {"unavailable": model.explanation_unavailable}
    fields = list(model.codebook.features)
    parts = model.contributions(features[fields].to_numpy(dtype=np.float64, na_value=np.nan))
    mean_abs = np.abs(parts.values).mean(axis=0)
    return {"rows": int(len(features)), "base_log_odds": float(parts.base),
            "mean_abs_contribution": {parts.fields[i]: float(mean_abs[i]) for i in np.argsort(-mean_abs)}}


if __name__ == "__main__":
    from engine.cli import launch_step

    launch_step("evaluate")
