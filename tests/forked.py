"""`python -m <module> <args>` in a process forked from a server that has imported the
libraries once (multiprocessing's forkserver), for tests whose point is a process: one
killed or signalled at a named point, several racing on one store, one judged alive by
its pid. The child is a new process like any other (its own pid, memory, connections,
signal handlers and exit status) that runs the module as `python -m` does and leaves as
the interpreter leaves; only the imports of MLflow, scikit-learn (and skops' scan of it),
pandas, pyarrow, matplotlib, Hydra and Optuna are already done, some 3 CPU s a command.

What needs the interpreter's own start (its start-up time and imports, PYTHON* variables,
`-X` options) or another program in front (`mlflow run`, `unshare`, servers) still execs
a fresh one: tests/test_startup.py, test_up_to_date's import check, tests/test_fast_path.py.

This module is imported by the children to find `python_m`: it imports only the standard
library.
"""

from __future__ import annotations

import atexit
import gc
import io
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
import types
from pathlib import Path
from typing import Optional

# Libraries the project's commands import, loaded once per test worker by its fork server.
# Project modules are not: each command imports its own, as it would in a new interpreter.
PRELOAD = ["tests.forked", "mlflow", "mlflow.store.tracking.sqlalchemy_store", "mlflow.data.pandas_dataset",
           "mlflow.pyfunc", "skops.io", "sklearn.calibration", "pandas", "pyarrow.parquet", "scipy.stats",
           "matplotlib.backends.backend_agg", "seaborn", "hydra.main", "hydra.core.hydra_config", "omegaconf",
           "optuna", "joblib"]
FORKS = multiprocessing.get_context("forkserver")
FORKS.set_forkserver_preload(PRELOAD)
# What a new interpreter puts on sys.path after the script's folder and PYTHONPATH: the
# standard library and site-packages (not pytest's `pythonpath`, nor a model's code folder
# that mlflow.pyfunc.load_model added to this process's path).
_INTERPRETER_PATH = [entry for entry in sys.path if entry.startswith((sys.prefix, sys.base_prefix))]


def python_m(argv: list[str], env: dict[str, str], cwd: str, stdout_path: str, stderr_path: str) -> None:
    """The child: `python -m argv[0] argv[1:]` with `env` in `cwd`, output to the two files
    (the same path for both merges them). Never returns: exits as the interpreter would."""
    gc.freeze()  # the server's imports: a command's collections need not walk them
    _point_at(stdout_path, 1)
    _point_at(stderr_path, 2)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
                                  write_through=True)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.path[:] = [cwd, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep)), *_INTERPRETER_PATH]
    # As `python -m`: argv[0] is "-m" while the module's package is imported, then the
    # module's file, and the module is __main__ for good (atexit handlers see it too).
    sys.argv[:] = ["-m", *argv[1:]]
    sys.modules["__main__"] = types.ModuleType("__main__")
    code = 0
    try:
        runpy._run_module_as_main(argv[0], alter_argv=True)
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:  # Python ends by the signal itself
        traceback.print_exc()
        _leave()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        traceback.print_exc()
        code = 1
    _leave()
    os._exit(code)


def _point_at(path: str, fd: int) -> None:
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    os.dup2(target, fd)
    os.close(target)


def _leave() -> None:
    """What the interpreter does on its way out: wait for non-daemon threads, run the exit
    handlers, flush."""
    threading._shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()


class Command:
    """A started `python_m` child, with the part of subprocess.Popen the tests use."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, output: Optional[Path] = None):
        """Output goes to `output` (stdout and stderr merged) or, when None, to two files
        that communicate() returns."""
        self.args = ["python", "-m", *argv]
        self._folder = None
        if output is None:
            self._folder = tempfile.TemporaryDirectory(prefix="command-")
            self._stdout, self._stderr = (str(Path(self._folder.name) / name) for name in ("stdout", "stderr"))
        else:
            self._stdout = self._stderr = str(output)
        self._process = FORKS.Process(target=python_m, args=(argv, env, str(cwd), self._stdout, self._stderr),
                                      name=" ".join(argv))
        self._process.start()
        self.pid = self._process.pid
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        self.returncode = self._process.exitcode
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        self._process.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, number: int) -> None:
        if self.poll() is None:  # the server reaps a child at once: its pid may be another's by now
            os.kill(self.pid, number)

    def kill(self) -> None:
        if self.poll() is None:
            self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: Optional[float] = None) -> tuple[str, str]:
        try:
            self.wait(timeout)
        except BaseException:  # a timeout, the test's own included: leave no process behind
            self.kill()
            self._process.join()
            raise
        if self._folder is None:
            return "", ""
        # No file: the child died before python_m began (the server's own stderr says why).
        out, err = (Path(path).read_text(errors="backslashreplace") if Path(path).exists() else ""
                    for path in (self._stdout, self._stderr))
        self._folder.cleanup()
        return out, err

    def completed(self, timeout: Optional[float] = None) -> subprocess.CompletedProcess:
        out, err = self.communicate(timeout)
        return subprocess.CompletedProcess(self.args, self.returncode, out, err)


def kill_all() -> None:
    """Every forked process of this test worker still running (a test that failed before
    waiting for it): killed, reaped."""
    for process in FORKS.active_children():
        process.kill()
        process.join()
