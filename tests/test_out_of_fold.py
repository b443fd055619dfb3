"""Calibration, subgroups and decision curves measured on cross-validation's out-of-fold
predictions (steps/evaluate.py, domain/metrics.py). Pure: real pipelines fitted on the
real Cleveland file, no store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from domain.criteria import evaluate_metric_names, subgroups
from domain.metrics import (
    calibration_line,
    calibration_lines,
    net_benefit,
    roc_aucs,
    sensitivities,
    treat_all_net_benefit,
)
from domain.sources import read_uci
from heart_disease_model.codebook import Codebook, validate
from steps.evaluate import cross_validate, judge, out_of_fold_estimates, out_of_fold_report, subgroup_masks
from steps.split import split_data
from steps.train import build_estimator
from steps.transform import build_transformer
from tests.conftest import CLEVELAND


@pytest.fixture(scope="module")
def cleveland(cfg):
    """Train + validation rows of the default split: what evaluate cross-validates on."""
    book = Codebook.from_config(cfg.schema)
    raw = validate(read_uci(CLEVELAND, book.file_columns), book)[0]
    sets, _ = split_data(raw, book.label, cfg.split.test_fraction, cfg.split.val_fraction, cfg.split.seed)
    both = pd.concat([sets["train"], sets["val"]], ignore_index=True)
    return book, both[book.features], both[book.label]


def pipeline_of(cfg, book, calibration: str):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import Pipeline

    estimator = build_estimator(cfg.model)
    if calibration != "none":
        estimator = CalibratedClassifierCV(estimator, method=calibration, cv=cfg.train.calibration_folds,
                                           ensemble=cfg.train.calibration_ensemble)
    return Pipeline([("transform", build_transformer(cfg.transform, book)), ("model", estimator)])


@pytest.fixture(scope="module")
def cross_validated(cfg, cleveland):
    """The default model with and without its sigmoid calibration, 3 repeats of 5 folds."""
    book, features, label = cleveland
    assert cfg.train.calibration == "sigmoid" and not cfg.train.calibration_ensemble
    return {calibration: cross_validate(pipeline_of(cfg, book, calibration), features, label, 5, 3,
                                        cfg.evaluate.seed, 0.3)
            for calibration in ("none", "sigmoid")}


# --------------------------------------------------------------------------- the metric functions


def test_vectorised_metrics_agree_with_scikit_learn(cross_validated, cleveland):
    _, _, label = cleveland
    y, p = label.to_numpy(), cross_validated["none"].out_of_fold
    for repeat in p:
        reference = LogisticRegression(C=1e6, tol=1e-10, max_iter=10_000).fit(
            np.log(repeat / (1 - repeat)).reshape(-1, 1), y)
        slope, intercept = calibration_line(y, repeat)
        assert slope == pytest.approx(reference.coef_[0, 0], abs=1e-6)
        assert intercept == pytest.approx(reference.intercept_[0], abs=1e-6)
    np.testing.assert_allclose(roc_aucs(np.tile(y, (len(p), 1)), p), [roc_auc_score(y, r) for r in p], atol=1e-12)
    tied = np.round(p, 1)  # ties count half, as in scikit-learn
    np.testing.assert_allclose(roc_aucs(np.tile(y, (len(p), 1)), tied), [roc_auc_score(y, r) for r in tied],
                               atol=1e-12)
    np.testing.assert_allclose(sensitivities(np.tile(y, (len(p), 1)), p, 0.3), (p[:, y == 1] >= 0.3).mean(axis=1))
    one_class = np.zeros((1, 20))
    assert np.isnan(roc_aucs(one_class, np.full((1, 20), 0.4))).all()
    assert np.isnan(calibration_lines(one_class, np.full((1, 20), 0.4))[0]).all()
    assert np.isnan(sensitivities(one_class, np.full((1, 20), 0.4), 0.3)).all()


def test_net_benefit_of_a_perfect_model_is_the_prevalence_and_treat_all_is_everyone_treated():
    y = np.array([1, 0, 0, 1, 0, 1, 0, 0])
    thresholds = np.array([0.05, 0.2, 0.5, 0.8])
    np.testing.assert_allclose(net_benefit(y, y.astype(float), thresholds), y.mean())
    np.testing.assert_allclose(net_benefit(y, np.ones(len(y)), thresholds), treat_all_net_benefit(y.mean(), thresholds))
    # A useless model treats no one above its constant answer: net benefit 0, like treating no one.
    np.testing.assert_allclose(net_benefit(y, np.full(len(y), 0.1), [0.2, 0.5]), 0.0)


# --------------------------------------------------------------------------- calibration, honestly


def test_out_of_fold_predictions_are_those_of_the_fold_that_held_each_patient_out(cfg, cleveland, cross_validated):
    from sklearn.base import clone
    from sklearn.model_selection import RepeatedStratifiedKFold

    book, features, label = cleveland
    cv = cross_validated["sigmoid"]
    assert cv.out_of_fold.shape == (3, len(features)) and np.isfinite(cv.out_of_fold).all()
    train, test = next(RepeatedStratifiedKFold(n_splits=5, n_repeats=3, random_state=cfg.evaluate.seed)
                       .split(features, label))
    model = clone(pipeline_of(cfg, book, "sigmoid")).fit(features.iloc[train], label.iloc[train])
    np.testing.assert_array_equal(cv.out_of_fold[0, test], model.predict_proba(features.iloc[test])[:, 1])


def test_the_default_calibration_brings_the_cross_validated_slope_to_one_without_losing_discrimination(
        cfg, cleveland, cross_validated):
    """The regularised logistic regression alone is under-confident (slope above 1.2 on the
    out-of-fold predictions); the default sigmoid calibration brings the slope within
    0.8..1.2, and as one monotone map of one model it ranks every fold's patients alike:
    the same ROC-AUC, fold by fold."""
    _, _, label = cleveland
    y = label.to_numpy()
    slope = {name: out_of_fold_estimates(y, cv.out_of_fold, 0.3, 5, 400, 0, ("calibration_slope",))
             ["calibration_slope"] for name, cv in cross_validated.items()}
    assert slope["none"]["estimate"] > 1.2
    assert 0.8 <= slope["sigmoid"]["estimate"] <= 1.2
    assert slope["sigmoid"]["ci_low"] < 1 < slope["sigmoid"]["ci_high"]
    plain, calibrated = (cross_validated[name].metrics for name in ("none", "sigmoid"))
    assert calibrated["cv_roc_auc_mean"] == pytest.approx(plain["cv_roc_auc_mean"], abs=1e-12)
    assert calibrated["cv_roc_auc_std"] == pytest.approx(plain["cv_roc_auc_std"], abs=1e-12)


def test_the_out_of_fold_interval_is_as_wide_as_the_per_fold_one_where_both_exist(cleveland, cross_validated):
    """For ROC-AUC both intervals can be computed: over the folds (corrected resampled t of
    the per-fold values) and on the pooled out-of-fold predictions (the same t interval,
    per-fold variance from resampled patients). They must agree in width, within what
    estimating a spread from 15 folds allows."""
    _, _, label = cleveland
    cv = cross_validated["none"]
    pooled = out_of_fold_estimates(label.to_numpy(), cv.out_of_fold, 0.3, 5, 1000, 0, ("roc_auc",))["roc_auc"]
    per_fold = cv.metrics["cv_roc_auc_ci_high"] - cv.metrics["cv_roc_auc_ci_low"]
    assert 0.67 < (pooled["ci_high"] - pooled["ci_low"]) / per_fold < 1.5
    assert pooled["estimate"] == pytest.approx(cv.metrics["cv_roc_auc_mean"], abs=0.02)


def test_a_slope_that_runs_off_in_a_few_resamples_does_not_blow_up_the_interval():
    """69 patients (like the under-50s), classes well apart: in a few resamples they
    separate and the slope runs off to 100 or more. The interval is read from the central
    95 % of the resamples, so those few do not make it useless."""
    from scipy.special import expit

    rng = np.random.default_rng(2)
    y = np.array([0] * 48 + [1] * 21)
    p = expit(np.where(y == 1, 1.8, -1.8) + rng.normal(0, 1.5, len(y)))
    resampled = np.random.default_rng(0).integers(0, len(y), size=(1000, len(y)))  # as evaluate draws them
    slopes, _ = calibration_lines(y[resampled], p[resampled])
    assert np.nanmax(slopes) > 100 and np.nanstd(slopes) > 3  # the runaways
    estimate = out_of_fold_estimates(y, p[None, :], 0.5, 5, 1000, 0, ("calibration_slope",))["calibration_slope"]
    assert estimate["ci_low"] < estimate["estimate"] < estimate["ci_high"] < estimate["estimate"] + 3


def test_resamples_of_part_of_the_patients_give_the_same_interval_scaled_to_all(cleveland, cross_validated):
    """On large data a resample holds evaluate.bootstrap_max_rows patients and its variance
    is scaled by that share. Half the Cleveland patients per resample must give about the
    width that resampling all of them gives."""
    _, _, label = cleveland
    y, p = label.to_numpy(), cross_validated["sigmoid"].out_of_fold
    names = ("roc_auc", "calibration_slope")
    full = out_of_fold_estimates(y, p, 0.3, 5, 1000, 0, names)
    half = out_of_fold_estimates(y, p, 0.3, 5, 1000, 0, names, max_rows=len(y) // 2)
    for name in names:
        assert half[name]["estimate"] == full[name]["estimate"]  # the estimate always uses every patient
        ratio = (half[name]["ci_high"] - half[name]["ci_low"]) / (full[name]["ci_high"] - full[name]["ci_low"])
        assert 0.75 < ratio < 1.33, (name, ratio)


# --------------------------------------------------------------------------- subgroups


def test_subgroups_from_config_split_the_patients_and_name_the_metrics(cfg, cleveland):
    _, features, _ = cleveland
    groups = subgroup_masks(features, cfg.evaluate.subgroups, cfg.schema.columns)
    names = [group.name for group, _ in groups]
    assert names == ["sex_0", "sex_1", "age_lt_50", "age_50_60", "age_ge_60"]
    masks = dict((group.name, mask) for group, mask in groups)
    assert (masks["sex_0"] ^ masks["sex_1"]).all()
    assert (masks["age_lt_50"].astype(int) + masks["age_50_60"] + masks["age_ge_60"] == 1).all()
    assert features.age[masks["age_50_60"]].between(50, 59.999).all()
    assert dict((g.name, g.label) for g, _ in groups)["sex_0"] == "sex = 0 (female)"
    known = evaluate_metric_names(subgroup_names=names)
    assert {"cv_roc_auc_sex_0", "cv_roc_auc_sex_0_ci_low", "cv_calibration_slope_age_ge_60_ci_high",
            "cv_sensitivity_sex_1", "cv_rows_sex_0", "cv_roc_auc_subgroup_min", "cv_calibration_slope",
            "cv_calibration_intercept_ci_low"} <= known
    with pytest.raises(Exception, match="not a coded column"):
        subgroups({"codes": ["age"]}, cfg.schema.columns)
    assert [g.name for g in subgroups({"bands": {"oldpeak": [-0.5, 2.5]}}, cfg.schema.columns)] == \
        ["oldpeak_lt_m0p5", "oldpeak_m0p5_2p5", "oldpeak_ge_2p5"]


def test_the_subgroup_report_gives_each_subgroup_its_intervals_and_the_criteria_can_gate_on_them(cfg, cleveland,
                                                                                               cross_validated):
    _, features, label = cleveland
    y = label.to_numpy()
    groups = subgroup_masks(features, cfg.evaluate.subgroups, cfg.schema.columns)
    # A subgroup without a patient with disease cannot be measured: it is reported, not guessed.
    healthy_only = (groups[0][0].__class__("nobody_ill", "no disease", "sex", code=0.0), (y == 0) & groups[0][1])
    metrics, table = out_of_fold_report(y, cross_validated["sigmoid"].out_of_fold, [*groups, healthy_only], 0.3, 5,
                                        400, 0)
    assert [row["name"] for row in table["subgroups"]] == [group.name for group, _ in groups]
    assert "both classes are needed" in table["not_measured"]["nobody_ill"]
    for row in table["subgroups"]:
        mask = dict((group.name, mask) for group, mask in groups)[row["name"]]
        assert row["rows"] == mask.sum() == metrics[f"cv_rows_{row['name']}"]
        assert row["prevalence"] == pytest.approx(y[mask].mean())
        for name, values in row["metrics"].items():
            assert values["ci_low"] <= values["estimate"] <= values["ci_high"], (row["name"], name)
            assert metrics[f"cv_{name}_{row['name']}"] == values["estimate"]
    # Women's ROC-AUC is that of their out-of-fold predictions, averaged over repeats.
    women = dict((group.name, mask) for group, mask in groups)["sex_0"]
    assert metrics["cv_roc_auc_sex_0"] == pytest.approx(
        np.mean([roc_auc_score(y[women], r[women]) for r in cross_validated["sigmoid"].out_of_fold]), abs=1e-12)
    worst = min(row["metrics"]["roc_auc"]["estimate"] for row in table["subgroups"])
    assert metrics["cv_roc_auc_subgroup_min"] == worst
    assert set(metrics) <= evaluate_metric_names(subgroup_names=[g.name for g, _ in groups])
    bound = metrics["cv_roc_auc_subgroup_min"]
    assert judge(metrics, [f"cv_roc_auc_subgroup_min >= {bound - 0.01}"])[0] == "VALIDATED"
    status, reasons = judge(metrics, [f"cv_roc_auc_subgroup_min >= {bound + 0.01}"])
    assert status == "REJECTED" and reasons[0].startswith("cv_roc_auc_subgroup_min")


# --------------------------------------------------------------------------- the model card


def card_facts(metrics: dict, subgroups_table, explanation, plot) -> dict:
    """What register gathers from the lineage, for a card of one version."""
    return {"name": "heart-disease", "version": "7", "data_source": "uci", "sites": ["cleveland"], "rows": 303,
            "duplicates_dropped": 0, "split_rows": "181 / 61 / 61", "test_rows": 61, "dataset_digest": "d",
            "sha256": {"cleveland": "a74b"}, "missing": {"ca": 4}, "impossible": {}, "male_share": 0.68,
            "codebook": {"sex": "code in [0, 1]"}, "model": "LogisticRegression C=0.1", "calibration": "sigmoid",
            "status": "VALIDATED", "reasons": "ok", "metrics": metrics, "threshold": 0.3,
            "threshold_rule": "sensitivity", "confusion": "...", "bands": {"Low": 0.1, "High": 1.0},
            "external": {}, "external_unusable": {}, "command": "mlflow run .", "commit": "abc",
            "train_run_id": "t", "evaluate_run_id": "e", "subgroups": subgroups_table, "explanation": explanation,
            "contributions_plot": plot}


def test_the_model_card_shows_calibration_the_subgroup_table_and_what_drives_the_answers(cfg, cleveland,
                                                                                        cross_validated, tmp_path):
    from engine.model_card import card_sections, contributions_figure, to_html, to_markdown
    from steps.evaluate import SUBGROUP_METHOD

    _, features, label = cleveland
    y = label.to_numpy()
    cv = cross_validated["sigmoid"]
    metrics, table = out_of_fold_report(y, cv.out_of_fold, subgroup_masks(features, cfg.evaluate.subgroups,
                                                                          cfg.schema.columns), 0.3, 5, 400, 0)
    metrics = {**cv.metrics, **metrics, "test_calibration_slope": 1.6, "test_calibration_intercept": -0.4,
               "test_brier": 0.1, "test_recall": 0.9, "test_specificity": 0.8, "test_roc_auc": 0.95}
    table = {**table, "threshold": 0.3, "method": SUBGROUP_METHOD}
    explanation = {"rows": 242, "base_log_odds": -0.27, "mean_abs_contribution": {"ca": 0.61, "thal": 0.55,
                                                                                   "sex": 0.54}}
    plot = tmp_path / "feature_contributions.png"
    contributions_figure(explanation["mean_abs_contribution"]).savefig(plot)
    sections = card_sections(card_facts(metrics, table, explanation, plot))
    markdown, page = to_markdown("card", sections), to_html("card", sections)
    women = table["subgroups"][0]
    assert f"| {women['label']} | 77 | 23% | {women['metrics']['roc_auc']['estimate']:.2f} [" in markdown
    assert f"slope **{metrics['cv_calibration_slope']:.2f}** [{metrics['cv_calibration_slope_ci_low']:.2f}" in markdown
    assert "![What drives the answers](plots/feature_contributions.png)" in markdown
    assert "| ca | 0.610 |" in markdown and "| mean absolute contribution to the log-odds |" in markdown
    assert "data:image/png;base64," in page and "Subgroups" in page

    no_explanation = card_sections(card_facts(metrics, table, {"unavailable": "a forest averages its trees"}, None))
    text = to_markdown("card", no_explanation)
    assert "no per-answer explanation: a forest averages its trees" in text and "![" not in text
    old_run = to_markdown("card", card_sections(card_facts({k: v for k, v in metrics.items()
                                                             if not k.startswith("cv_calibration")}, None, None, None)))
    assert "## Subgroups" not in old_run and "On the test split" in old_run  # an evaluate run from before
