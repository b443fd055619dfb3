"""What a user sees in `mlflow ui`: the names and params that tell `main` runs apart. (The
runs' own records are checked on real runs in test_pipeline_e2e.py.)"""

from __future__ import annotations

from steps.main import chosen_groups, pipeline_params, run_name

# --------------------------------------------------------------------------- run names and params


CHOICES = {"data": "uci", "schema": "uci_codebook", "eda": "default", "split": "default", "transform": "default",
           "model": "random_forest", "train": "default", "evaluate": "default", "register": "default",
           "profile": "local", "hydra/job_logging": "stdout", "hydra/sweeper": "basic"}


def test_only_groups_with_alternatives_define_a_pipeline():
    """A group with one option says nothing; the profile says where runs go."""
    assert chosen_groups(CHOICES) == {"data": "uci", "model": "random_forest"}


def test_a_main_run_is_named_after_its_model_and_overrides():
    groups = {"data": "uci", "model": "random_forest"}
    assert run_name(groups, []) == "main · model=random_forest"
    assert run_name(groups, ["model=random_forest", "model.max_depth=3", "+split.seed=7"]) == \
        "main · model=random_forest model.max_depth=3 split.seed=7"
    assert run_name({}, []) == "main"
    long = run_name(groups, [f"evaluate.criteria=['{'x' * 300}']"])
    assert len(long) == 120 and long.endswith("…")


def test_params_are_the_groups_and_overrides_with_secrets_redacted():
    params = pipeline_params({"data": "file", "model": "logreg"},
                             ["model.C=0.3", "data.url=http://alice:s3cret@127.0.0.1/x.data", "~train.calibration"])
    assert params == {"data": "file", "model": "logreg", "model.C": "0.3",
                      "data.url": "http://***:***@127.0.0.1/x.data", "train.calibration": "(removed)"}
    assert "s3cret" not in run_name({"model": "logreg"}, ["data.url=http://alice:s3cret@127.0.0.1/x.data"])
