"""Champion changes reach the app at once: MLflow's model-registry webhooks, verified, and
a reload signal every uvicorn worker sees within a second.

MLflow (3.x, SQL-backed tracking server) POSTs to a subscribed URL when an alias is set on a
model version (`model_version_alias.created`, also when an existing alias moves) or deleted.
Each delivery carries three headers (mlflow.webhooks.constants): X-MLflow-Delivery-Id,
X-MLflow-Timestamp (Unix seconds) and X-MLflow-Signature, "v1," + base64(HMAC-SHA256(secret,
"<delivery id>.<timestamp>.<body>")), the Standard Webhooks scheme. `verify` checks it in
constant time and refuses stale timestamps (replays).

The delivery reaches one worker. That worker bumps a generation file in a folder all workers
share (`ReloadSignal`); each worker stats the file every `interval` seconds (one stat call:
nothing to lock, nothing to read) and reloads when it changed. Polling the registry stays the
fallback where there are no webhooks (file and SQLite stores).

Subscribing is an admin's job on the MLflow server (webhook creation is admin-only):

    HEART_WEBHOOK_SECRET=... python -m serving.webhooks subscribe --url https://app.example/webhooks/mlflow

The server refuses plain http and private or loopback addresses unless it was started with
MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https and MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true (local
development only), and it caches each event's subscriptions for MLFLOW_WEBHOOK_CACHE_TTL
seconds (60): a new subscription may miss events for that long.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Mapping, Optional

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

# The names MLflow's sender uses (mlflow.webhooks.constants), spelled out so the app does not
# import MLflow's server package for four strings.
SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
ALIAS_EVENTS = ("model_version_alias.created", "model_version_alias.deleted")
ALIAS_ENTITY = "model_version_alias"
WEBHOOK_PATH = "/webhooks/mlflow"
SECRET_ENV = "HEART_WEBHOOK_SECRET"
RELOAD_DIR_ENV = "HEART_RELOAD_DIR"
# How old a delivery may be: MLflow retries with backoff for about a minute; older is a replay.
MAX_AGE_SECONDS = 300

log = logging.getLogger("serving")


# --------------------------------------------------------------------------- signatures

def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The X-MLflow-Signature value MLflow sends for this delivery."""
    signed = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: Optional[float] = None,
           max_age: float = MAX_AGE_SECONDS) -> Optional[str]:
    """None when the delivery is signed with `secret` and recent; else why not (for the log
    and the 401, never naming the expected signature)."""
    lowered = {key.lower(): value for key, value in headers.items()}
    delivery_id = lowered.get(DELIVERY_ID_HEADER.lower())
    timestamp = lowered.get(TIMESTAMP_HEADER.lower())
    sent = lowered.get(SIGNATURE_HEADER.lower())
    if not (delivery_id and timestamp and sent):
        return f"missing {SIGNATURE_HEADER}, {TIMESTAMP_HEADER} or {DELIVERY_ID_HEADER} header"
    try:
        age = (time.time() if now is None else now) - int(timestamp)
    except ValueError:
        return f"{TIMESTAMP_HEADER} is not Unix seconds"
    if abs(age) > max_age:
        return f"{TIMESTAMP_HEADER} is {age:.0f} s off (at most {max_age:.0f} s): a replay or a wrong clock"
    expected = sign(secret, delivery_id, timestamp, body).encode()
    # Standard Webhooks allow several space-separated signatures (during a secret rotation).
    if any(hmac.compare_digest(expected, candidate.encode()) for candidate in sent.split()):
        return None
    return "signature does not match"


# --------------------------------------------------------------------------- router

def router(secret: str, on_alias_changed: Callable[[str, str], None], path: str = WEBHOOK_PATH) -> APIRouter:
    """POST `path`: a verified alias event calls on_alias_changed(model name, alias), 200.
    401 for a missing, forged or stale signature; 400 naming the field for a signed body
    that is not an alias event MLflow would send; other signed events are acknowledged (200)
    and ignored."""
    if not secret:
        raise ValueError(f"a webhook secret is required ({SECRET_ENV}): unsigned deliveries would be accepted")
    routes = APIRouter()

    @routes.post(path, summary="MLflow model-registry webhook (alias created/moved/deleted)")
    async def receive(request: Request):
        body = await request.body()
        problem = verify(secret, request.headers, body)
        if problem:
            log.warning(json.dumps({"event": "webhook refused", "reason": problem}))
            return JSONResponse({"detail": f"webhook refused: {problem}"}, status_code=401)
        try:
            event = json.loads(body)
        except ValueError:
            return JSONResponse({"detail": "body: not JSON"}, status_code=400)
        if not isinstance(event, dict):
            return JSONResponse({"detail": "body: expected a JSON object"}, status_code=400)
        if event.get("entity") != ALIAS_ENTITY:
            return {"status": "ignored", "entity": event.get("entity"), "action": event.get("action")}
        data = event.get("data")
        for key in ("name", "alias"):
            if not isinstance(data, dict) or not isinstance(data.get(key), str):
                return JSONResponse({"detail": f"data.{key}: expected a string"}, status_code=400)
        on_alias_changed(data["name"], data["alias"])
        return {"status": "accepted", "name": data["name"], "alias": data["alias"]}

    return routes


# --------------------------------------------------------------------------- reload across workers

class ReloadSignal:
    """A generation file in a folder every worker of one app shares. `bump()` from the worker
    that got the webhook; `watch()` in each worker calls `reload` when the file changed."""

    FILE = "reload-generation"

    def __init__(self, folder: Path | str):
        self.path = Path(folder) / self.FILE

    def bump(self) -> None:
        """Atomic: a new file renamed over the old one, so a watcher sees the old or the new."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.path.with_name(f".{self.FILE}.{os.getpid()}.{uuid.uuid4().hex}")
        scratch.write_text(uuid.uuid4().hex)
        os.replace(scratch, self.path)

    def generation(self) -> Optional[tuple[int, int]]:
        """(inode, mtime in ns) of the file: every bump makes a new inode. None before the first."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    def watch(self, reload: Callable[[], None], stop: threading.Event, interval: float = 0.25,
              since: Optional[tuple[int, int]] = None) -> None:
        """Until `stop`: call `reload` after each bump seen since the generation `since`
        (bumps close together may fold into one reload)."""
        seen = since
        while not stop.wait(interval):
            current = self.generation()
            if current != seen:
                seen = current
                try:
                    reload()
                except Exception as err:  # a failed reload must not end the watch
                    log.error(json.dumps({"event": "reload after webhook failed", "reason": str(err)}))

    def start(self, reload: Callable[[], None], stop: threading.Event, interval: float = 0.25) -> threading.Thread:
        """watch() in a daemon thread, from the generation as it is now: a bump after this
        call returns is never missed."""
        thread = threading.Thread(target=self.watch, args=(reload, stop, interval, self.generation()),
                                  daemon=True, name="reload-signal")
        thread.start()
        return thread


# --------------------------------------------------------------------------- subscribing

def subscribe(client, url: str, secret: str, name: str = "heart-disease-serving"):
    """Create the alias-event webhook `name` pointing at `url`, or update it (URL, events,
    secret) if it exists: running this twice leaves one subscription. Needs an admin."""
    events = list(ALIAS_EVENTS)
    page_token = None
    while True:
        page = client.list_webhooks(page_token=page_token)
        for webhook in page:
            if webhook.name == name:
                return client.update_webhook(webhook.webhook_id, url=url, events=events, secret=secret,
                                             status="ACTIVE")
        page_token = page.token
        if not page_token:
            break
    return client.create_webhook(name=name, url=url, events=events, secret=secret,
                                 description="the FastAPI app reloads its model when an alias moves")


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving.webhooks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    subscribe_cmd = commands.add_parser("subscribe", help="subscribe the app's URL to alias events (admin only)")
    subscribe_cmd.add_argument("--url", required=True, help=f"the app's webhook address, ending in {WEBHOOK_PATH}")
    subscribe_cmd.add_argument("--name", default="heart-disease-serving")
    args = parser.parse_args(argv)
    secret = os.environ.get(SECRET_ENV)
    if not secret:
        parser.error(f"set {SECRET_ENV} to the secret the app verifies with (the same value for both)")
    from mlflow.tracking import MlflowClient

    webhook = subscribe(MlflowClient(), args.url, secret, args.name)
    print(f"webhook {webhook.name} ({webhook.webhook_id}) -> {webhook.url}: {', '.join(map(str, webhook.events))}")


if __name__ == "__main__":
    main()
