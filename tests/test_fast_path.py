"""The fast path (heart_disease_model/fast_path.py) answers as the sklearn pipeline does, to 1e-9, for
every model family and calibration, on edge rows; what it does not cover falls back to
the pipeline; train refuses a fast path that disagrees. Pure: real fitted pipelines, no store."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from domain.synthetic import generate
from engine.errors import PipelineError
from heart_disease_model import fast_path
from heart_disease_model.codebook import Codebook
from heart_disease_model.model import OUTPUT_COLUMNS, answer
from steps.train import fit_model, verify_fast_path
from steps.transform import fit_transform
from tests.conftest import REPO

BOOK = Codebook.from_config(OmegaConf.load(REPO / "conf" / "schema" / "uci_codebook.yaml"))
FAMILIES = ["logreg", "random_forest", "hist_gradient_boosting"]


@pytest.fixture(scope="module")
def fitted_transform():
    train = generate(2000, seed=3)
    train[BOOK.label] = (train[BOOK.target] > 0).astype(int)
    return fit_transform(train, OmegaConf.load(REPO / "conf" / "transform" / "default.yaml"), BOOK)


def edge_rows() -> pd.DataFrame:
    """Every code of every coded column, the codebook's range limits, and missing ca/thal."""
    rows = generate(400, seed=11)[BOOK.features].reset_index(drop=True)
    for name in BOOK.features:
        rule = BOOK.columns[name]
        if rule.codes is not None:
            rows.loc[: len(rule.codes) - 1, name] = list(rule.codes)
    limits = {n: (r.min, r.max) for n, r in BOOK.columns.items() if r.codes is None and n in BOOK.features}
    for offset, pick in ((20, 0), (40, 1)):  # all-minimum and all-maximum rows
        for name, bounds in limits.items():
            rows.loc[offset:offset + 9, name] = bounds[pick]
    rows.loc[60:79, "ca"] = np.nan
    rows.loc[70:89, "thal"] = np.nan
    rows.loc[100, ["ca", "thal"]] = np.nan
    return rows


def pipeline_for(fitted_transform, family: str, calibration: str = "none", ensemble: bool = False):
    transformer, transformed = fitted_transform
    model = OmegaConf.load(REPO / "conf" / "model" / f"{family}.yaml")
    return fit_model(transformer, transformed, model, BOOK.label, calibration, calibration_folds=3,
                     calibration_ensemble=ensemble)


def stored_and_read(scorer: fast_path.FastScorer) -> fast_path.FastScorer:
    """The scorer as a logged model has it: saved to .npz bytes and loaded back."""
    stored = io.BytesIO()
    fast_path.save(scorer, stored)
    stored.seek(0)
    return fast_path.load(stored)


def assert_same(pipeline, rows: pd.DataFrame) -> str:
    """The stored and read-back fast path answers as the pipeline, batch and row by row."""
    compiled, path = fast_path.for_pipeline(pipeline, BOOK.features)
    assert compiled is not None, path
    scorer = stored_and_read(compiled)
    assert scorer.kind == compiled.kind and (scorer.additive is None) == (compiled.additive is None)
    reference = pipeline.predict_proba(rows[BOOK.features])[:, 1]
    fast = scorer.probability(rows[BOOK.features].to_numpy(dtype=np.float64))
    assert np.max(np.abs(fast - reference)) <= fast_path.TOLERANCE
    one = np.array([scorer.probability(rows[BOOK.features].iloc[[i]].to_numpy(dtype=np.float64))[0]
                    for i in range(0, len(rows), 37)])
    assert np.max(np.abs(one - reference[::37])) <= fast_path.TOLERANCE  # one row at a time too
    return path


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_matches_sklearn_on_edge_rows(fitted_transform, family):
    pipeline = pipeline_for(fitted_transform, family)
    rows = edge_rows()
    assert rows[["ca", "thal"]].isna().any().all()
    path = assert_same(pipeline, rows)
    assert path.startswith("fast path") and pipeline.steps[1][1].__class__.__name__ in path


@pytest.mark.parametrize("family,calibration,ensemble", [("logreg", "sigmoid", False), ("logreg", "sigmoid", True),
                                                         ("logreg", "isotonic", True),
                                                         ("random_forest", "isotonic", False)])
def test_calibrated_models_match_sklearn(fitted_transform, family, calibration, ensemble):
    pipeline = pipeline_for(fitted_transform, family, calibration, ensemble)
    assert len(pipeline.named_steps["model"].calibrated_classifiers_) == (3 if ensemble else 1)
    assert calibration in assert_same(pipeline, edge_rows())


def test_columns_in_another_order_are_mapped_by_name(fitted_transform):
    """The served model's codebook lists features in another order than training did."""
    pipeline = pipeline_for(fitted_transform, "logreg")
    shuffled = sorted(BOOK.features)
    scorer, _ = fast_path.for_pipeline(pipeline, shuffled)
    rows = edge_rows()
    np.testing.assert_allclose(scorer.probability(rows[shuffled].to_numpy(dtype=np.float64)),
                               pipeline.predict_proba(rows[BOOK.features])[:, 1], rtol=0, atol=1e-12)
    # A stored scorer, compiled in train's order, taking the order a loaded model's config lists.
    stored = stored_and_read(fast_path.for_pipeline(pipeline, BOOK.features)[0]).taking(shuffled)
    np.testing.assert_allclose(stored.probability(rows[shuffled].to_numpy(dtype=np.float64)),
                               pipeline.predict_proba(rows[BOOK.features])[:, 1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(stored.contributions(rows[shuffled].to_numpy(dtype=np.float64)),
                               scorer.contributions(rows[shuffled].to_numpy(dtype=np.float64)), rtol=0, atol=1e-12)


def test_estimators_not_covered_fall_back_to_the_pipeline(fitted_transform):
    from sklearn.naive_bayes import GaussianNB
    from sklearn.pipeline import Pipeline

    transformer, transformed = fitted_transform
    bayes = GaussianNB().fit(transformed.drop(columns=[BOOK.label]).to_numpy(), transformed[BOOK.label])
    scorer, path = fast_path.for_pipeline(Pipeline([("transform", transformer), ("model", bayes)]), BOOK.features)
    assert scorer is None and path == "reference sklearn pipeline: estimator GaussianNB is not compiled"
    scorer, path = fast_path.for_pipeline(pipeline_for(fitted_transform, "logreg"), BOOK.features[:-1])
    assert scorer is None and "fitted on columns" in path


def test_train_refuses_a_fast_path_that_disagrees(fitted_transform):
    pipeline = pipeline_for(fitted_transform, "logreg")
    rows = edge_rows()
    truth = pipeline.predict_proba(rows)[:, 1]
    scorer, path, differences = verify_fast_path(pipeline, BOOK.features, {"val": rows}, {"val": truth})
    assert path.startswith("fast path") and differences["val"] <= fast_path.TOLERANCE
    assert path == f"fast path: {scorer.kind}"
    with pytest.raises(PipelineError, match=r"differs from the sklearn pipeline by 2e-09 .* on the val rows"):
        verify_fast_path(pipeline, BOOK.features, {"val": rows}, {"val": truth + 2e-9})


@pytest.mark.parametrize("identity", [
    {"model_name": "heart-disease", "model_version": "3", "run_id": "r1", "model_id": "m-1"},
    {"model_name": None, "model_version": None, "run_id": "r1", "model_id": None},  # not registered
])
def test_the_answer_frame_is_what_dataframe_would_infer(identity):
    """answer() assembles its frame from ready columns (heart_disease_model/model.py); it must equal the
    plain DataFrame of the same values, dtypes included, and no answer may change the next."""
    bands = {"Moderate": 0.6, "Low": 0.3, "High": 1.0}
    for rows in (1, 5):
        probability = np.linspace(0.05, 1.0, rows)
        reference = pd.DataFrame({
            "prediction": (probability >= 0.4).astype(int),
            "probability": probability,
            "confidence": np.where(probability >= 0.4, probability, 1 - probability),
            "risk_level": np.where(probability < 0.3, "Low",
                                   np.where(probability < 0.6, "Moderate", "High")).astype(object),
            **identity,
        })
        first = answer(probability, 0.4, bands, identity)
        pd.testing.assert_frame_equal(first, reference, check_exact=True)
        assert list(first.columns) == OUTPUT_COLUMNS
        first.loc[0, "run_id"] = "changed by a caller"
        pd.testing.assert_frame_equal(answer(probability, 0.4, bands, identity), reference, check_exact=True)


# --------------------------------------------------------------------------- explanations


@pytest.fixture(scope="module")
def cleveland():
    """The real Cleveland file, split and transformed as `main` does by default."""
    from domain.sources import read_uci
    from heart_disease_model.codebook import validate
    from steps.split import split_data
    from tests.conftest import CLEVELAND

    raw = validate(read_uci(CLEVELAND, BOOK.file_columns), BOOK)[0]
    sets, _ = split_data(raw, BOOK.label, 0.2, 0.2, 42)
    transformer, transformed = fit_transform(sets["train"], OmegaConf.load(REPO / "conf" / "transform" /
                                                                            "default.yaml"), BOOK)
    return transformer, transformed, raw


def cleveland_pipeline(cleveland, family="logreg", calibration="none", ensemble=False):
    transformer, transformed, _ = cleveland
    model = OmegaConf.load(REPO / "conf" / "model" / f"{family}.yaml")
    return fit_model(transformer, transformed, model, BOOK.label, calibration, 5, ensemble)


@pytest.mark.parametrize("calibration", ["none", "sigmoid"])
def test_a_linear_models_contributions_sum_to_the_log_odds_of_its_answer(cleveland, calibration):
    """Every patient of the Cleveland file (and the edge rows, missing values included): base
    plus the 13 fields' contributions is the log-odds of the pipeline's own probability."""
    pipeline = cleveland_pipeline(cleveland, calibration=calibration)
    scorer, _ = fast_path.for_pipeline(pipeline, BOOK.features)
    assert scorer.additive is not None and scorer.not_additive == ""
    for rows in (cleveland[2][BOOK.features], edge_rows()):
        features = rows.to_numpy(dtype=np.float64)
        parts = scorer.contributions(features)
        assert parts.shape == (len(rows), len(BOOK.features))
        p = pipeline.predict_proba(rows)[:, 1]
        np.testing.assert_allclose(scorer.additive.base + parts.sum(axis=1), np.log(p / (1 - p)), rtol=0, atol=1e-9)


def test_a_contribution_is_the_coefficient_times_the_fields_transformed_value(cleveland):
    """Summed back to the field: cp's four one-hot columns give the coefficient of the
    patient's code; age's one scaled column gives coefficient x (age - mean) / scale; a
    sigmoid calibrator scales both by -a and moves only the base."""
    plain = cleveland_pipeline(cleveland)
    calibrated = cleveland_pipeline(cleveland, calibration="sigmoid")
    transformer = plain.named_steps["transform"]
    names = list(transformer.get_feature_names_out())
    weights = plain.named_steps["model"].coef_[0]
    scaler = transformer.named_transformers_["scaled"].named_steps["standardscaler"]
    scaled = list(transformer.transformers_[0][2])
    patient = cleveland[2][BOOK.features].iloc[[0]]
    features = patient.to_numpy(dtype=np.float64)
    row = patient.iloc[0]
    by_field = dict(zip(BOOK.features, fast_path.for_pipeline(plain, BOOK.features)[0].contributions(features)[0]))
    assert by_field["cp"] == pytest.approx(weights[names.index(f"cp_{row.cp:.1f}")], abs=1e-12)
    age = scaled.index("age")
    assert by_field["age"] == pytest.approx(weights[names.index("age")] * (row.age - scaler.mean_[age])
                                            / scaler.scale_[age], abs=1e-12)

    (member,) = calibrated.named_steps["model"].calibrated_classifiers_
    a = member.calibrators[0].a_
    scorer = fast_path.for_pipeline(calibrated, BOOK.features)[0]
    inner = member.estimator
    np.testing.assert_allclose(scorer.contributions(features)[0],
                               -a * fast_path.for_pipeline(
                                   type(plain)([("transform", transformer), ("model", inner)]), BOOK.features
                               )[0].contributions(features)[0], rtol=1e-12)


@pytest.mark.parametrize("family, calibration, ensemble, reason", [
    ("logreg", "sigmoid", True, "mean probability of 5 calibrated models"),
    ("logreg", "isotonic", False, "isotonic calibration is a step function"),
    ("random_forest", "none", False, "a forest averages its trees"),
    ("hist_gradient_boosting", "sigmoid", False, "TreeSHAP"),
])
def test_models_without_an_exact_additive_form_say_why_and_offer_no_approximation(cleveland, family, calibration,
                                                                                  ensemble, reason):
    scorer, _ = fast_path.for_pipeline(cleveland_pipeline(cleveland, family, calibration, ensemble), BOOK.features)
    assert scorer.additive is None and reason in scorer.not_additive
    with pytest.raises(fast_path.NotAdditive, match=reason):
        scorer.contributions(edge_rows().to_numpy(dtype=np.float64))


def test_the_explanation_lists_every_field_once_largest_first(cleveland):
    from heart_disease_model.model import Contributions, explanations

    scorer, _ = fast_path.for_pipeline(cleveland_pipeline(cleveland, calibration="sigmoid"), BOOK.features)
    rows = edge_rows().iloc[[0, 60, 100]]
    features = rows.to_numpy(dtype=np.float64)
    parts = Contributions(scorer.additive.base, scorer.features, scorer.contributions(features))
    for explanation, (_, patient), log_odds in zip(explanations(parts, features), rows.iterrows(),
                                                   parts.log_odds()):
        entries = explanation["contributions"]
        assert sorted(e["feature"] for e in entries) == sorted(BOOK.features)
        sizes = [abs(e["contribution"]) for e in entries]
        assert sizes == sorted(sizes, reverse=True)
        assert explanation["base_log_odds"] + sum(e["contribution"] for e in entries) == pytest.approx(log_odds,
                                                                                                     abs=1e-12)
        for entry in entries:  # the patient's own values: codes as integers, missing as None
            value = patient[entry["feature"]]
            assert entry["value"] == (None if np.isnan(value) else value)
    assert any(e["value"] is None for e in explanations(parts, features)[2]["contributions"])  # ca, thal missing


def test_a_stored_scorer_builds_only_the_parts_fast_path_defines(fitted_transform):
    """A stored fast path is data: NumPy reads it without unpickling (an object array is
    refused), and a structure naming any class other than fast_path's own parts is refused."""
    stored = io.BytesIO()
    fast_path.save(fast_path.for_pipeline(pipeline_for(fitted_transform, "logreg"), BOOK.features)[0], stored)
    with np.load(io.BytesIO(stored.getvalue())) as archive:
        entries = {key: archive[key] for key in archive.files}
    structure = json.loads(str(entries[fast_path.STRUCTURE]))
    structure["fields"]["estimator"]["part"] = "Popen"
    for tampered in ({**entries, fast_path.STRUCTURE: np.array(json.dumps(structure))},
                     {**entries, "array0": np.array([print], dtype=object)}):
        file = io.BytesIO()
        np.savez(file, **tampered)
        file.seek(0)
        with pytest.raises(Exception, match="the stored fast path is not one this code wrote") as refused:
            fast_path.load(file)
        assert refused.type.__name__ == "UntrustedModel"


def test_scoring_with_a_logged_model_imports_neither_sklearn_nor_skops(trained, tmp_path):
    """The logged model answers from its stored fast path: loading and predicting costs no
    scikit-learn or skops import (each about as long as importing MLflow)."""
    version = trained.client.get_model_version_by_alias("heart-disease", "champion")
    generate(3, seed=5)[BOOK.features].to_parquet(tmp_path / "patients.parquet")
    program = (
        "import sys, mlflow, pandas as pd\n"
        f"model = mlflow.pyfunc.load_model({version.source!r}, suppress_warnings=True)\n"
        f"rows = pd.read_parquet({str(tmp_path / 'patients.parquet')!r})\n"
        "answer = model.predict(rows)\n"
        "print(len(answer), sorted(m for m in ('sklearn', 'skops') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", program], env=trained.env, capture_output=True, text=True,
                            check=True, timeout=300)
    assert result.stdout.split("\n")[-2] == "3 []", result.stdout + result.stderr
