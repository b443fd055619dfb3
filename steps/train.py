"""train: fit the estimator chosen by the `model` config group on the transformed
train split, and log ONE MLflow model that takes the raw codebook features: the
fitted transformer and the estimator in one sklearn Pipeline, saved with skops.

The served model scores through the pipeline compiled into NumPy arrays
(heart_disease_model/fast_path.py). Before logging, train compares that fast path with the sklearn
pipeline on the train, validation and test rows and on synthetic patients, and refuses
to log a model whose probabilities differ by more than fast_path.TOLERANCE.

    python -m steps.train model=random_forest model.n_estimators=500
"""

from __future__ import annotations

import io
from typing import Optional

import numpy as np
import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig
from sklearn.calibration import CalibratedClassifierCV
from sklearn.pipeline import Pipeline

from domain.metrics import binary_metrics, prefixed, threshold_for_sensitivity, threshold_for_specificity
from domain.synthetic import generate
from engine import names
from engine.context import StepContext
from engine.errors import PipelineError
from heart_disease_model import fast_path
from heart_disease_model.codebook import Codebook
from heart_disease_model.model import answer


def build_estimator(model: DictConfig):
    """The unfitted estimator named by `model._target_`, with the config's hyperparameters."""
    try:
        return instantiate(model)
    except Exception as err:  # Hydra wraps unknown classes and bad keyword arguments
        raise PipelineError(f"model config cannot build an estimator: {err}") from None


def fit_model(transformer, train: pd.DataFrame, model: DictConfig, label: str, calibration: str = "none",
              calibration_folds: int = 5, calibration_ensemble: bool = False) -> Pipeline:
    """Fit the estimator (recalibrated by cross-validation on these rows if asked) on
    already-transformed rows; return transformer + estimator, a pipeline that takes raw
    features. The transformer outputs plain arrays, so the estimator is fitted on one too.

    Calibration without ensemble fits ONE calibrator on the out-of-fold scores of
    `calibration_folds` fits and applies it to the estimator refitted on every row: a
    monotone map of one model, so the ranking (ROC-AUC) is that model's, and a sigmoid
    over a logistic regression keeps the log-odds a sum over the inputs (exact
    explanations). With ensemble, the answer is the mean of the folds' calibrated models."""
    estimator = build_estimator(model)
    if calibration != "none":
        if calibration not in ("sigmoid", "isotonic"):
            raise PipelineError(f"train.calibration={calibration!r}: use none, sigmoid or isotonic")
        estimator = CalibratedClassifierCV(estimator, method=calibration, cv=calibration_folds,
                                           ensemble=calibration_ensemble)
    estimator.fit(train.drop(columns=[label]).to_numpy(), train[label].to_numpy())
    return Pipeline([("transform", transformer), ("model", estimator)])


def scorer_summary(differences: dict[str, float]) -> str:
    return f"max diff {max(differences.values()):.1e}" if differences else "not covered: sklearn"


def model_family(model: DictConfig) -> str:
    """The estimator's class: LogisticRegression, RandomForestClassifier, ..."""
    return model._target_.rsplit(".", 1)[-1]


def model_description(model: DictConfig) -> str:
    params = ", ".join(f"{k}={v}" for k, v in model.items() if k != "_target_")
    return f"{model_family(model)}({params})"


def calibration_description(train: DictConfig) -> str:
    if train.calibration == "none":
        return "none"
    return f"{train.calibration}, {'mean of fold models' if train.calibration_ensemble else 'one calibrator'}"


def choose_threshold(y_val, p_val, threshold: DictConfig) -> float:
    """The decision threshold, from the validation split's labels and probabilities."""
    if threshold.strategy == "fixed":
        return float(threshold.value)
    if threshold.strategy == "sensitivity":
        return threshold_for_sensitivity(y_val, p_val, threshold.target)
    raise PipelineError(f"train.threshold.strategy={threshold.strategy!r}: use sensitivity or fixed")


def choose_risk_bands(y_val, p_val, levels: DictConfig) -> dict[str, float]:
    """Upper bound of each risk level, from the validation split or fixed in config."""
    if levels.strategy == "fixed":
        bands = dict(levels.bounds)
        if list(bands.values()) != sorted(bands.values()) or list(bands.values())[-1] != 1.0:
            raise PipelineError(f"train.risk_levels.bounds={bands}: upper bounds must increase and the last be 1.0")
        return bands
    if levels.strategy == "data":
        high_from = threshold_for_specificity(y_val, p_val, levels.high_specificity)
        low_below = min(threshold_for_sensitivity(y_val, p_val, levels.low_sensitivity), high_from)
        return {"Low": low_below, "Moderate": high_from, "High": 1.0}
    raise PipelineError(f"train.risk_levels.strategy={levels.strategy!r}: use data or fixed")


def model_config(book: Codebook, train: pd.DataFrame, threshold: float, bands: dict[str, float]) -> dict:
    """What the served model needs besides the fitted pipeline (heart_disease_model/model.py)."""
    return {
        "codebook": book.to_dict(),
        # Missing values are accepted only where the training data had them.
        "imputable": sorted(c for c in book.features if train[c].isna().any()),
        "decision_threshold": threshold,
        "risk_levels": bands,
    }


def verify_fast_path(pipeline, features: list[str], tables: dict[str, pd.DataFrame],
                     reference: dict[str, np.ndarray]) -> tuple[Optional[fast_path.FastScorer], str, dict[str, float]]:
    """Compile the fast path, store it and read it back as the model will, and compare
    what was read with the sklearn pipeline on every table's rows; return (that scorer,
    what will serve, {table: max |difference| in probability}). The pipeline's
    probabilities are computed here for tables missing from `reference`.
    Raises PipelineError when any difference exceeds fast_path.TOLERANCE: the model
    would answer otherwise than the pipeline that was validated. Without a fast path
    (estimator not covered) the model serves the pipeline itself: nothing to compare."""
    compiled, scoring_path = fast_path.for_pipeline(pipeline, features)
    if compiled is None:
        return None, scoring_path, {}
    stored = io.BytesIO()
    fast_path.save(compiled, stored)
    stored.seek(0)
    scorer = fast_path.load(stored)
    differences = {}
    for name, table in tables.items():
        rows = table[features]
        expected = reference[name] if name in reference else pipeline.predict_proba(rows)[:, 1]
        fast = scorer.probability(rows.to_numpy(dtype=np.float64, na_value=np.nan))
        differences[name] = float(np.max(np.abs(fast - expected), initial=0.0))
    worst = max(differences, key=differences.get)
    if differences[worst] > fast_path.TOLERANCE:
        raise PipelineError(
            f"the fast path ({scorer.kind}) differs from the sklearn pipeline by {differences[worst]:.3g} in "
            f"probability on the {worst} rows (allowed {fast_path.TOLERANCE:g}): not logging a model that would "
            "answer otherwise than the pipeline validated. heart_disease_model/fast_path.py compiles this estimator "
            "wrongly; fix it or add the case to its NotCompilable checks so the model serves the pipeline itself.")
    return scorer, scoring_path, differences


def run(ctx: StepContext) -> None:
    cfg = ctx.cfg
    book = Codebook.from_config(cfg.schema)
    label = book.label
    pipeline = fit_model(ctx.read("transformer"), ctx.read("train_features"), cfg.model, label,
                         cfg.train.calibration, cfg.train.calibration_folds, cfg.train.calibration_ensemble)
    ctx.done_with("train_features")  # fitted: under `main`, free it for the checks and logging below

    raw_train, val = ctx.read("train"), ctx.read("val")
    p_train, p_val = (pipeline.predict_proba(rows[book.features])[:, 1] for rows in (raw_train, val))
    threshold = choose_threshold(val[label], p_val, cfg.train.threshold)
    bands = choose_risk_bands(val[label], p_val, cfg.train.risk_levels)
    metrics = {"decision_threshold": threshold,
               **{f"risk_{level.lower()}_below": bound for level, bound in bands.items() if bound < 1.0},
               **prefixed("train", binary_metrics(raw_train[label], p_train, threshold)),
               **prefixed("val", binary_metrics(val[label], p_val, threshold))}
    ctx.log_metrics(metrics)

    checked = {"train": raw_train, "val": val, "test": ctx.read("test"),
               "synthetic": generate(fast_path.SYNTHETIC_ROWS, fast_path.SYNTHETIC_SEED)}
    scorer, scoring_path, differences = verify_fast_path(pipeline, book.features, checked,
                                                 {"train": p_train, "val": p_val})
    ctx.log_params({"fast_path": scoring_path[:500]})
    if differences:
        ctx.log_metrics({"fast_path_max_abs_diff": max(differences.values()),
                         **{f"fast_path_max_abs_diff_{name}": d for name, d in differences.items()}})

    features = raw_train[book.features]
    config = model_config(book, raw_train, threshold, bands)
    example_identity = {"model_name": "heart-disease", "model_version": "1", "run_id": ctx.run_id, "model_id": "m-0"}
    example_output = answer(pipeline.predict_proba(features.head(2))[:, 1], config["decision_threshold"],
                            config["risk_levels"], example_identity)
    uri = ctx.write_model("model", name=cfg.train.model_name or model_family(cfg.model), pipeline=pipeline,
                          scorer=scorer, config=config, features=features, example_output=example_output,
                          input_example_rows=cfg.train.input_example_rows)
    ctx.set_tags({names.MODEL_URI: uri, names.MODEL_CLASS: cfg.model._target_})
    ctx.summary.update(model=model_description(cfg.model), calibration=calibration_description(cfg.train),
                       val_roc_auc=round(metrics["val_roc_auc"], 4),
                       threshold=round(threshold, 3), fast_path=scorer_summary(differences))


if __name__ == "__main__":
    from engine.cli import launch_step

    launch_step("train")
