"""Shared fixtures: a real MLflow store (SQLite in a temp dir), real subprocesses of
the project's commands, and a real HTTP server on 127.0.0.1 serving real files."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import logging
import os
import runpy
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import warnings
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

# Two pytest-xdist workers keep both cores busy: BLAS and OpenMP threads inside each worker
# and each command a test starts would only contend with them (test_pipeline_e2e alone
# spent 11 % less CPU with one thread each). Set before numpy loads, here and in the
# workers and commands, which inherit the environment.
for _threads in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_threads, "1")

import pytest  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from tests.forked import Command, kill_all  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# The project's Python packages, by role (README: the layout).
CODE_PACKAGES = ("steps", "engine", "domain", "tools", "serving", "heart_disease_model")
CLEVELAND = REPO / "tests" / "data" / "processed.cleveland.data"
# Two repeats of the 5-fold cross-validation instead of ten: for tests that need a
# validated champion, not evaluate's precision (the honesty and scale tests check that).
QUICK_EVALUATE = "evaluate.cv_repeats=2"
BIN = Path(sys.executable).parent


class _Balance(HTMLParser):
    """Checks that every opened element is closed in order (void elements aside), and
    collects every address an element points at (href, src)."""

    VOID = {"meta", "img", "br", "hr", "input", "link"}

    def __init__(self):
        super().__init__()
        self.stack, self.text, self.links = [], [], []

    def handle_starttag(self, tag, attrs):
        self.links += [value or "" for name, value in attrs if name in ("href", "src")]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


@dataclass
class Store:
    """A tracking store and experiment of its own, plus the environment that points
    the project's commands at it (and at a private download cache)."""

    root: Path
    tracking_uri: str
    experiment_name: str
    env: dict[str, str]

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    @property
    def experiment_id(self) -> str:
        return self.client.get_experiment_by_name(self.experiment_name).experiment_id

    def steps(self, module: str, *overrides: str, check: bool = True, extra_env: dict | None = None):
        """`python -m steps.<module> <overrides>` from the project root, in a process of its own
        (tests/forked.py)."""
        return self._forked([f"steps.{module}", *overrides], check, extra_env)

    def tool(self, module: str, *args: str, check: bool = True, extra_env: dict | None = None):
        """`python -m tools.<module> <args>` (sweep, score, monitor, leaderboard) from the project
        root, in a process of its own (tests/forked.py)."""
        return self._forked([f"tools.{module}", *args], check, extra_env)

    def start(self, module: str, *args: str, extra_env: dict | None = None, output: Path | None = None) -> Command:
        """`python -m <module> <args>` started in a process of its own (tests/forked.py), not waited for."""
        return Command([module, *args], {**self.env, **(extra_env or {})}, REPO, output)

    def mlflow_run(self, entry_point: str, overrides: str = "", check: bool = True):
        """`mlflow run <repo> -e <entry point> --env-manager local -P overrides=...`"""
        command = [str(BIN / "mlflow"), "run", str(REPO), "-e", entry_point, "--env-manager", "local",
                   "--experiment-name", self.experiment_name]
        if overrides:
            command += ["-P", f"overrides={overrides}"]
        return self._run(command, check, None, cwd=self.root)

    def in_process(self, module: str, *args: str, check: bool = True,
                   extra_env: dict | None = None) -> subprocess.CompletedProcess:
        """`python -m <module> <args>` run in this process (as_a_command), for tests that check
        what a command says and does, not what happens to its process: no second interpreter
        to start (some 3 CPU s each, most of the suite's time). Faults, signals, concurrency
        and start-up itself keep real processes (`steps`, `tool`)."""
        return self._finished(run_in_process([module, *args], {**self.env, **(extra_env or {})}), check)

    def _forked(self, argv, check, extra_env):
        return self._finished(self.start(*argv, extra_env=extra_env).completed(timeout=900), check)

    def _run(self, command, check, extra_env, cwd=REPO):
        env = {**self.env, **(extra_env or {})}
        return self._finished(subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900),
                              check)

    def _finished(self, result: subprocess.CompletedProcess, check: bool) -> subprocess.CompletedProcess:
        return _checked(result, check)

    def card(self, run_id: str, name: str = "card.html") -> str:
        """A run's HTML card, checked to be well-formed and to point only at data: URLs (its
        figures): MLflow's artifact preview follows no other address, and a downloaded card
        has no store beside it (engine/cards.py). Returns its text."""
        page = open(self.client.download_artifacts(run_id, name, str(self.root / run_id))).read()
        parser = _Balance()
        parser.feed(page)
        assert page.startswith("<!doctype html>") and parser.stack == []
        assert [link for link in parser.links if not link.startswith("data:image/")] == [], name
        return " ".join(parser.text)

    def runs(self, step: str | None = None):
        filters = []
        if step:
            filters.append(f"tags.`pipeline.step` = '{step}'")
        return self.client.search_runs([self.experiment_id], " and ".join(filters), max_results=1000)

    def registry_state(self) -> dict:
        """Every registered model's versions and aliases: what bad data must not change."""
        state = {}
        for model in self.client.search_registered_models():
            versions = sorted(int(v.version) for v in self.client.search_model_versions(f"name = '{model.name}'"))
            state[model.name] = {"versions": versions, "aliases": {k: str(v) for k, v in model.aliases.items()}}
        return state


def _checked(result: subprocess.CompletedProcess, check: bool) -> subprocess.CompletedProcess:
    if check and result.returncode != 0:
        raise AssertionError(f"{result.args} exited {result.returncode}\n"
                             f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def run_in_process(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -m <argv>` with `env`, run in this process: its exit code and what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with as_a_command(argv, env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            if not isinstance(exit_.code, (int, type(None))):  # sys.exit("message"), as Python reports it
                print(exit_.code, file=sys.stderr)
    return subprocess.CompletedProcess(["python", "-m", *argv], code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def as_a_command(argv: list[str], env: dict[str, str]):
    """This process, for the length of one command, set up as `python -m <argv>` started from
    the project root with `env` would be; afterwards everything a command may change is as it
    was: environment, arguments, working folder, signal handlers, logging, warning filters,
    and MLflow's tracking and registry URIs and active experiment."""
    import mlflow
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_env, saved_argv, saved_cwd = dict(os.environ), sys.argv[:], os.getcwd()
    saved_signals = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    root = logging.getLogger()
    saved_logging = root.handlers[:], root.level
    saved_mlflow = tracking_utils._tracking_uri, registry_utils._registry_uri, fluent._active_experiment_id
    # A new process starts with none set: the command's environment and profile decide.
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    fluent._active_experiment_id = None
    os.environ.clear()
    os.environ.update(env)
    sys.argv[:] = argv  # runpy puts the module's file in place of argv[0]
    os.chdir(REPO)
    try:
        with warnings.catch_warnings():
            # runpy runs the module afresh as __main__, as `python -m` does, beside the copy
            # this process may have imported already: what it warns about is what we want.
            warnings.filterwarnings("ignore", "'.*' found in sys.modules after import of package", RuntimeWarning)
            yield
    finally:
        mlflow.set_tracking_uri(saved_mlflow[0])  # these write os.environ: restored next
        mlflow.set_registry_uri(saved_mlflow[1])
        fluent._active_experiment_id = saved_mlflow[2]
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv[:] = saved_argv
        os.chdir(saved_cwd)
        for number, handler in saved_signals.items():
            signal.signal(number, handler)
        root.handlers[:], level = saved_logging
        root.setLevel(level)


def make_store(root: Path, data_url: str = str(CLEVELAND)) -> Store:
    root.mkdir(parents=True, exist_ok=True)
    store = store_at(root, data_url)
    MlflowClient(tracking_uri=store.tracking_uri).create_experiment(store.experiment_name,
                                                                   artifact_location=str(root / "artifacts"))
    return store


def store_at(root: Path, data_url: str = str(CLEVELAND)) -> Store:
    """The Store of the store in `root` (made by make_store)."""
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    name = "heart-disease-test"
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env.update(
        MLFLOW_TRACKING_URI=tracking_uri,
        MLFLOW_EXPERIMENT_NAME=name,
        XDG_CACHE_HOME=str(root / "cache"),
        HEART_DISEASE_DATA_URL=data_url,
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
    )
    return Store(root, tracking_uri, name, env)


@pytest.fixture(scope="session", autouse=True)
def _no_command_left_running():
    """A test that failed before waiting for the commands it started: they end with the session."""
    yield
    kill_all()


@pytest.fixture(scope="session")
def _trained_snapshot(tmp_path_factory) -> tuple[Path, Path]:
    """(where the trained store lives, a copy of it as the default pipeline left it): one
    `main` per test worker instead of one per module."""
    home = tmp_path_factory.mktemp("trained")
    live, snapshot = home / "store", home / "snapshot"
    make_store(live).steps("main", QUICK_EVALUATE)
    shutil.copytree(live, snapshot, symlinks=True)
    return live, snapshot


@pytest.fixture(scope="module")
def trained(_trained_snapshot) -> Store:
    """A store where the default pipeline has run (QUICK_EVALUATE): v1 of heart-disease is
    champion and challenger. Each module gets it as that run left it, restored from the
    worker's copy. It lives at one path per worker because its database and files name
    their own absolute paths; --dist loadfile runs one module at a time on a worker. The
    database is restored through SQLite's backup API, into the same file, so a connection
    this process still holds reads the restored store, not a deleted one."""
    live, snapshot = _trained_snapshot
    for entry in live.iterdir():
        if entry.name != "mlflow.db":
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    for entry in snapshot.iterdir():
        if entry.name != "mlflow.db":
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, live / entry.name)
    with sqlite3.connect(snapshot / "mlflow.db") as source, sqlite3.connect(live / "mlflow.db") as target:
        source.backup(target)
    return store_at(live)


@pytest.fixture(scope="module")
def cfg():
    """The default config, composed as the steps compose it."""
    from hydra import compose, initialize_config_dir

    from engine.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config")


@pytest.fixture
def store(tmp_path) -> Store:
    return make_store(tmp_path / "store")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """Start a real HTTP server on a free loopback port serving a folder.
    Usage: base_url = http_server(folder)."""
    servers = []

    def start(folder: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# The longest modules first: xdist hands whole modules (--dist loadfile) to whichever
# worker is free, in collection order, so a long module collected last would run alone
# at the end while the other worker idles. Seconds measured on 2 cores. test_lost_machines
# spends most of its minute and a half waiting out grace periods: early, the other
# worker's CPU-bound modules fill those waits.
LONGEST_MODULES = ("test_runner_faults", "test_pipeline_e2e", "test_lost_machines", "test_sweep", "test_team_server",
                   "test_serving", "test_promises", "test_score", "test_sites", "test_tracking", "test_honesty",
                   "test_bad_data", "test_monitor", "test_webhooks")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        module = item.module.__name__.rsplit(".", 1)[-1]
        return LONGEST_MODULES.index(module) if module in LONGEST_MODULES else len(LONGEST_MODULES)

    items.sort(key=rank)  # stable: each module keeps its own order
