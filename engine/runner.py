"""Running one step: find a complete run with the same cache key and reuse it, or
claim the key, run the step, and finish the run so no crash can pass it off as done.

A run is reused only when it is complete. The runner writes, in this order:
    1. the step's declared outputs (engine/context.py), then its card;
    2. one batch: the outputs' manifest (size and sha256 each), summary, timing;
    3. the completion mark, `pipeline.complete=true`;
    4. the status FINISHED.
A process killed anywhere before 3 leaves a run that is never reused (the next run
on the store marks it KILLED); killed between 3 and 4, the run is complete but not
FINISHED, and is not reused either. A reused run's outputs are checked against the
manifest (present, same size) before reuse, and their sha256 when read.

Concurrent processes that need the same key: the first claims it (its RUNNING run
carries the key and a heartbeat), the others wait for that run and reuse it, or take
over if its process dies: on this machine when its pid is gone, on another when its
heartbeat stands still for `liveness.grace_seconds` (engine/heartbeat.py).
"""

from __future__ import annotations

import functools
import importlib
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from omegaconf import DictConfig, OmegaConf

from engine import faults, names
from engine.cards import step_card
from engine.config import main_overrides
from engine.context import ArtifactCache, StepContext, listing_problem, mark_damaged
from engine.errors import Interrupted, PipelineError
from engine.fingerprint import cache_key, step_view
from engine.heartbeat import HEARTBEATS, Watch, beat_value
from engine.liveness import OPEN_RUNS, lost, owner_tags
from engine.redaction import redact, redact_value
from engine.results import StepResult
from engine.store import Tracking, latest_complete, store_lock
from steps.pipeline import STEPS, Step

FINISHED = RunStatus.to_string(RunStatus.FINISHED)
FAILED = RunStatus.to_string(RunStatus.FAILED)
KILLED = RunStatus.to_string(RunStatus.KILLED)
CLAIM_POLL_SECONDS = 0.5


# --------------------------------------------------------------------------- lookups


def find_reusable(tracking: Tracking, key: str):
    """The newest complete run with this key whose outputs are all still there; a run
    whose outputs are gone or resized is marked damaged on the way, and skipped."""
    while True:
        run = latest_complete(tracking, f"tags.`{names.CACHE_KEY}` = '{key}'")
        if run is None:
            return None
        problem = listing_problem(tracking.client, run)
        if problem is None:
            return run
        artifact, what = problem
        mark_damaged(tracking.client, run.info.run_id, f"{artifact} {what}")
        print(f"{run.data.tags.get(names.STEP)}: not reusing run {run.info.run_id}: its artifact {artifact} {what}; "
              "running the step again", file=sys.stderr)


def resolve_upstream(tracking: Tracking, step: Step, cfg: DictConfig):
    """The run this step is built on: the one named in `upstream.<step>`, else the
    latest complete run of the upstream step in the experiment."""
    name = step.upstream
    explicit = cfg.upstream.get(name)
    if explicit:
        try:
            run = tracking.client.get_run(explicit)
        except MlflowException as err:
            raise PipelineError(f"upstream.{name}={explicit}: no such run ({err.message})") from None
        complete = run.data.tags.get(names.COMPLETE) == names.COMPLETE_MARK and run.info.status == FINISHED
        if run.data.tags.get(names.STEP) != name or not complete:
            raise PipelineError(
                f"upstream.{name}={explicit} is not a complete {name} run "
                f"(step tag {run.data.tags.get(names.STEP)!r}, status {run.info.status}, "
                f"{names.COMPLETE}={run.data.tags.get(names.COMPLETE)!r})"
            )
        return run
    run = latest_complete(tracking, f"tags.`{names.STEP}` = '{name}'")
    if run is None:
        raise PipelineError(
            f"step '{step.name}' needs a complete '{name}' run in experiment {tracking.experiment_id} and there "
            f"is none: run `mlflow run . -e {name}` (or `-e main`) first, or pass upstream.{name}=<run id>"
        )
    return run


def lineage_of(run) -> dict[str, str]:
    """{step: run id} for a step run and everything it was built from."""
    lineage = {key[len(names.INPUT):]: value for key, value in run.data.tags.items() if key.startswith(names.INPUT)}
    lineage[run.data.tags[names.STEP]] = run.info.run_id
    return lineage


# --------------------------------------------------------------------------- claims


def _live_claims(tracking: Tracking, key: str, mine: Optional[str], watch: Watch) -> list:
    """The other RUNNING claims of `key` whose owners may live; those whose owners are
    lost are marked KILLED on the way, saying why, so the step can be taken over."""
    runs = tracking.client.search_runs(
        [tracking.experiment_id], f"tags.`{names.CACHE_KEY}` = '{key}' and attributes.status = 'RUNNING'",
        order_by=["attributes.start_time ASC"], max_results=100)
    live = []
    for run in runs:
        if run.info.run_id == mine:
            continue
        reason = lost(run.data.tags, watch, run.info.run_id)
        if reason is None:
            live.append(run)
            continue
        end_run(tracking, run.info.run_id, KILLED, f"{reason}; marked KILLED by process {owner_tags()[names.PID]} "
                                                   f"on {owner_tags()[names.HOST]}, which took the step over")
        print(f"marked run {run.info.run_id} KILLED: {reason}", file=sys.stderr)
    return live


def claim(tracking: Tracking, name: str, key: str, tags: dict[str, str], own_run_id: Optional[str],
          liveness: DictConfig):
    """("reuse", run) when a complete run with `key` exists or appears while we wait for
    the process computing it; else ("run", run id) of the run that now holds the claim.

    The store lock makes look-up-then-claim atomic among this machine's processes. Across
    machines (a shared tracking server), a claim defers to any live claim started before it."""
    run_id: Optional[str] = None
    announced = False
    watch = Watch(liveness.grace_seconds)
    while True:
        with store_lock(tracking.tracking_uri):
            # A claimant finishes without the lock, going from RUNNING to complete and then
            # FINISHED. Read live claims first: a claim gone from them by now has already
            # ended, complete or not, when complete runs are read. (The other order can miss
            # a claim that completes between the reads in both.)
            rivals = _live_claims(tracking, key, run_id, watch)
            faults.point(f"{name}.claims_read")
            done = find_reusable(tracking, key)
            if done is not None:
                if run_id:  # a claim that lost to another machine's
                    _forget(run_id)
                    if run_id != own_run_id:
                        _withdraw(tracking, run_id, done.info.run_id)
                return "reuse", done
            if run_id is None and not rivals:
                # Read both again with the claim in place: another machine's claim may have
                # started, or even completed, since the reads above.
                run_id = _open_run(tracking, tags, own_run_id, liveness.heartbeat_seconds)
                continue
        if run_id is not None:
            mine = tracking.client.get_run(run_id).info
            earlier = [r for r in rivals if (r.info.start_time, r.info.run_id) < (mine.start_time, mine.run_id)]
            if not earlier:
                return "run", run_id
            rivals = earlier
        if not announced:
            print(f"{name}: waiting for run {rivals[0].info.run_id} (process {rivals[0].data.tags.get(names.PID)} "
                  f"on {rivals[0].data.tags.get(names.HOST)}), which computes the same result; taken over if its "
                  f"process ends, or its heartbeat stops for {liveness.grace_seconds:g}s", file=sys.stderr)
            announced = True
        time.sleep(CLAIM_POLL_SECONDS)


@functools.cache
def _standard_tags() -> dict[str, str]:
    """The tags MLflow's fluent API gives a run (user, source file and type, git commit),
    which runs made with MlflowClient.create_run would otherwise lack."""
    return {k: v for k, v in resolve_tags().items() if k != MLFLOW_RUN_NAME}


def _withdraw(tracking: Tracking, claim_run_id: str, winner_run_id: str) -> None:
    """Take back a claim another process's complete run made useless: delete it, or, where
    deleting needs more than EDIT permission (MLflow's MANAGE), end it KILLED saying why."""
    try:
        tracking.client.delete_run(claim_run_id)
    except MlflowException:
        end_run(tracking, claim_run_id, KILLED, f"withdrawn: run {winner_run_id} computed the same result first")


def _open_run(tracking: Tracking, tags: dict[str, str], own_run_id: Optional[str],
              heartbeat_seconds: Optional[float] = None) -> str:
    """Open (or adopt) a run with its owner recorded; with `heartbeat_seconds`, a claim that
    other machines wait for, whose heartbeat goes on until the run ends."""
    tags = {**tags, **owner_tags()}
    if heartbeat_seconds is not None:
        tags[names.HEARTBEAT] = beat_value()
    if own_run_id:  # `mlflow run` made it, with the standard tags already
        tracking.client.log_batch(own_run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        run_id = own_run_id
    else:
        run_id = tracking.client.create_run(tracking.experiment_id, tags={**_standard_tags(), **tags}).info.run_id
    OPEN_RUNS.add(tracking, run_id)
    if heartbeat_seconds is not None:
        client = tracking.client
        HEARTBEATS.add(run_id, lambda value: client.set_tag(run_id, names.HEARTBEAT, value), heartbeat_seconds)
    return run_id


def _forget(run_id: str) -> None:
    """This process no longer holds the run: no signal ends it, no heartbeat keeps it."""
    HEARTBEATS.discard(run_id)
    OPEN_RUNS.discard(run_id)


# The names MLflow makes up for a run created without one (`amusing-dog-295`).
_GENERATED_RUN_NAME = re.compile(r"[a-z]+-[a-z]+-\d{1,3}")


def user_named(tracking: Tracking, run_id: str) -> bool:
    """Whether someone named this run, as `mlflow run --run-name` does; a run the launcher
    made without a name has one MLflow made up. (The launcher names the run as it starts
    our process, so by the time we ask, the name is there.)"""
    name = tracking.client.get_run(run_id).info.run_name or ""
    return not _GENERATED_RUN_NAME.fullmatch(name)


def open_group_run(tracking: Tracking, role: str, run_name: str, own_run_id: Optional[str] = None,
                   parent_run_id: Optional[str] = None, extra_tags: Optional[dict[str, str]] = None) -> str:
    """A run that groups step runs (main, sweep, trial), with its owner recorded. A run that
    `mlflow run` made is named too, unless its user named it."""
    tags = {names.ROLE: role, MLFLOW_RUN_NAME: run_name, **(extra_tags or {})}
    if parent_run_id:
        tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    if own_run_id and user_named(tracking, own_run_id):
        tags.pop(MLFLOW_RUN_NAME)
    return _open_run(tracking, tags, own_run_id)


def record(tracking: Tracking, run_id: str, params: Optional[dict[str, Any]] = None,
           metrics: Optional[dict[str, float]] = None, tags: Optional[dict[str, str]] = None) -> None:
    """Params, metrics and tags on a run that groups others, in one write."""
    now = int(time.time() * 1000)
    tracking.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in (params or {}).items()],
                              metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
                              tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])


def end_run(tracking: Tracking, run_id: str, status: str, error: Optional[str] = None) -> None:
    _forget(run_id)
    if error is not None:
        tracking.client.set_tag(run_id, names.ERROR, redact(error)[:5000])
    tracking.client.set_terminated(run_id, status)


def end_after(tracking: Tracking, run_id: str, err: BaseException) -> None:
    """End a run that an exception interrupted: KILLED for a signal, else FAILED."""
    if isinstance(err, Interrupted):
        end_run(tracking, run_id, KILLED, str(err))
    else:
        end_run(tracking, run_id, FAILED, str(err) or type(err).__name__)


class TrackedRun:
    """The lifecycle of a run that groups others (main, sweep, trial, score, monitor),
    written once:

        with TrackedRun(tracking, "score", "score", own_run_id=...) as run:
            ...  # run.run_id

    opens the run with its owner recorded, and ends it FINISHED when the block ends,
    KILLED on a signal, FAILED with the reason on any other error (which goes on). A run
    whose start and end are in two places (a sweep's two Hydra callbacks) calls open()
    in the first and enters the `with` in the second."""

    def __init__(self, tracking: Tracking, role: str, run_name: str, own_run_id: Optional[str] = None,
                 parent_run_id: Optional[str] = None, extra_tags: Optional[dict[str, str]] = None):
        self.tracking = tracking
        self._opening = (role, run_name, own_run_id, parent_run_id, extra_tags)
        self.run_id: Optional[str] = None

    def open(self) -> "TrackedRun":
        if self.run_id is None:
            role, run_name, own_run_id, parent_run_id, extra_tags = self._opening
            self.run_id = open_group_run(self.tracking, role, run_name, own_run_id, parent_run_id, extra_tags)
        return self

    __enter__ = open

    def __exit__(self, kind, err: Optional[BaseException], traceback) -> None:
        if err is None:
            end_run(self.tracking, self.run_id, FINISHED)
        else:
            end_after(self.tracking, self.run_id, err)


# --------------------------------------------------------------------------- running a step


def config_params(view: DictConfig) -> dict[str, Any]:
    """A step's config sections as flat MLflow params (`model.C`, `split.seed`, ...);
    the codebook is left out: it is the same for every run and long."""
    return {k: redact_value(v) for k, v in _flatten("", OmegaConf.to_container(view)).items()
            if k.split(".")[0] != "schema"}


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(f"{prefix}.{key}" if prefix else str(key), inner))
        return out
    return {prefix: value}


def forced(cfg: DictConfig, name: str) -> bool:
    force = list(cfg.force)
    return "all" in force or name in force


def execute(
    name: str,
    cfg: DictConfig,
    tracking: Tracking,
    cache: ArtifactCache,
    parent_run_id: Optional[str] = None,
    own_run_id: Optional[str] = None,
    upstream_run_id: Optional[str] = None,
) -> StepResult:
    """Run one step, or reuse a complete run with the same cache key.

    `own_run_id` is a run made for us (by `mlflow run`); `upstream_run_id` is the run
    this step is built on, when the caller knows it (main, sweep)."""
    step = STEPS[name]
    started = time.perf_counter()
    upstream_run = None
    if step.upstream:
        upstream_run = (cache.run(upstream_run_id) if upstream_run_id
                        else resolve_upstream(tracking, step, cfg))
    lineage = lineage_of(upstream_run) if upstream_run is not None else {}
    view = step_view(cfg, step)
    key = cache_key(step, view, upstream_run.info.run_id if upstream_run is not None else None)

    tags = {names.STEP: name, names.CACHE_KEY: key, MLFLOW_RUN_NAME: name,
            names.OVERRIDES: json.dumps([redact(o) for o in main_overrides()]),
            **{names.INPUT + step_name: run_id for step_name, run_id in lineage.items()}}
    if parent_run_id:
        tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    keep_name = bool(own_run_id) and user_named(tracking, own_run_id)
    if keep_name:
        tags.pop(MLFLOW_RUN_NAME)
    if forced(cfg, name):
        outcome, found = "run", _open_run(tracking, tags, own_run_id, cfg.liveness.heartbeat_seconds)
    else:
        outcome, found = claim(tracking, name, key, tags, own_run_id, cfg.liveness)
    if outcome == "reuse":
        if own_run_id:
            named = [] if keep_name else [RunTag(MLFLOW_RUN_NAME, f"{name} · reused")]
            tracking.client.log_batch(own_run_id, tags=[
                *named, RunTag(names.REUSED, found.info.run_id),
                RunTag("mlflow.note.content", f"Reused {name} run {found.info.run_id} (same cache key); "
                                              f"pass force=[{name}] to run it again.")])
            tracking.client.set_terminated(own_run_id, FINISHED)
        return _announced(StepResult(name, found.info.run_id, "reused", time.perf_counter() - started,
                                     json.loads(found.data.tags.get(names.SUMMARY, "{}")), lineage))

    run_id = found
    print(f"{name}: running (run {run_id})", flush=True)
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as workdir:
        ctx = StepContext(tracking, run_id, step, view, lineage, Path(workdir), cache, cfg.liveness)
        try:
            _run_step(ctx, key)
        except BaseException as err:
            end_after(tracking, run_id, err)
            raise
    return _announced(StepResult(name, run_id, "ran", time.perf_counter() - started, ctx.summary, lineage))


def _announced(result: StepResult) -> StepResult:
    """One line per step as it ends, so a long `main` or sweep shows where it is."""
    print(result.progress_line(), flush=True)
    return result


def _run_step(ctx: StepContext, key: str) -> None:
    name = ctx.step.name
    ctx.log_params(config_params(ctx.cfg))
    faults.point(f"{name}.started")
    module = importlib.import_module(ctx.step.module)
    work_started = time.perf_counter()
    module.run(ctx)
    work_seconds = time.perf_counter() - work_started
    missing = ctx.missing_outputs()
    if missing:
        raise PipelineError(f"step {name} did not write its declared outputs {missing} (steps/pipeline.py)")
    inputs = {f"{wanted.artifact} of {wanted.step}": ctx.lineage[wanted.step] for wanted in ctx.step.reads.values()}
    ctx.client.log_text(ctx.run_id, redact(step_card(name, ctx.run_id, inputs, sorted(ctx.outputs), ctx.summary,
                                                     ctx.metrics, ctx.figures, work_seconds, key)), names.CARD)
    faults.point(f"{name}.outputs_written")
    ctx.set_tags({names.OUTPUTS: json.dumps(ctx.outputs, sort_keys=True),
                  names.SUMMARY: json.dumps(ctx.summary, default=str), names.SECONDS: f"{work_seconds:.3f}"})
    faults.point(f"{name}.before_complete")
    ctx.set_tags({names.COMPLETE: names.COMPLETE_MARK})
    faults.point(f"{name}.after_complete")
    end_run(ctx.tracking, ctx.run_id, FINISHED)
