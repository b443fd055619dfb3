"""sweep: a Hydra multirun of train + evaluate under one sweep parent run.

    mlflow run . -e sweep --env-manager local --experiment-name heart-disease \\
        -P overrides="model.C=0.03,0.1,0.3"
    python -m tools.sweep model=logreg,hist_gradient_boosting
    mlflow run . -e sweep ... -P overrides="search=logreg"   # Optuna: conf/search/logreg.yaml
    # one Optuna study, shared by every worker started so, on any machine:
    python -m tools.sweep search=logreg hydra.sweeper.storage=sqlite:///study.db hydra.sweeper.study_name=s1

Each trial is a child run of the sweep run, named after the values it sweeps, with
train and evaluate nested under it. ingest, split and transform come from the cache
(they run once if nothing is cached). When the multirun ends, the sweep run gets the
leaderboard (CSV and HTML), its card, the best trial's params and metrics, and
optionally the best trial goes through register (sweep.register_best=true). Trials of an
Optuna study carry its name and their trial number as tags, so the leaderboard can rank a
study that many workers ran (`python -m tools.leaderboard --study <name>`).
"""

from __future__ import annotations

import atexit
import functools
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME
from omegaconf import DictConfig

from engine import names
from engine.cards import decision_text, leaderboard_page, sweep_card
from engine.cli import adopt_launcher_run, launch, run_command
from engine.config import STEP_NAMES
from engine.config_checks import check_config
from engine.context import ArtifactCache, read_card
from engine.errors import PipelineError
from engine.fingerprint import step_view
from engine.results import StepResult
from engine.runner import FAILED, TrackedRun, config_params, end_run, execute
from engine.store import Tracking, connect
from steps.pipeline import STEPS
from tools.leaderboard import COLUMNS, leaderboard, lower_is_better, render, short

# Hydra finds sweepers in the `hydra_plugins` namespace package on sys.path: the project's
# Optuna study sweeper is tools/plugins/hydra_plugins/optuna_study_sweeper.
sys.path.insert(0, str(Path(__file__).resolve().parent / "plugins"))
from hydra_plugins.optuna_study_sweeper import STUDY_ENV, TRIAL_ENV  # noqa: E402
from hydra_plugins.optuna_study_sweeper.sweeper import check_study, safe_url  # noqa: E402

ENV_SWEEP_RUN = "HEART_SWEEP_RUN_ID"  # the sweep parent run, for the trials
ENV_SWEEP_KEYS = "HEART_SWEEP_KEYS"  # the config keys the sweep varies, which name the trials
UPSTREAM = ("ingest", "split", "transform")
# Each trial run carries these evaluate metrics, so the compare view lines trials up (and
# `main` runs carry the same ones).
TRIAL_METRICS = names.HEADLINE_METRICS


def trial_name(model: str, overrides: list[str], swept: set[str]) -> str:
    """The trial's model and the values it takes for the swept keys:
    `logreg C=0.03`, `random_forest max_depth=4 n_estimators=300`."""
    parts = [model]
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key in swept and key != "model":
            parts.append(f"{key.rsplit('.', 1)[-1]}={short(value)}")
    return " ".join(parts)


def swept_keys(hydra_cfg: DictConfig) -> list[str]:
    """The config keys a sweep varies: sweep syntax on the command line (`model.C=0.1,1`) and,
    for the Optuna sweeper, its search space (`hydra.sweeper.params`)."""
    overrides = OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task))
    keys = [o.key_or_group for o in overrides if o.is_sweep_override()]
    return keys + [str(k) for k in (hydra_cfg.sweeper.get("params") or {}) if str(k) not in keys]


def check_direction(direction: Any, metric: str) -> None:
    """An optimiser told to maximise test_brier would search for the worst model: refuse."""
    wanted = "minimize" if lower_is_better(metric) else "maximize"
    direction = getattr(direction, "name", direction)  # the Optuna plugin's own default is an enum
    if direction != wanted:
        raise PipelineError(f"sweep.metric={metric} is better {'lower' if wanted == 'minimize' else 'higher'}, "
                            f"but hydra.sweeper.direction={direction}: add hydra.sweeper.direction={wanted}")


def sweep_setup(hydra_cfg: DictConfig) -> dict[str, str]:
    """How the trials are chosen and run, logged as the sweep run's params (sweep.*)."""
    setup = {"sweep.overrides": " ".join(hydra_cfg.overrides.task),
             "sweep.sweeper": hydra_cfg.sweeper._target_.rsplit(".", 1)[-1],
             "sweep.launcher": hydra_cfg.launcher._target_.rsplit(".", 1)[-1]}
    if "n_jobs" in hydra_cfg.launcher:
        setup["sweep.launcher.n_jobs"] = str(hydra_cfg.launcher.n_jobs)
    # The space searched: the config's (hydra.sweeper.params), where the command line's sweep
    # syntax replaces it key by key, as the sweepers do.
    space = {str(key): str(value) for key, value in (hydra_cfg.sweeper.get("params") or {}).items()}
    for override in OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task)):
        if override.is_sweep_override():
            space[override.key_or_group] = override.input_line.partition("=")[2]
    setup.update({f"sweep.space.{key}": value for key, value in space.items()})
    if "sampler" in hydra_cfg.sweeper:  # an optimising sweeper: how it samples, how long
        setup["sweep.sampler"] = hydra_cfg.sweeper.sampler._target_.rsplit(".", 1)[-1]
        setup["sweep.sampler.seed"] = str(hydra_cfg.sweeper.sampler.get("seed"))
        setup["sweep.n_trials"] = str(hydra_cfg.sweeper.n_trials)
        setup["sweep.batch_size"] = str(hydra_cfg.sweeper.n_jobs)  # trials asked for, and launched, at once
    if "storage" in hydra_cfg.sweeper:  # an Optuna study: where it lives, which one
        storage = hydra_cfg.sweeper.storage
        setup["sweep.storage"] = safe_url(storage) if storage else "in memory"
        if hydra_cfg.sweeper.study_name:  # else Optuna names the study; its trials carry the name
            setup["sweep.study"] = hydra_cfg.sweeper.study_name
    return setup


def build_upstream(cfg: DictConfig, tracking: Tracking, cache: ArtifactCache, sweep_run: str) -> list[StepResult]:
    """ingest, split and transform, each run under the sweep run or found in the cache."""
    results: list[StepResult] = []
    for name in UPSTREAM:
        results.append(execute(name, cfg, tracking, cache, parent_run_id=sweep_run,
                               upstream_run_id=results[-1].run_id if results else None))
    return results


def run_trial(cfg: DictConfig) -> float:
    """One trial: train and evaluate under a trial run, on the upstream runs the sweep built.
    Returns the sweep metric (what an optimising sweeper optimises), or NaN if the trial
    failed: the trial run records why, the other trials go on, and the sweep ends FAILED."""
    tracking = connect(cfg.profile)
    hydra_cfg = HydraConfig.get()
    title = trial_name(hydra_cfg.runtime.choices["model"], list(hydra_cfg.overrides.task),
                       set(os.environ[ENV_SWEEP_KEYS].split()))
    # An Optuna study's trial says which study, which trial of it.
    study = ({names.STUDY: os.environ[STUDY_ENV], names.TRIAL_NUMBER: os.environ[TRIAL_ENV]}
             if TRIAL_ENV in os.environ else None)
    try:
        with TrackedRun(tracking, "trial", title, parent_run_id=os.environ[ENV_SWEEP_RUN], extra_tags=study) as trial:
            check_config(cfg)  # a trial's values were not checked with the sweep's base config
            value = train_and_evaluate(cfg, tracking, trial.run_id)
    except Exception as err:  # a bad value in one trial must not cost the others their results
        print(f"sweep: trial {title} FAILED: {type(err).__name__}: {err}", file=sys.stderr)
        return math.nan
    print(f"sweep: trial {title}: {cfg.sweep.metric} = {value:.4f}")
    return value


def train_and_evaluate(cfg: DictConfig, tracking: Tracking, trial: str) -> float:
    client = tracking.client
    # force= was applied to the upstream steps once, before the trials; here they are found
    # in the cache, unless the trial varies their config.
    cfg.force = [s for s in (STEP_NAMES if "all" in cfg.force else cfg.force) if s not in UPSTREAM]
    cache = ArtifactCache(client)
    upstream = build_upstream(cfg, tracking, cache, os.environ[ENV_SWEEP_RUN])[-1]
    params = {**config_params(step_view(cfg, STEPS["train"])), **config_params(step_view(cfg, STEPS["evaluate"]))}
    client.log_batch(trial, params=[Param(k, str(v)) for k, v in params.items()])
    train = execute("train", cfg, tracking, cache, parent_run_id=trial, upstream_run_id=upstream.run_id)
    evaluation = execute("evaluate", cfg, tracking, cache, parent_run_id=trial, upstream_run_id=train.run_id)
    evaluated = client.get_run(evaluation.run_id).data
    if cfg.sweep.metric not in evaluated.metrics:
        raise PipelineError(f"sweep.metric={cfg.sweep.metric} is not a metric of evaluate; "
                            f"it has {sorted(evaluated.metrics)}")
    metrics, now = evaluated.metrics, int(time.time() * 1000)
    tags = [RunTag(names.VALIDATION_STATUS, evaluated.tags.get(names.VALIDATION_STATUS, "?"))]
    for result in (train, evaluation):  # a trial may reuse a cached train run: say which
        tags += [RunTag(f"pipeline.{result.step}.run_id", result.run_id),
                 RunTag(f"pipeline.{result.step}.status", result.status)]
    # One write for all of it: parallel trials share one SQLite file.
    client.log_batch(trial, metrics=[Metric(m, metrics[m], now, 0) for m in TRIAL_METRICS], tags=tags)
    return metrics[cfg.sweep.metric]


def log_best_trial(client, run_id: str, best: dict[str, Any]) -> dict[str, Any]:
    """Put the best trial's params (best.model.*) and metrics (best_*) on the sweep run, so
    sweeps line up in the compare view too; returns the key facts for the sweep card."""
    train, evaluation = client.get_run(best["train run"]), best["_evaluate_run"]
    client.set_tag(run_id, "sweep.best_train_run", train.info.run_id)
    params = {f"best.{k}": v for k, v in train.data.params.items()
              if k.startswith(("model.", "train.calibration", "train.threshold"))}
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()],
                     metrics=[Metric(f"best_{k}", v, int(time.time() * 1000), 0)
                              for k, v in evaluation.data.metrics.items()])
    return {"train run": train.info.run_id, **params,
            **{f"best_{k}": evaluation.data.metrics[k] for k in TRIAL_METRICS}}


def stop_on_error(hook: Callable[..., None]) -> Callable[..., None]:
    """Hydra turns an exception in a callback into a warning and goes on with the trials; a
    sweep without its parent run, upstream data or results must stop instead."""

    @functools.wraps(hook)
    def guarded(self: Callback, config: DictConfig, **kwargs: Any) -> None:
        try:
            run_command(config, lambda tracking: hook(self, config, tracking))
        except Exception:
            traceback.print_exc()
            sys.exit(1)  # SystemExit is not an Exception: Hydra lets it through

    return guarded


class SweepRun(Callback):
    """Opens the sweep parent run before the trials and closes it with the results."""

    @stop_on_error
    def on_multirun_start(self, config: DictConfig, tracking: Tracking) -> None:
        if "direction" in config.hydra.sweeper:
            check_direction(config.hydra.sweeper.direction, config.sweep.metric)
        if "storage" in config.hydra.sweeper:
            try:
                check_study(config.hydra.sweeper.storage, config.hydra.sweeper.study_name)
            except ValueError as err:
                raise PipelineError(str(err)) from None
        self.sweep_run = TrackedRun(tracking, "sweep", "sweep", own_run_id=adopt_launcher_run(tracking)).open()
        run_id = self.sweep_run.run_id
        atexit.register(close_unfinished_sweep, tracking, run_id)
        self.setup = sweep_setup(config.hydra)
        tracking.client.log_batch(run_id, params=[Param(k, v) for k, v in self.setup.items()])
        # The trials read these; joblib's worker processes inherit them.
        os.environ[ENV_SWEEP_RUN], os.environ[ENV_SWEEP_KEYS] = run_id, " ".join(swept_keys(config.hydra))
        # Run (or find cached) the upstream steps once, before parallel trials could race to
        # build the same ones. A sweep over data/split/transform keys builds its own per trial.
        self.upstream = [{"step": r.step, "run_id": r.run_id, "status": r.status}
                         for r in build_upstream(config, tracking, ArtifactCache(tracking.client), run_id)]

    @stop_on_error
    def on_multirun_end(self, config: DictConfig, tracking: Tracking) -> None:
        with self.sweep_run:  # FINISHED, or FAILED with the reason
            client, run_id = tracking.client, os.environ[ENV_SWEEP_RUN]
            rows = leaderboard(tracking, parent=run_id, sort=config.sweep.metric)
            best, decision = {}, "not asked for (sweep.register_best=false)"
            if rows:
                best = log_best_trial(client, run_id, rows[0])
            if config.sweep.register_best:
                # The best trial that passed evaluate's gate: register refuses the others anyway.
                validated = next((row for row in rows if row["status"] == "VALIDATED"), None)
                decision = "no trial was VALIDATED: nothing registered"
                if validated:
                    result = execute("register", config, tracking, ArtifactCache(client), parent_run_id=run_id,
                                     upstream_run_id=validated["_evaluate_run"].info.run_id)
                    decision = f"{validated['train run']}: {decision_text(result.summary)}"
                    print(f"sweep: registered the best validated trial: {decision}")
                    rows = leaderboard(tracking, parent=run_id, sort=config.sweep.metric)  # shows the new version
            table = [{c: row[c] for c in COLUMNS} for row in rows]
            client.log_text(run_id, pd.DataFrame(table, columns=COLUMNS).to_csv(index=False), "leaderboard.csv")
            client.log_text(run_id, leaderboard_page(COLUMNS, table), "leaderboard.html")
            trials = client.search_runs([tracking.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}' and "
                                        f"tags.`{names.ROLE}` = 'trial'", max_results=5000)
            failed = {t.data.tags[MLFLOW_RUN_NAME]: t.data.tags.get(names.ERROR, "?") for t in trials
                      if t.info.status == FAILED}
            seconds = time.time() - client.get_run(run_id).info.start_time / 1000
            for row, ranked in zip(table, rows):
                row["card"] = read_card(client, ranked["_evaluate_run"].info.run_id)
                row["card_title"] = f"{row['model']} {row['params']} (train run {row['train run']})"
            client.log_text(run_id, sweep_card(run_id, self.setup, self.upstream, len(trials), COLUMNS, table, failed,
                                               config.sweep.metric, best, decision, seconds), names.CARD)
            print(f"sweep: {len(trials) - len(failed)} of {len(trials)} trial(s) finished, "
                  f"{len(rows)} model(s) ranked in run {run_id}:")
            print(render(rows) if rows else "  none finished")
            if failed:
                sys.exit(f"sweep: {len(failed)} trial(s) FAILED: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))


def close_unfinished_sweep(tracking: Tracking, run_id: str) -> None:
    """A trial that raised ends the multirun before on_multirun_end: mark the sweep run
    FAILED rather than leave it RUNNING for ever."""
    if tracking.client.get_run(run_id).info.status == "RUNNING":
        end_run(tracking, run_id, FAILED, "the sweep ended before its results were recorded")


if __name__ == "__main__":
    launch(run_trial, config_name="sweep", multirun=True)
