"""Which process owns a RUNNING run, whether it is still alive, and what to do with
runs whose process died (SIGKILL, a crashed machine): mark them KILLED, saying why.

Every run this project opens carries its owner: host, pid and the process's start
time (so a recycled pid is not mistaken for the owner). A run owned by another host
is assumed alive: from here there is no way to tell.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Optional

from mlflow.entities import RunStatus

from steps import names
from steps.store import Tracking

HOST = socket.gethostname()
KILLED = RunStatus.to_string(RunStatus.KILLED)


def _started(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), or
    None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_tags() -> dict[str, str]:
    return {names.HOST: HOST, names.PID: str(os.getpid()), names.PID_STARTED: _started(os.getpid()) or ""}


def owner_alive(tags: dict[str, str]) -> bool:
    if tags.get(names.HOST) != HOST or not tags.get(names.PID):
        return True
    return _started(int(tags[names.PID])) == tags.get(names.PID_STARTED)


def gone_from_this_host(host: str, pid: int) -> bool:
    """True only when `host` is this machine and no process `pid` runs on it: what another
    machine's process left (a shared folder) is never taken for abandoned."""
    return host == HOST and _started(pid) is None


def reap_dead_runs(tracking: Tracking) -> list[str]:
    """Mark KILLED every RUNNING run of the experiment whose owner on this host is gone."""
    runs = tracking.client.search_runs(
        [tracking.experiment_id],
        f"attributes.status = 'RUNNING' and tags.`{names.HOST}` = '{HOST}'",
        max_results=1000,
    )
    reaped = []
    for run in runs:
        if owner_alive(run.data.tags):
            continue
        tracking.client.set_tag(run.info.run_id, names.ERROR,
                                f"process {run.data.tags[names.PID]} on {HOST} ended without finishing this run "
                                f"(killed or crashed); marked KILLED by process {os.getpid()}")
        tracking.client.set_terminated(run.info.run_id, KILLED)
        reaped.append(run.info.run_id)
    return reaped


class OpenRuns:
    """The runs this process has opened and not yet ended, so a signal can end them all."""

    def __init__(self) -> None:
        self._runs: dict[str, Tracking] = {}
        self._lock = threading.Lock()

    def add(self, tracking: Tracking, run_id: str) -> None:
        with self._lock:
            self._runs[run_id] = tracking

    def discard(self, run_id: str) -> None:
        with self._lock:
            self._runs.pop(run_id, None)

    def end_all(self, status: str, error: str) -> None:
        with self._lock:
            runs, self._runs = dict(self._runs), {}
        for run_id, tracking in runs.items():
            tracking.client.set_tag(run_id, names.ERROR, error)
            tracking.client.set_terminated(run_id, status)


OPEN_RUNS = OpenRuns()
