"""register: add a VALIDATED model to the registry as a new version, point the
`challenger` alias at it, and move `champion` only if it beats the current champion
on the primary metric (or there is none). The decision and its reason are written
into the version's tags. Aliases and tags only: no stages.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from typing import Optional

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from steps.codebook import Codebook
from steps.errors import PipelineError
from steps.evaluate import TAG_REASONS, TAG_STATUS, VALIDATED
from steps.model_card import card_sections, to_html, to_markdown
from steps.tracking import PROJECT_ROOT, TAG_OVERRIDES, StepContext, launch_step
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


def _reproduce_command(overrides: list[str]) -> tuple[str, str]:
    """(the `mlflow run` command with the model's overrides, the git commit or why there is none)."""
    joined = " ".join(shlex.quote(o) for o in overrides)
    command = "mlflow run . -e main --env-manager local --experiment-name heart-disease"
    if joined:
        command += f" -P overrides={shlex.quote(joined)}"
    git = ["git", "-C", str(PROJECT_ROOT)]
    try:
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return command, "unknown (not a git checkout)"
    return command, commit + (" plus uncommitted changes" if dirty else "")


def card_facts(ctx: StepContext, name: str) -> dict:
    """Everything the model card states, read from the runs this version was built from."""
    ingest, split, train, evaluation = (ctx.input_run(s) for s in ("ingest", "split", "train", "evaluate"))
    report = json.loads(ctx.download("ingest", "validation_report.json").read_text())
    raw = ctx.load_table("ingest", "raw")
    config = Model.load(train.data.tags[TAG_MODEL_URI]).flavors["python_function"]["config"]
    book = Codebook.from_config(config["codebook"])
    threshold = float(config["decision_threshold"])
    predictions = ctx.load_table("evaluate", "test_predictions")
    predicted, actual = predictions["probability"] >= threshold, predictions[book.label] == 1
    external = {}
    if "external_validation.json" in {a.path for a in ctx.client.list_artifacts(evaluation.info.run_id)}:
        external = json.loads(ctx.download("evaluate", "external_validation.json").read_text())
    params = train.data.params
    # The overrides the train run was made with: a sweep registers from its own process,
    # whose command line is not the model's.
    command, commit = _reproduce_command(json.loads(train.data.tags.get(TAG_OVERRIDES, "[]")))
    strategy = params.get("train.threshold.strategy", "fixed")
    return {
        "name": name, "version": None,  # known once registered
        "data_source": ingest.data.tags.get("data.source"),
        "sites": sorted(raw["site"].unique()) if "site" in raw else [],
        "rows": report["rows"], "duplicates_dropped": int(split.data.metrics.get("duplicates_dropped", 0)),
        "split_rows": " / ".join(str(int(split.data.metrics[f"{s}_rows"])) for s in ("train", "val", "test")),
        "test_rows": int(split.data.metrics["test_rows"]),
        "dataset_digest": ingest.inputs.dataset_inputs[0].dataset.digest if ingest.inputs.dataset_inputs else "n/a",
        "sha256": {k.split(".", 2)[2]: v for k, v in ingest.data.tags.items() if k.startswith("data.sha256.")},
        "missing": report["missing"], "impossible": report["impossible_as_missing"],
        "male_share": float((raw["sex"] == 1).mean()),
        "codebook": {column: book.columns[column].describe() for column in book.features},
        "model": f"{train.data.tags.get('model.class')} "
                 + ", ".join(f"{k[6:]}={v}" for k, v in params.items() if k.startswith("model.") and k != "model._target_"),
        "calibration": params.get("train.calibration", "none"),
        "status": evaluation.data.tags.get(TAG_STATUS), "reasons": evaluation.data.tags.get(TAG_REASONS, ""),
        "metrics": evaluation.data.metrics,
        "threshold": threshold,
        "threshold_rule": (f"the highest threshold with validation sensitivity at least "
                           f"{params.get('train.threshold.target')}" if strategy == "sensitivity" else "fixed in config"),
        "confusion": (f"{int((predicted & actual).sum())} true positives, {int((~predicted & actual).sum())} missed "
                      f"patients, {int((predicted & ~actual).sum())} false alarms, "
                      f"{int((~predicted & ~actual).sum())} true negatives"),
        "bands": {str(k): float(v) for k, v in sorted(config["risk_levels"].items(), key=lambda kv: kv[1])},
        "external": {k: v for k, v in external.get("scores", {}).items() if k != "internal test"},
        "external_unusable": external.get("unusable", {}),
        "command": command, "commit": commit,
        "train_run_id": train.info.run_id, "evaluate_run_id": evaluation.info.run_id,
    }


def write_model_card(ctx: StepContext, facts: dict, version: str) -> str:
    """Log model_card.md and .html to this run; return where the Markdown is."""
    facts = {**facts, "version": version}
    sections = card_sections(facts)
    title = f"Model card: {facts['name']} version {version}"
    ctx.log_text(to_markdown(title, sections), "model_card.md")
    ctx.log_text(to_html(title, sections), "model_card.html")
    return f"{ctx.client.get_run(ctx.run_id).info.artifact_uri}/model_card.md"


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

    facts = card_facts(ctx, reg.model_name)  # every read before the registry changes
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
    card = write_model_card(ctx, facts, str(version.version))
    client.update_model_version(reg.model_name, version.version, description=(
        f"{reason}. Model card: {card} (and model_card.html beside it), in register run {ctx.run_id}. "
        "Not for clinical use."))
    client.set_model_version_tag(reg.model_name, version.version, "model_card", card)
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
