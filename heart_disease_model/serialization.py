"""How fitted scikit-learn objects are stored and loaded: skops only, with one list of
trusted types. The list lives in code, not in the model's files or in config, because
trusting a type is a code-execution decision: whoever can write the artifact store can
edit a logged `MLmodel`, so the loader never lets it widen what is trusted, and a type
is added here by a reviewed change (saving a model that needs an unlisted type fails).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import UntrustedModel

SERIALIZATION_FORMAT = "skops"
# Types outside skops' defaults that the project's estimators create when loaded.
TRUSTED_TYPES = (
    "numpy.dtype",
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
)


def load_skops(path: Path) -> Any:
    """A skops file, creating only skops' default types and TRUSTED_TYPES."""
    import warnings

    import skops.io

    with warnings.catch_warnings():
        # skops touches numpy.core, which numpy 2 deprecates: noise for every load.
        warnings.simplefilter("ignore", DeprecationWarning)
        return skops.io.load(path, trusted=list(TRUSTED_TYPES))


def check_sklearn_model(model_dir: Path) -> Path:
    """The skops file of an `mlflow.sklearn` model directory, after refusing a directory
    whose MLmodel asks for another serialization format or for types outside TRUSTED_TYPES.
    Reads only the MLmodel: a model can be refused without importing scikit-learn."""
    flavor = yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"].get("sklearn") or {}
    asked_format = flavor.get("serialization_format")
    if asked_format != SERIALIZATION_FORMAT:
        raise UntrustedModel(f"refusing to load {model_dir.name}: its MLmodel asks for serialization_format "
                             f"{asked_format!r}; this code loads only {SERIALIZATION_FORMAT!r} "
                             "(heart_disease_model.serialization)")
    extra = sorted(set(flavor.get("skops_trusted_types") or []) - set(TRUSTED_TYPES))
    if extra:
        raise UntrustedModel(f"refusing to load {model_dir.name}: its MLmodel asks to trust {extra}, which are not "
                             "in the project's TRUSTED_TYPES (heart_disease_model.serialization)")
    return model_dir / Path(flavor["pickled_model"]).name


def load_sklearn_model(model_dir: Path) -> Any:
    """The estimator of an `mlflow.sklearn` model directory (check_sklearn_model first)."""
    return load_skops(check_sklearn_model(model_dir))
