"""Where runs go: the profile's store by default, an explicit MLFLOW_TRACKING_URI
always. Real SQLite stores in a temp dir."""

import pytest

from steps.errors import PipelineError
from steps.store import connect, load_profile


def write_profile(tmp_path, db_name):
    profile = tmp_path / "profile.yaml"
    profile.write_text(
        f"tracking_uri: sqlite:///{tmp_path / db_name}\nregistry_uri: null\n"
        f"artifact_location: {tmp_path / 'artifacts'}\nexperiment_name: from-profile\n"
    )
    return load_profile(str(profile))


def test_profile_decides_the_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    tracking = connect(write_profile(tmp_path, "profile.db"))
    assert tracking.tracking_uri == f"sqlite:///{tmp_path / 'profile.db'}"
    experiment = tracking.client.get_experiment(tracking.experiment_id)
    assert experiment.name == "from-profile"
    assert experiment.artifact_location.endswith("artifacts")


def test_explicit_tracking_uri_wins_over_the_profile(tmp_path, monkeypatch):
    explicit = f"sqlite:///{tmp_path / 'explicit.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", explicit)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    tracking = connect(write_profile(tmp_path, "profile.db"))
    assert tracking.tracking_uri == explicit
    assert (tmp_path / "explicit.db").exists() and not (tmp_path / "profile.db").exists()


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(PipelineError, match=r"profile 'nope' not found.*\['local', 'server'\]"):
        load_profile("nope")


def _log_same_dataset(tracking_uri, experiment_id, round_, barrier, errors):
    """One of several processes that log the same new dataset at the same moment, as
    parallel sweep trials do with their shared training data."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from steps.context import ArtifactCache, StepContext
    from steps.pipeline import STEPS
    from steps.store import Tracking

    client = MlflowClient(tracking_uri)
    run_id = client.create_run(experiment_id).info.run_id
    context = StepContext(Tracking(client, experiment_id, tracking_uri), run_id, STEPS["train"], None, {}, None,
                          ArtifactCache(client))
    frame = pd.DataFrame({"age": [63.0 + round_, 41.0], "num": [1, 0]})
    barrier.wait()
    try:
        context.log_dataset(frame, source="data/train.parquet", name="train", context="training")
    except Exception as err:  # reported to the test, which names it
        errors.put(f"{type(err).__name__}: {err}")


def test_parallel_processes_log_one_new_dataset_without_losing_a_run(tmp_path):
    """MLflow checks whether a dataset exists, then inserts it: two processes can both
    insert, and SQLite refuses the second. log_dataset must survive that race."""
    import multiprocessing

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = MlflowClient(uri).create_experiment("race", artifact_location=str(tmp_path / "artifacts"))
    spawn = multiprocessing.get_context("spawn")
    errors = spawn.Queue()
    for round_ in range(3):
        barrier = spawn.Barrier(4)
        workers = [spawn.Process(target=_log_same_dataset, args=(uri, experiment_id, round_, barrier, errors))
                   for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        assert not errors.qsize() and all(w.exitcode == 0 for w in workers), errors.get(timeout=1)
    runs = MlflowClient(uri).search_runs([experiment_id])
    assert len(runs) == 12 and all(len(r.inputs.dataset_inputs) == 1 for r in runs)
