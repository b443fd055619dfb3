"""Names that several modules share: run tags, artifact paths, statuses, columns.

Imports nothing, so anything can import it: steps, the runner, the logged model and
serving/. A name used by one module only stays in that module.
"""

# --- tags on a step run, written by the runner (engine/runner.py)
STEP = "pipeline.step"  # the step it executed (only on runs that really ran it)
CACHE_KEY = "pipeline.cache_key"  # fingerprint of code, libraries, config and input runs
INPUT = "pipeline.input."  # + step: run id of every upstream step it was built from
SUMMARY = "pipeline.summary"  # JSON of the step's key outputs, shown when it is reused
SECONDS = "pipeline.step_seconds"
OUTPUTS = "pipeline.outputs"  # JSON manifest: {artifact path: {"size": n, "sha256": hex}}
COMPLETE = "pipeline.complete"  # "true", written last; anything else: never reused
REUSED = "pipeline.reused_run_id"  # on a launcher run that reused another run
ERROR = "pipeline.error"  # why a run FAILED or was KILLED
OVERRIDES = "pipeline.overrides"  # what rebuilds the run's config with `-e main`, as JSON
ROLE = "pipeline.role"  # main | sweep | trial, on runs that group step runs
HOST = "pipeline.host"  # the machine and process that own a RUNNING run, so a later
PID = "pipeline.pid"  # process can tell a live run from one whose process died
PID_STARTED = "pipeline.pid_started"  # the process's start time, against pid reuse
PID_NAMESPACE = "pipeline.pid_namespace"  # containers can share a host name, not their pids
HEARTBEAT = "pipeline.heartbeat"  # rewritten by the owner while it lives (engine/heartbeat.py)
LEASE = "pipeline.lease"  # on a lease experiment (engine/lease.py): "released" once its holder is done

# --- tags that steps write and other steps or serving read
MODEL_URI = "pipeline.model_uri"  # train: the logged model
MODEL_CLASS = "model.class"  # train: the estimator's import path
VALIDATION_STATUS = "validation.status"  # evaluate; also on registered versions
VALIDATION_REASONS = "validation.reasons"
REGISTER_DECISION = "register.decision"  # register: `v2 champion`, `not registered (REJECTED)`; also on main
DATA_SOURCE = "data.source"  # ingest
DATA_SHA256 = "data.sha256"  # ingest: + ".<site>" per file; bare when one file was read

# --- values
VALIDATED, REJECTED = "VALIDATED", "REJECTED"
COMPLETE_MARK = "true"

# --- artifact paths
CARD = "card.html"
RAW_TABLE = "data/raw.parquet"
EXTERNAL_TABLE = "data/external.parquet"
VALIDATION_REPORT = "validation_report.json"
TRANSFORMER = "transformer/transformer.skops"
TEST_PREDICTIONS = "data/test_predictions.parquet"
EXTERNAL_VALIDATION = "external_validation.json"
SUBGROUPS = "subgroups.json"  # evaluate: the subgroup table, from out-of-fold predictions
EXPLANATION = "explanation.json"  # evaluate: mean absolute contribution per field, or why none
MODEL = "model"  # not an artifact path: a step's logged MLflow model (train)


# The evaluate metrics that sum a pipeline up, copied onto the runs that group step runs
# (main, sweep trials), so the runs table compares them without expanding each one.
HEADLINE_METRICS = ("cv_roc_auc_mean", "cv_roc_auc_ci_low", "cv_roc_auc_ci_high", "test_roc_auc", "test_brier")

# Trial runs of an Optuna study (tools/sweep.py; tools/leaderboard.py --study).
STUDY = "sweep.study"
TRIAL_NUMBER = "sweep.trial_number"


def split_table(name: str) -> str:
    """data/train.parquet, data/val.parquet, data/test.parquet."""
    return f"data/{name}.parquet"


# --- columns
SITE = "site"  # a UCI row's site of origin

# --- MLflow's UI
# Appended to an address of MLflow 3.17's UI, it opens the model-training view (runs,
# models) instead of the GenAI one a new browser starts on (tools/ui.py says more).
UI_MODEL_TRAINING_VIEW = "workflowType=machine_learning"
# The runs table's columns for a browser that has not chosen any: a view the UI shares
# through the experiment tag UI_VIEW_TAG + UI_RUNS_VIEW, applied when an address asks for
# it with `viewStateShareKey=<UI_RUNS_VIEW>` (engine/store.py writes it, tools/ui.py asks).
UI_VIEW_TAG = "mlflow.sharedViewState."
UI_RUNS_VIEW = "pipelines"

# --- environment
FAULT_ENV = "HEART_DISEASE_FAULT"  # tests: stop the process at a named point (engine/faults.py)
