"""Where runs go: the profile's tracking store (an explicit MLFLOW_TRACKING_URI wins),
its experiment, and a lock for the few moments that must not interleave between
processes sharing a store.

Profiles are the Hydra group `profile` (conf/profile is profiles/): `profile=server`,
`profile.tracking_uri=...`, and `--cfg job` shows the one in use.

MLflow is imported by the functions that talk to the store, not by this module: `main`
reads the store's location here before it knows whether it needs MLflow at all
(engine/up_to_date.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from omegaconf import DictConfig, OmegaConf

from engine import names
from engine.errors import PipelineError
from engine.locks import file_lock
from engine.redaction import redact

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROFILES_DIR = PROJECT_ROOT / "profiles"
_SQLITE = "sqlite:///"
# The experiment's kind, as MLflow records it: this one trains models. (MLflow 3.17's UI
# still opens on its GenAI switch: tools/ui.py prints the address of the model-training view.)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# A tracking server that does not answer is reported after this long, not after MLflow's
# default retries (about 4 minutes). The other settings bound every later request; an
# explicitly set environment variable wins.
REACHABLE_TIMEOUT_SECONDS = 5
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


class StoreUnreachable(PipelineError):
    """The tracking server did not answer."""


def check_reachable(tracking_uri: str) -> None:
    """Fail in seconds, with one line, when a tracking server does not answer at all.
    Any HTTP answer (even 401) counts as reachable: MLflow's own calls say what is wrong."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import requests

    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    try:
        requests.get(tracking_uri.rstrip("/") + "/health", timeout=REACHABLE_TIMEOUT_SECONDS)
    except requests.RequestException as err:
        reason = type(err).__name__
        raise StoreUnreachable(f"cannot reach the tracking server at {redact(tracking_uri)} ({reason} within "
                               f"{REACHABLE_TIMEOUT_SECONDS}s): is it running? It comes from MLFLOW_TRACKING_URI or "
                               "profile.tracking_uri") from None


def runs_view() -> dict:
    """The runs table a new browser sees (names.UI_RUNS_VIEW): each pipeline's name, model,
    headline metrics, verdict and registration, in that order, wide enough to read. In the
    form MLflow 3.17's UI shares a view: its column ids, widths in pixels."""
    metrics = [f"metrics.`{m}`" for m in names.HEADLINE_METRICS]
    columns = [*metrics, "params.`model`", f"tags.`{names.VALIDATION_STATUS}`", f"tags.`{names.REGISTER_DECISION}`"]
    return {"selectedColumns": columns,
            "columnOrder": ["attributes.`Run Name`", "runDateAndNestInfo", *columns],
            "columnWidths": {"attributes.`Run Name`": 280, **{m: 110 for m in metrics},
                             f"tags.`{names.REGISTER_DECISION}`": 130}}


def experiment_tags() -> dict[str, str]:
    """What the project's experiment carries for MLflow's UI: its kind and the runs view."""
    return dict([EXPERIMENT_KIND, (names.UI_VIEW_TAG + names.UI_RUNS_VIEW, json.dumps(runs_view()))])


def ensure_experiment_tags(client: MlflowClient, experiment) -> None:
    """Write the experiment's tags that are missing, and the runs view where out of date (the
    kind stays as someone may have set it). A reader may not set tags: the UI then guesses
    the kind and shows its own columns."""
    from mlflow.exceptions import MlflowException

    for key, value in experiment_tags().items():
        if key not in experiment.tags or (key != EXPERIMENT_KIND[0] and experiment.tags[key] != value):
            with contextlib.suppress(MlflowException):
                client.set_experiment_tag(experiment.experiment_id, key, value)


@dataclass
class Tracking:
    client: MlflowClient
    experiment_id: str
    tracking_uri: str


def _absolute_sqlite(uri: str) -> str:
    """sqlite:///mlflow.db means the project's mlflow.db, wherever the step is started."""
    if uri.startswith(_SQLITE) and not uri.startswith(_SQLITE + "/"):
        return _SQLITE + str(PROJECT_ROOT / uri[len(_SQLITE):])
    return uri


def load_profile(name: str) -> DictConfig:
    """profiles/<name>.yaml, or any YAML file given by path, for commands outside Hydra
    (serving/). Hydra commands get the profile as the config group `profile`."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise PipelineError(f"profile '{name}' not found: expected {path}; known profiles: {known}")
    return OmegaConf.load(path)


def sqlite_path(tracking_uri: str) -> Optional[Path]:
    """The database file of a `sqlite:///` store (relative to the working folder, as
    SQLAlchemy reads it, when the URI is); None for any other store."""
    return Path(tracking_uri[len(_SQLITE):]) if tracking_uri.startswith(_SQLITE) else None


def _lock_path(tracking_uri: str) -> Path:
    """A SQLite store is locked beside its file; any other store by a file in the temp
    folder, which orders the processes of this machine only."""
    database = sqlite_path(tracking_uri)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
        return database.with_name(database.name + ".lock")
    digest = hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"heart-disease-store-{digest}.lock"


def store_lock(tracking_uri: str) -> contextlib.AbstractContextManager[None]:
    """Exclusive among this machine's processes using the store (engine/locks.py)."""
    return file_lock(_lock_path(tracking_uri))


def tracking_uri_of(profile: DictConfig) -> str:
    """The store runs go to: MLFLOW_TRACKING_URI when set, else the profile's."""
    return os.environ.get("MLFLOW_TRACKING_URI") or _absolute_sqlite(profile.tracking_uri)


def connect(profile: DictConfig) -> Tracking:
    """Point MLflow at the profile's store and make sure the experiment exists. Many
    processes may start on a store that does not exist yet: the first creates it
    (tables and experiment), the others wait for it."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    explicit_uri = os.environ.get("MLFLOW_TRACKING_URI")
    tracking_uri = tracking_uri_of(profile)
    registry_uri: Optional[str] = os.environ.get("MLFLOW_REGISTRY_URI") or (
        None if explicit_uri or not profile.registry_uri else _absolute_sqlite(profile.registry_uri)
    )
    check_reachable(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    if registry_uri:
        mlflow.set_registry_uri(registry_uri)

    chosen_id, name = wanted_experiment(profile)
    with _sqlite_problems_in_one_line(tracking_uri), store_lock(tracking_uri):
        # The client opens the store, and MLflow creates a SQLite store's tables right there.
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
        experiment = client.get_experiment(chosen_id) if chosen_id else client.get_experiment_by_name(name)
        if experiment is None:
            artifact_location = None
            if profile.artifact_location and not explicit_uri:
                artifact_location = str(PROJECT_ROOT / profile.artifact_location)
            try:
                experiment_id = client.create_experiment(name, artifact_location=artifact_location,
                                                         tags=experiment_tags())
            except MlflowException:  # another machine created it first
                experiment_id = client.get_experiment_by_name(name).experiment_id
        else:
            experiment_id = experiment.experiment_id
            ensure_experiment_tags(client, experiment)
    mlflow.set_experiment(experiment_id=experiment_id)
    return Tracking(client, experiment_id, tracking_uri)


@contextlib.contextmanager
def _sqlite_problems_in_one_line(tracking_uri: str):
    """A SQLite store that cannot be opened (a file that is not a database, a read-only
    folder that cannot hold its lock) is one line naming the store, not a traceback."""
    if not tracking_uri.startswith(_SQLITE):
        yield
        return
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (OSError, SQLAlchemyError) as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        raise PipelineError(f"tracking store {redact(tracking_uri)} cannot be used: {reason} (it comes from "
                            "MLFLOW_TRACKING_URI or profile.tracking_uri)") from None


# MLflow's Default experiment (mlflow.tracking.default_experiment), which `mlflow run` passes
# when none was chosen; named here so that engine/up_to_date.py need not import MLflow for it.
DEFAULT_EXPERIMENT_ID = "0"
# Read once, at start: mlflow.set_experiment (which connect calls) rewrites the variable,
# and a later connect in the same process, to another store, must not take it for a choice.
_LAUNCHER_EXPERIMENT_ID = os.environ.get("MLFLOW_EXPERIMENT_ID")


def wanted_experiment(profile: DictConfig) -> tuple[Optional[str], str]:
    """(the id of the experiment `mlflow run --experiment-name/--experiment-id` chose, or
    None; the name of the experiment to use otherwise). `mlflow run` passes its choice in
    MLFLOW_EXPERIMENT_ID, and its Default experiment ("0") when none was chosen, which is
    no choice; MLFLOW_EXPERIMENT_NAME, when set, wins over both, and the profile's name
    comes last. Needs no MLflow: engine/up_to_date.py asks it too."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if name:
        return None, name
    chosen = _LAUNCHER_EXPERIMENT_ID
    return (chosen if chosen and chosen != DEFAULT_EXPERIMENT_ID else None), profile.experiment_name


def complete_filter(extra: str) -> str:
    """`extra`, narrowed to complete runs (engine/runner.py): the only ones anything may read."""
    return f"{extra} and tags.`{names.COMPLETE}` = '{names.COMPLETE_MARK}' and attributes.status = 'FINISHED'"


def latest_complete(tracking: Tracking, filter_string: str):
    """The newest complete run of the experiment that matches `filter_string`, or None."""
    runs = tracking.client.search_runs([tracking.experiment_id], complete_filter(filter_string),
                                       order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None
