"""A real team server for tests: PostgreSQL 15 and `mlflow server --app-name basic-auth` on
free loopback ports in a temp folder, started by scripts/team_server.py, with three users
besides the admin:

    editor   EDIT on the test experiment and on the registered model: runs the pipeline
    reader   READ on both: reads runs, serves the champion, cannot change anything
    (nobody) anonymous requests: 401

Usage in a test module:

    from tests.team_server import team_server  # noqa: F401  (the module-scoped fixture)
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
import requests

from tests.conftest import BIN, CLEVELAND, REPO, Store

_spec = importlib.util.spec_from_file_location("team_server_script", REPO / "scripts" / "team_server.py")
team_server_script = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = team_server_script  # dataclasses look their module up there
_spec.loader.exec_module(team_server_script)

MODEL_NAME = "heart-disease"
EXPERIMENT = "heart-disease-team"
PG_MISSING = "PostgreSQL 15 server binaries (initdb, pg_ctl, postgres) not found: set PG_BIN or install postgresql-15"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class User:
    name: str
    password: str


@dataclass
class RunningTeamServer:
    server: "team_server_script.TeamServer"
    folder: Path
    admin: User
    editor: User
    reader: User
    experiment_id: str
    log_file: Path
    outputs: list[str] = field(default_factory=list)  # every captured stdout/stderr, for the credential scan

    @property
    def uri(self) -> str:
        return self.server.tracking_uri

    @property
    def passwords(self) -> list[str]:
        return [self.admin.password, self.editor.password, self.reader.password]

    def session(self, user: User | None) -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # loopback only, no proxies
        if user is not None:
            session.auth = (user.name, user.password)
        return session

    def store(self, user: User, root: Path) -> Store:
        """conftest's Store on this server: the project's commands run as `user`."""
        root.mkdir(parents=True, exist_ok=True)
        env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
        env.update(
            MLFLOW_TRACKING_URI=self.uri,
            MLFLOW_TRACKING_USERNAME=user.name,
            MLFLOW_TRACKING_PASSWORD=user.password,
            MLFLOW_EXPERIMENT_NAME=EXPERIMENT,
            XDG_CACHE_HOME=str(root / "cache"),
            HEART_DISEASE_DATA_URL=str(CLEVELAND),
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            PYTHONUNBUFFERED="1",
            PGPASSFILE=str(self.server.study_pgpass),  # the Optuna studies' database (hydra.sweeper.storage)
        )
        return TeamStore(root, self.uri, EXPERIMENT, env, server=self)


@dataclass
class TeamStore(Store):
    """A Store whose client logs in, and whose command outputs are kept for the credential scan."""

    server: Optional[RunningTeamServer] = None

    @property
    def client(self):
        """A client logged in as this store's user. MLflow reads credentials from the
        environment at each request, so in this process the last store asked wins."""
        from mlflow.tracking import MlflowClient

        os.environ["MLFLOW_TRACKING_USERNAME"] = self.env["MLFLOW_TRACKING_USERNAME"]
        os.environ["MLFLOW_TRACKING_PASSWORD"] = self.env["MLFLOW_TRACKING_PASSWORD"]
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def _finished(self, result, check):
        self.server.outputs += [result.stdout, result.stderr]
        return super()._finished(result, check)


def _call(session: requests.Session, uri: str, method: str, path: str, **json_body) -> dict:
    response = session.request(method, uri + path, json=json_body or None, timeout=60)
    assert response.status_code == 200, f"{method} {path}: {response.status_code} {response.text}"
    return response.json() if response.text else {}


def grant(running: RunningTeamServer, user: User, resource_type: str, resource_id: str, permission: str) -> None:
    """basic-auth's REST API: the admin grants `permission` on one resource."""
    _call(running.session(running.admin), running.uri, "POST", "/api/3.0/mlflow/users/permissions/grant",
          username=user.name, resource_type=resource_type, resource_id=resource_id, permission=permission)


@pytest.fixture(scope="module")
def team_server(request):
    if team_server_script.find_pg_bin() is None:
        pytest.skip(PG_MISSING)
    # PostgreSQL runs as the user `postgres` when the tests run as root: it must be able to enter
    # the folder, which pytest's own temp folders (0700 under /tmp/pytest-of-root) do not allow.
    folder = Path(tempfile.mkdtemp(prefix="team-server-"))
    os.chmod(folder, 0o711)
    log_file = folder / "mlflow-server.log"
    settings = team_server_script.Settings(
        dir=folder / "server", port=free_port(), pg_port=free_port(), workers=2, log_file=log_file,
        # Webhook deliveries to the tests' own 127.0.0.1 servers (tests/test_webhooks.py), and a
        # new subscription seen at once rather than after MLflow's 60 s cache.
        extra_server_env={"MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
                          "MLFLOW_WEBHOOK_CACHE_TTL": "1"})
    server = team_server_script.TeamServer(settings)
    server.start(timeout=300)
    try:
        admin = User(team_server_script.ADMIN_USERNAME, server.admin_password())
        editor, reader = User("editor", secrets.token_urlsafe(16)), User("reader", secrets.token_urlsafe(16))
        running = RunningTeamServer(server, folder, admin, editor, reader, "", log_file)
        as_admin = running.session(admin)
        for user in (editor, reader):
            _call(as_admin, running.uri, "POST", "/api/2.0/mlflow/users/create",
                  username=user.name, password=user.password)
        running.experiment_id = _call(as_admin, running.uri, "POST", "/api/2.0/mlflow/experiments/create",
                                      name=EXPERIMENT)["experiment_id"]
        for user, permission in ((editor, "EDIT"), (reader, "READ")):
            grant(running, user, "experiment", running.experiment_id, permission)
            grant(running, user, "registered_model", MODEL_NAME, permission)
        yield running
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
