"""Heartbeats: how a process shows other machines that it still owns what it holds (a
step's claim run, register's lease), and how a waiter tells a lost owner from a slow one.

Another machine cannot see our processes, only the shared store. So the owner's daemon
thread rewrites one tag (names.HEARTBEAT) on each thing it holds every
`liveness.heartbeat_seconds`: a plain tag write, which SQLite and a tracking server's
REST API both take, and which stops when the process dies, whatever kills it.

A waiter does not compare the tag's time with its own clock (two machines' clocks
differ): it notes when it first saw the tag's current value, and takes the owner for
lost once that value has stood still for `liveness.grace_seconds` of its own clock.
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import datetime, timezone
from typing import Callable, Optional


def beat_value() -> str:
    """What a heartbeat writes: the owner's time, for people; waiters only see it change."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Heartbeat:
    """One daemon thread per process that beats for everything the process holds."""

    def __init__(self) -> None:
        self._beats: dict[str, Callable[[str], None]] = {}
        self._interval = 5.0
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._failing = False

    def add(self, key: str, beat: Callable[[str], None], interval: float) -> None:
        """Call `beat(beat_value())` every `interval` seconds until discard(key)."""
        with self._lock:
            self._beats[key] = beat
            self._interval = interval
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
                self._thread.start()

    def discard(self, key: str) -> None:
        with self._lock:
            self._beats.pop(key, None)

    def _loop(self) -> None:
        while True:
            time.sleep(self._interval)
            with self._lock:
                beats = list(self._beats.values())
            for beat in beats:
                try:
                    beat(beat_value())
                except Exception as err:  # the store is away for a moment: the next beat tries again
                    if not self._failing:
                        print(f"heartbeat: could not write to the tracking store ({type(err).__name__}: {err}); "
                              "retrying", file=sys.stderr)
                    self._failing = True
                else:
                    self._failing = False


HEARTBEATS = Heartbeat()


def silence(seen: Optional[tuple[str, float]], value: str, now: float) -> tuple[tuple[str, float], float]:
    """(what to remember, seconds the heartbeat has stood still): `seen` is the value last
    seen and when it was first seen (None: never), `value` the one read now."""
    if seen is None or seen[0] != value:
        return (value, now), 0.0
    return seen, now - seen[1]


class Watch:
    """A waiter's memory of other owners' heartbeats, by the thing they hold."""

    def __init__(self, grace_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.grace_seconds = grace_seconds
        self._clock = clock
        self._seen: dict[str, tuple[str, float]] = {}

    def still(self, key: str, value: Optional[str]) -> bool:
        """Whether the heartbeat of `key` (None: it has none, from a process that predates
        heartbeats) has stood still for the grace period since this waiter first saw it."""
        self._seen[key], quiet = silence(self._seen.get(key), value or "", self._clock())
        return quiet >= self.grace_seconds
