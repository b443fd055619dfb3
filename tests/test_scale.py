"""Scale without dishonesty: on large data evaluate runs fewer CV repeats, and the interval
it reports is computed for the folds actually run (docs/SCALE.md); under `main`, a table
stays in memory only while a step still to run reads it. In-process, small data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import stats
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import RepeatedStratifiedKFold
from sklearn.pipeline import Pipeline

from domain import synthetic
from domain.metrics import binary_metrics
from engine import names
from engine.chain import still_read
from engine.context import ArtifactCache
from heart_disease_model.codebook import Codebook, validate
from steps.evaluate import cross_validate, repeats_within
from steps.pipeline import STEPS
from steps.transform import build_transformer
from tests.conftest import REPO

BOOK = Codebook.from_config(OmegaConf.load(REPO / "conf" / "schema" / "uci_codebook.yaml"))


@pytest.fixture(scope="module")
def data():
    rows = validate(synthetic.generate(1000, 3), BOOK)[0]
    transform = OmegaConf.load(REPO / "conf" / "transform" / "default.yaml")
    pipeline = Pipeline([("transform", build_transformer(transform, BOOK)), ("model", LogisticRegression(C=0.1))])
    return pipeline, rows[BOOK.features], rows[BOOK.label]


@pytest.mark.parametrize("rows, expected", [(242, 10), (80_000, 10), (400_000, 2), (800_000, 1), (10**8, 1)])
def test_repeats_shrink_with_rows_within_the_fit_budget(rows, expected):
    assert repeats_within(rows, folds=5, repeats=10, max_fit_rows=4_000_000) == expected


def test_interval_uses_the_folds_actually_run(data):
    """With the budget cutting 10 repeats to 1, the interval is the corrected resampled t
    interval for 5 folds: 4 degrees of freedom, variance x (1/5 + 1/4), recomputed here
    from the folds themselves."""
    pipeline, features, label = data
    budget = len(features) * 4  # room for exactly one repeat of 5 folds
    cv = cross_validate(pipeline, features, label, 5, 10, seed=11, max_fit_rows=budget)
    reported = cv.metrics
    assert reported["cv_repeats_run"] == 1 and cv.out_of_fold.shape == (1, len(features))

    aucs = []
    for train, test in RepeatedStratifiedKFold(n_splits=5, n_repeats=1, random_state=11).split(features, label):
        model = clone(pipeline).fit(features.iloc[train], label.iloc[train])
        aucs.append(binary_metrics(label.iloc[test], model.predict_proba(features.iloc[test])[:, 1])["roc_auc"])
    aucs = np.asarray(aucs)
    half_width = stats.t.ppf(0.975, df=4) * math.sqrt((1 / 5 + 1 / 4) * aucs.var(ddof=1))
    assert reported["cv_roc_auc_mean"] == pytest.approx(aucs.mean(), abs=1e-12)
    assert reported["cv_roc_auc_ci_low"] == pytest.approx(aucs.mean() - half_width, abs=1e-12)
    assert reported["cv_roc_auc_ci_high"] == pytest.approx(aucs.mean() + half_width, abs=1e-12)

    # Without the budget every repeat runs. For the same fold-to-fold spread, one repeat's
    # interval is about 1.8 times as wide as ten repeats': fewer folds never look more certain.
    assert cross_validate(pipeline, features, label, 5, 3, seed=11).metrics["cv_repeats_run"] == 3
    multiplier = lambda n: stats.t.ppf(0.975, df=n - 1) * math.sqrt(1 / n + 1 / 4)  # noqa: E731
    assert multiplier(5) / multiplier(50) > 1.7


def test_parallel_folds_give_the_same_numbers(data):
    pipeline, features, label = data
    one = cross_validate(pipeline, features, label, 5, 2, seed=0, n_jobs=1)
    two = cross_validate(pipeline, features, label, 5, 2, seed=0, n_jobs=2)
    assert one.metrics == two.metrics  # exact: folds are independent and collected in order
    np.testing.assert_array_equal(one.out_of_fold, two.out_of_fold)


# ----------------------------------------------------------------------------- memory under main

RUNS = {"ingest": "run-ingest", "split": "run-split", "transform": "run-transform", "train": "run-train",
        "evaluate": "run-evaluate"}
RAW, TRAIN = (RUNS["ingest"], names.RAW_TABLE), (RUNS["split"], names.split_table("train"))
TRAIN_FEATURES = (RUNS["transform"], names.split_table("train"))


def cache_after(done: list[str], eda_done: bool = False) -> ArtifactCache:
    """A cache holding every table of the steps in `done`, told (as `main` tells it after
    each step) which steps still to run read what."""
    cache = ArtifactCache(client=None)  # the client is only for fetching runs, which this never does
    for step in done:
        for output in STEPS[step].writes.values():
            cache.put(RUNS[step], output.artifact, object())
    cache.retain(still_read(set(STEPS) - set(done) - ({"eda"} if eda_done else set()),
                            {step: RUNS[step] for step in done}))
    return cache


def test_main_keeps_a_table_only_while_a_step_still_to_run_reads_it():
    # split reads raw, and so does eda until it ends; register takes sites and the share
    # of men from the validation report, so nothing after split needs raw.
    assert cache_after(["ingest"]).get(*RAW) is not None
    assert cache_after(["ingest", "split"]).get(*RAW) is not None  # eda still running
    assert cache_after(["ingest", "split"], eda_done=True).get(*RAW) is None
    # transform's train table has the same path as split's: only train reads it.
    after_transform = cache_after(["ingest", "split", "transform"], eda_done=True)
    assert after_transform.get(*TRAIN_FEATURES) is not None and after_transform.get(*TRAIN) is not None
    after_train = cache_after(["ingest", "split", "transform", "train"], eda_done=True)
    assert after_train.get(*TRAIN_FEATURES) is None
    assert after_train.get(*TRAIN) is not None  # evaluate reads it


def test_a_step_done_with_a_table_frees_it_once_no_other_reader_is_left():
    cache = cache_after(["ingest"])
    cache.done_reading(RAW, "eda")
    assert cache.get(*RAW) is not None  # split has not read it yet
    cache.done_reading(RAW, "split")
    assert cache.get(*RAW) is None

    # eda said it is done while split ran: once split ends, raw goes, though eda still runs.
    cache = cache_after(["ingest"])
    cache.done_reading(RAW, "eda")
    cache.put(RUNS["split"], names.split_table("train"), object())
    cache.retain(still_read(set(STEPS) - {"ingest", "split"}, {"ingest": RUNS["ingest"], "split": RUNS["split"]}))
    assert cache.get(*RAW) is None and cache.get(*TRAIN) is not None

    # A single step's process (no `main` telling the cache who reads what) lets nothing go.
    alone = ArtifactCache(client=None)
    alone.put(*RAW, object())
    alone.done_reading(RAW, "split")
    assert alone.get(*RAW) is not None
