"""The pure cores of the steps, called directly on real data."""

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from domain.sources import read_uci
from domain.synthetic import generate
from engine.cli import _argv_from_mlproject
from engine.errors import PipelineError
from engine.fingerprint import cache_key, code_fingerprint, step_view
from engine.names import REJECTED, VALIDATED
from heart_disease_model.codebook import Codebook, validate
from steps.evaluate import cross_validate, judge
from steps.pipeline import STEPS
from steps.register import champion_decision
from steps.split import split_data
from steps.transform import build_transformer, fit_transform
from tests.conftest import CLEVELAND


@pytest.fixture(scope="module")
def book(cfg):
    return Codebook.from_config(cfg.schema)


@pytest.fixture(scope="module")
def raw(cfg, book):
    return validate(read_uci(CLEVELAND, book.file_columns), book)[0]


def test_split_drops_duplicates_before_splitting(raw):
    with_duplicates = pd.concat([raw, raw.head(40)], ignore_index=True)
    sets, dropped = split_data(with_duplicates, "target", 0.2, 0.2, 42)
    assert dropped == 40
    assert sum(len(s) for s in sets.values()) == len(raw)
    keys = {name: set(map(tuple, s.fillna(-1).to_numpy())) for name, s in sets.items()}
    assert not keys["train"] & keys["test"] and not keys["val"] & keys["test"] and not keys["train"] & keys["val"]


def test_split_is_stratified_and_seeded(raw):
    sets, _ = split_data(raw, "target", 0.2, 0.2, 7)
    again, _ = split_data(raw, "target", 0.2, 0.2, 7)
    for name in sets:
        pd.testing.assert_frame_equal(sets[name], again[name])
        assert abs(sets[name]["target"].mean() - raw["target"].mean()) < 0.03
    assert len(sets["test"]) == round(0.2 * len(raw))


def test_transform_fits_on_train_only(cfg, book, raw):
    sets, _ = split_data(raw, "target", 0.2, 0.2, 42)
    transformer, transformed = fit_transform(sets["train"], cfg.transform, book)
    scaled = transformer.named_transformers_["scaled"]
    imputer, scaler = scaled.steps[0][1], scaled.steps[1][1]
    numeric = [c for c in book.features if c not in cfg.transform.one_hot]
    np.testing.assert_allclose(imputer.statistics_, sets["train"][numeric].median())
    np.testing.assert_allclose(scaler.mean_, sets["train"][numeric].fillna(sets["train"][numeric].median()).mean())
    assert transformed[numeric].mean().abs().max() < 1e-9
    test = pd.DataFrame(transformer.transform(sets["test"][book.features]), columns=transformer.get_feature_names_out())
    assert test[numeric].mean().abs().max() > 1e-3  # test rows were not fitted
    assert {"cp_4.0", "thal_7.0"} <= set(transformed.columns)
    assert not test.isna().any().any()


def test_transform_rejects_unknown_one_hot_column(cfg, book):
    bad = cfg.transform.copy()
    bad.one_hot = ["cp", "colour"]
    with pytest.raises(PipelineError, match="colour"):
        build_transformer(bad, book)


def test_cross_validation_interval_brackets_the_mean(cfg, book, raw):
    pipeline = Pipeline([("t", build_transformer(cfg.transform, book)),
                         ("m", LogisticRegression(C=0.1, max_iter=1000))])
    metrics = cross_validate(pipeline, raw[book.features], raw["target"], 5, 2, 0).metrics
    assert metrics["cv_roc_auc_ci_low"] < metrics["cv_roc_auc_mean"] < metrics["cv_roc_auc_ci_high"]
    assert 0.85 < metrics["cv_roc_auc_mean"] < 0.97


def test_judge_names_failed_criteria():
    metrics = {"test_roc_auc": 0.82, "cv_roc_auc_mean": 0.91}
    assert judge(metrics, ["cv_roc_auc_mean >= 0.9"])[0] == VALIDATED
    status, reasons = judge(metrics, ["cv_roc_auc_mean >= 0.9", "test_roc_auc>=0.85"])
    assert status == REJECTED
    assert reasons == ["test_roc_auc = 0.8200 fails >= 0.85"]
    # A Brier bound gates registration like any other criterion.
    assert (judge({**metrics, "test_brier": 0.21}, ["test_brier <= 0.2"])
            == (REJECTED, ["test_brier = 0.2100 fails <= 0.2"]))
    with pytest.raises(PipelineError, match="unknown metric 'auc'"):
        judge(metrics, ["auc >= 0.5"])
    with pytest.raises(PipelineError, match="cannot read"):
        judge(metrics, ["roc_auc is good"])


def test_champion_decision():
    assert champion_decision(0.9, None, None, "m")[0]
    assert champion_decision(0.91, "3", 0.90, "m") == (True, "m 0.9100 beats champion v3 (0.9000)")
    assert not champion_decision(0.90, "3", 0.90, "m")[0]  # a tie keeps the champion


@pytest.mark.parametrize("overrides, expected", [
    ("", []),
    ("model=random_forest model.n_estimators=300", ["model=random_forest", "model.n_estimators=300"]),
    ("'force=[train,evaluate]'", ["force=[train,evaluate]"]),
    ("data.path='/my data/patients.csv'", ["data.path=/my data/patients.csv"]),
    ("""evaluate.criteria='["test_roc_auc >= 0.8", "cv_roc_auc_mean > 0.5"]'""",
     ['evaluate.criteria=["test_roc_auc >= 0.8", "cv_roc_auc_mean > 0.5"]']),
])
def test_mlproject_overrides_are_split_like_a_shell(overrides, expected):
    argv = _argv_from_mlproject(["steps.train", "--overrides", overrides, "--profile", "local"])
    assert argv == ["steps.train", *expected, "profile=local"]


def test_cache_key_depends_on_own_config_only(cfg):
    train = STEPS["train"]
    base = cache_key(train, step_view(cfg, train), "run-1")
    changed_model = cfg.copy()
    changed_model.model.C = 0.5
    changed_split = cfg.copy()
    changed_split.split.seed = 1
    assert cache_key(train, step_view(changed_model, train), "run-1") != base
    # split's change reaches train via its run id
    assert cache_key(train, step_view(changed_split, train), "run-1") == base
    assert cache_key(train, step_view(cfg, train), "run-2") != base


def test_cache_key_covers_the_versions_of_result_shaping_libraries(cfg):
    from engine import fingerprint

    train = STEPS["train"]
    base = cache_key(train, step_view(cfg, train), "run-1")
    real = fingerprint.library_versions()
    assert {"mlflow", "scikit-learn", "numpy", "pandas", "pyarrow", "skops"} <= set(real)
    fingerprint.library_versions.cache_clear()
    original = fingerprint.version
    try:
        fingerprint.version = lambda package: "0.0.1" if package == "scikit-learn" else original(package)
        assert cache_key(train, step_view(cfg, train), "run-1") != base
    finally:
        fingerprint.version = original
        fingerprint.library_versions.cache_clear()
    assert cache_key(train, step_view(cfg, train), "run-1") == base


def test_a_step_sees_only_the_config_in_its_cache_key(cfg):
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    view = step_view(cfg, STEPS["split"])
    assert view.split.seed == cfg.split.seed
    with pytest.raises((ConfigAttributeError, ConfigKeyError)):
        view.model  # noqa: B018 - reading outside the step's sections must fail at once


def test_code_fingerprint_covers_imported_project_modules():
    # train imports codebook, metrics, model and the step context: editing any changes train's key
    from engine.fingerprint import PROJECT_ROOT, imported_files

    imported = {p.name for p in imported_files(PROJECT_ROOT / "steps" / "train.py")}
    assert {"codebook.py", "metrics.py", "model.py", "context.py"} <= imported
    assert "cli.py" not in imported  # the command-line shell computes nothing
    assert code_fingerprint("steps.train") != code_fingerprint("steps.split")


def test_synthetic_data_is_valid_seeded_and_learnable(cfg, book):
    frame = generate(3000, seed=1)
    assert frame.equals(generate(3000, seed=1)) and not frame.equals(generate(3000, seed=2))
    clean, report = validate(frame, book)
    assert report["rows"] == 3000 and report["missing"]
    sets, _ = split_data(clean, "target", 0.2, 0.2, 0)
    pipeline = Pipeline([("t", build_transformer(cfg.transform, book)), ("m", LogisticRegression(max_iter=1000))])
    pipeline.fit(sets["train"][book.features], sets["train"]["target"])
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(sets["test"]["target"], pipeline.predict_proba(sets["test"][book.features])[:, 1])
    assert auc > 0.75


def test_threshold_for_sensitivity_is_the_strictest_that_reaches_the_target():
    from domain.metrics import threshold_for_sensitivity

    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 1])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.3, 0.2, 0.15, 0.1])
    t = threshold_for_sensitivity(y, p, 0.66)  # 4 of 6 positives
    assert t == 0.6
    assert ((p >= t) & (y == 1)).sum() / (y == 1).sum() >= 0.66
    assert threshold_for_sensitivity(y, p, 1.0) == 0.1


def test_threshold_for_specificity_is_the_lowest_that_reaches_the_target():
    from domain.metrics import threshold_for_specificity

    y = np.array([0, 0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.35, 0.9])
    t = threshold_for_specificity(y, p, 0.75)  # 3 of 4 negatives below t
    assert 0.3 < t < 0.31
    assert ((p < t) & (y == 0)).sum() == 3


def test_risk_bands_from_validation_data(cfg):
    from steps.train import choose_risk_bands, choose_threshold

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(0.35 * y + rng.random(500) * 0.65, 0, 1)
    bands = choose_risk_bands(y, p, cfg.train.risk_levels)
    assert list(bands) == ["Low", "Moderate", "High"] and bands["Low"] <= bands["Moderate"] < bands["High"] == 1.0
    assert ((p < bands["Low"]) & (y == 1)).sum() <= 0.03 * (y == 1).sum() + 1  # rule-out misses few patients
    assert ((p >= bands["Moderate"]) & (y == 0)).sum() <= 0.10 * (y == 0).sum() + 1  # rule-in: few healthy
    assert choose_threshold(y, p, cfg.train.threshold) <= bands["Moderate"]


def test_calibration_wraps_the_estimator(cfg, book, raw):
    from sklearn.calibration import CalibratedClassifierCV

    from steps.train import fit_model

    sets, _ = split_data(raw, "target", 0.2, 0.2, 42)
    transformer, transformed = fit_transform(sets["train"], cfg.transform, book)
    pipeline = fit_model(transformer, transformed, cfg.model, "target", "sigmoid", 3)
    assert isinstance(pipeline.named_steps["model"], CalibratedClassifierCV)
    assert pipeline.predict_proba(sets["test"][book.features]).shape == (len(sets["test"]), 2)
    with pytest.raises(PipelineError, match="train.calibration='platt'"):
        fit_model(transformer, transformed, cfg.model, "target", "platt")

