"""Workers that share one Optuna study through its storage.

Each worker loops: fail the trials whose heartbeat stopped (Optuna's retry callback queues
them again), take a queued retry or, while the study has fewer than n_trials trials, a new
trial; launch up to n_jobs of them at once; tell the study each value. A worker whose
study has all its trials waits while other workers' trials still run, since one of those
workers may die and leave a retry.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import socket
import threading
import time
import warnings
import zlib
from typing import Any, Optional, Sequence

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.optuna_study_sweeper import STUDY_ENV, TRIAL_ENV
from hydra_plugins.optuna_study_sweeper.space import search_space
from omegaconf import DictConfig
from optuna.distributions import BaseDistribution
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, Trial, TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError

from engine.locks import file_lock

log = logging.getLogger(__name__)
SKIPPED = "skipped"  # user attr of a trial asked for after the study had all its trials: never run
RETRY_OF = "failed_trial"  # system attr of a retry (Optuna's retry callback): the trial it stands in for


def counts_towards_n_trials(trial: FrozenTrial) -> bool:
    """n_trials counts trials, not attempts: a retry stands in for the trial whose worker
    died, and a skipped trial never ran."""
    return RETRY_OF not in trial.system_attrs and SKIPPED not in trial.user_attrs


def safe_url(url: str) -> str:
    """A storage URL fit for logs and params: any password masked."""
    return make_url(url).render_as_string(hide_password=True)


def check_study(storage: Optional[str], study_name: Optional[str]) -> None:
    if storage and not study_name:
        raise ValueError("hydra.sweeper.storage is set but hydra.sweeper.study_name is not: name the study, "
                         "so that other workers and a re-run of this command join it")


def one_asker_at_a_time(url: Optional[str]) -> contextlib.AbstractContextManager[None]:
    """Optuna claims a queued trial (a retry) by reading it WAITING, then setting it
    RUNNING. SQLite has no row locks, so two workers can both claim the same retry (seen
    under load: two runs of one trial). Workers sharing a SQLite study ask one at a time,
    under a lock beside the file that the system releases if a worker dies. Servers with
    row locks (PostgreSQL, MySQL) need none."""
    database = make_url(url).database if url and make_url(url).get_backend_name() == "sqlite" else None
    if not database or database == ":memory:":
        return contextlib.nullcontext()
    return file_lock(f"{database}.ask.lock")


def worker_seed(seed: Optional[int], shared: bool) -> Optional[int]:
    """Workers of a shared study seeded alike would draw the same values: each mixes its
    host and pid into the seed. A study in memory has one worker and keeps the seed as given."""
    if seed is None or not shared:
        return seed
    return (seed + zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())) % 2**32


class Heartbeat:
    """Records the trials' heartbeats every `interval` seconds while the launcher runs them,
    as Study.optimize does for its own trials: a worker that dies stops beating, and the
    others fail its trials once the grace period has passed."""

    def __init__(self, storage: Optional[RDBStorage], trials: Sequence[Trial], interval: int) -> None:
        self.storage, self.interval = storage, interval
        self.trial_ids = [trial._trial_id for trial in trials]  # Optuna keeps the storage's id private
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="optuna-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        if self.storage is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join()

    def _beat(self) -> None:
        while not self.stopped.wait(self.interval):
            for trial_id in self.trial_ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as err:  # a missed beat matters only once the grace period has passed
                    log.warning(f"heartbeat of trial id {trial_id} not recorded: {type(err).__name__}: {err}")


class OptunaStudySweeper(Sweeper):
    def __init__(self, sampler: functools.partial, direction: str, storage: Optional[str], study_name: Optional[str],
                 n_trials: int, n_jobs: int, heartbeat_interval: int, grace_period: int, max_retry: int,
                 params: Optional[DictConfig]) -> None:
        check_study(storage, study_name)
        self.sampler, self.direction, self.study_name = sampler, direction, study_name
        self.n_trials, self.n_jobs, self.params = n_trials, n_jobs, dict(params or {})
        self.url, self.max_retry = storage, max_retry
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.storage: Optional[RDBStorage] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)

    def sweep(self, arguments: list[str]) -> None:
        space, fixed = search_space(self.params, arguments)
        with warnings.catch_warnings():
            # Heartbeats and the retry callback are marked experimental, and Optuna warns that
            # heartbeats are meant for Study.optimize: this sweeper records them as optimize does.
            warnings.simplefilter("ignore", ExperimentalWarning)
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
            study = self.load_study()
            os.environ[STUDY_ENV] = study.study_name  # the jobs tag their runs with it
            job_idx = 0
            while batch := self.next_batch(study, space):
                overrides = [(*[f"{key}={value}" for key, value in trial.params.items()], *fixed,
                              f"++hydra.job.env_set.{TRIAL_ENV}={trial.number}") for trial in batch]
                with Heartbeat(self.storage, batch, self.heartbeat_interval):
                    returns = self.launcher.launch(overrides, initial_job_idx=job_idx)
                job_idx += len(returns)
                self.tell(study, batch, returns)
        finished = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        log.info(f"Study {study.study_name}: this worker ran {job_idx} trial(s); the study has {len(finished)} "
                 f"complete of {self.n_trials}")
        if finished:
            log.info(f"Best so far: trial {study.best_trial.number}, value {study.best_value}, {study.best_params}")

    def load_study(self) -> optuna.Study:
        if self.url:
            self.storage = self.open_storage()
        seed = worker_seed(self.sampler.keywords.get("seed"), shared=self.storage is not None)
        study = optuna.create_study(storage=self.storage, sampler=self.sampler(seed=seed), study_name=self.study_name,
                                    direction=self.direction, load_if_exists=True)
        counted = sum(map(counts_towards_n_trials, study.get_trials(deepcopy=False)))
        where = safe_url(self.url) if self.url else "in memory"
        log.info(f"Study {study.study_name} ({where}): {counted} of {self.n_trials} trials asked for so far; "
                 f"{type(study.sampler).__name__} seed {seed}")
        return study

    def open_storage(self, attempts: int = 5) -> RDBStorage:
        """The study's database, its tables created by whichever worker comes first: workers
        started at once on a new database race to create them, and the losers try again."""
        for attempt in range(1, attempts + 1):
            try:
                return RDBStorage(self.url, heartbeat_interval=self.heartbeat_interval, grace_period=self.grace_period,
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(self.max_retry))
            except (OperationalError, IntegrityError) as err:
                if attempt == attempts or "already exists" not in str(err) and "UNIQUE" not in str(err).upper():
                    raise
                time.sleep(0.2 * attempt)

    def next_batch(self, study: optuna.Study, space: dict[str, BaseDistribution]) -> list[Trial]:
        batch: list[Trial] = []
        while len(batch) < self.n_jobs and (trial := self.ask(study, space, wait=not batch)):
            batch.append(trial)
        return batch

    def ask(self, study: optuna.Study, space: dict[str, BaseDistribution], wait: bool) -> Optional[Trial]:
        """A trial to run: a queued retry, or a new trial while the study has fewer than
        n_trials; None once it has them all. With `wait`, as long as other workers' trials
        still run, wait for them and look again."""
        waiting_for: list[int] = []
        while True:
            fail_stale_trials(study)  # a dead worker's trials: FAILED, and queued again if retries are left
            trials = study.get_trials(deepcopy=False)
            queued = any(t.state == TrialState.WAITING for t in trials)
            running = [t.number for t in trials if t.state == TrialState.RUNNING]
            if queued or sum(map(counts_towards_n_trials, trials)) < self.n_trials:
                with one_asker_at_a_time(self.url):
                    trial = study.ask(fixed_distributions=space)  # takes a queued trial first
                    if self.storage is not None:
                        self.storage.record_heartbeat(trial._trial_id)
                if self.within_n_trials(study, trial):
                    return trial
            elif wait and running:
                if running != waiting_for:  # say so once: a trial that never beat would be waited for forever
                    log.info(f"Study {study.study_name} has its {self.n_trials} trials; waiting for trial(s) "
                             f"{running}, running elsewhere, in case a worker dies and leaves a retry")
                    waiting_for = running
                time.sleep(self.heartbeat_interval)
            else:
                return None

    def within_n_trials(self, study: optuna.Study, trial: Trial) -> bool:
        """Two workers may both see room for one more trial and ask at once: the one whose
        trial number is later finds n_trials trials before its own, fails it unrun (user
        attr `skipped`) and looks again."""
        trials = study.get_trials(deepcopy=False)
        own = next(t for t in trials if t.number == trial.number)
        earlier = sum(1 for t in trials if t.number < trial.number and counts_towards_n_trials(t))
        if not counts_towards_n_trials(own) or earlier < self.n_trials:
            return True
        trial.set_user_attr(SKIPPED, f"the study had its {self.n_trials} trials when this one was asked for")
        study.tell(trial, state=TrialState.FAIL)
        return False

    def tell(self, study: optuna.Study, batch: list[Trial], returns: Sequence[JobReturn]) -> None:
        """The value each job returned; NaN or an exception fails its trial. A job that
        raised stops the sweep once the whole batch is told."""
        for trial, result in zip(batch, returns):
            try:
                value = float(result.return_value)
            except Exception:
                value = math.nan
            state = TrialState.FAIL if math.isnan(value) else TrialState.COMPLETE
            told = study.tell(trial, None if state == TrialState.FAIL else value, state=state, skip_if_finished=True)
            if told.state != state:
                log.warning(f"Trial {trial.number} ended {state.name}, but the study had marked it {told.state.name} "
                            "already: its heartbeat stopped for longer than the grace period, so another worker "
                            "may run it again")
        for result in returns:
            result.return_value  # noqa: B018  (raises the job's exception, if it raised)
