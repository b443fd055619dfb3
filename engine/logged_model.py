"""The model train logs, as MLflow stores it: one pyfunc "from code" wrapping the fitted
sklearn pipeline, saved with skops and an explicit list of trusted types, and its
compiled fast path (plain arrays), with signature,
input example and pinned requirements. Its code is the sealed package heart_disease_model
and nothing else.

Only `log` touches the project's copy of that package; loading uses the model's own.
"""

from __future__ import annotations

import tempfile
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.types.schema import ParamSchema, ParamSpec

from engine.errors import PipelineError

# What the logged model needs to load and predict, at the versions that trained it.
MODEL_REQUIREMENTS = ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy")


def log(run_id: str, workdir: Path, *, name: str, pipeline, scorer, config: dict, features: pd.DataFrame,
        example_output: pd.DataFrame, input_example_rows: int) -> str:
    """Log the model to `run_id`; return its URI (models:/m-...). `scorer` is the pipeline's
    compiled fast path (None where the estimator is not compiled)."""
    import heart_disease_model
    from heart_disease_model import fast_path
    from heart_disease_model.model import PIPELINE_ARTIFACT, SCORER_ARTIFACT
    from heart_disease_model.serialization import SERIALIZATION_FORMAT, TRUSTED_TYPES

    package_dir = Path(heart_disease_model.__file__).resolve().parent
    requirements = [f"{package}=={version(package)}" for package in MODEL_REQUIREMENTS]
    pipeline_dir = workdir / PIPELINE_ARTIFACT
    try:
        mlflow.sklearn.save_model(pipeline, str(pipeline_dir), serialization_format=SERIALIZATION_FORMAT,
                                  skops_trusted_types=list(TRUSTED_TYPES), pip_requirements=requirements)
    except MlflowException as err:
        if "untrusted types" not in err.message:
            raise
        raise PipelineError(f"{err.message.split('Root error: ')[-1]} Review them and add them to "
                            "TRUSTED_TYPES (heart_disease_model.serialization).") from None
    artifacts = {PIPELINE_ARTIFACT: str(pipeline_dir)}
    if scorer is not None:
        artifacts[SCORER_ARTIFACT] = str(workdir / "scorer.npz")
        fast_path.save(scorer, artifacts[SCORER_ARTIFACT])
    # log_model logs to the fluent active run only. Leaving it with status RUNNING, not
    # FINISHED: the runner finishes the run once every output is recorded.
    mlflow.start_run(run_id=run_id)
    try:
        with warnings.catch_warnings():
            # MLflow hints that int columns cannot hold missing values: true, and irrelevant for 0/1.
            warnings.simplefilter("ignore", UserWarning)
            info = mlflow.pyfunc.log_model(
                name=name,
                python_model=str(package_dir / "entry.py"),
                artifacts=artifacts,
                model_config=config,
                code_paths=[str(package_dir)],
                signature=signature_of(example_output),
                input_example=features.head(input_example_rows),
                pip_requirements=requirements,
            )
    finally:
        mlflow.end_run(status="RUNNING")
    return info.model_uri


def signature_of(example_output: pd.DataFrame) -> ModelSignature:
    """The answer's schema, and no input schema on purpose: given one, MLflow's scoring
    server casts each field before the model sees it, so JSON `true` and `"54"` would
    score as 1.0 and 54.0. The model checks its inputs itself, more strictly than a
    schema can (codebook codes and ranges, numbers or null), and the
    input example shows the 13 fields.

    One parameter, `explain` (default false): MLflow hands a model only the parameters its
    signature declares, so this is what lets `mlflow models serve` answer
    `{"dataframe_records": [...], "params": {"explain": true}}` with explanations."""
    from heart_disease_model.model import EXPLAIN

    return ModelSignature(inputs=None, outputs=infer_signature(example_output).inputs,
                          params=ParamSchema([ParamSpec(EXPLAIN, "boolean", False)]))


def load_pyfunc(uri: str, public_key: Path) -> Any:
    """The logged model as MLflow loads it, with its own code, once its seal checks out:
    how the app, score and monitor load it. Its files are copied here first and checked
    (engine/seal.py: the project's kind, every file under a signature that verifies with
    public_key); MLflow then loads that very copy, so no file of it runs unchecked and
    nothing changed in the store after the check is loaded. A refused model raises
    SealRefused naming the version and why.

    Without MLflow's requirements check, which reads every installed distribution's
    metadata on each load (about a third of `import mlflow`) only to warn: the
    requirements are pinned when train logs the model, and `mlflow models serve` checks
    them itself."""
    return load_copy(verified_copy(uri, public_key))


def load_copy(copy: Path) -> Any:
    """Load a copy that verified_copy returned (for a caller that also hands the folder
    on, e.g. to Spark, so that the same checked files are loaded everywhere)."""
    return mlflow.pyfunc.load_model(str(copy), suppress_warnings=True)


def verified_copy(uri: str, public_key: Path) -> Path:
    """A local copy of the model at `uri`, checked by engine.seal.verify (raises SealRefused).
    It stays for the life of the process, as MLflow's own downloads do: a loaded model may
    import more of its code from it later."""
    from engine import seal

    folder = Path(tempfile.mkdtemp(prefix="heart-model-"))
    copy = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder)))
    seal.verify(copy, public_key, seal.describe(copy, uri))
    return copy


def load(uri: str) -> Any:
    """The logged model's Python object (its HeartDiseaseModel), loaded with its own code:
    the pipeline's model between train and register (evaluate, register), before it has a
    seal; the step context checks its files against the sizes train recorded first."""
    return mlflow.pyfunc.load_model(uri, suppress_warnings=True).unwrap_python_model()


def file_sizes(uri: str) -> dict[str, int]:
    """{path inside the model: size} of the model's files, as the store has them now."""
    sizes: dict[str, int] = {}
    todo = [""]
    while todo:
        folder = todo.pop()
        try:
            listed = mlflow.artifacts.list_artifacts(artifact_uri=f"{uri}/{folder}" if folder else uri)
        except MlflowException:
            return sizes
        for info in listed:
            path = f"{folder}/{info.path.rsplit('/', 1)[-1]}" if folder else info.path.rsplit("/", 1)[-1]
            if info.is_dir:
                todo.append(path)
            else:
                sizes[path] = info.file_size
    return sizes
