"""Garbage collection while a command starts, and when it ends.

Importing MLflow, its SQLAlchemy store and pandas makes some 280,000 objects that live as
long as the process. CPython's collector, tuned for programs that make and drop objects,
walks them again and again while they are being made (669 collections, 0.5 s of the 2.2 s
that importing those three took here), and once more at exit, only to free them all
(0.3-0.4 s). So:

- `pause()`: the package of the module that runs as the program (`python -m steps.main`,
  `python -m tools.score`, `python -m serving`) calls it first thing. Python sets
  sys.argv[0] to "-m" only while it locates the module to run, so a package that a test
  or another program imports leaves the collector alone. Paused, the collector runs every
  100,000 new objects instead of every 700: rarely, never unbounded. At exit everything is
  frozen (gc.freeze: out of the collector's sight), so the interpreter frees memory
  without walking it first.
- `resume()`: a command that works on after its start-up calls it once its imports are
  made (engine.cli.launch for every Hydra command, the app before it serves). What exists
  then is frozen, as CPython's docs advise before a fork, and the usual thresholds come
  back for the work. A short command (the leaderboard, the diagram) just ends paused.

The price: cyclic garbage still alive at exit is not collected, so no `__del__` of it
runs; the project closes its files and ends its runs explicitly, not at exit.

`mlflow run`, MLflow's launcher, is paused the same way by heart_disease_mlflow_run.pth
beside this module, which run.sh installs into .venv: that process imports nothing of
ours.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
from typing import Optional

_PAUSED_THRESHOLDS = (100_000, 50, 100)
_thresholds_before_pause: Optional[tuple[int, int, int]] = None
# What run.sh copies into .venv's site-packages for `mlflow run` (its comment says why).
MLFLOW_RUN_SETTING = os.path.join(os.path.dirname(os.path.abspath(__file__)), "heart_disease_mlflow_run.pth")


def mlflow_run_setting_installed() -> bool:
    """Whether this interpreter's site-packages holds the repository's MLFLOW_RUN_SETTING as is."""
    import sysconfig

    installed = os.path.join(sysconfig.get_path("purelib"), os.path.basename(MLFLOW_RUN_SETTING))
    if not os.path.isfile(installed):
        return False
    with open(MLFLOW_RUN_SETTING, "rb") as wanted, open(installed, "rb") as found:
        return wanted.read() == found.read()


def pause() -> None:
    """Collect rarely while the program imports; only when this import is the start of a
    `python -m` program."""
    global _thresholds_before_pause
    if sys.argv[:1] != ["-m"] or _thresholds_before_pause is not None:
        return
    _thresholds_before_pause = gc.get_threshold()
    atexit.register(gc.freeze)
    gc.set_threshold(*_PAUSED_THRESHOLDS)


def resume() -> None:
    """Freeze what the imports made and collect as usual from here on. Does nothing unless
    pause() paused."""
    global _thresholds_before_pause
    if _thresholds_before_pause is None:
        return
    gc.freeze()
    gc.set_threshold(*_thresholds_before_pause)
    _thresholds_before_pause = None
