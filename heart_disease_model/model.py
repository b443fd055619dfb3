"""The model `train` logs, as MLflow "models from code" (entry.py builds it): this
package is stored with the model and runs wherever the model is loaded (`mlflow models serve`, the FastAPI app in
serving/, `mlflow.pyfunc.load_model`). Nothing is pickled: the fitted sklearn pipeline
is an artifact saved by mlflow.sklearn with skops, and loaded trusting only the types
serialization.py lists, whatever the stored MLmodel says; its compiled fast path is
another artifact, plain arrays (fast_path.save), and is what answers.

Per input row it answers:
    prediction   0/1 at the decision threshold
    probability  of disease
    confidence   probability of the predicted class
    risk_level   Low / Moderate / High from the probability bands in conf/train
    model_name, model_version   the registered version this is, where known
    run_id, model_id            the train run and logged model that produced it

and, asked with the parameter `explain` (params={"explain": True}; the signature
declares it), why:
    explanation  {"base_log_odds": b, "contributions": [{"feature", "value",
                 "contribution"}, ...]}: one entry per input field, largest absolute
                 contribution first; b plus the contributions is the log-odds of the
                 probability. None when the model has no exact additive form, and then
    explanation_unavailable     says why (e.g. a forest: no approximation is offered)

Inputs are checked against the UCI codebook first (codebook.py, the rules ingest
applies); a violation is an MLflow INVALID_PARAMETER_VALUE error, which the
scoring server answers with HTTP 400 naming the field, the bad value and what is allowed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import mlflow
import numpy as np
import pandas as pd
import yaml
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel
from mlflow.store.artifact.models_artifact_repo import REGISTERED_MODEL_META_FILE_NAME

from . import fast_path
from .codebook import Codebook, check_feature_matrix, check_numbers
from .serialization import check_sklearn_model, load_sklearn_model

PIPELINE_ARTIFACT = "pipeline"  # the model's artifact holding the fitted sklearn pipeline
SCORER_ARTIFACT = "scorer"  # ... and the one holding its compiled fast path (fast_path.save)

IDENTITY_COLUMNS = ["model_name", "model_version", "run_id", "model_id"]
OUTPUT_COLUMNS = ["prediction", "probability", "confidence", "risk_level", *IDENTITY_COLUMNS]
EXPLAIN = "explain"  # the predict parameter that asks for explanations (engine/logged_model.py declares it)


def band_index(probability: np.ndarray, bands: dict[str, float]) -> tuple[np.ndarray, tuple[str, ...]]:
    """(per probability, the position of its band; the band names by bound). A band is the
    one with the lowest upper bound above the probability; the top band (bound 1.0) takes
    everything up to and including 1. Bands are ordered by bound, not by key: the model's
    stored config does not keep key order."""
    ordered = sorted(bands.items(), key=lambda item: item[1])
    bounds = np.asarray([bound for _, bound in ordered[:-1]], dtype=float)
    return np.searchsorted(bounds, probability, side="right"), tuple(name for name, _ in ordered)


@dataclass(frozen=True)
class Scores:
    """The answer's per-row part, as arrays: what the FastAPI app turns into JSON directly."""

    prediction: np.ndarray  # int64, 0/1
    probability: np.ndarray
    confidence: np.ndarray
    band: np.ndarray  # position of each row's risk level in band_names
    band_names: tuple[str, ...]

    @property
    def risk_level(self) -> np.ndarray:
        """The band name of each row (object array)."""
        return np.asarray(self.band_names, dtype=object)[self.band]


def scores(probability: np.ndarray, threshold: float, bands: dict[str, float]) -> Scores:
    prediction = (probability >= threshold).astype(np.int64)
    return Scores(prediction, probability, np.where(prediction == 1, probability, 1 - probability),
                  *band_index(probability, bands))


# The dtype pandas gives a column of text (pandas 3: "str"), so answers keep the dtypes
# they had when DataFrame inferred them from the values.
TEXT = pd.Series(["text"]).dtype
OUTPUT_INDEX = pd.Index(OUTPUT_COLUMNS)


@lru_cache(maxsize=16)
def _identity_columns(identity: tuple[tuple[str, Optional[str]], ...], rows: int) -> tuple[Any, ...]:
    """The identity columns of an answer of `rows` rows, made once per size (every answer of
    a served model repeats them), exactly as DataFrame broadcasts the values (None: object)."""
    frame = pd.DataFrame(dict(identity), index=pd.RangeIndex(rows))
    return tuple(frame[column].array for column in frame.columns)


@lru_cache(maxsize=16)
def _band_names(names: tuple[str, ...]) -> Any:
    """The band names as a text array, for `take`: cheaper than re-reading names per answer."""
    return pd.array(list(names), dtype=TEXT)


def answer(probability: np.ndarray, threshold: float, bands: dict[str, float],
           identity: dict[str, Optional[str]]) -> pd.DataFrame:
    """The model's answer, a row per probability, in OUTPUT_COLUMNS order; `identity` gives
    the same model_name, model_version, run_id and model_id to every row.

    It runs on every request, so it is assembled from columns already in the form a frame
    stores them, by pandas' own constructor for them (DataFrame._from_arrays without
    re-validation, what its readers use): a fraction of the time DataFrame(dict) spends
    re-inferring each column. tests/test_fast_path.py checks the result equals
    DataFrame(dict) of the same values, dtypes included."""
    rows = scores(probability, threshold, bands)
    cached = _identity_columns(tuple((column, identity[column]) for column in IDENTITY_COLUMNS), len(probability))
    columns = [rows.prediction, rows.probability, rows.confidence, _band_names(rows.band_names).take(rows.band),
               *(column.copy() for column in cached)]  # copies share Arrow buffers; no answer can change the cache
    return pd.DataFrame._from_arrays(columns, OUTPUT_INDEX, pd.RangeIndex(len(probability)), verify_integrity=False)


@dataclass(frozen=True)
class Contributions:
    """Each row's log-odds split by input field: base + values[row].sum() is the log-odds
    of the row's probability (a one-hot field's columns summed back to their field)."""

    base: float
    fields: tuple[str, ...]
    values: np.ndarray  # (rows, fields)

    def log_odds(self) -> np.ndarray:
        return self.base + self.values.sum(axis=1)


def _plain(value: float) -> Any:
    """A cell as the patient's record would hold it: None for missing, 4 rather than 4.0."""
    if value != value:  # NaN
        return None
    return int(value) if value.is_integer() else value


def explanations(contributions: Contributions, features: np.ndarray) -> list[dict[str, Any]]:
    """The answer's `explanation` for each row: the base, then one entry per field with the
    input value and its contribution, largest absolute contribution first."""
    order = np.argsort(-np.abs(contributions.values), axis=1, kind="stable")
    fields, values, parts = contributions.fields, features.tolist(), contributions.values.tolist()
    base = float(contributions.base)
    return [{"base_log_odds": base,
             "contributions": [{"feature": fields[j], "value": _plain(row_values[j]), "contribution": row_parts[j]}
                               for j in row_order]}
            for row_order, row_values, row_parts in zip(order.tolist(), values, parts)]


def _bad_request(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def registered_identity(model_dir: Path, run_id: Optional[str],
                        model_id: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """(name, version) of the registered version this model is.

    Loaded through a `models:/<name>/<version>` or `models:/<name>@<alias>` URI, MLflow
    writes the version it resolved into the model directory: that is the answer. Loaded
    any other way, the registry is asked for the version of this logged model (register
    makes one version per logged model; if older stores hold several, the first one).
    (None, None) when neither knows."""
    meta = model_dir / REGISTERED_MODEL_META_FILE_NAME
    if meta.exists():
        loaded_as = yaml.safe_load(meta.read_text()) or {}
        if loaded_as.get("model_version") is not None:
            return loaded_as.get("model_name"), str(loaded_as["model_version"])
    if not run_id:
        return None, None
    try:
        versions = mlflow.MlflowClient().search_model_versions(f"run_id = '{run_id}'")
    except Exception:  # no registry configured or reachable: identity falls back to ids
        return None, None
    mine = [v for v in versions if getattr(v, "model_id", None) in (None, model_id)]
    if not mine:
        return None, None
    first = min(mine, key=lambda v: int(v.version))
    return first.name, str(first.version)


class HeartDiseaseModel(PythonModel):
    def load_context(self, context) -> None:
        config = context.model_config
        self.codebook = Codebook.from_config(config["codebook"])
        self.imputable = set(config["imputable"])
        self.threshold = float(config["decision_threshold"])
        self.bands = {str(k): float(v) for k, v in config["risk_levels"].items()}
        pipeline_path = Path(context.artifacts[PIPELINE_ARTIFACT])
        self._pipeline_path, self._pipeline = pipeline_path, None
        check_sklearn_model(pipeline_path)  # a model whose files ask for more trust is refused, loaded or not
        if SCORER_ARTIFACT in context.artifacts:
            # What train verified against the pipeline and stored: scoring needs no sklearn.
            # The stored config may list the features in another order than train compiled for.
            self.scorer = fast_path.load(context.artifacts[SCORER_ARTIFACT]).taking(self.codebook.features)
            self.scoring_path = f"fast path: {self.scorer.kind}"
        else:
            # Models logged before the scorer was stored, or whose estimator is not compiled.
            self.scorer, self.scoring_path = fast_path.for_pipeline(self.pipeline, self.codebook.features)
        if self.scorer is None:
            logging.getLogger(__name__).warning("scoring with the %s", self.scoring_path)
        # Why answers cannot be explained exactly (None: they can). Consumers read this
        # rather than catch an error, and say it beside `"explanation": null`.
        self.explanation_unavailable: Optional[str] = (
            f"answers come from the {self.scoring_path}; no exact additive explanation" if self.scorer is None
            else None if self.scorer.additive is not None else self.scorer.not_additive)
        model_dir = pipeline_path.parents[1]
        logged = mlflow.models.Model.load(str(model_dir))
        run_id, model_id = logged.run_id, getattr(logged, "model_id", None)
        name, version = registered_identity(model_dir, run_id, model_id)
        self.identity = {"model_name": name, "model_version": version, "run_id": run_id, "model_id": model_id}

    @property
    def pipeline(self):
        """The fitted sklearn pipeline, loaded on first use: scoring uses the stored fast
        path where there is one, so most loads never import scikit-learn or skops."""
        if self._pipeline is None:
            self._pipeline = load_sklearn_model(self._pipeline_path)
        return self._pipeline

    def features(self, model_input: Any) -> np.ndarray:
        """The request as codebook-checked float64 features (columns in codebook order), or
        a 400 that says why not."""
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if len(frame) == 0:
            raise _bad_request("no rows to score: send at least one patient")
        checked = check_feature_matrix(frame, self.codebook, impossible_values="fail", allow_missing=self.imputable,
                                       reject_unknown_columns=True, numbers_only=True)
        if checked.problems:
            raise _bad_request("invalid input:\n  - " + "\n  - ".join(checked.problems))
        return checked.values

    def predict(self, context, model_input: pd.DataFrame, params: Optional[dict[str, Any]] = None) -> pd.DataFrame:
        features = self.features(model_input)
        answered = answer(self.probability(features), self.threshold, self.bands, self.identity)
        if not (params and params.get(EXPLAIN)):
            return answered
        answered["explanation"] = pd.Series(self.explain(features), dtype=object)
        if self.explanation_unavailable:
            answered["explanation_unavailable"] = self.explanation_unavailable
        return answered

    def contributions(self, features: np.ndarray) -> Contributions:
        """Each row's log-odds split by input field (features as for `probability`: checked,
        float64, codebook order). Raises a 400 naming the reason when the model has no
        exact additive form (explanation_unavailable)."""
        if self.explanation_unavailable:
            raise _bad_request(f"this model cannot explain its answers exactly: {self.explanation_unavailable}")
        return Contributions(float(self.scorer.additive.base), self.scorer.features,
                             self.scorer.contributions(features))

    def explain(self, features: np.ndarray) -> list[Optional[dict[str, Any]]]:
        """The `explanation` of each row's answer (features as for `probability`), or None
        for every row when the model cannot explain exactly (explanation_unavailable says why)."""
        if self.explanation_unavailable:
            return [None] * len(features)
        return explanations(self.contributions(features), features)

    def score_numbers(self, features: np.ndarray) -> Scores:
        """The per-row answer for features that are already numbers (float64, every codebook
        feature in codebook order, NaN for missing: what the FastAPI app's strict schema
        lets through), after the same codebook checks as predict, with the same 400."""
        if len(features) == 0:
            raise _bad_request("no rows to score: send at least one patient")
        _, problems, _ = check_numbers(features, self.codebook, impossible_values="fail", allow_missing=self.imputable)
        if problems:
            raise _bad_request("invalid input:\n  - " + "\n  - ".join(problems))
        return scores(self.probability(features), self.threshold, self.bands)

    def probability(self, features: np.ndarray) -> np.ndarray:
        """P(disease) per checked row (columns in codebook order): by the compiled fast path,
        or by the sklearn pipeline where the fast path does not cover the estimator."""
        if self.scorer is None:
            return self.pipeline.predict_proba(pd.DataFrame(features, columns=self.codebook.features))[:, 1]
        return self.scorer.probability(features)

