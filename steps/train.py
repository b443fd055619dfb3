"""train: fit the estimator chosen by the `model` config group on the transformed
train split, and log ONE MLflow model that takes the raw codebook features: the
fitted transformer and the estimator in one sklearn Pipeline, saved with skops.

    python -m steps.train model=random_forest model.n_estimators=500
"""

from __future__ import annotations

import warnings
from importlib.metadata import version

import mlflow
import pandas as pd
import skops.io
from hydra.utils import instantiate
from mlflow.models import infer_signature
from omegaconf import DictConfig
from sklearn.pipeline import Pipeline

from steps.codebook import Codebook
from steps.metrics import binary_metrics, prefixed
from steps.tracking import PipelineError, StepContext, launch_step
from steps.transform import TRANSFORMER_PATH

TAG_MODEL_URI = "pipeline.model_uri"
# What the logged model needs to load and predict, at the versions that trained it.
MODEL_REQUIREMENTS = ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy")


def build_estimator(model: DictConfig):
    """The unfitted estimator named by `model._target_`, with the config's hyperparameters."""
    try:
        return instantiate(model)
    except Exception as err:  # Hydra wraps unknown classes and bad keyword arguments
        raise PipelineError(f"model config cannot build an estimator: {err}") from None


def fit_model(transformer, train: pd.DataFrame, model: DictConfig, label: str) -> Pipeline:
    """Fit the estimator on already-transformed rows; return transformer + estimator,
    a pipeline that takes raw features."""
    estimator = build_estimator(model).fit(train.drop(columns=[label]), train[label])
    return Pipeline([("transform", transformer), ("model", estimator)])


def model_description(model: DictConfig) -> str:
    params = ", ".join(f"{k}={v}" for k, v in model.items() if k != "_target_")
    return f"{model._target_.rsplit('.', 1)[-1]}({params})"


def run(ctx: StepContext) -> None:
    cfg = ctx.cfg
    book = Codebook.from_config(cfg.schema)
    label = book.label
    trusted = list(cfg.train.skops_trusted_types)
    transformer = skops.io.load(ctx.download("transform", TRANSFORMER_PATH), trusted=trusted)
    pipeline = fit_model(transformer, ctx.load_table("transform", "train"), cfg.model, label)

    metrics = {}
    for name in ("train", "val"):
        rows = ctx.load_table("split", name)
        metrics.update(prefixed(name, binary_metrics(rows[label], pipeline.predict_proba(rows[book.features])[:, 1])))
    ctx.log_metrics(metrics)

    raw_train = ctx.load_table("split", "train")
    features = raw_train[book.features]
    example = features.head(cfg.train.input_example_rows)
    ctx.log_dataset(raw_train, source=ctx.artifact_uri("split", "data/train.parquet"),
                    name="train", context="training", targets=label)
    with warnings.catch_warnings():
        # MLflow hints that int outputs cannot hold missing values: true, and irrelevant for 0/1.
        warnings.simplefilter("ignore", UserWarning)
        signature = infer_signature(features, pipeline.predict(features))
    with ctx.active_run():
        info = mlflow.sklearn.log_model(
            pipeline,
            name=cfg.train.model_name,
            serialization_format="skops",
            skops_trusted_types=trusted,
            signature=signature,
            input_example=example,
            pip_requirements=[f"{package}=={version(package)}" for package in MODEL_REQUIREMENTS],
        )
    ctx.set_tags({TAG_MODEL_URI: info.model_uri, "model.class": cfg.model._target_})
    ctx.summary.update(model=model_description(cfg.model), val_roc_auc=round(metrics["val_roc_auc"], 4))


if __name__ == "__main__":
    launch_step("train")
