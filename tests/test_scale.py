"""Scale without dishonesty: on large data evaluate runs fewer CV repeats, and the interval
it reports is computed for the folds actually run (docs/SCALE.md). In-process, small data."""

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

from steps import synthetic
from steps.codebook import Codebook, validate
from steps.evaluate import cross_validate, repeats_within
from steps.metrics import binary_metrics
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
    reported = cross_validate(pipeline, features, label, 5, 10, seed=11, max_fit_rows=budget)
    assert reported["cv_repeats_run"] == 1

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
    assert cross_validate(pipeline, features, label, 5, 3, seed=11)["cv_repeats_run"] == 3
    multiplier = lambda n: stats.t.ppf(0.975, df=n - 1) * math.sqrt(1 / n + 1 / 4)  # noqa: E731
    assert multiplier(5) / multiplier(50) > 1.7


def test_parallel_folds_give_the_same_numbers(data):
    pipeline, features, label = data
    one = cross_validate(pipeline, features, label, 5, 2, seed=0, n_jobs=1)
    two = cross_validate(pipeline, features, label, 5, 2, seed=0, n_jobs=2)
    assert one == two  # exact: folds are independent and collected in order
