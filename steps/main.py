"""main: the whole pipeline in one process, under one parent run.

First asks the store whether every step is already done (engine/up_to_date.py, which
needs no MLflow): then it prints which runs hold the results, and logs nothing (under
`mlflow run`, which made a run for it, it records them there without walking the chain). Else
engine/chain.py walks the DAG under a parent run, running what changed and reusing
the rest. Ends by printing (and logging) a table: step, run id, ran or reused,
seconds, key outputs.

    python -m steps.main                       # reuse what is unchanged
    python -m steps.main model=random_forest   # re-runs train, evaluate, register
    python -m steps.main 'force=[all]'         # re-runs everything
"""

from __future__ import annotations

import os
from typing import Optional

from omegaconf import DictConfig

from engine.cli import LAUNCHER_RUN_ID, launch, run_command
from engine.config import main_overrides
from engine.redaction import redact
from engine.results import EVERY_STEP_UP_TO_DATE, StepResult, summary_table
from engine.store import PROJECT_ROOT, Tracking
from engine.up_to_date import reused_pipeline

PARAM_VALUE_MAX = 6000  # MLflow refuses a longer param value
RUN_NAME_MAX = 120  # the runs table shows far less; the run's page shows it whole
UP_TO_DATE = f"{EVERY_STEP_UP_TO_DATE}: nothing ran, and no run was logged"


def chosen_groups(choices: dict[str, str], conf_dir=PROJECT_ROOT / "conf") -> dict[str, str]:
    """The config groups this pipeline picked among alternatives (`data=uci`, `model=logreg`):
    groups with one option say nothing, and the profile says where runs go, not what they are."""
    return {group: choice for group, choice in choices.items()
            if choice and group != "profile" and not group.startswith("hydra")
            and len(list((conf_dir / group).glob("*.yaml"))) > 1}


def _override_items(overrides: list[str]) -> list[tuple[str, str]]:
    """(key, value) of each Hydra override, secrets redacted; `~key` removes a key."""
    items = []
    for override in overrides:
        key, _, value = override.partition("=")
        items.append((key.lstrip("+~"), redact(value) if not key.startswith("~") else "(removed)"))
    return items


def pipeline_params(groups: dict[str, str], overrides: list[str]) -> dict[str, str]:
    """The main run's params: the groups it chose and the overrides that defined it, so the
    runs table compares pipelines (their keys are those of the step runs' params)."""
    return {**groups, **{key: value[:PARAM_VALUE_MAX] for key, value in _override_items(overrides)}}


def run_name(groups: dict[str, str], overrides: list[str]) -> str:
    """`main · model=logreg`, `main · model=random_forest model.max_depth=3`: the model, then
    every override that defined the pipeline, so runs of different pipelines tell apart."""
    parts = [f"model={groups['model']}"] if "model" in groups else []
    parts += [f"{key}={value}" for key, value in _override_items(overrides) if key != "model"]
    name = " ".join(["main ·", *parts]) if parts else "main"
    return name if len(name) <= RUN_NAME_MAX else name[:RUN_NAME_MAX - 1] + "…"


def report_up_to_date(results: list[StepResult]) -> None:
    """Print the runs that hold every step's result. A `main` that would only reuse logs no
    run of its own: nothing happened to record."""
    for result in results:
        print(result.progress_line())
    print(f"\n{UP_TO_DATE} (force=[all] runs them again)\n{summary_table(results)}")


def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    overrides = main_overrides()
    groups = chosen_groups(dict(HydraConfig.get().runtime.choices)) if HydraConfig.initialized() else {}
    up_to_date: Optional[list[StepResult]] = None

    def done_without_store() -> bool:
        """Every step up to date: said, and done, unless `mlflow run` made a run for this
        main to fill (MLFLOW_RUN_ID), which go() fills without walking the chain."""
        nonlocal up_to_date
        up_to_date = reused_pipeline(cfg)
        if up_to_date is None or os.environ.get(LAUNCHER_RUN_ID):
            return False
        report_up_to_date(up_to_date)
        return True

    def go(tracking: Tracking) -> None:
        from engine.chain import run_main  # loads MLflow: only once there is a run to write

        run_main(cfg, tracking, run_name(groups, overrides), pipeline_params(groups, overrides),
                 up_to_date=up_to_date)

    run_command(cfg, go, done_without_store=done_without_store)


if __name__ == "__main__":
    launch(main)
