"""What the docs' screenshot scripts share (scripts/screenshot_ui.py, screenshot_compare.py):
a temp folder with a fresh SQLite store, the pipeline's commands run into it, `mlflow ui` on it on
a free loopback port, and the system Chromium that Playwright drives (no `playwright install`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from playwright.sync_api import Browser, Page, sync_playwright

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = PROJECT_ROOT / ".venv" / "bin"
DEFAULT_DATA = PROJECT_ROOT / "tests" / "data" / "processed.cleveland.data"
EXPERIMENT = "heart-disease"  # profiles/local.yaml experiment_name
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
UI_START_TIMEOUT = 180  # seconds: the server imports all of MLflow, slow on a busy machine


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@contextmanager
def scratch(prefix: str, keep: bool) -> Iterator[tuple[Path, dict]]:
    """A temp folder and the environment the steps and the UI run in: nothing lands in the
    project, no telemetry, and no run or experiment inherited from the caller's shell."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    env = dict(os.environ, TMPDIR=str(tmp), MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
               HEART_DISEASE_DATA_URL=os.environ.get("HEART_DISEASE_DATA_URL", str(DEFAULT_DATA)))
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_REGISTRY_URI"):
        env.pop(name, None)
    try:
        yield tmp, env
    finally:
        if keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def use_fresh_store(tmp: Path, env: dict) -> str:
    """A SQLite store in tmp, its experiment created with its artifact location in tmp too: the
    steps, given an explicit MLFLOW_TRACKING_URI, would let MLflow default to ./mlruns of the
    project folder. Sets MLFLOW_TRACKING_URI in env; returns it."""
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    subprocess.run([str(VENV_BIN / "mlflow"), "experiments", "create", "-n", EXPERIMENT,
                    "-l", str(tmp / "artifacts")],
                   cwd=tmp, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return env["MLFLOW_TRACKING_URI"]


def run_command(module: str, overrides: list[str], tmp: Path, env: dict, log_name: str) -> None:
    """`python -m <module> <overrides>` from the project folder, its output in tmp/<log_name>."""
    log(f"python -m {module} {' '.join(overrides)}")
    started = time.monotonic()
    command_log = tmp / log_name
    with open(command_log, "w") as out:
        result = subprocess.run([str(VENV_BIN / "python"), "-m", module, *overrides],
                                cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        sys.stderr.write(command_log.read_text()[-5000:])
        raise SystemExit(f"{module} failed (exit {result.returncode}); the end of its log is above")
    log(f"{module} done in {time.monotonic() - started:.0f} s")


def start_ui(tracking_uri: str, tmp: Path, env: dict) -> tuple[subprocess.Popen, str]:
    """`mlflow ui` on the store, on a free loopback port, once it answers: (process, base URL)."""
    port = free_port()
    with open(tmp / "ui.log", "w") as ui_log:  # the child keeps its own handle
        ui = subprocess.Popen(
            [str(VENV_BIN / "mlflow"), "ui", "--backend-store-uri", tracking_uri, *ui_options(tmp, port)],
            cwd=tmp, env=env, stdout=ui_log, stderr=subprocess.STDOUT, start_new_session=True)
    return ui, wait_for_ui(ui, port, tmp)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ui_options(tmp: Path, port: int) -> list[str]:
    return ["--artifacts-destination", str(tmp / "mlartifacts"), "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1"]  # one browser is the only client


def start_project_ui(tracking_uri: str, tmp: Path, env: dict) -> tuple[subprocess.Popen, str, str]:
    """What `./run.sh ui` runs (python -m tools.ui), on the store and a free loopback port, once
    it answers: (process, base URL, the address it printed for a user to open)."""
    port = free_port()
    ui_log = open(tmp / "ui.log", "w")  # the server writes to it until stopped
    ui = subprocess.Popen([str(VENV_BIN / "python"), "-m", "tools.ui", *ui_options(tmp, port)],
                          cwd=PROJECT_ROOT, env={**env, "MLFLOW_TRACKING_URI": tracking_uri},
                          stdout=subprocess.PIPE, stderr=ui_log, text=True, start_new_session=True)
    printed = [ui.stdout.readline() for _ in range(2)]
    # The server goes on writing to the pipe: drain it into the log, or it would block when full.
    threading.Thread(target=lambda: [ui_log.write(line) for line in ui.stdout], daemon=True).start()
    address = printed[1].strip()
    if not address.startswith("http://"):
        stop(ui)
        raise SystemExit(f"tools.ui printed no address: {printed}")
    log(f"tools.ui: {printed[0].strip()} {address}")
    return ui, wait_for_ui(ui, port, tmp), address


def wait_for_ui(ui: subprocess.Popen, port: int, tmp: Path) -> str:
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + UI_START_TIMEOUT
    while time.monotonic() < deadline:
        if ui.poll() is not None:
            raise SystemExit(f"mlflow ui exited with code {ui.returncode}; see {tmp / 'ui.log'}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2):
                return base
        except OSError:
            time.sleep(0.3)
    stop(ui)
    raise SystemExit(f"mlflow ui did not answer within {UI_START_TIMEOUT} s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)  # the process group we started (start_new_session)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def running_ui(tracking_uri: str, tmp: Path, env: dict) -> Iterator[str]:
    """The base URL of `mlflow ui` on the store, stopped on the way out."""
    ui, base = start_ui(tracking_uri, tmp, env)
    log(f"mlflow ui: {base}")
    try:
        yield base
    finally:
        stop(ui)


def api(base: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def experiment_id(base: str) -> str:
    return api(base, "/api/2.0/mlflow/experiments/get-by-name?"
               + urllib.parse.urlencode({"experiment_name": EXPERIMENT}))["experiment"]["experiment_id"]


@contextmanager
def chromium(executable: str) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        log(f"chromium {browser.version}")
        try:
            yield browser
        finally:
            browser.close()


def click_if_present(page: Page, selector: str) -> None:
    element = page.locator(selector)
    if element.count():
        element.first.click()


def make_room(page: Page) -> None:
    """The assistant panel (opened on first visit) and the sidebar go."""
    click_if_present(page, '[data-component-id="mlflow.assistant.chat_panel.close"]')
    click_if_present(page, '[data-component-id="mlflow_header.toggle_sidebar_button"]')
