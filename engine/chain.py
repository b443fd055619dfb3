"""The chain under one parent run: what `main` does when some step has work to do, or
when `mlflow run` made a run for it to fill.

Walks steps/pipeline.py's DAG in order. Each step either runs as a nested child run
or, when a complete run with the same cache key exists, is reused without importing
its module (engine/runner.py). eda runs in a background thread beside the chain. The
parent run gets the pipeline's params, evaluate's headline metrics, register's decision,
a summary table and the pipeline's card.
"""

from __future__ import annotations

import ctypes
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from engine import names
from engine.cards import pipeline_card
from engine.cli import adopt_launcher_run, run_link
from engine.context import ArtifactCache, read_card
from engine.fingerprint import code_fingerprint
from engine.redaction import redact
from engine.results import EVERY_STEP_UP_TO_DATE, StepResult, summary_table
from engine.runner import FAILED, FINISHED, TrackedRun, execute, record
from engine.store import Tracking
from steps.pipeline import SIDE_BRANCHES, STEPS, diagram


def run_main(cfg: DictConfig, tracking: Tracking, run_name: str, params: dict[str, Any],
             up_to_date: Optional[list[StepResult]] = None) -> None:
    """Run or reuse every step under a parent run named `run_name`, print the summary.
    `up_to_date`: every step's run, found reusable before MLflow was loaded
    (engine/up_to_date.py), recorded as the chain would record them all reused."""
    return_freed_tables_to_the_system()
    client = tracking.client
    with TrackedRun(tracking, "main", run_name, own_run_id=adopt_launcher_run(tracking)) as run:
        parent_run_id = run.run_id
        record(tracking, parent_run_id, params=params)
        client.log_text(parent_run_id, redact(OmegaConf.to_yaml(cfg, resolve=True)), "config.yaml")
        cache = ArtifactCache(client)
        started = time.perf_counter()
        try:
            if up_to_date is None:
                results = run_pipeline(cfg, tracking, parent_run_id, cache)
            else:
                results = up_to_date
                print("\n".join(result.progress_line() for result in results), flush=True)
                print(f"{EVERY_STEP_UP_TO_DATE}: nothing ran; this run records where their results are")
        except _ChainFailed as failed:
            _record(tracking, parent_run_id, failed.completed, cache, time.perf_counter() - started, FAILED)
            if failed.completed:
                print(summary_table(failed.completed), file=sys.stderr)
            raise failed.cause from None
        _record(tracking, parent_run_id, results, cache, time.perf_counter() - started, FINISHED)
    table = summary_table(results)
    print(f"\npipeline finished in {time.perf_counter() - started:.1f}s (parent run {parent_run_id})\n{table}")
    link = run_link(tracking, parent_run_id)
    if link:
        print(f"view it at {link}")


def still_read(steps: set[str], run_ids: dict[str, str]) -> dict[tuple[str, str], set[str]]:
    """{(run id, artifact): which of `steps` read it} for every input `steps` declare from
    the runs in `run_ids` ({step: run id}): what the cache must keep, and for whom. By run,
    not only by path: split's and transform's train tables share a path, and only split's
    is read after train."""
    readers: dict[tuple[str, str], set[str]] = {}
    for name in steps:
        for wanted in STEPS[name].reads.values():
            if wanted.step in run_ids:
                readers.setdefault((run_ids[wanted.step], wanted.artifact), set()).add(name)
    return readers


def headline(evaluation, results: list[StepResult]) -> tuple[dict[str, float], dict[str, str]]:
    """(metrics, tags) the main run carries: evaluate's headline metrics (names.HEADLINE_METRICS),
    its verdict and register's decision, for the runs table. `evaluation`: the evaluate run, or None."""
    metrics, tags = {}, {}
    if evaluation is not None:
        metrics = {m: evaluation.data.metrics[m] for m in names.HEADLINE_METRICS if m in evaluation.data.metrics}
        if names.VALIDATION_STATUS in evaluation.data.tags:
            tags[names.VALIDATION_STATUS] = evaluation.data.tags[names.VALIDATION_STATUS]
    register = next((r.summary for r in results if r.step == "register"), {})
    if "decision" in register:
        tags[names.REGISTER_DECISION] = str(register["decision"])
    return metrics, tags


def run_pipeline(cfg: DictConfig, tracking: Tracking, parent_run_id: str, cache: ArtifactCache) -> list[StepResult]:
    """Execute or reuse every step under `parent_run_id`; return results in DAG order.
    A failing step stops the chain: nothing downstream of it runs or is registered."""
    for step in STEPS.values():  # parse sources here, not in the side-branch thread
        code_fingerprint(step.module, step.carries)
    results: dict[str, StepResult] = {}
    side: dict[str, Future] = {}
    failure: BaseException | None = None
    # Not a `with` block: on a signal, leave at once instead of waiting for the side branch.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="side-branch")
    try:
        for name, step in STEPS.items():
            upstream_run_id = results[step.upstream].run_id if step.upstream else None
            if name in SIDE_BRANCHES:
                side[name] = pool.submit(execute, name, cfg, tracking, cache, parent_run_id, None, upstream_run_id)
                continue
            try:
                results[name] = execute(name, cfg, tracking, cache, parent_run_id, upstream_run_id=upstream_run_id)
            except Exception as err:
                failure = err
                break
            cache.retain(still_read(set(STEPS) - set(results) - {n for n, f in side.items() if f.done()},
                                    {done: result.run_id for done, result in results.items()}))
        for name, future in side.items():
            try:
                results[name] = future.result()
            except Exception as err:
                failure = failure or err
    finally:
        pool.shutdown(wait=False)
    ordered = [results[name] for name in STEPS if name in results]
    if failure is not None:
        raise _ChainFailed(ordered, failure)
    return ordered


class _ChainFailed(Exception):
    def __init__(self, completed: list[StepResult], cause: BaseException):
        self.completed, self.cause = completed, cause
        super().__init__(str(cause))


def return_freed_tables_to_the_system() -> None:
    """`main` frees each table once no step still needs it; make sure the memory goes back.

    Arrow (Parquet writes) allocates from the system allocator instead of its bundled
    mimalloc, which keeps freed pages for reuse: some 100 MB after writing one
    million-row table. And glibc's malloc serves every block of 128 KiB or more (its
    initial threshold) straight from the kernel, so freeing it returns the pages: by
    default the threshold grows to the largest block freed so far (up to 32 MiB), after
    which million-row columns (8 MB each) come from the heap and stay resident once
    freed. Together some 270 MB less at a million rows' peak (docs/SCALE.md). Without
    glibc (macOS, musl) the second part does nothing."""
    import pyarrow

    pyarrow.set_memory_pool(pyarrow.system_memory_pool())
    try:
        set_option = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    set_option(_M_MMAP_THRESHOLD, 128 * 1024)


_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def _record(tracking: Tracking, parent_run_id: str, results: list[StepResult], cache: ArtifactCache,
            seconds: float, status: str) -> None:
    client = tracking.client
    tags = {}
    for result in results:
        tags[f"pipeline.{result.step}.run_id"] = result.run_id
        tags[f"pipeline.{result.step}.status"] = result.status
    evaluated = next((r for r in results if r.step == "evaluate"), None)
    metrics, outcome = headline(client.get_run(evaluated.run_id) if evaluated else None, results)
    record(tracking, parent_run_id, metrics={**metrics, "artifact_downloads": cache.downloads},
           tags={**tags, **outcome})
    client.log_text(parent_run_id, summary_table(results), "pipeline_summary.txt")
    client.log_dict(parent_run_id, [r.__dict__ for r in results], "pipeline_summary.json")
    rows = [{**r.__dict__, "card": read_card(client, r.run_id)} for r in results]
    client.log_text(parent_run_id, pipeline_card(parent_run_id, diagram(), rows, seconds, status), names.CARD)
