"""A lease on the shared store: one holder at a time among every process and machine
using the store, for as long as the holder lives. register decides the champion and
moves aliases under it (engine/context.py: StepContext.exclusive).

A file lock orders one machine's processes only. What a tracking server (or a SQLite
file) does atomically for all of them is refuse a second experiment of one name: its
database holds experiment names in a unique column. So the lease is taken by creating
the experiment `<name>.lease.<generation>`, and exactly one process gets each
generation. The holder records itself (host, pid, ...) and heartbeats a tag on it; it
releases by tagging it released and deleting it (a deleted experiment keeps its name,
so generations only go up, and it leaves the UI's list). The next process takes
generation n+1 once n is released, or its holder is lost: on this machine, its pid is
gone; on another, its heartbeat stood still for liveness.grace_seconds.

The lease needs nothing but what creating an experiment needs: on a team server any
logged-in user may, and the creator may tag and delete its own. Marking a lost
holder's experiment needs more (EDIT on it): without it, the experiment stays behind.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator, Optional

from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from engine import names
from engine.heartbeat import HEARTBEATS, Watch, beat_value
from engine.liveness import lost, owner_tags

POLL_SECONDS = 0.5
RELEASED = "released"
_DIGITS = 9  # generations are zero-padded, so the newest sorts last by name


def generation_of(prefix: str, experiment_name: str) -> Optional[int]:
    """The generation an experiment's name holds, or None when it is not one of this lease's."""
    rest = experiment_name[len(prefix):] if experiment_name.startswith(prefix) else ""
    return int(rest) if len(rest) == _DIGITS and rest.isdigit() else None


def free(experiment, watch: Watch) -> tuple[bool, Optional[str]]:
    """(may the next generation be taken?, why its holder is lost, when that is why)."""
    if experiment.lifecycle_stage == "deleted" or experiment.tags.get(names.LEASE) == RELEASED:
        return True, None
    reason = lost(experiment.tags, watch, experiment.experiment_id)
    return reason is not None, reason


def _newest(client: MlflowClient, prefix: str):
    """This lease's experiment of the highest generation, deleted or not, or None."""
    # LIKE's `_` matches any character: the exact prefix is checked on what comes back.
    found = client.search_experiments(view_type=ViewType.ALL, filter_string=f"name LIKE '{prefix}%'",
                                      order_by=["name DESC"], max_results=50)
    ours = [e for e in found if generation_of(prefix, e.name) is not None]
    return max(ours, key=lambda e: generation_of(prefix, e.name)) if ours else None


def _mark_lost(client: MlflowClient, experiment, reason: str) -> None:
    with contextlib.suppress(MlflowException):  # another's experiment: EDIT on it may be missing
        client.set_experiment_tag(experiment.experiment_id, names.ERROR, f"{reason}; the lease was taken over")
        client.delete_experiment(experiment.experiment_id)


def acquire(client: MlflowClient, name: str, liveness: DictConfig) -> str:
    """Take the lease `name`; return the id of the experiment that holds it."""
    prefix = f"{name}.lease."
    watch = Watch(liveness.grace_seconds)
    me = owner_tags()
    announced = False
    while True:
        newest = _newest(client, prefix)
        generation = 1
        if newest is not None:
            generation = generation_of(prefix, newest.name) + 1
            may_take, reason = free(newest, watch)
            if reason is not None:
                print(f"{name}: taking over the lease from {newest.name}: {reason}", file=sys.stderr)
                _mark_lost(client, newest, reason)
            if not may_take:
                if not announced:
                    print(f"{name}: waiting for the lease held by process {newest.tags.get(names.PID)} on "
                          f"{newest.tags.get(names.HOST)} ({newest.name})", file=sys.stderr)
                    announced = True
                time.sleep(POLL_SECONDS)
                continue
        wanted = f"{prefix}{generation:0{_DIGITS}d}"
        try:
            return client.create_experiment(wanted, tags={**me, names.HEARTBEAT: beat_value()})
        except MlflowException as err:
            if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
        # Another process took this generation first, unless a retried request of ours did.
        taken = client.get_experiment_by_name(wanted)
        if taken is not None and all(taken.tags.get(k) == v for k, v in me.items()):
            return taken.experiment_id


def release(client: MlflowClient, experiment_id: str) -> None:
    client.set_experiment_tag(experiment_id, names.LEASE, RELEASED)
    with contextlib.suppress(MlflowException):  # released by its tag already; deleting only tidies up
        client.delete_experiment(experiment_id)


@contextlib.contextmanager
def lease(client: MlflowClient, name: str, liveness: DictConfig) -> Iterator[None]:
    """Hold the lease `name` for the block, heartbeating it every liveness.heartbeat_seconds."""
    experiment_id = acquire(client, name, liveness)
    HEARTBEATS.add(f"lease:{experiment_id}",
                   lambda value: client.set_experiment_tag(experiment_id, names.HEARTBEAT, value),
                   liveness.heartbeat_seconds)
    try:
        yield
    finally:
        HEARTBEATS.discard(f"lease:{experiment_id}")
        release(client, experiment_id)
