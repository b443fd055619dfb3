"""A team tracking server in one command: PostgreSQL 15, `mlflow server` with its artifact
proxy, and basic-auth.

    ./run.sh server                                  # same as: python scripts/team_server.py
    python scripts/team_server.py --dir /srv/mlflow --port 5000 --pg-port 5433
    python scripts/team_server.py --artifacts-destination s3://team-bucket/mlflow
    python scripts/team_server.py --backend-store-uri postgresql+psycopg2://mlflow@db.internal:5432/mlflow \\
        --auth-database-uri postgresql+psycopg2://mlflow@db.internal:5432/mlflow_auth
    python scripts/team_server.py -- --expose-prometheus /srv/metrics   # after --: more mlflow server options

In --dir (default .server/ in the project) it keeps, readable by their owner only (folders 0700,
files 0600; the processes it starts run with umask 077):
    postgres/   the cluster (initdb on first use), owned by the user `postgres` when run as root,
                like postgres-socket/ and postgres.log; then --dir is 0710, group `postgres`, so that
                PostgreSQL can reach them and list nothing
    artifacts/  the artifact proxy's destination, unless --artifacts-destination says otherwise
    secrets/    one file per secret it generated: the admin password, the Flask secret key, the
                webhook-secret encryption key, the database passwords and their pgpass files
    basic_auth.ini, postgres.log (no statement text: conf/server/postgres.yaml)

Secrets come from the environment when set (MLFLOW_AUTH_ADMIN_PASSWORD, MLFLOW_FLASK_SERVER_SECRET_KEY,
MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY), else from their file, generated on first start. They travel to
the servers through the environment or files, never on a command line, and are never printed.
Ctrl-C or SIGTERM stops mlflow, then PostgreSQL; the next start finds everything where it was.
docs/TEAM_SERVER.md has the rest (permissions, an existing PostgreSQL, object stores).
"""

from __future__ import annotations

import argparse
import base64
import os
import pwd
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlsplit, urlunsplit

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's mlflow sits beside its python
PG_USER = "postgres"  # the unprivileged account PostgreSQL runs as when this runs as root
DB_ROLE = "mlflow"  # the database role mlflow connects as: owns its two databases, no superuser
TRACKING_DB, AUTH_DB = "mlflow", "mlflow_auth"
# Optuna studies that sweep workers on any machine share (hydra.sweeper.storage). Their own role
# and database: a sweep worker's password then opens the studies, not MLflow's tables.
STUDY_ROLE = STUDY_DB = "optuna"
ADMIN_USERNAME = "admin"
AUTH_CACHE_SECONDS = 60
PG_BIN_CANDIDATES = ("/usr/lib/postgresql/15/bin", "/usr/pgsql-15/bin", "/usr/local/pgsql/bin")
POSTGRES_CONF = PROJECT_ROOT / "conf" / "server" / "postgres.yaml"
# What the server keeps (a user's password hash in a log line, other people's artifacts) is
# its owner's: every file and folder it or its processes create is 0600 / 0700.
PRIVATE_UMASK = 0o077


class TeamServerError(RuntimeError):
    """Something the person starting the server must fix; the message says what."""


# --------------------------------------------------------------------------- private files

def private_dir(path: Path, mode: int = 0o700) -> Path:
    """`path` as a folder only its owner may open; an existing one (made by an older version,
    0755) is tightened too."""
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    os.chmod(path, mode)
    return path


def write_private(path: Path, text: str, exclusive: bool = False) -> Path:
    """Write `text` to a file only its owner may read (0600, an existing file's mode included).
    exclusive: fail if it exists (a generated secret is written once)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    descriptor = os.open(path, flags, 0o600)
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    return path


def private_log(path: Path) -> int:
    """A descriptor appending to `path`, which is made 0600 (an older 0644 one too)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(descriptor, 0o600)
    return descriptor


# --------------------------------------------------------------------------- secrets

@dataclass(frozen=True)
class Secret:
    file: str  # under <dir>/secrets/
    env: Optional[str]  # an environment variable that overrides the file
    generate: Callable[[], str]

    def value(self, secrets_dir: Path) -> str:
        """From the environment if set, else the file, written once (0600) when absent."""
        if self.env and os.environ.get(self.env):
            return os.environ[self.env]
        path = secrets_dir / self.file
        if not path.exists():
            private_dir(secrets_dir)
            write_private(path, self.generate(), exclusive=True)
        return path.read_text().strip()


def _password() -> str:
    return secrets.token_urlsafe(24)


def _fernet_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


ADMIN_PASSWORD = Secret("admin-password", "MLFLOW_AUTH_ADMIN_PASSWORD", _password)
FLASK_SECRET_KEY = Secret("flask-secret-key", "MLFLOW_FLASK_SERVER_SECRET_KEY", lambda: secrets.token_hex(32))
# MLflow encrypts webhook secrets in the database with this key. Without one each server process
# invents its own, and after a restart (or in another worker) the stored secrets no longer decrypt.
WEBHOOK_KEY = Secret("webhook-encryption-key", "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY", _fernet_key)
DB_PASSWORD = Secret("postgres-password", None, _password)
STUDY_DB_PASSWORD = Secret("studies-password", None, _password)


# --------------------------------------------------------------------------- PostgreSQL

def find_pg_bin() -> Optional[Path]:
    """The folder holding initdb, pg_ctl and postgres (PG_BIN wins), or None."""
    candidates = [os.environ["PG_BIN"]] if os.environ.get("PG_BIN") else list(PG_BIN_CANDIDATES)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for folder in map(Path, candidates):
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _as_pg_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: then run it as the unprivileged `postgres` user."""
    return ["runuser", "-u", PG_USER, "--", *command] if os.geteuid() == 0 else command


def _give_to_pg_user(path: Path) -> None:
    if os.geteuid() == 0:
        account = pwd.getpwnam(PG_USER)
        os.chown(path, account.pw_uid, account.pw_gid)


def postgres_settings(path: Path = POSTGRES_CONF) -> dict[str, str]:
    """conf/server/postgres.yaml's settings as PostgreSQL spells them (YAML's booleans: on/off)."""
    settings = yaml.safe_load(path.read_text())["settings"]
    return {name: ("on" if value else "off") if isinstance(value, bool) else str(value)
            for name, value in settings.items()}


def postgres_options(port: int, socket_dir: Path, settings: dict[str, str]) -> str:
    """`pg_ctl -o`: a line pg_ctl's shell splits, hence the quoting."""
    options = ["-p", str(port), "-c", "listen_addresses=127.0.0.1", "-k", str(socket_dir)]
    for name, value in settings.items():
        options += ["-c", f"{name}={value}"]
    return " ".join(shlex.quote(option) for option in options)


@dataclass
class Postgres:
    """A cluster of our own in `data_dir`, listening on 127.0.0.1:`port` only, password
    (SCRAM) authentication for every connection."""

    bin_dir: Path
    data_dir: Path
    port: int
    log_file: Path
    socket_dir: Path
    settings: dict[str, str] = field(default_factory=postgres_settings)

    def initdb(self, superuser_password: str) -> bool:
        """Create the cluster unless it exists; True when it was created now."""
        if (self.data_dir / "PG_VERSION").exists():
            return False
        for folder in (self.data_dir, self.socket_dir):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            _give_to_pg_user(folder)
        # initdb reads the password from a file: one in the socket folder, which only the cluster's
        # owner may enter, removed as soon as initdb is done.
        password_file = write_private(self.socket_dir / "initdb-password", superuser_password + "\n")
        _give_to_pg_user(password_file)
        try:
            result = subprocess.run(
                _as_pg_user([str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", PG_USER,
                             "--auth=scram-sha-256", f"--pwfile={password_file}", "--encoding=UTF8",
                             "--locale=C.UTF-8"]),
                capture_output=True, text=True)
        finally:
            password_file.unlink()
        if result.returncode != 0:
            raise TeamServerError(f"initdb failed in {self.data_dir}:\n{result.stdout}{result.stderr}")
        return True

    def start(self) -> None:
        os.close(private_log(self.log_file))
        _give_to_pg_user(self.log_file)  # pg_ctl appends to it as the cluster's owner
        result = subprocess.run(
            _as_pg_user([str(self.bin_dir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data_dir),
                         "-l", str(self.log_file), "-o", postgres_options(self.port, self.socket_dir, self.settings)]),
            capture_output=True, text=True, start_new_session=True)  # Ctrl-C reaches us, not postgres
        if result.returncode != 0:
            tail = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise TeamServerError(f"PostgreSQL did not start on port {self.port}:\n{result.stderr}\n{tail}")

    def running(self) -> bool:
        return subprocess.run(_as_pg_user([str(self.bin_dir / "pg_ctl"), "status", "-D", str(self.data_dir)]),
                              capture_output=True).returncode == 0

    def stop(self) -> None:
        if self.running():
            subprocess.run(_as_pg_user([str(self.bin_dir / "pg_ctl"), "stop", "-w", "-m", "fast",
                                        "-D", str(self.data_dir)]), capture_output=True, start_new_session=True)


def _ensure_databases(port: int, password: str, study_password: str) -> None:
    """The role mlflow connects as and its two databases (tracking + registry, auth users),
    and the studies' role and database. mlflow's role shares the superuser's password: both
    live in the same 0600 file."""
    import psycopg2
    from psycopg2 import sql

    connection = psycopg2.connect(host="127.0.0.1", port=port, user=PG_USER, password=password,
                                  dbname="postgres")
    connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with connection.cursor() as cursor:
            for role, role_password, databases in ((DB_ROLE, password, (TRACKING_DB, AUTH_DB)),
                                                   (STUDY_ROLE, study_password, (STUDY_DB,))):
                cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
                if cursor.fetchone() is None:
                    cursor.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(role)),
                                   (role_password,))
                for database in databases:
                    cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                    if cursor.fetchone() is None:
                        cursor.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                            sql.Identifier(database), sql.Identifier(role)))
    finally:
        connection.close()


def _pgpass(path: Path, port: int, role: str, password: str) -> Path:
    """libpq's password file (0600): the database URIs then carry no password."""
    return write_private(path, f"127.0.0.1:{port}:*:{role}:{password}\n")


# --------------------------------------------------------------------------- mlflow server

def redacted(uri: str) -> str:
    """A URI fit to print: any password in it replaced by ***."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def write_auth_config(path: Path, database_uri: str, default_permission: str) -> None:
    """basic-auth's ini. The admin password is not in it: it reaches mlflow through the
    environment (MLFLOW_AUTH_ADMIN_PASSWORD), and only matters when the admin is first created."""
    write_private(
        path,
        "[mlflow]\n"
        f"default_permission = {default_permission}\n"
        f"database_uri = {database_uri}\n"
        f"admin_username = {ADMIN_USERNAME}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # A password check (PBKDF2) costs the server most of a second of CPU, and a pipeline step makes
        # hundreds of requests: each worker remembers a checked (user, password) this long. A changed
        # password or deleted user is refused by the other workers at most this much later.
        f"auth_cache_ttl_seconds = {AUTH_CACHE_SECONDS}\n")


@dataclass
class Settings:
    dir: Path = PROJECT_ROOT / ".server"
    host: str = "127.0.0.1"
    port: int = 5000
    pg_port: int = 5433
    artifacts_destination: Optional[str] = None  # default: <dir>/artifacts
    backend_store_uri: Optional[str] = None  # an existing database; default: our own PostgreSQL
    auth_database_uri: Optional[str] = None  # default: our PostgreSQL, or sqlite in <dir> with an existing one
    # Logged-in users may read every experiment and model: a shared server exists so the team sees each
    # other's runs. Changing anything needs a grant (EDIT/MANAGE) or being its creator. Anonymous: 401.
    default_permission: str = "READ"
    workers: Optional[int] = None  # mlflow's default (4) when None
    extra_server_args: list[str] = field(default_factory=list)
    extra_server_env: dict[str, str] = field(default_factory=dict)  # e.g. webhook settings for tests
    log_file: Optional[Path] = None  # mlflow's output; None: this terminal


class TeamServer:
    """Start with start(), stop with stop(); or `with TeamServer(settings) as server:`."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.dir = settings.dir.resolve()
        self.secrets_dir = self.dir / "secrets"
        self.postgres: Optional[Postgres] = None
        self.mlflow: Optional[subprocess.Popen] = None
        self._stopping = threading.Lock()

    @property
    def tracking_uri(self) -> str:
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "::") else self.settings.host
        return f"http://{host}:{self.settings.port}"

    @property
    def admin_password_file(self) -> Optional[Path]:
        """Where the admin password is kept; None when it came from the environment."""
        return None if os.environ.get(ADMIN_PASSWORD.env) else self.secrets_dir / ADMIN_PASSWORD.file

    def admin_password(self) -> str:
        return ADMIN_PASSWORD.value(self.secrets_dir)

    @property
    def study_pgpass(self) -> Path:
        """The pgpass file that lets sweep workers into the studies' database (and nothing else)."""
        return self.secrets_dir / "studies.pgpass"

    @property
    def study_storage(self) -> Optional[str]:
        """The Optuna storage URL for hydra.sweeper.storage (no password in it: libpq reads
        it from PGPASSFILE); None when the server uses an existing database."""
        if self.settings.backend_store_uri:
            return None
        return f"postgresql+psycopg2://{STUDY_ROLE}@127.0.0.1:{self.settings.pg_port}/{STUDY_DB}"

    @property
    def artifacts(self) -> str:
        return self.settings.artifacts_destination or str(self.dir / "artifacts")

    def _prepare_dir(self) -> None:
        private_dir(self.dir)
        if os.geteuid() == 0 and not self.settings.backend_store_uri:
            # PostgreSQL runs as `postgres` and must reach its folders in here: its group may pass
            # through (x), never list or read.
            os.chown(self.dir, -1, pwd.getpwnam(PG_USER).pw_gid)
            private_dir(self.dir, 0o710)
        private_dir(self.secrets_dir)
        if not self.settings.artifacts_destination:
            private_dir(self.dir / "artifacts")  # before mlflow makes it; an older 0755 one too

    def _database_uris(self, env: dict[str, str]) -> tuple[str, str]:
        """(tracking store URI, auth store URI); starts our PostgreSQL when none was given."""
        s = self.settings
        if s.backend_store_uri:
            auth = s.auth_database_uri or f"sqlite:///{self.dir / 'basic_auth.db'}"
            return s.backend_store_uri, auth
        bin_dir = find_pg_bin()
        if bin_dir is None:
            raise TeamServerError("PostgreSQL 15 server binaries (initdb, pg_ctl, postgres) not found: install them "
                                  "(e.g. apt-get install postgresql-15), set PG_BIN to their folder, or pass "
                                  "--backend-store-uri for an existing PostgreSQL")
        if os.geteuid() == 0:
            reachable = subprocess.run(["runuser", "-u", PG_USER, "--", "test", "-x", str(self.dir)]).returncode == 0
            if not reachable:
                raise TeamServerError(f"running as root, PostgreSQL runs as '{PG_USER}', which cannot enter "
                                      f"{self.dir}: choose a --dir whose parent folders it may traverse (chmod o+x)")
        db_password = DB_PASSWORD.value(self.secrets_dir)
        postgres = Postgres(bin_dir, self.dir / "postgres", s.pg_port, self.dir / "postgres.log",
                            self.dir / "postgres-socket")
        created = postgres.initdb(db_password)
        if postgres.running():  # not ours to stop, then
            raise TeamServerError(f"the PostgreSQL cluster in {postgres.data_dir} is already running: "
                                  f"another team server uses this --dir (or is still stopping)")
        self.postgres = postgres
        postgres.start()
        _ensure_databases(s.pg_port, db_password, STUDY_DB_PASSWORD.value(self.secrets_dir))
        if created:
            print(f"Created a PostgreSQL cluster in {postgres.data_dir}", flush=True)
        env["PGPASSFILE"] = str(_pgpass(self.secrets_dir / "pgpass", s.pg_port, DB_ROLE, db_password))
        _pgpass(self.study_pgpass, s.pg_port, STUDY_ROLE, STUDY_DB_PASSWORD.value(self.secrets_dir))
        base = f"postgresql+psycopg2://{DB_ROLE}@127.0.0.1:{s.pg_port}"
        return f"{base}/{TRACKING_DB}", s.auth_database_uri or f"{base}/{AUTH_DB}"

    def start(self, timeout: float = 180) -> None:
        s = self.settings
        self._prepare_dir()
        env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_TRACKING_")}
        # MLflow 3's job runner (huey consumer processes beside the server) runs GenAI jobs only
        # (scorers, evaluations, prompt optimization): the project submits none. Off unless asked for.
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        try:
            backend_uri, auth_uri = self._database_uris(env)
            artifacts = self.artifacts
            auth_ini = self.dir / "basic_auth.ini"
            write_auth_config(auth_ini, auth_uri, s.default_permission)
            env.update({
                "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
                ADMIN_PASSWORD.env: self.admin_password(),
                FLASK_SECRET_KEY.env: FLASK_SECRET_KEY.value(self.secrets_dir),
                WEBHOOK_KEY.env: WEBHOOK_KEY.value(self.secrets_dir),
                **s.extra_server_env,
            })
            command = [str(BIN / "mlflow"), "server", "--backend-store-uri", backend_uri,
                       "--artifacts-destination", artifacts, "--app-name", "basic-auth",
                       "--host", s.host, "--port", str(s.port)]
            if s.workers:
                command += ["--workers", str(s.workers)]
            command += s.extra_server_args
            # Its own session: a Ctrl-C reaches this process, which then stops mlflow before PostgreSQL.
            output = private_log(s.log_file) if s.log_file else None
            try:
                self.mlflow = subprocess.Popen(command, env=env, cwd=self.dir, start_new_session=True,
                                               umask=PRIVATE_UMASK, stdout=output,
                                               stderr=subprocess.STDOUT if output else None)
            finally:
                if output is not None:
                    os.close(output)  # the child holds its own copy
            self._wait_until_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.mlflow.poll() is not None:
                raise TeamServerError(f"mlflow server exited with code {self.mlflow.returncode}; its output: "
                                      f"{self.settings.log_file or 'above'}")
            try:
                with urllib.request.urlopen(self.tracking_uri + "/health", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        raise TeamServerError(f"mlflow server did not answer on {self.tracking_uri} within {timeout:.0f} s")

    def stop(self) -> None:
        """mlflow first (it holds connections), then PostgreSQL. Safe to call twice."""
        with self._stopping:
            if self.mlflow is not None and self.mlflow.poll() is None:
                os.killpg(self.mlflow.pid, signal.SIGTERM)  # the server and its uvicorn workers
                try:
                    self.mlflow.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(self.mlflow.pid, signal.SIGKILL)
                    self.mlflow.wait()
            self.mlflow = None
            if self.postgres is not None:
                self.postgres.stop()
                self.postgres = None

    def __enter__(self) -> "TeamServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def how_to_log_in(self) -> str:
        where = (f"in {self.admin_password_file} (readable by its owner only)" if self.admin_password_file
                 else f"the one you set in {ADMIN_PASSWORD.env}")
        return (f"MLflow tracking server: {self.tracking_uri}  (UI and REST API, basic auth)\n"
                f"  artifacts: {redacted(self.artifacts)}\n"
                f"  admin user: {ADMIN_USERNAME}; password: {where}\n"
                f"  point the project at it:\n"
                f"    export MLFLOW_TRACKING_URI={self.tracking_uri}   # or MLFLOW_SERVER_URI=... with profile=server\n"
                f"    export MLFLOW_TRACKING_USERNAME=<user> MLFLOW_TRACKING_PASSWORD=<password>\n"
                + (f"  sweep workers share Optuna studies in this PostgreSQL (it listens on loopback: from another\n"
                   f"  machine, first `ssh -N -L {self.settings.pg_port}:127.0.0.1:{self.settings.pg_port} "
                   f"<this host>`):\n"
                   f"    export PGPASSFILE={self.study_pgpass}   # a copy of it on each worker's machine\n"
                   f"    ./run.sh sweep search=logreg hydra.sweeper.storage={self.study_storage} "
                   f"hydra.sweeper.study_name=<name>\n" if self.study_storage else "")
                + "  create team users and grants: docs/TEAM_SERVER.md. Ctrl-C stops the server.")


# --------------------------------------------------------------------------- command line

def parse_args(argv: Optional[list[str]] = None) -> Settings:
    parser = argparse.ArgumentParser(prog="python scripts/team_server.py",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Settings()
    parser.add_argument("--dir", type=Path, default=defaults.dir, help="where the cluster, artifacts and secrets live")
    parser.add_argument("--host", default=defaults.host,
                        help="bind address (default: loopback; put TLS in front before 0.0.0.0: basic auth "
                             "sends passwords with every request)")
    parser.add_argument("--port", type=int, default=defaults.port, help="the tracking server's port")
    parser.add_argument("--pg-port", type=int, default=defaults.pg_port, help="our PostgreSQL's port (127.0.0.1)")
    parser.add_argument("--artifacts-destination", help="any URI mlflow accepts (s3://..., gs://..., a folder); "
                                                        "default: <dir>/artifacts")
    parser.add_argument("--backend-store-uri",
                        help="an existing database instead of starting PostgreSQL, e.g. "
                             "postgresql+psycopg2://mlflow@db:5432/mlflow (password in ~/.pgpass or PGPASSFILE)")
    parser.add_argument("--auth-database-uri",
                        help="where basic-auth keeps users and grants (default: a second database of our "
                             "PostgreSQL; with --backend-store-uri, <dir>/basic_auth.db)")
    parser.add_argument("--default-permission", default=defaults.default_permission,
                        choices=["READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS"],
                        help="what a logged-in user may do without a grant (default READ)")
    parser.add_argument("--workers", type=int, help="mlflow server worker processes (default: mlflow's, 4)")
    parser.add_argument("extra", nargs="*", help="after --: more `mlflow server` options")
    args = parser.parse_args(argv)
    return Settings(dir=args.dir, host=args.host, port=args.port, pg_port=args.pg_port,
                    artifacts_destination=args.artifacts_destination, backend_store_uri=args.backend_store_uri,
                    auth_database_uri=args.auth_database_uri, default_permission=args.default_permission,
                    workers=args.workers, extra_server_args=args.extra)


def main(argv: Optional[list[str]] = None) -> int:
    server = TeamServer(parse_args(argv))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        server.start()
    except TeamServerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(server.how_to_log_in(), flush=True)
    try:
        while not stop.wait(1):
            if server.mlflow is None or server.mlflow.poll() is not None:
                print("mlflow server stopped on its own; stopping PostgreSQL", file=sys.stderr)
                return 1
    finally:
        server.stop()
        print("Stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
