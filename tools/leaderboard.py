"""The best models of the experiment as a table, like `dvc exp show`:

    python -m tools.leaderboard                    # every evaluated model, best first
    python -m tools.leaderboard --parent <run id>  # only those under one main (or sweep) run
    python -m tools.leaderboard --sweep            # only the trials of the latest sweep
    python -m tools.leaderboard --study <name>     # every trial of an Optuna study, whichever worker ran it
    python -m tools.leaderboard --top 5 --sort test_roc_auc

One row per trained model (its latest complete evaluate run): model and key params, CV ROC-AUC with
its 95 % interval, test ROC-AUC, Brier score, validation status, and the registered
version and aliases of that model.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Optional

from engine import names
from engine.cards import text_table
from engine.errors import PipelineError
from engine.store import Tracking, complete_filter, connect, load_profile

# Tags on the trial runs of an Optuna study (tools/sweep.py): the study's name, the trial's number in it.
COLUMNS = ["train run", "model", "params", "cv roc_auc [95% CI]", "test roc_auc", "test brier", "status",
           "registered"]


def evaluations_under(tracking: Tracking, parent: str) -> set[str]:
    """Evaluate run ids a main or sweep run used, reused ones included: the parent's own
    `pipeline.evaluate.run_id` (main) and those of its children (sweep trials)."""
    runs = [tracking.client.get_run(parent)] + tracking.client.search_runs(
        [tracking.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=5000)
    return {run.data.tags["pipeline.evaluate.run_id"] for run in runs if "pipeline.evaluate.run_id" in run.data.tags}


def evaluations_in_study(tracking: Tracking, study: str) -> set[str]:
    """Evaluate run ids the trials of an Optuna study used, whichever worker (and sweep run) ran them."""
    if "'" in study:
        raise PipelineError(f"--study {study}: a study name with a quote cannot be searched for")
    trials = tracking.client.search_runs([tracking.experiment_id], f"tags.`{names.STUDY}` = '{study}' and "
                                         f"tags.`{names.ROLE}` = 'trial'", max_results=5000)
    if not trials:
        raise PipelineError(f"no trial runs of study {study!r} in this experiment (runs tagged {names.STUDY}={study})")
    return {run.data.tags["pipeline.evaluate.run_id"] for run in trials if "pipeline.evaluate.run_id" in run.data.tags}


def lower_is_better(metric: str) -> bool:
    return any(word in metric for word in ("brier", "log_loss"))


def short(value: str) -> str:
    """A param value for display: `0.15119336467641012` -> `0.1512` (the run keeps it whole)."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4g}" if "." in value and len(value) > 6 else value


def leaderboard(tracking: Tracking, parent: Optional[str] = None, sort: str = "cv_roc_auc_mean",
                top: Optional[int] = None, model_name: str = "heart-disease",
                study: Optional[str] = None) -> list[dict[str, Any]]:
    """Rows of the table, best first by `sort` (higher is better, except Brier and log loss):
    every evaluated model, or those under one `parent` run, or those of one Optuna `study`."""
    client = tracking.client
    evaluations = client.search_runs([tracking.experiment_id], complete_filter(f"tags.`{names.STEP}` = 'evaluate'"),
                                     order_by=["attributes.start_time DESC"], max_results=5000)
    if parent or study:
        used = evaluations_under(tracking, parent) if parent else evaluations_in_study(tracking, study)
        evaluations = [e for e in evaluations if e.info.run_id in used]
    versions: dict[str, list[str]] = {}
    try:
        model = client.get_registered_model(model_name)
        aliases_of: dict[str, list[str]] = {}
        for alias, version in model.aliases.items():
            aliases_of.setdefault(str(version), []).append(alias)
        for version in sorted(client.search_model_versions(f"name = '{model_name}'"), key=lambda v: int(v.version)):
            label = f"v{version.version}" + "".join(f"@{a}" for a in sorted(aliases_of.get(str(version.version), [])))
            versions.setdefault(version.run_id, []).append(label)
    except Exception:  # nothing registered yet
        pass

    rows, seen = [], set()
    for evaluation in evaluations:
        train_run_id = evaluation.data.tags[names.INPUT + "train"]
        if train_run_id in seen:
            continue  # an older evaluation of the same model
        seen.add(train_run_id)
        m = evaluation.data.metrics
        if sort not in m:
            raise PipelineError(f"--sort {sort}: not a metric of evaluate runs; e.g. cv_roc_auc_mean, test_brier")
        train = client.get_run(train_run_id)
        params = {k[len("model."):]: v for k, v in train.data.params.items()
                  if k.startswith("model.") and k != "model._target_"}
        if train.data.params.get("train.calibration", "none") != "none":
            params["calibration"] = train.data.params["train.calibration"]
        rows.append({
            "train run": train.info.run_id,
            "model": train.data.params.get("model._target_", "?").rsplit(".", 1)[-1],
            "params": " ".join(f"{k}={short(v)}" for k, v in sorted(params.items())),
            "cv roc_auc [95% CI]": f"{m['cv_roc_auc_mean']:.4f} [{m['cv_roc_auc_ci_low']:.3f}, "
                                   f"{m['cv_roc_auc_ci_high']:.3f}]",
            "test roc_auc": f"{m['test_roc_auc']:.4f}",
            "test brier": f"{m['test_brier']:.4f}",
            "status": evaluation.data.tags.get(names.VALIDATION_STATUS, "?"),
            "registered": " ".join(versions.get(train.info.run_id, [])) or "-",
            "_key": m[sort],
            "_evaluate_run": evaluation,
        })
    rows.sort(key=lambda row: row["_key"], reverse=not lower_is_better(sort))
    return rows[:top] if top else rows


def latest_sweep(tracking: Tracking) -> str:
    sweeps = tracking.client.search_runs([tracking.experiment_id], f"tags.`{names.ROLE}` = 'sweep'",
                                         order_by=["attributes.start_time DESC"], max_results=1)
    if not sweeps:
        raise PipelineError("no sweep run in this experiment yet: run `mlflow run . -e sweep -P overrides=...` first")
    return sweeps[0].info.run_id


def render(rows: list[dict[str, Any]]) -> str:
    return text_table([COLUMNS] + [[str(row[c]) for c in COLUMNS] for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.leaderboard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="local")
    parser.add_argument("--parent", help="only models evaluated under this run (a main or sweep run id)")
    parser.add_argument("--sweep", nargs="?", const="latest", metavar="RUN_ID",
                        help="only the trials of this sweep run; without an id, of the latest sweep")
    parser.add_argument("--study", help="only the trials of this Optuna study (hydra.sweeper.study_name), "
                                        "from every worker that ran it")
    parser.add_argument("--sort", default="cv_roc_auc_mean", help="metric of the evaluate runs to rank by")
    parser.add_argument("--top", type=int, help="show only the best N")
    parser.add_argument("--model-name", default="heart-disease")
    args = parser.parse_args()

    try:
        tracking = connect(load_profile(args.profile))
        parent = latest_sweep(tracking) if args.sweep == "latest" else args.sweep or args.parent
        rows = leaderboard(tracking, parent, args.sort, args.top, args.model_name, args.study)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(render(rows) if rows else "no complete evaluate runs yet: run `mlflow run . -e main` first")
    return 0


if __name__ == "__main__":
    sys.exit(main())
