"""Honest numbers: the same config and data give the same metrics to the last digit,
and nothing fitted ever sees a test row."""

import numpy as np
import pandas as pd
import pytest

from tests.conftest import QUICK_EVALUATE

pytestmark = pytest.mark.e2e


def metrics_of(store, step):
    run = store.runs(step)[0]
    return {k: v for k, v in run.data.metrics.items()}


@pytest.fixture(scope="module")
def store(trained):
    """The trained store: its runs are the first of the two identical runs."""
    return trained


def test_same_config_and_data_give_identical_metrics(store):
    first = {step: metrics_of(store, step) for step in ("ingest", "split", "train", "evaluate")}
    store.steps("main", QUICK_EVALUATE, "force=[all]")
    second = {step: metrics_of(store, step) for step in ("ingest", "split", "train", "evaluate")}
    assert len(store.runs("evaluate")) == 2
    assert first == second  # exact equality, every metric


def test_no_test_row_is_seen_by_any_fitted_statistic(store, tmp_path):
    """Duplicate rows are planted in the input; no row may be in both train/val and test,
    and the imputer, scaler and encoder statistics must equal those of train alone."""
    from tests.conftest import CLEVELAND

    lines = CLEVELAND.read_text().splitlines()
    noisy = tmp_path / "with_duplicates.data"
    noisy.write_text("\n".join(lines + lines[:60]) + "\n")
    store.steps("main", QUICK_EVALUATE, "data=file", f"data.path={noisy}")

    split = store.runs("split")[0]
    assert split.data.metrics["duplicates_dropped"] == 60
    tables = {name: pd.read_parquet(store.client.download_artifacts(split.info.run_id, f"data/{name}.parquet",
                                                                     str(tmp_path / name)))
              for name in ("train", "val", "test")}
    seen = {tuple(row) for name in ("train", "val") for row in tables[name].fillna(-1).to_numpy()}
    assert not any(tuple(row) in seen for row in tables["test"].fillna(-1).to_numpy())

    import mlflow

    mlflow.set_tracking_uri(store.tracking_uri)
    model = mlflow.pyfunc.load_model(store.runs("train")[0].data.tags["pipeline.model_uri"]).unwrap_python_model()
    transformer = model.pipeline.named_steps["transform"]
    scaled = transformer.named_transformers_["scaled"]
    columns = transformer.transformers_[0][2]
    train = tables["train"][columns]
    np.testing.assert_allclose(scaled.named_steps["simpleimputer"].statistics_, train.median())
    np.testing.assert_allclose(scaled.named_steps["standardscaler"].mean_, train.fillna(train.median()).mean())
    # The decision threshold comes from the validation rows.
    from domain.metrics import threshold_for_sensitivity

    features = list(model.codebook.features)
    p_val = model.pipeline.predict_proba(tables["val"][features])[:, 1]
    assert model.threshold == threshold_for_sensitivity(tables["val"]["target"], p_val, 0.90)
    with_test = pd.concat([train, tables["test"][columns]])
    assert not np.allclose(scaled.named_steps["standardscaler"].mean_, with_test.fillna(with_test.median()).mean())
