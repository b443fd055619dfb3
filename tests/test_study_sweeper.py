"""The Optuna study sweeper's rules, on a real SQLite study and no pipeline: n_trials counts
trials in all, two workers asking for the last trial at once run it once, and a trial whose
worker stopped beating is failed and run again with the same params. (tests/test_sweep.py
runs the whole thing: three worker processes, one killed with SIGKILL.)"""

import functools
import time

import optuna
import pytest
from hydra_plugins.optuna_study_sweeper.sweeper import Heartbeat, OptunaStudySweeper
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

# The sweeper silences these inside its sweep(); the tests call its parts directly.
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning",
                                        "ignore:Heartbeat of storage is supposed to be used with Study.optimize")
SPACE = {"model.C": FloatDistribution(0.001, 10, log=True)}


def worker(url: str, n_trials: int) -> tuple[OptunaStudySweeper, optuna.Study]:
    sweeper = OptunaStudySweeper(functools.partial(optuna.samplers.TPESampler, seed=0), "maximize", url, "s",
                                 n_trials=n_trials, n_jobs=1, heartbeat_interval=1, grace_period=1, max_retry=1,
                                 params=None)
    return sweeper, sweeper.load_study()


def test_two_workers_asking_for_the_last_trial_at_once_run_it_once(tmp_path):
    url = f"sqlite:///{tmp_path}/study.db"
    (first, study_first), (second, study_second) = worker(url, 1), worker(url, 1)
    # Both saw room for one more trial, then asked at the same moment.
    mine, theirs = study_first.ask(SPACE), study_second.ask(SPACE)
    assert first.within_n_trials(study_first, mine)
    assert not second.within_n_trials(study_second, theirs)
    skipped = study_second.trials[theirs.number]
    assert skipped.state == TrialState.FAIL and "skipped" in skipped.user_attrs
    study_first.tell(mine, 0.9)
    assert second.next_batch(study_second, SPACE) == []  # the study has its one trial
    assert [t.state for t in study_second.trials] == [TrialState.COMPLETE, TrialState.FAIL]


def test_a_trial_whose_worker_stopped_beating_is_run_again_with_its_params(tmp_path):
    url = f"sqlite:///{tmp_path}/study.db"
    dead, study_dead = worker(url, 2)
    [lost] = dead.next_batch(study_dead, SPACE)
    with Heartbeat(dead.storage, [lost], interval=1):
        time.sleep(1.5)  # it beat, then its worker died
    survivor, study = worker(url, 2)
    time.sleep(2)  # past the grace period
    ran = []
    while batch := survivor.next_batch(study, SPACE):
        for trial in batch:
            ran.append(trial.number)
            study.tell(trial, 0.5)
    trials = study.trials
    assert trials[lost.number].state == TrialState.FAIL
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == lost.number)
    assert retry.params == lost.params and retry.state == TrialState.COMPLETE
    # Two trials in all: the retry stands in for the lost one.
    assert sorted(ran) == [t.number for t in trials if t.state == TrialState.COMPLETE] and len(ran) == 2


def test_a_study_in_memory_keeps_its_seed_and_stops_at_n_trials():
    n_trials, draws = 3, []
    for _ in range(2):
        sweeper = OptunaStudySweeper(functools.partial(optuna.samplers.TPESampler, seed=0), "maximize", None, None,
                                     n_trials=n_trials, n_jobs=2, heartbeat_interval=1, grace_period=1, max_retry=1,
                                     params=None)
        study, values = sweeper.load_study(), []
        while batch := sweeper.next_batch(study, SPACE):
            for trial in batch:
                values.append(trial.params["model.C"])
                study.tell(trial, 0.5)
        draws.append(values)
    assert len(draws[0]) == n_trials and draws[0] == draws[1]  # one worker in memory: reproducible
