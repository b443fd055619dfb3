"""engine/startup.py: a `python -m` program of the project collects rarely while it imports
and skips the collector's walk at exit; a command that works on resumes the usual
collection; a program that merely imports the project's packages is left alone.
engine/heart_disease_mlflow_run.pth, which run.sh installs: `mlflow run` collects as
rarely, and nothing else in the environment changes."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from tests.conftest import REPO

# Runs last at exit (registered first): what the collector looks like once the program ended.
REPORT_AT_EXIT = """
import atexit, gc, sys
atexit.register(lambda: print("gc at exit:", gc.get_threshold(), gc.get_freeze_count() > 0, file=sys.stderr))
"""


def collector_at_exit(tmp_path, *argv: str) -> tuple[tuple[int, int, int], bool]:
    (tmp_path / "sitecustomize.py").write_text(REPORT_AT_EXIT)
    done = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stderr.splitlines() if line.startswith("gc at exit:"))
    thresholds, frozen = line.removeprefix("gc at exit: ").rsplit(" ", 1)
    return tuple(int(n) for n in thresholds.strip("()").split(", ")), frozen == "True"


def test_a_short_program_ends_paused_and_frozen(tmp_path):
    from engine.startup import _PAUSED_THRESHOLDS

    assert collector_at_exit(tmp_path, "-m", "steps.pipeline") == (_PAUSED_THRESHOLDS, True)


def test_a_hydra_command_resumes_the_usual_collection(tmp_path):
    assert collector_at_exit(tmp_path, "-m", "steps.split", "--help") == (gc.get_threshold(), True)


@pytest.mark.parametrize("package", ["steps", "tools", "serving"])
def test_importing_a_package_leaves_the_collector_alone(tmp_path, package):
    assert collector_at_exit(tmp_path, "-c", f"import {package}") == (gc.get_threshold(), False)


# The collector's thresholds now; then whether anything is frozen once the exit handlers ran.
COLLECTOR_NOW_AND_AT_EXIT = """import atexit, gc
now = gc.get_threshold()
atexit._run_exitfuncs()
print(now, gc.get_freeze_count() > 0, sep="|", end="")
"""


def test_run_sh_installed_the_launcher_setting_in_this_environment():
    from engine.startup import MLFLOW_RUN_SETTING, mlflow_run_setting_installed

    assert mlflow_run_setting_installed(), f"run the tests with ./run.sh test, which installs {MLFLOW_RUN_SETTING}"


@pytest.mark.parametrize("program, argv, paused", [
    ("mlflow", ["run", ".", "-e", "main"], True),
    ("mlflow", ["ui"], False),
    ("mlflow", ["models", "serve", "-m", "x"], False),
    ("mlflow", [], False),
    ("other", ["run"], False),
])
def test_only_the_mlflow_run_launcher_collects_rarely_and_freezes_at_exit(tmp_path, program, argv, paused):
    from engine.startup import _PAUSED_THRESHOLDS

    launcher = tmp_path / program  # what the console script's name looks like to site
    launcher.write_text(COLLECTOR_NOW_AND_AT_EXIT)
    done = subprocess.run([sys.executable, str(launcher), *argv], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")  # site reports a failing .pth line on stderr
    assert done.stdout.split("|") == [str(_PAUSED_THRESHOLDS if paused else default_thresholds()), str(paused)]


def test_a_program_given_as_code_is_left_alone():
    done = subprocess.run([sys.executable, "-c", COLLECTOR_NOW_AND_AT_EXIT, "run"], capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.split("|") == [str(default_thresholds()), "False"]


def default_thresholds() -> tuple[int, int, int]:
    """A new interpreter's, without site and so without any .pth file."""
    done = subprocess.run([sys.executable, "-S", "-c", "import gc; print(gc.get_threshold())"],
                          capture_output=True, text=True, timeout=60, check=True)
    return tuple(int(n) for n in done.stdout.strip().strip("()").split(", "))
