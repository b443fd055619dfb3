"""register: add a VALIDATED model to the registry as a new version, point the
`challenger` alias at it, and move `champion` only if it beats the current champion
on the primary metric (or there is none). The decision and its reason are written
into the version's tags. Aliases and tags only: no stages.
"""

from __future__ import annotations

from typing import Optional

import mlflow
from mlflow.exceptions import MlflowException

from steps.evaluate import TAG_REASONS, TAG_STATUS, VALIDATED
from steps.errors import PipelineError
from steps.tracking import StepContext, launch_step
from steps.train import TAG_MODEL_URI

TAG_PRIMARY_VALUE = "primary_metric_value"


def champion_decision(new_value: float, champion_version: Optional[str], champion_value: Optional[float],
                      metric: str) -> tuple[bool, str]:
    """(becomes champion?, why). Higher is better; a tie keeps the current champion."""
    if champion_version is None:
        return True, f"no champion yet; {metric} = {new_value:.4f}"
    if champion_value is None:
        return True, f"champion v{champion_version} has no recorded {metric}; {metric} = {new_value:.4f}"
    if new_value > champion_value:
        return True, f"{metric} {new_value:.4f} beats champion v{champion_version} ({champion_value:.4f})"
    return False, f"{metric} {new_value:.4f} does not beat champion v{champion_version} ({champion_value:.4f})"


def _current_champion(client, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def run(ctx: StepContext) -> None:
    reg = ctx.cfg.register
    evaluation = ctx.input_run("evaluate")
    training = ctx.input_run("train")
    status = evaluation.data.tags.get(TAG_STATUS)
    if reg.primary_metric not in evaluation.data.metrics:
        raise PipelineError(f"register.primary_metric={reg.primary_metric!r} is not a metric of evaluate run "
                            f"{evaluation.info.run_id}; known: {sorted(evaluation.data.metrics)}")
    new_value = evaluation.data.metrics[reg.primary_metric]

    if status != VALIDATED and not reg.allow_unvalidated:
        reason = evaluation.data.tags.get(TAG_REASONS, "")
        ctx.set_tags({"register.decision": "not registered", "register.reason": f"{status}: {reason}"})
        ctx.summary.update(decision=f"not registered ({status})")
        print(f"register: model is {status} ({reason}); nothing registered. "
              "Pass register.allow_unvalidated=true to register it anyway.")
        return

    client = ctx.client
    champion = _current_champion(client, reg.model_name, reg.champion_alias)
    champion_value = champion.tags.get(TAG_PRIMARY_VALUE) if champion else None
    becomes_champion, reason = champion_decision(
        new_value, champion.version if champion else None,
        float(champion_value) if champion_value is not None else None, reg.primary_metric)
    if status != VALIDATED:
        becomes_champion, reason = False, f"registered although {status} (register.allow_unvalidated)"

    version = mlflow.register_model(
        training.data.tags[TAG_MODEL_URI],
        reg.model_name,
        tags={
            "validation.status": status,
            "primary_metric": reg.primary_metric,
            TAG_PRIMARY_VALUE: f"{new_value:.6f}",
            "train_run_id": training.info.run_id,
            "evaluate_run_id": evaluation.info.run_id,
            "decision": "champion" if becomes_champion else "challenger",
            "decision_reason": reason,
        },
    )
    client.set_registered_model_alias(reg.model_name, reg.challenger_alias, version.version)
    if becomes_champion:
        client.set_registered_model_alias(reg.model_name, reg.champion_alias, version.version)
    decision = f"v{version.version} " + ("champion" if becomes_champion else "challenger")
    ctx.set_tags({"register.decision": decision, "register.reason": reason,
                  "register.model_version": version.version})
    ctx.summary.update(decision=decision, reason=reason)
    print(f"register: {reg.model_name} {decision}: {reason}")


if __name__ == "__main__":
    launch_step("register")
