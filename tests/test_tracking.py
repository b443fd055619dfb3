"""Where runs go: the profile's store by default, an explicit MLFLOW_TRACKING_URI
always. Real SQLite stores in a temp dir."""

import pytest

from steps.errors import PipelineError
from steps.tracking import connect


def write_profile(tmp_path, db_name):
    profile = tmp_path / "profile.yaml"
    profile.write_text(
        f"tracking_uri: sqlite:///{tmp_path / db_name}\nregistry_uri: null\n"
        f"artifact_location: {tmp_path / 'artifacts'}\nexperiment_name: from-profile\n"
    )
    return str(profile)


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
        connect("nope")
