"""serving/webhooks.py for real: signatures checked against MLflow's own signer, the router
behind a real uvicorn server on 127.0.0.1, and a real `mlflow server` delivering an alias
webhook to it, after which two watcher processes (standing in for uvicorn workers) reload."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
import requests
import uvicorn
from fastapi import FastAPI
from mlflow.webhooks.delivery import _generate_hmac_signature

from serving.webhooks import (
    DELIVERY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WEBHOOK_PATH,
    Limits,
    ReloadSignal,
    SeenDeliveries,
    router,
    sign,
    subscribe,
    verify,
)
from tests.conftest import BIN, REPO

SECRET = "test-webhook-secret"
LIMITS = Limits()
ALIAS_SET = {"entity": "model_version_alias", "action": "created", "timestamp": "2026-01-01T00:00:00+00:00",
             "data": {"name": "heart-disease", "alias": "champion", "version": "2"}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _signed(body: bytes, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    delivery_id, stamp = str(uuid.uuid4()), str(int(time.time()) if timestamp is None else timestamp)
    return {"Content-Type": "application/json", DELIVERY_ID_HEADER: delivery_id, TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: sign(secret, delivery_id, stamp, body)}


# --------------------------------------------------------------------------- signatures

def test_our_signature_is_mlflows():
    body = json.dumps(ALIAS_SET)
    assert (sign(SECRET, "d-1", "1700000000", body.encode())
            == _generate_hmac_signature(SECRET, "d-1", "1700000000", body))


def test_verify_accepts_a_fresh_signed_delivery_and_names_what_is_wrong_otherwise():
    body = json.dumps(ALIAS_SET).encode()
    headers = _signed(body)
    assert verify(SECRET, headers, body) is None
    assert verify(SECRET, {k.lower(): v for k, v in headers.items()}, body) is None  # header case
    assert verify("another secret", headers, body) == "signature does not match"
    assert verify(SECRET, headers, body.replace(b"champion", b"challenger")) == "signature does not match"
    assert verify(SECRET, {**headers, SIGNATURE_HEADER: "v1,AAAA"}, body) == "signature does not match"
    assert "missing" in verify(SECRET, {k: v for k, v in headers.items() if k != SIGNATURE_HEADER}, body)
    stale = _signed(body, timestamp=int(time.time()) - 3600)
    assert "replay" in verify(SECRET, stale, body)
    assert "Unix seconds" in verify(SECRET, {**headers, TIMESTAMP_HEADER: "yesterday"}, body)
    rotating = {**headers, SIGNATURE_HEADER: f"v1,bm90LWl0 {headers[SIGNATURE_HEADER]}"}
    assert verify(SECRET, rotating, body) is None


def test_router_needs_a_secret(tmp_path):
    with pytest.raises(ValueError, match="secret"):
        router("", lambda name, alias: None, Limits(), SeenDeliveries(tmp_path))


def test_a_delivery_id_is_refused_by_every_worker_until_its_timestamp_is_stale(tmp_path):
    """Two workers' views of one shared folder: an id one of them accepted, the other
    refuses; once the delivery's timestamp has left the window it is forgotten."""
    first_worker, second_worker = SeenDeliveries(tmp_path), SeenDeliveries(tmp_path)
    now = time.time()
    assert first_worker.first_time("d-1", forget_at=now + 300, now=now)
    assert not second_worker.first_time("d-1", forget_at=now + 300, now=now + 1)
    assert second_worker.first_time("d-2", forget_at=now + 300, now=now + 1)
    assert first_worker.first_time("d-1", forget_at=now + 700, now=now + 301)  # forgotten: verify refuses it anyway
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []  # no scratch left


# --------------------------------------------------------------------------- real servers

class Receiver:
    """The router in a FastAPI app, served by uvicorn on a free loopback port; alias events
    bump a ReloadSignal, as serving/app.py's wiring does."""

    def __init__(self, folder):
        self.signal = ReloadSignal(folder)
        self.calls: list[tuple[str, str]] = []
        app = FastAPI()

        def changed(name: str, alias: str) -> None:
            self.calls.append((name, alias))
            self.signal.bump()

        app.include_router(router(SECRET, changed, LIMITS, SeenDeliveries(folder / "deliveries")))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}{WEBHOOK_PATH}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "uvicorn did not start"
            time.sleep(0.05)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def receiver(tmp_path_factory):
    running = Receiver(tmp_path_factory.mktemp("reload"))
    yield running
    running.stop()


def _post(url: str, body: bytes, headers: dict[str, str]) -> requests.Response:
    session = requests.Session()
    session.trust_env = False
    return session.post(url, data=body, headers=headers, timeout=10)


def test_forged_missing_or_stale_signatures_get_401_and_change_nothing(receiver):
    body = json.dumps(ALIAS_SET).encode()
    before = (list(receiver.calls), receiver.signal.generation())
    forged = _signed(body, secret="guessed")
    assert _post(receiver.url, body, forged).status_code == 401
    unsigned = {k: v for k, v in _signed(body).items() if k != SIGNATURE_HEADER}
    answer = _post(receiver.url, body, unsigned)
    assert answer.status_code == 401 and SIGNATURE_HEADER in answer.json()["detail"]
    assert _post(receiver.url, body, _signed(body, timestamp=int(time.time()) - 3600)).status_code == 401
    assert (receiver.calls, receiver.signal.generation()) == before


def test_signed_bodies_the_router_cannot_use_get_400_or_are_ignored(receiver):
    for body, field in ((b"not json", "body"),
                        (json.dumps({**ALIAS_SET, "data": {"alias": "x"}}).encode(), "data.name")):
        answer = _post(receiver.url, body, _signed(body))
        assert answer.status_code == 400 and field in answer.json()["detail"]
    other = json.dumps({"entity": "model_version", "action": "created", "data": {}}).encode()
    assert _post(receiver.url, other, _signed(other)).json()["status"] == "ignored"


def test_a_timestamp_too_long_to_be_seconds_is_refused_not_a_server_error(receiver):
    body = json.dumps(ALIAS_SET).encode()
    headers = _signed(body)
    stamp = "9" * 400  # int() reads it; the age arithmetic overflowed a float (500)
    headers.update({TIMESTAMP_HEADER: stamp,
                    SIGNATURE_HEADER: sign(SECRET, headers[DELIVERY_ID_HEADER], stamp, body)})
    answer = _post(receiver.url, body, headers)
    assert answer.status_code == 401 and "Unix seconds" in answer.json()["detail"]


def test_a_signed_body_nested_too_deep_is_refused_before_parsing(receiver):
    deep = b"[" * 10_000 + b"]" * 10_000  # under the size limit; json.loads raised RecursionError (500)
    answer = _post(receiver.url, deep, _signed(deep))
    assert answer.status_code == 400 and "nested deeper than" in answer.json()["detail"]
    deeper = b"[" * 100_000 + b"]" * 100_000
    assert _post(receiver.url, deeper, _signed(deeper)).status_code == 413


def _status_before_the_body_ends(port: int, head: bytes, body_start: bytes) -> int:
    """Send a request's head and the start of its body, never the rest; the HTTP status the
    server answers with (the test fails on the timeout if it waits for the whole body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head + b"\r\n" + body_start)
        status_line = conn.makefile("rb").readline()
    return int(status_line.split()[1])


def test_a_body_over_the_limit_is_refused_before_it_is_read_whole(receiver):
    head = f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n".encode()
    # Declared: refused from Content-Length alone, unsigned or not.
    assert _status_before_the_body_ends(receiver.port, head + b"Content-Length: 20000000\r\n", b"{") == 413
    # Chunked (no length declared): refused once the limit is passed, the rest never sent.
    chunk = b"a" * 16384
    chunks = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * (LIMITS.max_body_bytes // len(chunk) + 1)
    assert _status_before_the_body_ends(receiver.port, head + b"Transfer-Encoding: chunked\r\n", chunks) == 413
    assert _post(receiver.url, b"{}", _signed(b"{}")).json()["status"] == "ignored"  # the server is still up


def test_a_replayed_delivery_is_refused_within_the_window(receiver):
    body = json.dumps(ALIAS_SET).encode()
    headers = _signed(body)
    calls_before = len(receiver.calls)
    assert _post(receiver.url, body, headers).status_code == 200
    again = _post(receiver.url, body, headers)
    assert again.status_code == 409 and DELIVERY_ID_HEADER in again.json()["detail"]
    assert len(receiver.calls) == calls_before + 1  # acted on once


def _line_within(process: subprocess.Popen, seconds: float) -> str:
    """The process's next output line, or "" if none came in time (the test then fails, not hangs)."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(seconds)
    return lines[0] if lines else ""


WATCHER = """
import sys, threading, time
from serving.webhooks import ReloadSignal
stop = threading.Event()
ReloadSignal(sys.argv[1]).start(lambda: print("reloaded", time.time(), flush=True), stop, interval=0.1)
print("ready", flush=True)
stop.wait(120)
"""


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A plain SQL-backed `mlflow server` (webhooks need a SQL registry; auth is tested in
    test_team_server.py), allowed to deliver to http://127.0.0.1 and seeing new webhooks at once."""
    root = tmp_path_factory.mktemp("webhook-server")
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env.update(MLFLOW_WEBHOOK_ALLOWED_SCHEMES="http,https", MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS="true",
               MLFLOW_WEBHOOK_CACHE_TTL="1", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no GenAI jobs here
    log = root / "server.log"
    process = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                                "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
                                "--port", str(port), "--workers", "1"],
                               env=env, cwd=root, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        assert process.poll() is None, log.read_text()
        assert time.time() < deadline, log.read_text()
        try:
            if requests.get(uri + "/health", timeout=2).ok:
                break
        except requests.RequestException:
            time.sleep(0.5)
    yield uri
    os.killpg(process.pid, signal.SIGTERM)  # the server and its worker
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_an_alias_moved_on_a_real_server_reloads_every_watching_worker(receiver, mlflow_server):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    first = subscribe(client, receiver.url, SECRET)
    again = subscribe(client, receiver.url, SECRET)  # idempotent: still one subscription
    assert again.webhook_id == first.webhook_id and len(list(client.list_webhooks())) == 1

    workers = [subprocess.Popen([sys.executable, "-c", WATCHER, str(receiver.signal.path.parent)], cwd=REPO,
                                stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for worker in workers:
            assert _line_within(worker, 60).strip() == "ready"
        client.create_registered_model("heart-disease")
        version = client.create_model_version("heart-disease", source="s3://bucket/any-model")
        calls_before = len(receiver.calls)
        client.set_registered_model_alias("heart-disease", "champion", version.version)
        lines = [_line_within(worker, 60).split() for worker in workers]
        assert all(line and line[0] == "reloaded" for line in lines), lines
        assert receiver.calls[calls_before:] == [("heart-disease", "champion")]
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
