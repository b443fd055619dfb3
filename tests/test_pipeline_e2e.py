"""The pipeline as a user runs it: `mlflow run` on the real Cleveland file, against a
real SQLite store. The tests in this module share one store and run in order:
cold run, fully reused run, a train change, force, then each entry point alone. Force
is about the cache, not the launcher: it runs `python -m steps.main` (forked,
tests/forked.py)."""

import json

import pandas as pd
import pytest

from tests.conftest import QUICK_EVALUATE, make_store

pytestmark = pytest.mark.e2e

STEP_ORDER = ["ingest", "eda", "split", "transform", "train", "evaluate", "register"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("e2e"))


def latest_main(store):
    runs = store.client.search_runs([store.experiment_id], "tags.`pipeline.role` = 'main'",
                                    order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0]


def statuses(main_run):
    return {step: main_run.data.tags[f"pipeline.{step}.status"] for step in STEP_ORDER}


def step_run_count(store):
    return len(store.client.search_runs([store.experiment_id], "tags.`pipeline.step` != ''", max_results=1000))


def test_cold_run_gives_parent_seven_children_artifacts_and_a_champion(store):
    result = store.mlflow_run("main")
    assert "pipeline finished" in result.stdout
    # One line as each step starts and ends, before the table; no progress bars, no deprecation noise.
    for step in STEP_ORDER:
        assert f"{step}: running (run " in result.stdout and f"{step}: ran run " in result.stdout
    assert result.stdout.index("register: ran run ") < result.stdout.index("pipeline finished")
    assert "Downloading artifacts" not in result.stdout + result.stderr
    assert "DeprecationWarning" not in result.stdout + result.stderr

    parent = latest_main(store)
    assert parent.info.status == "FINISHED"
    assert statuses(parent) == {step: "ran" for step in STEP_ORDER}
    children = store.client.search_runs(
        [store.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.data.tags["pipeline.step"] for c in children) == sorted(STEP_ORDER)
    assert all(c.info.status == "FINISHED" for c in children)
    by_step = {c.data.tags["pipeline.step"]: c for c in children}

    def artifacts(step, folder=""):
        return {a.path for a in store.client.list_artifacts(by_step[step].info.run_id, folder)}

    assert "data/raw.parquet" in artifacts("ingest", "data")
    assert {f"data/{n}.parquet" for n in ("train", "val", "test")} <= artifacts("split", "data")
    assert artifacts("transform", "data") == {"data/train.parquet"}  # val and test are transformed by the model
    assert "transformer/transformer.skops" in artifacts("transform", "transformer")
    assert {f"plots/{n}.png" for n in ("roc_curve", "pr_curve", "calibration", "confusion_matrix",
                                       "decision_curve")} <= artifacts("evaluate", "plots")
    assert {"subgroups.json", "explanation.json"} <= artifacts("evaluate")
    # MLflow 3's own records: the UI opens the model-training view; runs carry the
    # standard tags; evaluate's metrics belong to the logged model and its test dataset.
    experiment = store.client.get_experiment(store.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    for child in children:
        assert {"mlflow.user", "mlflow.source.name", "mlflow.source.type"} <= set(child.data.tags), child.data.tags
    contexts = {d.dataset.name: {t.value for t in d.tags if t.key == "mlflow.data.context"}
                for d in by_step["evaluate"].inputs.dataset_inputs}
    assert contexts == {"train": {"training"}, "val": {"validation"}, "test": {"testing"}}
    model_id = by_step["train"].data.tags["pipeline.model_uri"].rsplit("/", 1)[-1]
    import mlflow
    mlflow.set_tracking_uri(store.tracking_uri)
    found = mlflow.search_logged_models(experiment_ids=[store.experiment_id],
                                        filter_string="metrics.test_roc_auc > 0.5", output_format="list")
    assert [m.model_id for m in found] == [model_id]
    assert found[0].name == "LogisticRegression"  # the Models tab names the model family
    linked = {m.key: m for m in found[0].metrics}
    assert {"cv_roc_auc_mean", "test_roc_auc", "test_brier"} <= set(linked)
    assert linked["test_roc_auc"].dataset_name == "test" and linked["test_roc_auc"].value == \
        by_step["evaluate"].data.metrics["test_roc_auc"]
    assert "eda_report.html" in artifacts("eda")
    assert len(artifacts("eda", "plots")) == 4

    raw = pd.read_parquet(store.client.download_artifacts(by_step["ingest"].info.run_id, "data/raw.parquet",
                                                          str(store.root)))
    assert raw.shape == (303, 15)  # 13 features, the label and the site
    assert set(raw["site"]) == {"cleveland"}
    assert by_step["ingest"].inputs.dataset_inputs[0].dataset.digest

    evaluation = by_step["evaluate"].data
    for metric in ("test_roc_auc", "test_pr_auc", "test_accuracy", "test_precision", "test_recall", "test_f1",
                   "test_brier", "test_log_loss", "cv_roc_auc_ci_low", "cv_roc_auc_ci_high"):
        assert metric in evaluation.metrics
    assert evaluation.tags["validation.status"] == "VALIDATED"
    # The bar for the default model on the real file: discrimination, and calibrated
    # probabilities (measured on the out-of-fold predictions, with an interval), reported by sex.
    metrics = evaluation.metrics
    assert metrics["cv_roc_auc_mean"] >= 0.90
    assert 0.8 <= metrics["cv_calibration_slope"] <= 1.2
    assert metrics["cv_calibration_slope_ci_low"] < metrics["cv_calibration_slope"] \
        < metrics["cv_calibration_slope_ci_high"]
    for sex in ("sex_0", "sex_1"):
        for name in ("roc_auc", "calibration_slope", "sensitivity"):
            assert metrics[f"cv_{name}_{sex}_ci_low"] <= metrics[f"cv_{name}_{sex}"] \
                <= metrics[f"cv_{name}_{sex}_ci_high"]
    assert metrics["cv_rows_sex_0"] + metrics["cv_rows_sex_1"] == 242  # train + val

    champion = store.client.get_model_version_by_alias("heart-disease", "champion")
    assert str(champion.version) == "1"
    assert champion.tags["decision"] == "champion"
    assert str(store.client.get_model_version_by_alias("heart-disease", "challenger").version) == "1"
    assert champion.run_id == by_step["train"].info.run_id

    # Every step and the pipeline have a card that tells what happened.
    for step, child in by_step.items():
        text = store.card(child.info.run_id)
        assert f"Step card: {step}" in text and child.info.run_id in text and "Cache key" in text
        assert child.data.tags["pipeline.cache_key"] in text
    assert "roc curve" in store.card(by_step["evaluate"].info.run_id)
    assert by_step["transform"].info.run_id in store.card(by_step["train"].info.run_id)  # its input
    pipeline_text = store.card(parent.info.run_id)
    assert "7 step(s) ran, 0 reused" in pipeline_text and "v1 champion" in pipeline_text
    for step, child in by_step.items():  # each step's card travels inside the pipeline's
        assert f"Step card: {step}" in pipeline_text and child.data.tags["pipeline.cache_key"] in pipeline_text

    # Every registered version carries a model card, linked from its description.
    register_run = by_step["register"].info.run_id
    assert {"model_card.md", "model_card.html"} <= artifacts("register")
    assert champion.tags["model_card"] == f"runs:/{register_run}/model_card.md"  # portable, not a local path
    assert champion.description.startswith("**champion: ") and "## Performance" in champion.description
    assert f"`runs:/{register_run}/model_card.md`" in champion.description
    assert "Not for clinical use" in champion.description
    # The registry's version page shows no input schema (engine/logged_model.py): the
    # description lists the 13 inputs and says why.
    inputs = champion.description.split("## Inputs", 1)[1]
    assert "no input schema" in inputs
    for feature in ("age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak",
                    "slope", "ca", "thal"):
        assert f"\n| {feature} | " in inputs, feature
    card = open(store.client.download_artifacts(register_run, "model_card.md", str(store.root))).read()
    threshold = by_step["train"].data.metrics["decision_threshold"]
    for text in ("Not for clinical use", "cross-validated mean [95 % interval]", f"at least **{threshold:.3f}**",
                 "missed patients", "Known limitations", "Sex imbalance", "code in [1, 2, 3, 4]",
                 "mlflow run . -e main", "cleveland `a74b7efa", f"slope **{metrics['cv_calibration_slope']:.2f}**",
                 "## Subgroups", "| sex = 0 (female) | 77 |", "## What drives the answers",
                 "![What drives the answers](plots/feature_contributions.png)"):
        assert text in card, text
    assert "plots/feature_contributions.png" in artifacts("register", "plots")
    html_card = open(store.client.download_artifacts(register_run, "model_card.html", str(store.root))).read()
    assert html_card.startswith("<!doctype html>") and "<table>" in html_card and "Known limitations" in html_card


def test_the_main_run_carries_the_pipelines_results_and_a_name_that_says_what_it_was(store):
    """What the runs table shows of a `main`, without expanding it: the launcher's run
    (`mlflow run` named it at random) is named after the pipeline, with the groups and
    overrides that defined it as params and evaluate's headline metrics and verdict."""
    parent = latest_main(store)
    assert parent.info.run_name == "main · model=logreg"
    assert parent.data.tags["mlflow.project.entryPoint"] == "main"  # the launcher's run itself
    assert {"model": "logreg", "data": "uci"}.items() <= parent.data.params.items()
    evaluation = store.client.get_run(parent.data.tags["pipeline.evaluate.run_id"])
    for metric in ("cv_roc_auc_mean", "cv_roc_auc_ci_low", "cv_roc_auc_ci_high", "test_roc_auc", "test_brier"):
        assert parent.data.metrics[metric] == evaluation.data.metrics[metric], metric
    assert parent.data.tags["validation.status"] == "VALIDATED"
    assert parent.data.tags["register.decision"] == "v1 champion"
    # And the experiment shares the runs table's columns that show them (tools/ui.py's address).
    view = json.loads(store.client.get_experiment(store.experiment_id).tags["mlflow.sharedViewState.pipelines"])
    assert {"metrics.`cv_roc_auc_mean`", "metrics.`test_roc_auc`", "params.`model`",
            "tags.`register.decision`"} <= set(view["selectedColumns"])


def test_second_run_reuses_every_step(store):
    before = step_run_count(store)
    result = store.mlflow_run("main")
    assert statuses(latest_main(store)) == {step: "reused" for step in STEP_ORDER}
    assert step_run_count(store) == before
    assert result.stdout.count(": reused run ") == len(STEP_ORDER)  # one progress line per step
    assert "0 step(s) ran, 7 reused" in store.card(latest_main(store).info.run_id)
    assert store.registry_state()["heart-disease"]["versions"] == [1]


def test_changing_a_train_hyperparameter_reruns_train_evaluate_register_only(store):
    # Evaluate runs anyway (its input is new): the quick one will do from here on.
    store.mlflow_run("main", f"model.C=0.3 {QUICK_EVALUATE}")
    assert latest_main(store).info.run_name == f"main · model=logreg model.C=0.3 {QUICK_EVALUATE}"
    assert latest_main(store).data.params["model.C"] == "0.3"
    assert statuses(latest_main(store)) == {
        "ingest": "reused", "eda": "reused", "split": "reused", "transform": "reused",
        "train": "ran", "evaluate": "ran", "register": "ran",
    }
    state = store.registry_state()["heart-disease"]
    assert state["versions"] == [1, 2]
    assert state["aliases"]["challenger"] == "2"
    version = store.client.get_model_version("heart-disease", "2")
    assert version.tags["decision"] in ("champion", "challenger") and version.tags["decision_reason"]


def test_force_all_reruns_every_step(store):
    store.steps("main", "force=[all]", QUICK_EVALUATE)
    assert statuses(latest_main(store)) == {step: "ran" for step in STEP_ORDER}
    assert latest_main(store).info.run_name == f"main · model=logreg {QUICK_EVALUATE}"  # force= says how, not what


# Two entry points through `mlflow run` (the launcher's run becomes the step run); the
# others by the arguments MLproject declares for them (tests/test_project_files.py checks
# they all have that form), in this process: the launcher's and Python's start-up once less.
THROUGH_MLFLOW_RUN = ("ingest", "register")


def test_each_entry_point_runs_on_its_own(store):
    for step in STEP_ORDER:
        if step in THROUGH_MLFLOW_RUN:
            result = store.mlflow_run(step, f"force=[{step}] {QUICK_EVALUATE}")
        else:
            result = store.in_process(f"steps.{step}", "--overrides", f"force=[{step}] {QUICK_EVALUATE}",
                                      "--profile", "local")
        assert f"{step}: ran run" in result.stdout, result.stdout + result.stderr
        run_id = result.stdout.split(f"{step}: ran run ")[1].split()[0]
        run = store.client.get_run(run_id)
        assert run.data.tags["pipeline.step"] == step
        if step in THROUGH_MLFLOW_RUN:  # the run `mlflow run` made is the step run: no second run
            assert run.data.tags.get("mlflow.project.entryPoint") == step
        if step != "ingest":
            assert any(tag.startswith("pipeline.input.") for tag in run.data.tags)


def test_standalone_step_is_reused_when_nothing_changed(store):
    result = store.mlflow_run("split")
    assert "split: reused run" in result.stdout
    launcher = store.client.search_runs([store.experiment_id], "tags.`pipeline.reused_run_id` != ''",
                                        order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert launcher.info.run_name == "split · reused"


def test_overrides_with_spaces_commas_and_quotes_arrive_intact(store):
    criteria = ["cv_roc_auc_mean >= 0.5", "test_roc_auc > 0.25"]
    overrides = f"""evaluate.criteria='{json.dumps(criteria)}' 'force=[evaluate]' {QUICK_EVALUATE}"""
    result = store.mlflow_run("evaluate", overrides)
    run_id = result.stdout.split("evaluate: ran run ")[1].split()[0]
    run = store.client.get_run(run_id)
    assert run.data.params["evaluate.criteria"] == str(criteria)
    reasons = run.data.tags["validation.reasons"].split("; ")
    assert [r.split(" = ")[0] for r in reasons] == ["cv_roc_auc_mean", "test_roc_auc"]


def test_model_flavour_and_params_from_a_different_group(store):
    result = store.mlflow_run("train", "model=random_forest model.n_estimators=40 model.max_depth=3")
    run_id = result.stdout.split("train: ran run ")[1].split()[0]
    params = store.client.get_run(run_id).data.params
    assert params["model._target_"] == "sklearn.ensemble.RandomForestClassifier"
    assert params["model.n_estimators"] == "40" and params["model.max_depth"] == "3"


def test_leaderboard_ranks_every_trained_model(store):
    result = store.in_process("tools.leaderboard")
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["train", "run", "model"]
    rows = lines[2:]
    trained = {r.info.run_id for r in store.runs("train")}
    evaluated = {r.data.tags["pipeline.input.train"] for r in store.runs("evaluate")}
    assert {row.split()[0] for row in rows} == trained & evaluated
    scores = [float(row.split("[")[0].split()[-1]) for row in rows]
    assert scores == sorted(scores, reverse=True)
    assert any("@champion" in row for row in rows) and all("LogisticRegression" in row for row in rows)

    parent = latest_main(store).info.run_id
    only = store.in_process("tools.leaderboard", "--parent", parent).stdout.strip().splitlines()[2:]
    assert [row.split()[0] for row in only] == [latest_main(store).data.tags["pipeline.train.run_id"]]
