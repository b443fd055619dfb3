"""register: add a VALIDATED model to the registry as a new version, point the
`challenger` alias at it, and move `champion` only if it beats the current champion
on the primary metric (or there is none). The decision and its reason are written
into the version's tags. Aliases and tags only: no stages.

Deciding and moving aliases happen under a lease on the store (and, on one machine, its
lock), so two registers never both crown a model against the same old champion, even
from two machines. A register killed after creating
the version is completed by the next one: it finds that version (one logged model is
one version) and publishes it, instead of creating another.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from typing import Optional

from engine import faults, names, registry, seal
from engine.context import StepContext
from engine.errors import PipelineError
from engine.model_card import card_sections, contributions_figure, summary_markdown, to_html, to_markdown
from engine.names import VALIDATED
from engine.store import PROJECT_ROOT


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
    report = ctx.read("validation_report")
    if "male_share" not in report:
        raise PipelineError(f"the validation report of ingest run {ingest.info.run_id} has no male_share (written by "
                            "ingest since register stopped reading the raw table): run ingest again")
    model = ctx.read("model")
    book, threshold = model.codebook, model.threshold
    predictions = ctx.read("test_predictions")
    predicted, actual = predictions["probability"] >= threshold, predictions[book.label] == 1
    external = ctx.read("external_validation") or {}
    params = train.data.params
    # The overrides the train run was made with: a sweep registers from its own process,
    # whose command line is not the model's.
    command, commit = _reproduce_command(json.loads(train.data.tags.get(names.OVERRIDES, "[]")))
    strategy = params.get("train.threshold.strategy", "fixed")
    return {
        "name": name, "version": None,  # known once registered
        "data_source": ingest.data.tags.get(names.DATA_SOURCE),
        "sites": sorted(report.get(f"by_{names.SITE}", {})),
        "rows": report["rows"], "duplicates_dropped": int(split.data.metrics.get("duplicates_dropped", 0)),
        "split_rows": " / ".join(str(int(split.data.metrics[f"{s}_rows"])) for s in ("train", "val", "test")),
        "test_rows": int(split.data.metrics["test_rows"]),
        "dataset_digest": ingest.inputs.dataset_inputs[0].dataset.digest if ingest.inputs.dataset_inputs else "n/a",
        "sha256": {k.split(".", 2)[2]: v for k, v in ingest.data.tags.items() if k.startswith(names.DATA_SHA256 + ".")},
        "missing": report["missing"], "impossible": report["impossible_as_missing"],
        "male_share": report["male_share"],
        "codebook": {column: book.columns[column].describe() for column in book.features},
        "model": f"{train.data.tags.get(names.MODEL_CLASS)} "
                 + ", ".join(f"{k[6:]}={v}" for k, v in params.items()
                             if k.startswith("model.") and k != "model._target_"),
        "calibration": params.get("train.calibration", "none"),
        "status": evaluation.data.tags.get(names.VALIDATION_STATUS),
        "reasons": evaluation.data.tags.get(names.VALIDATION_REASONS, ""),
        "metrics": evaluation.data.metrics,
        "threshold": threshold,
        "threshold_rule": (f"the highest threshold with validation sensitivity at least "
                           f"{params.get('train.threshold.target')}" if strategy == "sensitivity"
                           else "fixed in config"),
        "confusion": (f"{int((predicted & actual).sum())} true positives, {int((~predicted & actual).sum())} missed "
                      f"patients, {int((predicted & ~actual).sum())} false alarms, "
                      f"{int((~predicted & ~actual).sum())} true negatives"),
        "bands": dict(sorted(model.bands.items(), key=lambda kv: kv[1])),
        # Both absent when the evaluate run predates them: the card then goes without.
        "subgroups": ctx.read("subgroups"),
        "explanation": ctx.read("explanation"),
        "external": {k: v for k, v in external.get("scores", {}).items() if k != "internal test"},
        "external_unusable": external.get("unusable", {}),
        "command": command, "commit": commit,
        "train_run_id": train.info.run_id, "evaluate_run_id": evaluation.info.run_id,
    }


def write_model_card(ctx: StepContext, facts: dict, version: str) -> tuple[str, list]:
    """Log model_card.md and .html to this run; return where the Markdown is (a runs:/
    URI, which any machine reaching the store can open) and the card's sections."""
    facts = {**facts, "version": version}
    explanation = facts.get("explanation") or {}
    if "mean_abs_contribution" in explanation:
        facts["contributions_plot"] = ctx.write("contributions_plot",
                                                contributions_figure(explanation["mean_abs_contribution"]))
    sections = card_sections(facts)
    title = f"Model card: {facts['name']} version {version}"
    ctx.write("model_card", to_markdown(title, sections))
    ctx.write("model_card_html", to_html(title, sections))
    return f"runs:/{ctx.run_id}/model_card.md", sections


def run(ctx: StepContext) -> None:
    reg = ctx.cfg.register
    evaluation = ctx.input_run("evaluate")
    training = ctx.input_run("train")
    status = evaluation.data.tags.get(names.VALIDATION_STATUS)
    if reg.primary_metric not in evaluation.data.metrics:
        raise PipelineError(f"register.primary_metric={reg.primary_metric!r} is not a metric of evaluate run "
                            f"{evaluation.info.run_id}; known: {sorted(evaluation.data.metrics)}")
    new_value = evaluation.data.metrics[reg.primary_metric]

    if status != VALIDATED and not reg.allow_unvalidated:
        reason = evaluation.data.tags.get(names.VALIDATION_REASONS, "")
        ctx.set_tags({names.REGISTER_DECISION: "not registered", "register.reason": f"{status}: {reason}"})
        ctx.summary.update(decision=f"not registered ({status})")
        print(f"register: model is {status} ({reason}); nothing registered. "
              "Pass register.allow_unvalidated=true to register it anyway.")
        return

    client = ctx.client
    facts = card_facts(ctx, reg.model_name)  # every read before the registry changes
    # The sealing key before anything is registered: a configured key that is missing
    # stops here, and the embedded default makes its pair on first use.
    private_key = seal.private_key_path(reg.seal_key, ctx.tracking.tracking_uri)
    seal.ensure_key_pair(private_key, create=not reg.seal_key)
    model_uri = training.data.tags[names.MODEL_URI]
    with ctx.exclusive(f"{reg.model_name}.register"):
        existing = registry.version_of(client, reg.model_name, training.info.run_id, model_uri)
        champion = registry.version_by_alias(client, reg.model_name, reg.champion_alias)
        if existing is not None and champion is not None and champion.version == existing.version:
            becomes_champion, reason = True, existing.tags.get("decision_reason", "champion")
        else:
            becomes_champion, reason = champion_decision(
                new_value, champion.version if champion else None, registry.champion_value(champion),
                reg.primary_metric)
        if status != VALIDATED:
            becomes_champion, reason = False, f"registered although {status} (register.allow_unvalidated)"
        tags = {
            names.VALIDATION_STATUS: status,
            "primary_metric": reg.primary_metric,
            registry.TAG_PRIMARY_VALUE: f"{new_value:.6f}",
            "train_run_id": training.info.run_id,
            "evaluate_run_id": evaluation.info.run_id,
            "decision": "champion" if becomes_champion else "challenger",
            "decision_reason": reason,
        }
        version = existing or registry.create_version(reg.model_name, model_uri, tags)
        faults.point("register.version_created")
        # Sealed before any alias names it: a version consumers may load is always sealed.
        sealed = seal.seal_version(client, reg.model_name, str(version.version), private_key, ctx.workdir)
        card, sections = write_model_card(ctx, facts, str(version.version))
        aliases = [reg.challenger_alias] + ([reg.champion_alias] if becomes_champion else [])
        registry.publish(client, reg.model_name, str(version.version), model_uri, {**tags, "model_card": card},
                         summary_markdown(sections, f"{tags['decision']}: {reason}", card), aliases)
        faults.point("register.version_published")
    decision = f"v{version.version} " + ("champion" if becomes_champion else "challenger")
    ctx.set_tags({names.REGISTER_DECISION: decision, "register.reason": reason,
                  "register.model_version": version.version})
    ctx.summary.update(decision=decision, reason=reason, sealed_with=str(sealed.private_key))
    completed = " (completing the version an interrupted register created)" if existing else ""
    print(f"register: {reg.model_name} {decision}: {reason}{completed}")


if __name__ == "__main__":
    from engine.cli import launch_step

    launch_step("register")
