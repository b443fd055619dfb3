"""Named points where the fault tests stop a process, as a crash or a kill would.

Off unless HEART_DISEASE_FAULT names a point: `HEART_DISEASE_FAULT=train.before_complete`
sends SIGKILL to this process there; `...=train.before_complete:TERM` (or `:INT`) sends
that signal instead, and `:STOP` pauses it there until it gets SIGCONT (to order two
processes' steps in a race). The runner, register and score call `point(name)` at each
named point; `python -m engine.faults` lists them.
"""

from __future__ import annotations

import os
import signal

from engine.names import FAULT_ENV

# A step passes these in this order (engine/runner.py): `claims_read` on each pass of its
# claim's look-ups, between reading live claims and reading complete runs (a forced step
# has no claim to look up), then the points between its writes.
STEP_POINTS = ("claims_read", "started", "outputs_written", "before_complete", "after_complete")
# register also passes these, between creating a version and publishing it.
REGISTER_POINTS = ("version_created", "version_published")
# score (pandas engine) passes this after each batch it writes to its unfinished output.
SCORE_POINTS = ("score.batch_written",)


def point(name: str) -> None:
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    where, _, signal_name = wanted.partition(":")
    if where == name:
        os.kill(os.getpid(), getattr(signal, f"SIG{signal_name or 'KILL'}"))


def all_points(step_names) -> list[str]:
    return [f"{step}.{where}" for step in step_names for where in STEP_POINTS] + \
        [f"register.{where}" for where in REGISTER_POINTS] + list(SCORE_POINTS)


if __name__ == "__main__":
    from steps.pipeline import STEPS

    print("\n".join(all_points(STEPS)))
