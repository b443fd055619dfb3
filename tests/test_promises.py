"""What the README promises, each checked on real runs: a real SQLite store in a temp
dir, real training, real logged models loaded back with mlflow.pyfunc.

The tests share one store in which ingest -> split -> transform -> train -> evaluate ->
register ran once (in-process, as `python -m steps.<step>` runs them after Hydra has
composed the config); each test adds the runs it needs and names its upstream runs
explicitly, so the order of the tests does not matter.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from sklearn.calibration import CalibratedClassifierCV
from sklearn.isotonic import IsotonicRegression

from engine import names
from engine.cli import run_single_step
from engine.config import register_configs
from engine.store import complete_filter
from heart_disease_model.codebook import Codebook
from tests.conftest import CLEVELAND, CODE_PACKAGES, REPO, as_a_command, make_store
from tools.leaderboard import main as leaderboard_main

CLEVELAND_SHA256 = "a74b7efa387bc9d108d7d0115d831fe9b414b29ae7124f331b622b4efa0427c8"
# Every run of this module reads the data through a file:// URL (a promise of its own).
BASE_OVERRIDES = (f"data.url={CLEVELAND.as_uri()}", "evaluate.cv_repeats=1")
IMPOSSIBLE = 'evaluate.criteria=["cv_roc_auc_mean >= 0.999"]'


def compose_config(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[*BASE_OVERRIDES, *overrides])


def step(name: str, *overrides: str) -> str:
    """`python -m steps.<name> <overrides>` in this process; the id of the run it ran or reused."""
    return run_single_step(name, compose_config(*overrides)).run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The module's store, with this process pointed at it as a command of it would be
    (as_a_command), and everything that changes restored after the module."""
    store = make_store(tmp_path_factory.mktemp("promises"))
    # As engine.cli.launch sets it for every command.
    with as_a_command(sys.argv[:], {**store.env, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}):
        register_configs()
        yield store


@pytest.fixture(scope="module")
def base(store) -> dict[str, str]:
    """{step: run id} of one default pipeline, register included (v1, champion)."""
    runs: dict[str, str] = {}
    for name, upstream in (("ingest", None), ("split", "ingest"), ("transform", "split"), ("train", "transform"),
                           ("evaluate", "train"), ("register", "evaluate")):
        runs[name] = step(name, *([f"upstream.{upstream}={runs[upstream]}"] if upstream else []))
    return runs


def train_run(base: dict[str, str], *overrides: str) -> str:
    return step("train", f"upstream.transform={base['transform']}", *overrides)


def versions(store, model_name: str) -> list:
    return store.client.search_model_versions(f"name = '{model_name}'")


def aliases(store, model_name: str) -> dict[str, str]:
    return {alias: str(v) for alias, v in store.client.get_registered_model(model_name).aliases.items()}


def table(output: str) -> list[dict[str, str]]:
    """The rows of a text table (engine/cards.py text_table), cut at the header's columns."""
    lines = output.strip().splitlines()
    header = lines[0]
    columns = [c.strip() for c in header.split("  ") if c.strip()]
    starts = [header.index(c) for c in columns] + [None]
    return [{column: line[starts[i]:starts[i + 1]].strip() for i, column in enumerate(columns)} for line in lines[2:]]


# --------------------------------------------------------------------------- the model's answer


def expected_band(probability: float, bands: dict[str, float]) -> str:
    """The README's rule, written out plainly: the level with the lowest upper bound above
    the probability; the top level (bound 1.0) also takes 1.0 itself."""
    ordered = sorted(bands.items(), key=lambda item: item[1])
    for level, upper in ordered:
        if probability < upper:
            return level
    return ordered[-1][0]


def answers_of(store, train_run_id: str, rows: pd.DataFrame):
    """(the model's answers to `rows`, its model config), loaded as a user would."""
    uri = store.client.get_run(train_run_id).data.tags[names.MODEL_URI]
    model = mlflow.pyfunc.load_model(uri)
    features = Codebook.from_config(model.model_config["codebook"]).features  # the 13 inputs
    return model.predict(rows[features].astype("float64")), model.model_config


def patients(store, base) -> pd.DataFrame:
    """Every patient of the Cleveland file, as ingest logged them (missing values included)."""
    return pd.read_parquet(store.client.download_artifacts(base["ingest"], names.RAW_TABLE, str(store.root / "raw")))


def check_answers(answers: pd.DataFrame, config: dict) -> None:
    threshold, bands = config["decision_threshold"], config["risk_levels"]
    probability = answers["probability"].to_numpy()
    assert (answers["prediction"].to_numpy() == (probability >= threshold).astype(int)).all()
    assert list(answers["risk_level"]) == [expected_band(p, bands) for p in probability]
    # Not vacuous: both answers, and more than one risk level, occur.
    assert set(answers["prediction"]) == {0, 1} and answers["risk_level"].nunique() >= 2


def test_prediction_and_risk_level_follow_the_threshold_and_bands_train_stored(store, base):
    rows = patients(store, base)
    answers, config = answers_of(store, base["train"], rows)
    train = store.client.get_run(base["train"]).data.metrics
    # The threshold and bands travel inside the model: the ones train chose and logged.
    assert config["decision_threshold"] == pytest.approx(train["decision_threshold"])
    assert config["risk_levels"]["Low"] == pytest.approx(train["risk_low_below"])
    assert config["risk_levels"]["Moderate"] == pytest.approx(train["risk_moderate_below"])
    check_answers(answers, config)
    # The threshold is the model's, not 0.5: some patients lie between the two.
    probability = answers["probability"]
    low, high = sorted((config["decision_threshold"], 0.5))
    assert ((probability >= low) & (probability < high)).any()


@pytest.fixture(scope="module")
def fixed_isotonic(store, base) -> str:
    """A train run with fixed threshold and bands and isotonic calibration."""
    return train_run(base, "train.threshold.strategy=fixed", "train.threshold.value=0.42",
                     "train.risk_levels.strategy=fixed",
                     "train.risk_levels.bounds={Low: 0.25, Moderate: 0.55, High: 1.0}",
                     "train.calibration=isotonic")


def test_fixed_threshold_and_band_strategies_take_the_values_from_config(store, base, fixed_isotonic):
    answers, config = answers_of(store, fixed_isotonic, patients(store, base))
    assert config["decision_threshold"] == 0.42
    assert config["risk_levels"] == {"Low": 0.25, "Moderate": 0.55, "High": 1.0}
    metrics = store.client.get_run(fixed_isotonic).data.metrics
    logged = (metrics["decision_threshold"], metrics["risk_low_below"], metrics["risk_moderate_below"])
    assert logged == (0.42, 0.25, 0.55)
    check_answers(answers, config)


def test_isotonic_calibration_wraps_the_estimator_in_the_logged_model(store, base, fixed_isotonic):
    run = store.client.get_run(fixed_isotonic)
    assert run.data.params["train.calibration"] == "isotonic"
    model = mlflow.pyfunc.load_model(run.data.tags[names.MODEL_URI]).unwrap_python_model()
    estimator = model.pipeline.named_steps["model"]
    assert isinstance(estimator, CalibratedClassifierCV) and estimator.method == "isotonic"
    assert all(isinstance(c.calibrators[0], IsotonicRegression) for c in estimator.calibrated_classifiers_)
    # Isotonic calibration is a non-decreasing step function of the score: each calibrator
    # takes a few levels, far fewer than the rows it was fitted on (about 15 for about 240
    # rows here; the bound is a quarter). Answers interpolate between its knots, so they
    # are not counted: how many distinct values they take depends on the patients.
    transform = model.pipeline.named_steps["transform"]
    rows = max(int(np.max(step.n_samples_seen_)) for _, fitted, _ in transform.transformers_
               for _, step in getattr(fitted, "steps", []) if hasattr(step, "n_samples_seen_"))
    for calibrated in estimator.calibrated_classifiers_:
        levels = calibrated.calibrators[0].y_thresholds_
        assert np.all(np.diff(levels) >= 0)
        assert len(np.unique(levels)) <= rows / 4, (len(np.unique(levels)), rows)


# --------------------------------------------------------------------------- the register gate


@pytest.fixture(scope="module")
def worse(store, base) -> dict[str, str]:
    """A model that is honestly worse: the default logistic regression with almost no
    freedom (C=1e-4), evaluated once under an impossible criterion (REJECTED) and once
    under the default criteria (VALIDATED: it is worse, not useless)."""
    train = train_run(base, "model.C=0.0001")
    return {"train": train,
            "rejected": step("evaluate", f"upstream.train={train}", IMPOSSIBLE),
            "validated": step("evaluate", f"upstream.train={train}")}


def test_evaluate_verdicts_of_the_worse_model(store, worse):
    status = {k: store.client.get_run(worse[k]).data.tags[names.VALIDATION_STATUS] for k in ("rejected", "validated")}
    assert status == {"rejected": "REJECTED", "validated": "VALIDATED"}


def test_a_rejected_model_gets_no_version(store, worse, capsys):
    # A fresh registered-model name has no champion: a VALIDATED model would be crowned here.
    register = step("register", f"upstream.evaluate={worse['rejected']}", "register.model_name=heart-disease-gate")
    assert "nothing registered" in capsys.readouterr().out
    assert store.client.get_run(register).data.tags["register.decision"] == "not registered"
    assert versions(store, "heart-disease-gate") == []
    assert all(v.run_id != worse["train"] for v in versions(store, "heart-disease"))


def test_allow_unvalidated_registers_but_never_crowns(store, worse):
    name = "heart-disease-unvalidated"
    register = step("register", f"upstream.evaluate={worse['rejected']}", f"register.model_name={name}",
                    "register.allow_unvalidated=true")
    [version] = versions(store, name)
    assert version.run_id == worse["train"]
    assert version.tags[names.VALIDATION_STATUS] == "REJECTED" and version.tags["decision"] == "challenger"
    # No champion existed, so only the REJECTED status kept this version from the alias.
    assert aliases(store, name) == {"challenger": str(version.version)}
    assert store.client.get_run(register).data.tags["register.decision"] == f"v{version.version} challenger"


def test_a_worse_model_becomes_challenger_and_the_champion_stays(store, base, worse):
    champion_before = store.client.get_model_version_by_alias("heart-disease", "champion")
    assert champion_before.run_id == base["train"]
    champion_value = store.client.get_run(base["evaluate"]).data.metrics["cv_roc_auc_mean"]
    assert store.client.get_run(worse["validated"]).data.metrics["cv_roc_auc_mean"] < champion_value  # it is worse
    step("register", f"upstream.evaluate={worse['validated']}")
    [version] = [v for v in versions(store, "heart-disease") if v.run_id == worse["train"]]
    assert aliases(store, "heart-disease") == {"champion": str(champion_before.version),
                                               "challenger": str(version.version)}
    assert version.tags["decision"] == "challenger" and "does not beat champion" in version.tags["decision_reason"]


# --------------------------------------------------------------------------- versions and their logged models


def listed_versions(store, model_id: str) -> list[tuple[str, str]]:
    """(name, version) of each version the logged model's page shows: its `mlflow.modelVersions` tag."""
    tag = store.client.get_logged_model(model_id).tags.get("mlflow.modelVersions", "[]")
    return [(entry["name"], str(entry["version"])) for entry in json.loads(tag)]


def test_the_champion_is_its_train_runs_logged_model_with_evaluates_metrics(store, base):
    champion = store.client.get_model_version_by_alias("heart-disease", "champion")
    model_id = store.client.get_run(base["train"]).data.tags[names.MODEL_URI].removeprefix("models:/")
    assert model_id.startswith("m-")
    # MLflow's version page links "Source Model" from the source; its SQL registry keeps no
    # model_id (engine/registry.py), a registry that does must name the same model.
    assert (champion.source, champion.run_id) == (f"models:/{model_id}", base["train"])
    assert champion.model_id in (None, model_id)
    assert ("heart-disease", str(champion.version)) in listed_versions(store, model_id)
    logged = {(m.key, m.run_id): m.value for m in store.client.get_logged_model(model_id).metrics}
    evaluation = store.client.get_run(base["evaluate"]).data.metrics
    assert logged[("cv_roc_auc_mean", base["evaluate"])] == evaluation["cv_roc_auc_mean"]
    assert logged[("test_roc_auc", base["evaluate"])] == evaluation["test_roc_auc"]


def test_a_version_an_interrupted_register_left_unlinked_is_linked_when_completed(store, base):
    """mlflow.register_model creates the version, then lists it on the logged model: a register
    killed in between leaves this. The next register completes that version, link included."""
    name = "heart-disease-interrupted"
    model_uri = store.client.get_run(base["train"]).data.tags[names.MODEL_URI]
    store.client.create_registered_model(name)
    left = store.client.create_model_version(name, model_uri, run_id=base["train"])
    model_id = model_uri.removeprefix("models:/")
    assert (name, str(left.version)) not in listed_versions(store, model_id)

    step("register", f"upstream.evaluate={base['evaluate']}", f"register.model_name={name}")
    assert [v.version for v in versions(store, name)] == [left.version]  # completed, not duplicated
    assert aliases(store, name) == {"champion": str(left.version), "challenger": str(left.version)}
    assert (name, str(left.version)) in listed_versions(store, model_id)


# --------------------------------------------------------------------------- upstream pins


@pytest.fixture(scope="module")
def synthetic_ingest(store) -> str:
    return step("ingest", "data=synthetic", "data.rows=500", "data.seed=3")


def test_data_synthetic_through_ingest(store, synthetic_ingest):
    run = store.client.get_run(synthetic_ingest)
    assert run.data.tags["data.source"] == "synthetic" and run.data.tags["data.synthetic"] == "true"
    assert run.data.metrics["rows"] == 500
    raw = pd.read_parquet(store.client.download_artifacts(synthetic_ingest, names.RAW_TABLE, str(store.root / "syn")))
    assert len(raw) == 500 and set(raw["target"]) == {0, 1}
    [dataset] = run.inputs.dataset_inputs
    assert "domain.synthetic.generate" in dataset.dataset.source and dataset.dataset.digest


def test_file_url_is_read_and_verified(store, base):
    ingest = store.client.get_run(base["ingest"])
    assert ingest.data.params["data.url"] == CLEVELAND.as_uri()
    assert ingest.data.tags[names.DATA_SHA256] == CLEVELAND_SHA256 and ingest.data.metrics["rows"] == 303
    assert CLEVELAND.as_uri() in ingest.inputs.dataset_inputs[0].dataset.source


def test_upstream_pin_takes_the_inputs_of_that_run(store, base, synthetic_ingest):
    # The latest ingest is the synthetic one; the pin picks the Cleveland run instead.
    [latest] = store.client.search_runs([store.experiment_id], complete_filter(f"tags.`{names.STEP}` = 'ingest'"),
                                        order_by=["attributes.start_time DESC"], max_results=1)
    assert latest.info.run_id == synthetic_ingest != base["ingest"]
    split = step("split", f"upstream.ingest={base['ingest']}", "split.seed=7")
    run = store.client.get_run(split)
    assert run.data.tags["pipeline.input.ingest"] == base["ingest"]
    assert sum(run.data.metrics[f"{s}_rows"] for s in ("train", "val", "test")) == 303  # not 500
    unpinned = store.client.get_run(step("split", "split.seed=7"))
    assert unpinned.data.tags["pipeline.input.ingest"] == synthetic_ingest


def test_steps_further_up_come_from_the_pinned_runs_lineage(store, base, worse, synthetic_ingest):
    # Newer complete ingest and split runs exist (synthetic data, another seed); register,
    # pinned to an evaluate run, still reads ingest and split from that run's history.
    newer_split = step("split", f"upstream.ingest={synthetic_ingest}", "split.seed=5")
    register = store.client.get_run(step("register", f"upstream.evaluate={worse['validated']}",
                                         "register.model_name=heart-disease-lineage"))
    lineage = {s: register.data.tags[f"pipeline.input.{s}"] for s in ("ingest", "split", "transform", "train")}
    assert lineage == {"ingest": base["ingest"], "split": base["split"], "transform": base["transform"],
                       "train": worse["train"]}
    assert newer_split != base["split"]
    card = open(store.client.download_artifacts(register.info.run_id, "model_card.md", str(store.root / "card"))).read()
    assert "303 rows after validation" in card  # the Cleveland rows, not the 500 synthetic ones


def _refused(store, capsys, pin: str) -> str:
    before = len(store.runs("split"))
    with pytest.raises(SystemExit) as exit_:
        step("split", f"upstream.ingest={pin}", "split.seed=11")
    assert exit_.value.code == 1
    assert len(store.runs("split")) == before  # the refusal comes before any run
    return capsys.readouterr().err


def test_upstream_pin_refuses_a_run_of_another_step(store, base, capsys):
    error = _refused(store, capsys, base["transform"])
    assert f"upstream.ingest={base['transform']} is not a complete ingest run (step tag 'transform'" in error


def test_upstream_pin_refuses_a_run_that_does_not_exist(store, base, capsys):
    error = _refused(store, capsys, "0" * 32)
    assert f"upstream.ingest={'0' * 32}: no such run" in error


@pytest.mark.parametrize("status, mark", [("KILLED", None), ("FINISHED", "damaged: data/raw.parquet is missing")])
def test_upstream_pin_refuses_an_incomplete_run(store, base, capsys, status, mark):
    tags = {names.STEP: "ingest", **({names.COMPLETE: mark} if mark else {})}
    run_id = store.client.create_run(store.experiment_id, tags=tags).info.run_id
    store.client.set_terminated(run_id, status)
    error = _refused(store, capsys, run_id)
    assert f"upstream.ingest={run_id} is not a complete ingest run" in error and f"status {status}" in error


# --------------------------------------------------------------------------- the leaderboard


def leaderboard(capsys, monkeypatch, *args: str) -> list[dict[str, str]]:
    monkeypatch.setattr(sys, "argv", ["python -m tools.leaderboard", *args])
    assert leaderboard_main() == 0
    return table(capsys.readouterr().out)


@pytest.fixture(scope="module")
def sweep(store, base, worse) -> str:
    """A real grid sweep over two models this module already trained and evaluated: the
    default (C=0.1) and the worse one (C=0.0001); its trials reuse those runs."""
    store.tool("sweep", *BASE_OVERRIDES, "model.C=0.1,0.0001")
    [sweep] = store.client.search_runs([store.experiment_id], f"tags.`{names.ROLE}` = 'sweep'")
    return sweep.info.run_id


@pytest.fixture(scope="module")
def evaluated(store, base, worse, fixed_isotonic, sweep) -> set[str]:
    """Train runs with a complete evaluate run: one outside the sweep (fixed_isotonic)."""
    step("evaluate", f"upstream.train={fixed_isotonic}")
    return {r.data.tags["pipeline.input.train"] for r in store.runs("evaluate")
            if r.data.tags.get(names.COMPLETE) == names.COMPLETE_MARK}


def test_leaderboard_sort_and_top(store, base, evaluated, capsys, monkeypatch):
    by_auc = leaderboard(capsys, monkeypatch)
    assert {row["train run"] for row in by_auc} == evaluated and len(by_auc) == 3
    auc = [float(row["cv roc_auc [95% CI]"].split()[0]) for row in by_auc]
    assert auc == sorted(auc, reverse=True)

    by_brier = leaderboard(capsys, monkeypatch, "--sort", "test_brier")
    brier = [float(row["test brier"]) for row in by_brier]
    assert brier == sorted(brier) and len(by_brier) == len(by_auc)  # lower is better: ascending

    top = leaderboard(capsys, monkeypatch, "--sort", "test_brier", "--top", "2")
    assert top == by_brier[:2]
    champion = next(row for row in by_auc if row["train run"] == base["train"])
    assert "@champion" in champion["registered"]


def test_leaderboard_sweep_shows_only_that_sweeps_trials(store, base, worse, sweep, evaluated, capsys, monkeypatch):
    trials = store.client.search_runs([store.experiment_id], f"tags.`mlflow.parentRunId` = '{sweep}' and "
                                      f"tags.`{names.ROLE}` = 'trial'")
    assert {t.data.tags["pipeline.train.run_id"] for t in trials} == {base["train"], worse["train"]}
    assert {t.data.tags["pipeline.train.status"] for t in trials} == {"reused"}
    assert {t.data.tags["pipeline.evaluate.run_id"] for t in trials} == {base["evaluate"], worse["validated"]}
    rows = leaderboard(capsys, monkeypatch, "--sweep", sweep)
    assert {row["train run"] for row in rows} == {base["train"], worse["train"]} != evaluated
    assert sorted(row["params"].split()[0] for row in rows) == ["C=0.0001", "C=0.1"]
    assert leaderboard(capsys, monkeypatch, "--sweep") == rows  # the latest sweep


# --------------------------------------------------------------------------- the local profile, --cfg job


def project_copy(tmp_path):
    """The project's code and config in another folder: the local profile's relative
    paths must land there, whatever the working directory."""
    project = tmp_path / "project"
    for folder in (*CODE_PACKAGES, "conf", "profiles"):
        shutil.copytree(REPO / folder, project / folder, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHONPATH=str(project), XDG_CACHE_HOME=str(tmp_path / "cache"))
    return project, elsewhere, env


def run_in(cwd, env, *args: str):
    result = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_local_profile_paths_are_relative_to_the_project_not_the_cwd(tmp_path):
    project, elsewhere, env = project_copy(tmp_path)
    result = run_in(elsewhere, env, "steps.ingest", "data=synthetic", "data.rows=50")
    run_id = result.stdout.split("ingest: ran run ")[1].split()[0]
    assert list(elsewhere.iterdir()) == []
    assert (project / "mlflow.db").is_file()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("heart-disease")
    assert experiment.artifact_location.removeprefix("file://") == str(project / "mlruns")
    run = client.get_run(run_id)
    assert run.info.experiment_id == experiment.experiment_id
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    assert artifacts.is_relative_to(project / "mlruns") and (artifacts / names.RAW_TABLE).is_file()


def test_cfg_job_prints_the_config_and_creates_no_run_or_store(tmp_path):
    project, elsewhere, env = project_copy(tmp_path)
    before = sorted(p.relative_to(project) for p in project.rglob("*"))
    result = run_in(project, env, "steps.train", "--cfg", "job")
    assert "tracking_uri: sqlite:///mlflow.db" in result.stdout and "C: 0.1" in result.stdout
    assert "ran run" not in result.stdout
    after = sorted(p.relative_to(project) for p in project.rglob("*") if "__pycache__" not in p.parts)
    assert after == before  # no mlflow.db, no lock file, no mlruns/
