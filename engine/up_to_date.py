"""Is every step of `main` already done? Asked of a SQLite store without importing MLflow.

A `main` that reuses every step computes nothing, so it should cost little more than
composing its config. Through MLflow, it first pays for importing MLflow and its
SQLAlchemy store (about 2 s on 2 cores), which is more than everything else together.
This module asks the store's file the questions the runner asks through MLflow
(engine/runner.py, find_reusable), read-only, with the standard library. For each step,
in the DAG's order:
  - its cache key, computed by the runner's own function (engine/fingerprint.py);
  - the newest complete run with that key: the completion mark, FINISHED, not deleted;
  - whether that run's declared outputs are all on disk at their recorded sizes.

Any doubt answers "not up to date", and `main` then runs as always, through MLflow,
whose answer is the one that counts. Doubts include:
  - a store that is not a local SQLite file;
  - a RUNNING run of this machine: its process may be gone, and the runner marks such
    runs KILLED (engine/liveness.py); or it lives, and may be computing a step;
  - forced steps and pinned upstream runs;
  - artifacts that are not in a local folder;
  - a newest run whose outputs are damaged (the runner marks it so);
  - tables that this version of MLflow did not write.
So this module can make a no-op fast, and cannot make `main` reuse a run the runner
would not (tests/test_up_to_date.py holds it to that).
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import stat
import urllib.parse
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from engine import names
from engine.errors import PipelineError
from engine.fingerprint import cache_key, step_view
from engine.results import StepResult
from engine.store import sqlite_path, tracking_uri_of, wanted_experiment
from steps.pipeline import STEPS

_NEWEST_COMPLETE = """
    SELECT runs.run_uuid, runs.artifact_uri FROM runs
    JOIN tags AS keyed ON keyed.run_uuid = runs.run_uuid AND keyed.key = :key_tag AND keyed.value = :key
    JOIN tags AS marked ON marked.run_uuid = runs.run_uuid AND marked.key = :complete_tag AND marked.value = :mark
    WHERE runs.experiment_id = :experiment_id AND runs.status = 'FINISHED' AND runs.lifecycle_stage = 'active'
    ORDER BY runs.start_time DESC, runs.run_uuid
    LIMIT 1"""


def reused_pipeline(cfg: DictConfig) -> Optional[list[StepResult]]:
    """Every step's run that `main` would reuse, in the DAG's order, when all of them are
    found; None when any step would run, or when this module cannot tell."""
    database = sqlite_path(tracking_uri_of(cfg.profile))
    if database is None or not database.is_file() or list(cfg.force) or any(cfg.upstream.values()):
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)) as store:
            experiment_id = _experiment_id(store, cfg.profile)
            if experiment_id is None or _running_here(store, experiment_id):
                return None
            results: dict[str, StepResult] = {}
            for name, step in STEPS.items():
                upstream_run_id = results[step.upstream].run_id if step.upstream else None
                result = _reusable(store, experiment_id, name, cache_key(step, step_view(cfg, step), upstream_run_id))
                if result is None:
                    return None
                results[name] = result
    except (sqlite3.Error, OSError, ValueError, KeyError, TypeError, PipelineError):
        return None
    return list(results.values())


def _experiment_id(store: sqlite3.Connection, profile: DictConfig) -> Optional[int]:
    """The experiment engine.store.connect will use."""
    chosen_id, name = wanted_experiment(profile)
    column, value = ("experiment_id", chosen_id) if chosen_id else ("name", name)
    found = store.execute(f"SELECT experiment_id FROM experiments WHERE {column} = ? AND lifecycle_stage = 'active'",
                          (value,)).fetchall()
    return found[0][0] if len(found) == 1 else None


def _running_here(store: sqlite3.Connection, experiment_id: int) -> bool:
    """Whether a run of the experiment owned by a process of this machine is RUNNING."""
    return store.execute(
        "SELECT 1 FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid AND tags.key = ? AND tags.value = ? "
        "WHERE runs.experiment_id = ? AND runs.status = 'RUNNING' AND runs.lifecycle_stage = 'active' LIMIT 1",
        (names.HOST, socket.gethostname(), experiment_id)).fetchone() is not None


def _reusable(store: sqlite3.Connection, experiment_id: int, step: str, key: str) -> Optional[StepResult]:
    """The run the runner would reuse for `key`, as a result; None if there is none, or if
    the newest has an output missing or resized (the runner marks that one damaged)."""
    newest = store.execute(_NEWEST_COMPLETE, {"key_tag": names.CACHE_KEY, "key": key, "complete_tag": names.COMPLETE,
                                              "mark": names.COMPLETE_MARK, "experiment_id": experiment_id}).fetchone()
    if newest is None:
        return None
    run_id, artifact_uri = newest
    tags = dict(store.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)))
    if not _outputs_present(store, artifact_uri, json.loads(tags.get(names.OUTPUTS, "{}"))):
        return None
    inputs = {tag[len(names.INPUT):]: value for tag, value in tags.items() if tag.startswith(names.INPUT)}
    return StepResult(step, run_id, "reused", 0.0, json.loads(tags.get(names.SUMMARY, "{}")), inputs)


def _outputs_present(store: sqlite3.Connection, artifact_uri: str, manifest: dict[str, Any]) -> bool:
    """Each output in the manifest is a file of the recorded size (a logged model: each of
    its recorded files), in a local folder."""
    for artifact, record in manifest.items():
        if artifact == names.MODEL:
            folder = _model_folder(store, record["uri"])
            expected = record["files"]
        else:
            folder, expected = _local_folder(artifact_uri), {artifact: record["size"]}
        if folder is None or not all(_has_size(folder / path, size) for path, size in expected.items()):
            return False
    return True


def _model_folder(store: sqlite3.Connection, model_uri: str) -> Optional[Path]:
    """The artifact folder of a logged model (`models:/m-<id>`), if it is a local one."""
    model_id = model_uri.removeprefix("models:/")
    found = store.execute("SELECT artifact_location FROM logged_models "
                          "WHERE model_id = ? AND lifecycle_stage = 'active'", (model_id,)).fetchone()
    return _local_folder(found[0]) if found and model_id != model_uri else None


def _local_folder(uri: str) -> Optional[Path]:
    """The folder an artifact location names when it is on this machine (`/path`,
    `file:///path`); None for anything else (a server, a bucket)."""
    if uri.startswith("/"):
        return Path(uri)
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return Path(urllib.parse.unquote(parsed.path))
    return None


def _has_size(path: Path, size: int) -> bool:
    try:
        found = path.stat()
    except OSError:
        return False
    return stat.S_ISREG(found.st_mode) and found.st_size == size
