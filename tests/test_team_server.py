"""The project against a real team server (tests/team_server.py: PostgreSQL + mlflow server
with the artifact proxy and basic-auth): `main` and a grid sweep through `mlflow run`, a step
through `profile=server`, the leaderboard, both serving routes, the permission cases, and no
credential anywhere in what the runs and commands leave behind."""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import stat
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from mlflow.exceptions import MlflowException

from engine import names
from tests import test_lost_machines as machines
from tests.conftest import BIN, QUICK_EVALUATE
from tests.team_server import MODEL_NAME, team_server, team_server_script  # noqa: F401  (module-scoped fixture)
from tests.test_serving import PATIENT, Server, request

pytestmark = pytest.mark.e2e


STUDY = "team-study"


@pytest.fixture(scope="module")
def editor_store(team_server, tmp_path_factory):  # noqa: F811
    """`main`, then an Optuna sweep whose study lives in the server's PostgreSQL (as workers
    on several machines would share it), both through `mlflow run`, run by the EDIT user."""
    store = team_server.store(team_server.editor, tmp_path_factory.mktemp("editor"))
    store.mlflow_run("main", QUICK_EVALUATE)
    result = store.mlflow_run("sweep", f"search=logreg hydra.sweeper.n_trials=2 evaluate.cv_repeats=1 "
                                       f"hydra.sweeper.storage={team_server.server.study_storage} "
                                       f"hydra.sweeper.study_name={STUDY}")
    assert "2 of 2 trial(s) finished" in result.stdout, result.stdout
    return store


def test_the_sweep_study_lives_in_postgresql_and_the_leaderboard_ranks_it(editor_store, team_server):  # noqa: F811
    import optuna

    os.environ["PGPASSFILE"] = str(team_server.server.study_pgpass)
    study = optuna.load_study(study_name=STUDY, storage=team_server.server.study_storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2 and all(0.5 < t.value <= 1 for t in complete)
    board = editor_store.tool("leaderboard", "--study", STUDY).stdout
    assert board.count("LogisticRegression") == 2, board  # the study's two trials, not main's model


@pytest.fixture(scope="module")
def reader_store(team_server, tmp_path_factory):  # noqa: F811
    return team_server.store(team_server.reader, tmp_path_factory.mktemp("reader"))


def test_anonymous_and_wrong_password_get_401(team_server):  # noqa: F811
    search = team_server.uri + "/api/2.0/mlflow/experiments/search?max_results=1"
    assert team_server.session(None).get(search, timeout=30).status_code == 401
    wrong = requests.Session()
    wrong.trust_env, wrong.auth = False, (team_server.editor.name, team_server.editor.password + "x")
    assert wrong.get(search, timeout=30).status_code == 401
    assert team_server.session(team_server.reader).get(search, timeout=30).status_code == 200


def test_main_and_sweep_record_datasets_behind_the_artifact_proxy(editor_store):
    client = editor_store.client
    trains = editor_store.runs("train")
    assert len(trains) >= 3  # main's and the two trials'
    for run in trains:
        assert run.data.tags["pipeline.complete"] == "true" and run.info.artifact_uri.startswith("mlflow-artifacts:")
        sources = {d.dataset.name: (d.dataset.source_type, json.loads(d.dataset.source))
                   for d in run.inputs.dataset_inputs}
        assert sources["train"][0] == "http"
        assert sources["train"][1]["url"].startswith(f"{editor_store.tracking_uri}/api/2.0/mlflow-artifacts/artifacts/")
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert champion.run_id in {run.info.run_id for run in trains}


def test_profile_server_reaches_the_same_store_without_mlflow_run(editor_store, team_server):  # noqa: F811
    """`python -m steps.main profile=server`: MLFLOW_SERVER_URI picks the server, nothing else
    points at it, and every step is found complete there and reused."""
    env = {key: value for key, value in editor_store.env.items() if key != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_SERVER_URI"] = team_server.uri
    trains_before = len(editor_store.runs("train"))
    result = replace(editor_store, env=env).steps("main", QUICK_EVALUATE, "profile=server")
    assert sum(": reused run " in line for line in result.stdout.splitlines()) == 7, result.stdout
    assert len(editor_store.runs("train")) == trains_before


def test_reader_reads_runs_and_the_leaderboard_but_cannot_register_or_write(editor_store, reader_store):
    client = reader_store.client
    train = reader_store.runs("train")[0]
    assert client.get_run(train.info.run_id).data.metrics
    registry_before = reader_store.registry_state()

    with pytest.raises(MlflowException) as refused:
        client.create_model_version(MODEL_NAME, train.data.tags["pipeline.model_uri"], run_id=train.info.run_id)
    assert refused.value.get_http_status_code() == 403
    with pytest.raises(MlflowException) as refused:
        client.set_registered_model_alias(MODEL_NAME, "champion", "1")
    assert refused.value.get_http_status_code() == 403
    with pytest.raises(MlflowException) as refused:
        client.create_run(reader_store.experiment_id)
    assert refused.value.get_http_status_code() == 403
    assert reader_store.registry_state() == registry_before

    board = reader_store.tool("leaderboard").stdout
    assert train.info.run_id in board and "champion" in board


@pytest.fixture(scope="module")
def served(editor_store, reader_store, tmp_path_factory):
    """Both serving routes, started by the READ user: loading the champion needs no more.
    `mlflow models serve` finds the server by MLFLOW_TRACKING_URI, the app by `--profile server`."""
    logs = tmp_path_factory.mktemp("serving-logs")
    profile_env = {key: value for key, value in reader_store.env.items() if key != "MLFLOW_TRACKING_URI"}
    profile_env["MLFLOW_SERVER_URI"] = reader_store.tracking_uri
    mlflow_serve = Server([str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL_NAME}@champion",
                           "--env-manager", "local", "--host", "127.0.0.1"], reader_store.env, "/ping", logs,
                          "mlflow-serve")
    try:
        app = Server([sys.executable, "-m", "serving", "--profile", "server", "--poll-seconds", "0"], profile_env,
                     "/health", logs, "fastapi")
    except BaseException:
        mlflow_serve.stop()
        raise
    yield mlflow_serve, app
    mlflow_serve.stop()
    app.stop()
    reader_store.server.outputs += [mlflow_serve.log.read_text(), app.log.read_text()]


def test_both_serving_routes_answer_with_the_champion_from_the_server(served, editor_store):
    mlflow_serve, app = served
    champion = editor_store.client.get_model_version_by_alias(MODEL_NAME, "champion")
    status, answer = request(mlflow_serve.base + "/invocations", {"dataframe_records": [PATIENT]})
    assert status == 200, answer
    assert answer["predictions"][0]["model_version"] == str(champion.version)
    status, answer = request(app.base + "/predict", PATIENT)
    assert status == 200, answer
    assert (answer["model_version"], answer["model_alias"]) == (str(champion.version), "champion")
    assert answer["probability"] == pytest.approx(
        request(mlflow_serve.base + "/invocations",
                {"dataframe_records": [PATIENT]})[1]["predictions"][0]["probability"])


def _text_files(folder: Path):
    for path in folder.rglob("*"):
        if path.is_file():
            yield path, path.read_bytes().decode("utf-8", errors="replace")


def test_no_credential_in_outputs_params_tags_artifacts_or_logs(team_server, editor_store, served,  # noqa: F811
                                                               tmp_path):
    passwords = team_server.passwords
    found: list[str] = []

    def scan(where: str, text: str) -> None:
        found.extend(f"{where}: {user}'s password" for user, password in
                     zip(("admin", "editor", "reader"), passwords) if password in text)

    for number, output in enumerate(team_server.outputs):
        scan(f"command output #{number}", output)
    scan("mlflow server log", team_server.log_file.read_text())
    scan("postgres log", (team_server.server.dir / "postgres.log").read_text())

    client = editor_store.client
    runs = client.search_runs([editor_store.experiment_id], max_results=1000)
    assert len(runs) >= 10  # main's parent and 7 steps, the sweep and its trials
    for run in runs:
        scan(f"run {run.info.run_id} params", json.dumps(run.data.params))
        scan(f"run {run.info.run_id} tags", json.dumps(run.data.tags))
        scan(f"run {run.info.run_id} datasets", " ".join(d.dataset.source for d in run.inputs.dataset_inputs))
        target = tmp_path / run.info.run_id
        for path, text in _text_files(Path(client.download_artifacts(run.info.run_id, "", str(target)))):
            scan(f"run {run.info.run_id} artifact {path.relative_to(target)}", text)
    for version in client.search_model_versions(f"name = '{MODEL_NAME}'"):
        scan(f"model version {version.version}", json.dumps([version.source, version.tags, version.description]))
    assert not found, found
    assert os.stat(team_server.server.admin_password_file).st_mode & 0o777 == 0o600


# --------------------------------------------------------------------------- private files

# What the cluster's owner holds when the tests run as root and PostgreSQL as `postgres`.
POSTGRES_OWNED = ("postgres", "postgres-socket", "postgres.log")


def test_the_servers_folder_logs_and_artifacts_are_readable_by_their_owner_only(team_server, tmp_path):  # noqa: F811
    """Walks the whole folder after an artifact went through the proxy: folders 0700, files
    0600 (or tighter), each owned by us or, in PostgreSQL's own corner, by PostgreSQL's user;
    the folder itself lets PostgreSQL's group pass (0710) when that user is another."""
    client = team_server.store(team_server.admin, tmp_path / "admin").client
    run = client.create_run(team_server.experiment_id)
    client.log_text(run.info.run_id, "only its owner reads this", "private/check.txt")
    client.set_terminated(run.info.run_id)
    folder = team_server.server.dir
    assert list((folder / "artifacts").rglob("check.txt")), "the artifact did not reach the proxy's folder"

    postgres_apart = os.geteuid() == 0
    top = os.stat(folder)
    assert stat.S_IMODE(top.st_mode) == (0o710 if postgres_apart else 0o700)
    if postgres_apart:
        assert top.st_gid == pwd.getpwnam(team_server_script.PG_USER).pw_gid
    wrong = []
    for path in folder.rglob("*"):
        info = path.lstat()
        mode, relative = stat.S_IMODE(info.st_mode), path.relative_to(folder)
        if stat.S_ISSOCK(info.st_mode):  # PostgreSQL's socket: 0777 by design, inside a 0700 folder
            continue
        if (mode != 0o700) if stat.S_ISDIR(info.st_mode) else (mode & 0o077 != 0):
            wrong.append(f"{relative}: {oct(mode)}")
        owner = (pwd.getpwnam(team_server_script.PG_USER).pw_uid if postgres_apart
                 and relative.parts[0] in POSTGRES_OWNED else os.geteuid())
        if info.st_uid != owner:
            wrong.append(f"{relative}: owned by uid {info.st_uid}")
    assert not wrong, wrong
    assert stat.S_IMODE(os.stat(team_server.log_file).st_mode) == 0o600  # mlflow server's output


def test_postgresql_logs_no_statement_text(team_server):  # noqa: F811
    """Failed statements holding a secret, sent as MLflow sends them (a user created twice: an
    INSERT with the password hash) and straight to PostgreSQL (a password for a missing role,
    a secret in a broken statement): none of their text reaches postgres.log."""
    import psycopg2

    marker = "Secret-" + secrets.token_hex(12)
    again = team_server.session(team_server.admin).post(team_server.uri + "/api/2.0/mlflow/users/create",
                                                        json={"username": team_server.editor.name,
                                                              "password": marker}, timeout=60)
    assert again.status_code != 200 and "already exists" in again.text, again.text  # the INSERT failed
    # basic-auth's error names the failed INSERT, parameters included: the hash to look for.
    hashes = re.findall(r"(?:scrypt|pbkdf2)[:$][^'\s,)]+", again.text)

    password = team_server_script.DB_PASSWORD.value(team_server.server.secrets_dir)
    connection = psycopg2.connect(host="127.0.0.1", port=team_server.server.settings.pg_port,
                                  user=team_server_script.DB_ROLE, password=password,
                                  dbname=team_server_script.TRACKING_DB)
    try:
        for statement in (f"ALTER ROLE no_such_role PASSWORD '{marker}'",
                          f"SELECT '{marker}' FROM",  # syntax error: the statement follows the error
                          f"SELECT 'x' || '{marker}"):  # unterminated literal: the message quotes it
            with pytest.raises(psycopg2.Error), connection.cursor() as cursor:
                cursor.execute(statement)
            connection.rollback()
    finally:
        connection.close()

    log = (team_server.server.dir / "postgres.log").read_text()
    assert "database system is ready to accept connections" in log  # the live log, written to
    for secret in (marker, "password_hash", "INSERT INTO users", *hashes):
        assert secret not in log, f"{secret!r} in postgres.log"


# A second machine on the team server: a process in its own UTS and PID namespaces
# (tests/test_lost_machines.py), with a temp folder of its own, where the store's lock
# of a tracking server lives: nothing but the server orders the two machines.


@machines.requires_unshare
def test_a_machine_killed_mid_evaluate_holds_it_on_the_server_for_the_grace_period_only(editor_store, tmp_path):
    overrides = (QUICK_EVALUATE, "model.C=0.0555", *machines.FAST_LIVENESS)
    killed = machines.on_machine_b(editor_store, *overrides, fault="evaluate.started", tmp=tmp_path)
    _, err = killed.communicate(timeout=600)
    assert killed.returncode == 128 + 9, err[-3000:]
    dead = machines.step_runs(editor_store, "evaluate", "machine-b")[0]

    again = machines.here(editor_store, *overrides)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert f"marked run {dead.info.run_id} KILLED: process" in err
    dead = editor_store.client.get_run(dead.info.run_id)
    assert dead.info.status == "KILLED" and "stopped its heartbeat" in dead.data.tags[names.ERROR]
    work = float(machines.step_runs(editor_store, "evaluate")[0].data.tags[names.SECONDS])  # the taken-over run
    waited = machines.step_seconds_in_main(out, "evaluate") - work
    assert machines.GRACE_SECONDS <= waited <= machines.GRACE_SECONDS + 10, waited
    machines.assert_champion_is_the_best(editor_store)


@machines.requires_unshare
def test_two_machines_on_the_server_add_one_version_per_config_and_crown_the_better(editor_store, tmp_path):
    before = machines.versions(editor_store)
    fast = (QUICK_EVALUATE, *machines.FAST_LIVENESS)
    processes = [machines.on_machine_b(editor_store, *fast, "model.C=0.0333", tmp=tmp_path / "b1"),
                 machines.here(editor_store, *fast, "model.C=0.0333"),
                 machines.on_machine_b(editor_store, *fast, "model.C=2.5", tmp=tmp_path / "b2")]
    outputs = [process.communicate(timeout=900) for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    assert machines.versions(editor_store) == before + [max(before) + 1, max(before) + 2]
    machines.assert_champion_is_the_best(editor_store)
