"""Where runs go: the profile's store by default, an explicit MLFLOW_TRACKING_URI
always. Real SQLite stores in a temp dir."""

import json
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from engine.errors import PipelineError
from engine.store import connect, load_profile
from tests.conftest import REPO, make_store


def closed_port() -> int:
    """A loopback port nothing listens on (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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

    from engine.context import ArtifactCache, StepContext
    from engine.store import Tracking
    from steps.pipeline import STEPS

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
    from mlflow.tracking import MlflowClient

    from tests.forked import FORKS as forks

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = MlflowClient(uri).create_experiment("race", artifact_location=str(tmp_path / "artifacts"))
    # Fresh processes, each with its own connections, forked from the server that imported
    # MLflow once (tests/forked.py: 12 imports of MLflow would cost some 25 CPU s).
    errors = forks.Queue()
    for round_ in range(3):
        barrier = forks.Barrier(4)
        workers = [forks.Process(target=_log_same_dataset, args=(uri, experiment_id, round_, barrier, errors))
                   for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        assert not errors.qsize() and all(w.exitcode == 0 for w in workers), errors.get(timeout=1)
    runs = MlflowClient(uri).search_runs([experiment_id])
    assert len(runs) == 12 and all(len(r.inputs.dataset_inputs) == 1 for r in runs)


# --------------------------------------------------------------------------- fail fast, leak nothing

def test_an_unreachable_tracking_server_is_one_line_and_exit_1(tmp_path):
    """MLflow's own retries take about 4 minutes; the reachability check answers in
    seconds (measured in docs/BENCHMARKS.md), without a traceback or a run anywhere."""
    store = make_store(tmp_path)
    unreachable = replace(store, env={**store.env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed_port()}"})
    result = unreachable.in_process("steps.main", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("error: cannot reach the tracking server at http://127.0.0.1:")


def test_a_password_in_a_url_reaches_no_param_tag_artifact_or_output(tmp_path, http_server):
    store = make_store(tmp_path / "store")
    (tmp_path / "site").mkdir()
    base = http_server(tmp_path / "site")  # serves nothing: the download fails with the URL in the error
    secret = "s3cret-Pa55"
    url = base.replace("http://", f"http://alice:{secret}@") + "/processed.cleveland.data"
    result = store.steps("main", f"data.url={url}", check=False)
    assert result.returncode == 1 and "http://***:***@127.0.0.1" in result.stderr
    assert secret not in result.stdout + result.stderr
    runs = store.client.search_runs([store.experiment_id], "")
    assert runs, "the failed runs are recorded"
    for run in runs:
        recorded = json.dumps([run.data.params, run.data.tags])
        assert secret not in recorded
        for artifact in store.client.list_artifacts(run.info.run_id):
            if not artifact.is_dir:
                path = store.client.download_artifacts(run.info.run_id, artifact.path, str(tmp_path))
                assert secret not in Path(path).read_text(errors="replace"), artifact.path
    assert any("http://***:***@127.0.0.1" in run.data.tags.get("pipeline.error", "") for run in runs)


def test_a_file_that_is_not_uci_data_is_refused_without_quoting_it(tmp_path):
    store = make_store(tmp_path / "store")
    private = tmp_path / "accounts.txt"
    private.write_text("".join(f"user{i}:x:{i}:{i}:Someone Private:/home/user{i}:/bin/bash\n" for i in range(30)))
    result = store.steps("ingest", "data=file", f"data.path={private}", check=False)
    assert result.returncode == 1 and "not the headerless UCI format" in result.stderr
    ingest = store.client.search_runs([store.experiment_id], "tags.`pipeline.step` = 'ingest'")[0]
    for text in (result.stdout + result.stderr, ingest.data.tags["pipeline.error"]):
        assert "Someone Private" not in text and "/home/user" not in text


def test_data_errors_quote_short_values_only():
    import pandas as pd
    from omegaconf import OmegaConf

    from heart_disease_model.codebook import EXAMPLE_CHARS, Codebook, check_features

    book = Codebook.from_config(OmegaConf.load(REPO / "conf" / "schema" / "uci_codebook.yaml"))
    frame = pd.DataFrame({name: [1.0] for name in book.features}).astype(object)
    frame.loc[0, "age"] = "x" * 500
    _, problems, _ = check_features(frame, book)
    assert problems and "x" * (EXAMPLE_CHARS + 1) not in problems[0] and "x" * EXAMPLE_CHARS + "…" in problems[0]
