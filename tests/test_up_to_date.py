"""A `main` with every step up to date asks the store's file, not MLflow
(engine/up_to_date.py). It finds the very runs the pipeline made, logs nothing and
imports no MLflow. At every doubt it answers "not up to date", which leaves the
answer to the runner (what the runner then does is in test_runner_faults.py and
test_pipeline_e2e.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from engine.config import register_configs
from engine.results import EVERY_STEP_UP_TO_DATE
from engine.up_to_date import reused_pipeline
from steps.main import UP_TO_DATE
from steps.pipeline import STEPS
from tests.conftest import QUICK_EVALUATE, REPO

# What a `main` that reuses every step must not load (the "pay only for what runs").
HEAVY = ("mlflow", "sqlalchemy", "alembic", "sklearn", "skops", "pandas", "pyarrow", "matplotlib")


def quick_config(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[QUICK_EVALUATE, *overrides])


@pytest.fixture
def pointed(trained, monkeypatch):
    """The trained store, with this process's environment pointing at it as a command's would."""
    for key, value in trained.env.items():
        monkeypatch.setenv(key, value)
    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(key, raising=False)
    return trained


def newest_main(store):
    return store.client.search_runs([store.experiment_id], "tags.`pipeline.role` = 'main'",
                                    order_by=["attributes.start_time DESC"], max_results=1)[0]


def test_it_finds_the_runs_the_pipeline_made(pointed):
    main = newest_main(pointed)
    results = reused_pipeline(quick_config())
    assert [(r.step, r.run_id, r.status) for r in results] == [
        (step, main.data.tags[f"pipeline.{step}.run_id"], "reused") for step in STEPS]
    for result in results:
        run = pointed.client.get_run(result.run_id)
        assert result.summary == json.loads(run.data.tags["pipeline.summary"])
        assert result.inputs == {key.removeprefix("pipeline.input."): value
                                 for key, value in run.data.tags.items() if key.startswith("pipeline.input.")}


def test_a_main_with_nothing_to_do_logs_nothing_and_imports_no_mlflow(pointed):
    """A new interpreter, because what it imports is the point."""
    runs_before = len(pointed.client.search_runs([pointed.experiment_id], max_results=1000))
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "steps.main", QUICK_EVALUATE],
                          cwd=REPO, env=pointed.env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert UP_TO_DATE in done.stdout
    assert done.stdout.count(": reused run ") == len(STEPS)
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "engine.up_to_date" in imported
    assert sorted(name for name in imported if name.split(".")[0] in HEAVY) == []
    assert len(pointed.client.search_runs([pointed.experiment_id], max_results=1000)) == runs_before


@pytest.mark.parametrize("overrides, env", [
    (["model.C=0.3"], {}),  # another cache key for train and what follows
    (["force=[eda]"], {}),
    (["upstream.ingest=0123456789abcdef0123456789abcdef"], {}),
    ([], {"MLFLOW_EXPERIMENT_NAME": "another-experiment"}),
    ([], {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}),  # not asked at all: nothing listens there
], ids=["changed-config", "forced", "pinned-upstream", "other-experiment",
        "tracking-server"])
def test_any_change_or_doubt_leaves_the_answer_to_the_runner(pointed, monkeypatch, overrides, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert reused_pipeline(quick_config(*overrides)) is None


def test_the_experiment_mlflow_run_chose_is_the_one_asked(pointed, monkeypatch):
    from mlflow.tracking.default_experiment import DEFAULT_EXPERIMENT_ID

    from engine import store as engine_store
    from engine.store import DEFAULT_EXPERIMENT_ID as NAMED_HERE

    assert NAMED_HERE == DEFAULT_EXPERIMENT_ID
    expected = [r.run_id for r in reused_pipeline(quick_config())]
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    # What a process that `mlflow run` started reads from MLFLOW_EXPERIMENT_ID when it starts.
    monkeypatch.setattr(engine_store, "_LAUNCHER_EXPERIMENT_ID", pointed.experiment_id)
    assert [r.run_id for r in reused_pipeline(quick_config())] == expected
    monkeypatch.setattr(engine_store, "_LAUNCHER_EXPERIMENT_ID", "999")
    assert reused_pipeline(quick_config()) is None
    # none chosen: the profile's experiment
    monkeypatch.setattr(engine_store, "_LAUNCHER_EXPERIMENT_ID", DEFAULT_EXPERIMENT_ID)
    assert reused_pipeline(quick_config()) is None


def test_under_mlflow_run_main_fills_the_run_it_was_given_without_walking_the_chain(pointed):
    """`mlflow run` makes a run and hands it to main: main records the reused steps there, as
    the chain would, and starts no step run."""
    runs_before = len(pointed.client.search_runs([pointed.experiment_id], max_results=1000))
    previous = newest_main(pointed)
    given = pointed.client.create_run(pointed.experiment_id).info.run_id
    done = pointed.in_process("steps.main", QUICK_EVALUATE, extra_env={"MLFLOW_RUN_ID": given})
    assert done.stdout.count(": reused run ") == len(STEPS), done.stdout
    assert EVERY_STEP_UP_TO_DATE in done.stdout
    assert len(pointed.client.search_runs([pointed.experiment_id], max_results=1000)) == runs_before + 1
    filled = pointed.client.get_run(given)
    assert filled.info.status == "FINISHED" and filled.data.tags["pipeline.role"] == "main"
    for step in STEPS:
        assert filled.data.tags[f"pipeline.{step}.run_id"] == previous.data.tags[f"pipeline.{step}.run_id"]
        assert filled.data.tags[f"pipeline.{step}.status"] == "reused"
    assert filled.data.metrics["cv_roc_auc_mean"] == previous.data.metrics["cv_roc_auc_mean"]
    assert {a.path for a in pointed.client.list_artifacts(given)} >= {"pipeline_summary.txt", "config.yaml"}


def test_a_missing_or_resized_output_or_a_deleted_run_leaves_the_answer_to_the_runner(pointed):
    results = {r.step: r for r in reused_pipeline(quick_config())}
    eda = pointed.client.get_run(results["eda"].run_id)
    report = Path(eda.info.artifact_uri) / "eda_report.html"
    content = report.read_bytes()
    report.write_bytes(content[:-1])
    assert reused_pipeline(quick_config()) is None
    report.unlink()
    assert reused_pipeline(quick_config()) is None
    report.write_bytes(content)

    train = pointed.client.get_run(results["train"].run_id)
    model_uri = json.loads(train.data.tags["pipeline.outputs"])["model"]["uri"]
    model_file = Path(pointed.client.get_logged_model(model_uri.removeprefix("models:/")).artifact_location) / "MLmodel"
    content = model_file.read_bytes()
    model_file.unlink()
    assert reused_pipeline(quick_config()) is None
    model_file.write_bytes(content)

    pointed.client.delete_run(results["split"].run_id)
    assert reused_pipeline(quick_config()) is None
    pointed.client.restore_run(results["split"].run_id)
    assert [r.run_id for r in reused_pipeline(quick_config())] == [r.run_id for r in results.values()]


def test_a_running_run_of_this_machine_leaves_the_answer_to_the_runner(pointed):
    """Its process may be gone (the runner then marks it KILLED), or it may be computing a
    step; a RUNNING run of another machine changes nothing here."""
    elsewhere = pointed.client.create_run(pointed.experiment_id, tags={"pipeline.host": "another-machine"})
    assert reused_pipeline(quick_config()) is not None
    here = pointed.client.create_run(pointed.experiment_id, tags={"pipeline.host": socket.gethostname()})
    assert reused_pipeline(quick_config()) is None
    for run in (elsewhere, here):
        pointed.client.set_terminated(run.info.run_id, "KILLED")
    assert reused_pipeline(quick_config()) is not None
