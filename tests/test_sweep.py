"""A sweep through `mlflow run . -e sweep`: one parent, one child per trial, upstream
steps from the cache, a leaderboard on the parent."""

import pytest

pytestmark = pytest.mark.e2e


def test_sweep_runs_trials_under_one_parent_on_cached_upstream(store):
    store.steps("main")  # upstream steps are cached now
    upstream_before = {s: len(store.runs(s)) for s in ("ingest", "split", "transform")}

    result = store.mlflow_run("sweep", "model.C=0.03,0.1,0.3 'evaluate.criteria=[\"cv_roc_auc_mean >= 0.5\"]'")
    assert "3 of 3 trial(s) finished, 3 model(s) ranked" in result.stdout

    assert {s: len(store.runs(s)) for s in ("ingest", "split", "transform")} == upstream_before
    client = store.client
    sweep = client.search_runs([store.experiment_id], "tags.`pipeline.role` = 'sweep'")[0]
    assert sweep.info.status == "FINISHED" and sweep.data.tags["mlflow.project.entryPoint"] == "sweep"
    assert sweep.data.params["sweep.space.model.C"] == "0.03,0.1,0.3"
    trials = client.search_runs([store.experiment_id], f"tags.`mlflow.parentRunId` = '{sweep.info.run_id}' and "
                                "tags.`pipeline.role` = 'trial'")
    assert sorted(t.data.tags["mlflow.runName"] for t in trials) == ["logreg C=0.03", "logreg C=0.1", "logreg C=0.3"]
    for trial in trials:
        children = client.search_runs([store.experiment_id], f"tags.`mlflow.parentRunId` = '{trial.info.run_id}'")
        ran = sorted(c.data.tags["pipeline.step"] for c in children)
        # C=0.1 is the default: main trained it already, so that trial reuses the cached train run.
        reused = trial.data.tags["mlflow.runName"] == "logreg C=0.1"
        assert ran == (["evaluate"] if reused else ["evaluate", "train"])
        assert trial.data.tags["pipeline.train.status"] == ("reused" if reused else "ran")
        assert "cv_roc_auc_mean" in trial.data.metrics and "model.C" in trial.data.params

    artifacts = {a.path for a in client.list_artifacts(sweep.info.run_id)}
    assert {"leaderboard.csv", "leaderboard.html", "card.html"} <= artifacts
    leaderboard_page = store.card(sweep.info.run_id, "leaderboard.html")
    assert all(t.data.tags["pipeline.train.run_id"] in leaderboard_page for t in trials)
    card = store.card(sweep.info.run_id)
    assert "3 of 3 trial(s) finished" in card and "0 failed" in card and "BasicSweeper" in card
    for step in ("ingest", "split", "transform"):  # the shared upstream runs, reused from main
        assert store.runs(step)[0].info.run_id in card
    raw = open(client.download_artifacts(sweep.info.run_id, "card.html", str(store.root / "raw"))).read()
    for trial in trials:  # each ranked trial links to its evaluate card
        assert f"{trial.data.tags['pipeline.evaluate.run_id']}/artifacts/card.html" in raw
    best = max(trials, key=lambda t: t.data.metrics["cv_roc_auc_mean"])
    assert sweep.data.metrics["best_cv_roc_auc_mean"] == best.data.metrics["cv_roc_auc_mean"]
    assert sweep.data.params["best.model.C"] == best.data.params["model.C"]

    ranked = store.steps("leaderboard", "--parent", sweep.info.run_id).stdout.strip().splitlines()[2:]
    assert len(ranked) == 3
    assert store.steps("leaderboard", "--sweep").stdout == store.steps("leaderboard", "--sweep", sweep.info.run_id).stdout
    scores = [float(line.split()[4]) for line in ranked]  # train run, model, C=..., max_iter=..., cv roc_auc
    assert scores == sorted(scores, reverse=True)


def test_parallel_sweep_on_sqlite_records_every_trial(store):
    """8 trials on 2 joblib worker processes writing to one SQLite store: none may be lost
    to "database is locked"."""
    values = "0.01,0.02,0.04,0.06,0.08,0.15,0.25,0.5"
    result = store.mlflow_run("sweep", f"hydra/launcher=joblib hydra.launcher.n_jobs=2 model.C={values} "
                                       "evaluate.cv_repeats=2")
    assert "database is locked" not in result.stdout + result.stderr
    assert "8 of 8 trial(s) finished, 8 model(s) ranked" in result.stdout
    client = store.client
    sweep = client.search_runs([store.experiment_id], "tags.`pipeline.role` = 'sweep'")[0]
    trials = client.search_runs([store.experiment_id], f"tags.`mlflow.parentRunId` = '{sweep.info.run_id}' and "
                                "tags.`pipeline.role` = 'trial'")
    assert sorted(t.data.tags["mlflow.runName"] for t in trials) == sorted(f"logreg C={v}" for v in values.split(","))
    assert all(t.info.status == "FINISHED" and "cv_roc_auc_mean" in t.data.metrics for t in trials)
    assert len(store.runs("ingest")) == 1  # the trials shared one upstream run, however parallel


def test_optuna_search_from_conf_records_its_trials_and_space(store):
    """`search=logreg`: Optuna's TPE sampler draws model.C from the space in
    conf/search/logreg.yaml; trials run two at a time on the joblib launcher."""
    result = store.mlflow_run("sweep", "search=logreg hydra.sweeper.n_trials=4 evaluate.cv_repeats=2 "
                                       "sweep.register_best=true")
    assert "4 of 4 trial(s) finished" in result.stdout
    client = store.client
    sweep = client.search_runs([store.experiment_id], "tags.`pipeline.role` = 'sweep'")[0]
    assert sweep.data.params["sweep.sweeper"] == "OptunaSweeper"
    assert sweep.data.params["sweep.launcher"] == "JoblibLauncher"
    assert sweep.data.params["sweep.space.model.C"] == "tag(log, interval(0.001, 10.0))"
    assert sweep.data.params["sweep.sampler"] == "TPESampler" and sweep.data.params["sweep.n_trials"] == "4"
    trials = client.search_runs([store.experiment_id], f"tags.`mlflow.parentRunId` = '{sweep.info.run_id}' and "
                                "tags.`pipeline.role` = 'trial'")
    assert len(trials) == 4 and all(t.info.status == "FINISHED" for t in trials)
    values = [float(t.data.params["model.C"]) for t in trials]
    assert all(0.001 <= c <= 10.0 for c in values) and len(set(values)) == 4  # drawn, not the default
    for trial, c in zip(trials, values):
        assert trial.data.tags["mlflow.runName"] == f"logreg C={c:.4g}"
    best = max(trials, key=lambda t: t.data.metrics["cv_roc_auc_mean"])
    assert sweep.data.params["best.model.C"] == best.data.params["model.C"]
    assert "OptunaSweeper" in store.card(sweep.info.run_id)

    # The best trial went through register, and its model card rebuilds that trial's model.
    version = client.get_model_version_by_alias("heart-disease", "champion")
    assert version.run_id == best.data.tags["pipeline.train.run_id"]
    register = client.search_runs([store.experiment_id], "tags.`pipeline.step` = 'register'")[0]
    model_card = open(client.download_artifacts(register.info.run_id, "model_card.md", str(store.root))).read()
    assert f"-P overrides='model=logreg model.C={best.data.params['model.C']} evaluate.cv_repeats=2'" in model_card


def test_a_failing_trial_costs_the_others_nothing_and_fails_the_sweep(store):
    """`python -m` (not `mlflow run`, which would mark its own launcher run FAILED anyway)."""
    result = store.steps("sweep", "model.C=-1,0.1", check=False)
    assert result.returncode == 1 and "trial logreg C=-1 FAILED" in result.stderr
    client = store.client
    sweep = client.search_runs([store.experiment_id], "tags.`pipeline.role` = 'sweep'")[0]
    assert sweep.info.status == "FAILED"
    trials = {t.data.tags["mlflow.runName"]: t for t in client.search_runs(
        [store.experiment_id], f"tags.`mlflow.parentRunId` = '{sweep.info.run_id}' and tags.`pipeline.role` = 'trial'")}
    assert trials["logreg C=-1"].info.status == "FAILED"
    assert "'C' parameter of LogisticRegression" in trials["logreg C=-1"].data.tags["pipeline.error"]
    assert trials["logreg C=0.1"].info.status == "FINISHED"  # ran after the failure, and counted
    leaderboard = open(client.download_artifacts(sweep.info.run_id, "leaderboard.csv", str(store.root))).read()
    assert len(leaderboard.strip().splitlines()) == 2 and "C=0.1" in leaderboard
    card = store.card(sweep.info.run_id)
    assert "1 of 2 trial(s) finished" in card and "Failed trials" in card and "logreg C=-1" in card


@pytest.mark.parametrize("overrides, message", [
    (["search=logreg", "sweep.metric=test_brier"], "add hydra.sweeper.direction=minimize"),
    (["model.C=0.1,1", "data.url=/no/such/processed.cleveland.data"], "/no/such/processed.cleveland.data"),
])
def test_a_sweep_that_cannot_start_stops_before_any_trial(store, overrides, message):
    """Hydra only warns when a callback raises; the sweep must stop with the reason instead."""
    result = store.steps("sweep", *overrides, check=False)
    assert result.returncode == 1 and message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    client = store.client
    assert not client.search_runs([store.experiment_id], "tags.`pipeline.role` = 'trial'")
    # The direction is checked before the sweep run exists; ingest fails inside it.
    sweeps = client.search_runs([store.experiment_id], "tags.`pipeline.role` = 'sweep'")
    assert [r.info.status for r in sweeps] == ([] if "direction" in message else ["FAILED"])
