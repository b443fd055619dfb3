"""A sweep through `mlflow run . -e sweep`: one parent, one child per trial, upstream
steps from the cache, a leaderboard on the parent; and an Optuna study that several worker
processes share, one of them killed mid-trial."""

import signal
import time

import optuna
import pytest

from tests.conftest import QUICK_EVALUATE, make_store
from tests.forked import Command

pytestmark = pytest.mark.e2e


def test_sweep_runs_trials_under_one_parent_on_cached_upstream(trained):
    store = trained  # main ran there: the upstream steps are cached
    upstream_before = {s: len(store.runs(s)) for s in ("ingest", "split", "transform")}

    result = store.mlflow_run("sweep", f"model.C=0.03,0.1,0.3 {QUICK_EVALUATE} "
                                       "'evaluate.criteria=[\"cv_roc_auc_mean >= 0.5\"]'")
    assert "3 of 3 trial(s) finished, 3 model(s) ranked" in result.stdout

    assert {s: len(store.runs(s)) for s in ("ingest", "split", "transform")} == upstream_before
    client = store.client
    sweep = client.search_runs([store.experiment_id], "tags.`pipeline.role` = 'sweep'")[0]
    assert sweep.info.status == "FINISHED" and sweep.data.tags["mlflow.project.entryPoint"] == "sweep"
    assert sweep.info.run_name == "sweep"  # not the name `mlflow run` made up
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
    assert card.count("Step card: evaluate") == 3  # each ranked model's evaluate card travels inside
    assert all(t.data.tags["pipeline.evaluate.run_id"] in card for t in trials)
    raw = open(client.download_artifacts(sweep.info.run_id, "card.html", str(store.root / "raw"))).read()
    # the best model's figures only: evaluate's five plots (decision curve included)
    assert raw.count("<img src='data:image/png") == 5
    best = max(trials, key=lambda t: t.data.metrics["cv_roc_auc_mean"])
    assert sweep.data.metrics["best_cv_roc_auc_mean"] == best.data.metrics["cv_roc_auc_mean"]
    assert sweep.data.params["best.model.C"] == best.data.params["model.C"]

    board = store.in_process("tools.leaderboard", "--parent", sweep.info.run_id).stdout
    header, _, *ranked = board.strip().splitlines()
    assert len(ranked) == 3
    assert (store.in_process("tools.leaderboard", "--sweep").stdout
            == store.in_process("tools.leaderboard", "--sweep", sweep.info.run_id).stdout)
    start = header.index("cv roc_auc")  # the params column holds several words
    scores = [float(line[start:].split()[0]) for line in ranked]
    assert scores == sorted(scores, reverse=True)


def test_optuna_search_from_conf_records_its_trials_and_space(trained):
    """`search=logreg`: Optuna's TPE sampler draws model.C from the space in
    conf/search/logreg.yaml; trials run two at a time on the joblib launcher, two worker
    processes writing to one SQLite store: none may be lost to "database is locked"."""
    store = trained
    ingests_before = len(store.runs("ingest"))
    result = store.mlflow_run("sweep", "search=logreg hydra.sweeper.n_trials=4 hydra.launcher.n_jobs=2 "
                                       "evaluate.cv_repeats=2 sweep.register_best=true")
    assert "database is locked" not in result.stdout + result.stderr
    assert "4 of 4 trial(s) finished" in result.stdout
    assert len(store.runs("ingest")) == ingests_before  # the trials shared one upstream run, however parallel
    client = store.client
    sweep = client.search_runs([store.experiment_id], "tags.`pipeline.role` = 'sweep'")[0]
    assert sweep.data.params["sweep.sweeper"] == "OptunaStudySweeper"
    assert sweep.data.params["sweep.storage"] == "in memory"
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
    assert "OptunaStudySweeper" in store.card(sweep.info.run_id)
    # An in-memory study still has a name: its trials carry it and their trial numbers.
    assert sorted(int(t.data.tags["sweep.trial_number"]) for t in trials) == [0, 1, 2, 3]
    assert len({t.data.tags["sweep.study"] for t in trials}) == 1

    # The best trial went through register (the challenger now; champion only if it beats
    # main's model), and its model card rebuilds that trial's model.
    version = client.get_model_version_by_alias("heart-disease", "challenger")
    assert version.run_id == best.data.tags["pipeline.train.run_id"]
    register = client.search_runs([store.experiment_id], "tags.`pipeline.step` = 'register'")[0]
    model_card = open(client.download_artifacts(register.info.run_id, "model_card.md", str(store.root))).read()
    assert f"-P overrides='model=logreg model.C={best.data.params['model.C']} evaluate.cv_repeats=2'" in model_card


def test_a_failing_trial_costs_the_others_nothing_and_fails_the_sweep(trained):
    """`python -m` (not `mlflow run`, which would mark its own launcher run FAILED anyway)."""
    store = trained
    result = store.tool("sweep", "model.C=-1,0.1", QUICK_EVALUATE, check=False)
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
    (["search=logreg", "hydra.sweeper.storage=sqlite:///study.db"], "hydra.sweeper.study_name is not"),
    (["model.C=0.1,1", "data.url=/no/such/processed.cleveland.data"], "/no/such/processed.cleveland.data"),
])
def test_a_sweep_that_cannot_start_stops_before_any_trial(store, overrides, message):
    """Hydra only warns when a callback raises; the sweep must stop with the reason instead."""
    result = store.tool("sweep", *overrides, check=False)
    assert result.returncode == 1 and message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    client = store.client
    assert not client.search_runs([store.experiment_id], "tags.`pipeline.role` = 'trial'")
    # The sweeper's settings are checked before the sweep run exists; ingest fails inside it.
    sweeps = client.search_runs([store.experiment_id], "tags.`pipeline.role` = 'sweep'")
    assert [r.info.status for r in sweeps] == ([] if "hydra.sweeper" in message else ["FAILED"])


# --------------------------------------------------------------------------- one study, many workers

N_TRIALS = 4


@pytest.fixture(scope="module")
def study_store(tmp_path_factory):
    """One store and one Optuna study (SQLite) for the worker tests below, which build on each other."""
    return make_store(tmp_path_factory.mktemp("study") / "store")


def worker(store, log_name: str, n_trials: int = N_TRIALS) -> Command:
    """`python -m tools.sweep search=logreg` joining study `s`; one trial at a time, heartbeats
    every second, silent for 10 s counts as dead."""
    return store.start("tools.sweep", "search=logreg", "evaluate.cv_repeats=2",
                       f"hydra.sweeper.storage=sqlite:///{store.root}/study.db", "hydra.sweeper.study_name=s",
                       f"hydra.sweeper.n_trials={n_trials}", "hydra.sweeper.n_jobs=1", "hydra/launcher=basic",
                       "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=10",
                       output=store.root / log_name)


def wait_for(condition, what: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def trial_runs(store, extra: str = ""):
    return store.client.search_runs([store.experiment_id], "tags.`pipeline.role` = 'trial'" + extra, max_results=1000)


def study(store) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=f"sqlite:///{store.root}/study.db")


def test_three_workers_share_one_study_and_a_killed_worker_loses_nothing(study_store):
    store = study_store
    first = worker(store, "worker-1.log")
    # Once the first trial runs, the upstream steps are cached: the others find them.
    wait_for(lambda: trial_runs(store), "the first worker's first trial")
    doomed, third = worker(store, "worker-2.log"), worker(store, "worker-3.log")
    running = wait_for(lambda: trial_runs(store, f" and tags.`pipeline.pid` = '{doomed.pid}' and "
                                                 "attributes.status = 'RUNNING'"), "a trial of the second worker")
    doomed.send_signal(signal.SIGKILL)
    assert doomed.wait() == -signal.SIGKILL
    for survivor, log in ((first, "worker-1.log"), (third, "worker-3.log")):
        assert survivor.wait(timeout=600) == 0, (store.root / log).read_text()[-3000:]

    killed_number = int(running[0].data.tags["sweep.trial_number"])
    trials = study(store).get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == N_TRIALS  # in all, over the three workers
    # The killed worker's trial: FAILED by its missing heartbeat, and run again by a survivor.
    killed = trials[killed_number]
    assert killed.state == optuna.trial.TrialState.FAIL
    retries = [t for t in complete if t.system_attrs.get("failed_trial") == killed_number]
    assert len(retries) == 1 and retries[0].params == killed.params
    # Nothing else failed; a trial asked for at the same moment as the last one is skipped unrun.
    others = [t for t in trials if t not in complete and t.number != killed_number]
    assert all("skipped" in t.user_attrs for t in others), [(t.number, t.state, t.user_attrs) for t in others]

    # MLflow: one FINISHED trial run per complete trial, from both survivors; the killed one KILLED.
    finished = trial_runs(store, " and attributes.status = 'FINISHED'")
    assert sorted(int(r.data.tags["sweep.trial_number"]) for r in finished) == sorted(t.number for t in complete)
    assert {r.data.tags["sweep.study"] for r in finished} == {"s"}
    assert {r.data.tags["pipeline.pid"] for r in finished} == {str(first.pid), str(third.pid)}
    assert store.client.get_run(running[0].info.run_id).info.status == "KILLED"
    by_number = {int(r.data.tags["sweep.trial_number"]): r for r in finished}
    assert float(by_number[retries[0].number].data.params["model.C"]) == killed.params["model.C"]
    for trial in complete:  # the study's values are the runs' metrics
        assert by_number[trial.number].data.metrics["cv_roc_auc_mean"] == pytest.approx(trial.value)

    # The leaderboard ranks the whole study, whichever worker ran each trial.
    header, _, *ranked = store.in_process("tools.leaderboard", "--study", "s").stdout.strip().splitlines()
    trained = {r.data.tags["pipeline.train.run_id"] for r in finished}
    assert sorted(line.split()[0] for line in ranked) == sorted(trained)
    # The params column holds several words: the score is read where its column starts.
    start = header.index("cv roc_auc")
    scores = [float(line[start:].split()[0]) for line in ranked]
    assert scores == sorted(scores, reverse=True)
    unknown = store.in_process("tools.leaderboard", "--study", "nope", check=False)
    assert unknown.returncode == 1 and "no trial runs of study 'nope'" in unknown.stderr


def test_rerunning_a_finished_study_adds_nothing_and_a_larger_n_trials_continues_it(study_store):
    store = study_store
    before = len(study(store).get_trials())
    again = worker(store, "rerun.log")
    assert again.wait(timeout=600) == 0, (store.root / "rerun.log").read_text()[-3000:]
    assert len(study(store).get_trials()) == before
    assert f"this worker ran 0 trial(s); the study has {N_TRIALS} complete of {N_TRIALS}" in (
        store.root / "rerun.log").read_text()

    more = worker(store, "more.log", n_trials=N_TRIALS + 1)
    assert more.wait(timeout=600) == 0, (store.root / "more.log").read_text()[-3000:]
    trials = study(store).get_trials()
    assert len(trials) == before + 1 and trials[-1].state == optuna.trial.TrialState.COMPLETE
    assert len(trial_runs(store, f" and tags.`sweep.trial_number` = '{trials[-1].number}'")) == 1
