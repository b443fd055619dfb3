"""Which process owns a RUNNING run, whether it is still alive, and what to do with
runs whose process died (SIGKILL, a crashed machine): mark them KILLED, saying why.

Every run this project opens carries its owner: host, PID namespace, pid and the
process's start time (so a recycled pid is not mistaken for the owner). A run owned by
another host, or by another container of this host (another PID namespace), is assumed
alive by owner_alive: from here there is no way to tell. What such an owner holds that
others wait for (a claim, register's lease) carries its heartbeat too, and `lost`
judges it by that (engine/heartbeat.py).
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Optional

from mlflow.entities import RunStatus

from engine import names
from engine.heartbeat import Watch
from engine.store import Tracking

HOST = socket.gethostname()
KILLED = RunStatus.to_string(RunStatus.KILLED)


def _pid_namespace() -> str:
    """The inode number of this process's PID namespace: a pid names a process only there."""
    try:
        return os.readlink("/proc/self/ns/pid").removeprefix("pid:[").removesuffix("]")
    except OSError:
        return ""


PID_NAMESPACE = _pid_namespace()


def _started(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), or
    None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _exists(pid: int) -> bool:
    """Whether a process `pid` exists, also where /proc hides other users' (hidepid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_tags() -> dict[str, str]:
    return {names.HOST: HOST, names.PID_NAMESPACE: PID_NAMESPACE, names.PID: str(os.getpid()),
            names.PID_STARTED: _started(os.getpid()) or ""}


def owner_alive(tags: dict[str, str]) -> bool:
    if tags.get(names.HOST) != HOST or not tags.get(names.PID):
        return True
    if tags.get(names.PID_NAMESPACE, PID_NAMESPACE) != PID_NAMESPACE:  # runs from before the tag: this one
        return True
    pid = int(tags[names.PID])
    started = _started(pid)
    if started is None:  # no such process, or one /proc does not show: its start time is unknown
        return _exists(pid)
    return started == tags.get(names.PID_STARTED)


def on_this_machine(tags: dict[str, str]) -> bool:
    """Whether the owner is a process this one can see: same host, same PID namespace."""
    return (tags.get(names.HOST) == HOST and bool(tags.get(names.PID))
            and tags.get(names.PID_NAMESPACE, PID_NAMESPACE) == PID_NAMESPACE)


def lost(tags: dict[str, str], watch: Watch, key: str) -> Optional[str]:
    """Why the owner of what `tags` describe is gone, or None while it may live. A process of
    this machine is judged at once by its pid (alive is alive, however quiet: a paused
    process too); another machine's by its heartbeat, which `watch` has seen stand still."""
    pid, host = tags.get(names.PID, "?"), tags.get(names.HOST, "?")
    if on_this_machine(tags):
        return None if owner_alive(tags) else f"process {pid} on {host} ended without finishing (killed or crashed)"
    if watch.still(key, tags.get(names.HEARTBEAT)):
        return (f"process {pid} on {host} stopped its heartbeat (no {names.HEARTBEAT} change for "
                f"{watch.grace_seconds:g}s: liveness.grace_seconds); its machine is taken for lost")
    return None


def gone(host: str, pid_namespace: str, pid: int) -> bool:
    """True only when the process is one of this machine's and this PID namespace's, and
    it no longer runs: what another machine or container left is never taken for abandoned."""
    return host == HOST and pid_namespace == PID_NAMESPACE and not _exists(pid)


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
