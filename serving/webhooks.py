"""Champion changes reach the app at once: MLflow's model-registry webhooks, verified, and
a reload signal every uvicorn worker sees within a second.

MLflow (3.x, SQL-backed tracking server) POSTs to a subscribed URL when an alias is set on a
model version (`model_version_alias.created`, also when an existing alias moves) or deleted.
Each delivery carries three headers (mlflow.webhooks.constants): X-MLflow-Delivery-Id,
X-MLflow-Timestamp (Unix seconds) and X-MLflow-Signature, "v1," + base64(HMAC-SHA256(secret,
"<delivery id>.<timestamp>.<body>")), the Standard Webhooks scheme. `verify` checks it in
constant time and refuses stale timestamps; `SeenDeliveries` refuses a delivery id seen
before while its timestamp is still fresh (replays). Sizes and formats are checked before
anything is parsed (`Limits`): a body too long is refused before it is read whole, a
timestamp must be a plain number of seconds, and a body nested too deep is refused
before json.loads recurses into it.

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
import re
import threading
import time
import uuid
from dataclasses import dataclass
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
# Unix seconds as MLflow writes them (str(int(time.time()))): ASCII digits only, and few
# enough that the age arithmetic cannot overflow a float (12 digits reach the year 33658).
UNIX_SECONDS = re.compile(r"[0-9]{1,12}")
# What the nesting depth is counted from: strings (skipped whole, brackets inside them do
# not count) and brackets.
JSON_STRUCTURE = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)

log = logging.getLogger("serving")


@dataclass(frozen=True)
class Limits:
    """What a delivery may be. MLflow's alias events are a few hundred bytes nested three
    deep, and MLflow retries a failed delivery with backoff for about a minute. The app
    reads these from its settings (serving/app.py, HEART_WEBHOOK_*)."""

    max_body_bytes: int = 65536
    max_depth: int = 16
    # How far a delivery's timestamp may be from now; its id is remembered as long.
    max_age_seconds: float = 300.0


# --------------------------------------------------------------------------- signatures

def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The X-MLflow-Signature value MLflow sends for this delivery."""
    signed = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: Optional[float] = None,
           max_age: float = Limits.max_age_seconds) -> Optional[str]:
    """None when the delivery is signed with `secret` and recent; else why not (for the log
    and the 401, never naming the expected signature)."""
    lowered = {key.lower(): value for key, value in headers.items()}
    delivery_id = lowered.get(DELIVERY_ID_HEADER.lower())
    timestamp = lowered.get(TIMESTAMP_HEADER.lower())
    sent = lowered.get(SIGNATURE_HEADER.lower())
    if not (delivery_id and timestamp and sent):
        return f"missing {SIGNATURE_HEADER}, {TIMESTAMP_HEADER} or {DELIVERY_ID_HEADER} header"
    if not UNIX_SECONDS.fullmatch(timestamp):
        return f"{TIMESTAMP_HEADER} is not Unix seconds (at most 12 digits)"
    age = (time.time() if now is None else now) - int(timestamp)
    if abs(age) > max_age:
        return f"{TIMESTAMP_HEADER} is {age:.0f} s off (at most {max_age:.0f} s): a replay or a wrong clock"
    expected = sign(secret, delivery_id, timestamp, body).encode()
    # Standard Webhooks allow several space-separated signatures (during a secret rotation).
    if any(hmac.compare_digest(expected, candidate.encode()) for candidate in sent.split()):
        return None
    return "signature does not match"


# --------------------------------------------------------------------------- bodies and replays

def nesting_depth(body: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest, counted without parsing it
    (json.loads recurses once per level and fails with RecursionError, not ValueError)."""
    depth = deepest = 0
    for token in JSON_STRUCTURE.finditer(body):
        bracket = token.group()
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif bracket in (b"]", b"}"):
            depth -= 1
    return deepest


async def body_within(request: Request, limit: int) -> Optional[bytes]:
    """The request's body, or None when it is longer than `limit` bytes: known from
    Content-Length before any of it is read, else found while streaming it (a chunked body
    declares no length), so a long body is never held whole."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and (len(declared) > len(str(limit)) or int(declared) > limit):
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class SeenDeliveries:
    """The ids of accepted deliveries, one file each in a folder every worker of the app
    shares (a replay sent to another worker is refused too). Each file's mtime is when its
    id may be forgotten: when the delivery's timestamp is too old to pass `verify` anyway."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)

    def first_time(self, delivery_id: str, forget_at: float, now: float) -> bool:
        """Remember `delivery_id` until `forget_at`; False when it is remembered already."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._forget_expired(now)
        # Written aside with its expiry, then linked in: os.link fails if the id is there,
        # and no worker ever sees the entry without its expiry.
        scratch = self.folder / f".{uuid.uuid4().hex}"
        scratch.touch()
        os.utime(scratch, (forget_at, forget_at))
        try:
            os.link(scratch, self.folder / hashlib.sha256(delivery_id.encode()).hexdigest())
        except FileExistsError:
            return False
        finally:
            scratch.unlink()
        return True

    def _forget_expired(self, now: float) -> None:
        for entry in self.folder.iterdir():
            try:
                if not entry.name.startswith(".") and entry.stat().st_mtime < now:
                    entry.unlink()
            except FileNotFoundError:
                pass  # another worker forgot it first


# --------------------------------------------------------------------------- router

def router(secret: str, on_alias_changed: Callable[[str, str], None], limits: Limits, seen: SeenDeliveries,
           path: str = WEBHOOK_PATH) -> APIRouter:
    """POST `path`: a verified alias event calls on_alias_changed(model name, alias), 200.
    413 for a body over limits.max_body_bytes (before it is read whole); 401 for a missing,
    forged or stale signature; 409 for a delivery id accepted before; 400 naming the field
    for a signed body that is not an alias event MLflow would send (nested too deep, not
    JSON, fields missing); other signed events are acknowledged (200) and ignored."""
    if not secret:
        raise ValueError(f"a webhook secret is required ({SECRET_ENV}): unsigned deliveries would be accepted")
    routes = APIRouter()

    @routes.post(path, summary="MLflow model-registry webhook (alias created/moved/deleted)")
    async def receive(request: Request):
        body = await body_within(request, limits.max_body_bytes)
        if body is None:
            return JSONResponse({"detail": f"body: longer than {limits.max_body_bytes} bytes"}, status_code=413)
        problem = verify(secret, request.headers, body, max_age=limits.max_age_seconds)
        if problem:
            log.warning(json.dumps({"event": "webhook refused", "reason": problem}))
            return JSONResponse({"detail": f"webhook refused: {problem}"}, status_code=401)
        forget_at = int(request.headers[TIMESTAMP_HEADER]) + limits.max_age_seconds
        if not seen.first_time(request.headers[DELIVERY_ID_HEADER], forget_at, now=time.time()):
            log.warning(json.dumps({"event": "webhook refused", "reason": "delivery id seen before"}))
            return JSONResponse({"detail": f"{DELIVERY_ID_HEADER}: this delivery was received before (a replay)"},
                                status_code=409)
        if nesting_depth(body) > limits.max_depth:
            return JSONResponse({"detail": f"body: nested deeper than {limits.max_depth} levels"}, status_code=400)
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
