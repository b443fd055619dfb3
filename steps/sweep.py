"""sweep: a Hydra multirun of train + evaluate under one sweep parent run.

    mlflow run . -e sweep --env-manager local --experiment-name heart-disease \\
        -P overrides="model.C=0.03,0.1,0.3"
    python -m steps.sweep model=logreg,hist_gradient_boosting

Each trial is a child run of the sweep run, named after the values it sweeps, with
train and evaluate nested under it. ingest, split and transform come from the cache
(they run once if nothing is cached). When the multirun ends, the sweep run gets the
leaderboard (CSV and HTML), the best trial's params and metrics, and optionally the
best trial goes through register (sweep.register_best=true).
"""

from __future__ import annotations

import os
from typing import Any

import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from mlflow.entities import Param
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from omegaconf import DictConfig

from steps.leaderboard import COLUMNS, leaderboard
from steps.pipeline import STEPS
from steps.tracking import (
    TAG_ROLE,
    adopt_launcher_run,
    config_params,
    connect,
    execute,
    exit_on_pipeline_error,
    launch,
)

ENV_SWEEP_RUN = "HEART_SWEEP_RUN_ID"  # the sweep parent run, for the trials
ENV_SWEEP_KEYS = "HEART_SWEEP_KEYS"  # the config keys the sweep varies, which name the trials
UPSTREAM = ("ingest", "split", "transform")


def trial_name(overrides: list[str], swept: set[str]) -> str:
    """The values a trial takes for the swept keys:
    `model=random_forest model.n_estimators=300` -> `random_forest n_estimators=300`."""
    parts = []
    for override in overrides:
        key, _, value = override.partition("=")
        if key in swept:
            parts.append(value if "." not in key else f"{key.rsplit('.', 1)[-1]}={value}")
    return " ".join(parts) or "defaults"


def run_trial(cfg: DictConfig) -> float:
    """One trial: reuse or run the upstream steps, then train and evaluate under a trial run.
    Returns the sweep metric (what an optimising sweeper would maximise)."""
    tracking = connect(cfg.profile)
    client = tracking.client
    sweep_run = os.environ[ENV_SWEEP_RUN]
    upstream = None
    for name in UPSTREAM:
        result = execute(name, cfg, tracking, parent_run_id=sweep_run, upstream_run=upstream)
        upstream = client.get_run(result.run_id)

    title = trial_name(list(HydraConfig.get().overrides.task), set(os.environ[ENV_SWEEP_KEYS].split()))
    trial = client.create_run(tracking.experiment_id, tags={
        MLFLOW_PARENT_RUN_ID: sweep_run, MLFLOW_RUN_NAME: title, TAG_ROLE: "trial"}).info.run_id
    try:
        client.log_batch(trial, params=[Param(k, str(v)) for k, v in config_params(cfg, STEPS["train"]).items()])
        train = execute("train", cfg, tracking, parent_run_id=trial, upstream_run=upstream)
        evaluation = execute("evaluate", cfg, tracking, parent_run_id=trial, upstream_run=client.get_run(train.run_id))
    except BaseException:
        client.set_terminated(trial, "FAILED")
        raise
    for result in (train, evaluation):  # a trial may reuse a cached train run: say which
        client.set_tag(trial, f"pipeline.{result.step}.run_id", result.run_id)
        client.set_tag(trial, f"pipeline.{result.step}.status", result.status)
    metrics = client.get_run(evaluation.run_id).data.metrics
    for metric in ("cv_roc_auc_mean", "cv_roc_auc_ci_low", "cv_roc_auc_ci_high", "test_roc_auc", "test_brier"):
        client.log_metric(trial, metric, metrics[metric])
    client.set_tag(trial, "validation.status", client.get_run(evaluation.run_id).data.tags.get("validation.status"))
    client.set_terminated(trial, "FINISHED")
    print(f"sweep: trial {title}: {cfg.sweep.metric} = {metrics[cfg.sweep.metric]:.4f}")
    return metrics[cfg.sweep.metric]


class SweepRun(Callback):
    """Opens the sweep parent run before the trials and closes it with the results."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        tracking = connect(config.profile)
        run_id = adopt_launcher_run(tracking) or tracking.client.create_run(
            tracking.experiment_id, run_name="sweep").info.run_id
        tracking.client.set_tag(run_id, TAG_ROLE, "sweep")
        overrides = list(config.hydra.overrides.task)
        tracking.client.set_tag(run_id, "sweep.overrides", " ".join(overrides))
        swept = [o.key_or_group for o in OverridesParser.create().parse_overrides(overrides) if o.is_sweep_override()]
        os.environ[ENV_SWEEP_RUN], os.environ[ENV_SWEEP_KEYS] = run_id, " ".join(swept)
        # Run (or find cached) the upstream steps once, before parallel trials could race to
        # build the same ones. A sweep over data/split/transform keys builds its own per trial.
        upstream = None
        for name in UPSTREAM:
            result = execute(name, config, tracking, parent_run_id=run_id, upstream_run=upstream)
            upstream = tracking.client.get_run(result.run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        tracking = connect(config.profile)
        client, run_id = tracking.client, os.environ[ENV_SWEEP_RUN]
        rows = leaderboard(tracking, parent=run_id, sort=config.sweep.metric)
        table = pd.DataFrame([{c: row[c] for c in COLUMNS} for row in rows], columns=COLUMNS)
        client.log_text(run_id, table.to_csv(index=False), "leaderboard.csv")
        client.log_text(run_id, "<!doctype html><html><head><meta charset='utf-8'><title>Sweep leaderboard"
                                "</title></head><body><h1>Sweep leaderboard</h1>"
                        + table.to_html(index=False, escape=True) + "</body></html>", "leaderboard.html")
        if rows:
            best = client.get_run(rows[0]["train run"])
            client.set_tag(run_id, "sweep.best_train_run", best.info.run_id)
            for name, value in best.data.params.items():
                if name.startswith(("model.", "train.calibration", "train.threshold")):
                    client.log_param(run_id, f"best.{name}", value)
            best_evaluation = rows[0]["_evaluate_run"]
            for name, value in best_evaluation.data.metrics.items():
                client.log_metric(run_id, f"best_{name}", value)
            if config.sweep.register_best:
                result = execute("register", config, tracking, parent_run_id=run_id, upstream_run=best_evaluation)
                print(f"sweep: best trial {result.summary}")
        client.set_terminated(run_id, "FINISHED")
        print(f"sweep: {len(rows)} trial(s) ranked in run {run_id}:")
        print(table.to_string(index=False) if rows else "  none finished")


if __name__ == "__main__":
    launch(lambda cfg: exit_on_pipeline_error(lambda: run_trial(cfg)), config_name="sweep", multirun=True)
