"""transform: fit imputation, one-hot encoding and scaling on the train split only,
then apply them to train, val and test.

Logs the fitted transformer (skops, no pickle) as `transformer/transformer.skops` and
the transformed sets as data/{train,val,test}.parquet.
"""

from __future__ import annotations

import pandas as pd
import skops.io
from omegaconf import DictConfig
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from steps.codebook import Codebook
from steps.errors import PipelineError
from steps.tracking import StepContext, launch_step

TRANSFORMER_PATH = "transformer/transformer.skops"


def build_transformer(transform: DictConfig, book: Codebook) -> ColumnTransformer:
    """An unfitted ColumnTransformer over the codebook's features. One-hot columns use
    the codebook's codes as categories, so the output columns do not depend on which
    codes happen to be in the train split."""
    unknown = [c for c in transform.one_hot if c not in book.features]
    if unknown:
        raise PipelineError(f"transform.one_hot lists {unknown}: not features of the codebook {book.features}")
    one_hot = list(transform.one_hot)
    scaled = [c for c in book.features if c not in one_hot]
    categories = [[float(code) for code in book.columns[c].codes] for c in one_hot]
    transformer = ColumnTransformer(
        [
            ("scaled", make_pipeline(SimpleImputer(strategy=transform.numeric_imputer), StandardScaler()), scaled),
            ("one_hot", make_pipeline(
                SimpleImputer(strategy=transform.categorical_imputer),
                OneHotEncoder(categories=categories, handle_unknown="ignore", sparse_output=False),
            ), one_hot),
        ],
        verbose_feature_names_out=False,
    )
    # Plain array output: inside the served model this saves milliseconds per request.
    return transformer


def fit_transform(sets: dict[str, pd.DataFrame], transform: DictConfig, book: Codebook):
    """Fit on sets["train"] only; return (fitted transformer, transformed sets with the label)."""
    transformer = build_transformer(transform, book).fit(sets["train"][book.features])
    columns = transformer.get_feature_names_out()
    transformed = {}
    for name, frame in sets.items():
        out = pd.DataFrame(transformer.transform(frame[book.features]), columns=columns)
        out[book.label] = frame[book.label].to_numpy()
        transformed[name] = out
    return transformer, transformed


def run(ctx: StepContext) -> None:
    book = Codebook.from_config(ctx.cfg.schema)
    sets = {name: ctx.load_table("split", name) for name in ("train", "val", "test")}
    transformer, transformed = fit_transform(sets, ctx.cfg.transform, book)

    path = ctx.workdir / TRANSFORMER_PATH
    path.parent.mkdir(parents=True)
    skops.io.dump(transformer, path)
    ctx.log_file(path, "transformer")
    for name, frame in transformed.items():
        ctx.log_table(name, frame)
    ctx.log_metrics({"output_features": transformed["train"].shape[1] - 1})
    ctx.summary.update(features_out=transformed["train"].shape[1] - 1)


if __name__ == "__main__":
    launch_step("transform")
