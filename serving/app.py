"""The origin system's API on the pipeline's model: POST /predict, GET /model-info,
GET /health, plus POST /reload to pick up a new champion without a restart.

    python -m serving                      # 127.0.0.1:8000, models:/heart-disease@champion
    python -m serving --alias challenger --port 8001

The answers come from the same MLflow pyfunc `mlflow models serve` loads, so both
check inputs with the model's own codebook rules and answer the same.
The request schema here only fixes the shape (the 13 fields, JSON numbers or null,
finite, nothing else: 422 otherwise); codes and ranges are the model's to judge (400).

It serves what it was asked for or says it does not: the VALIDATED version behind the
registry alias, else /health and /predict answer 503 with the reason. The latest train
run or an exported directory are served only when asked (`--fallback run,dir`), and
then /health says "fallback" and every answer names its source. While the alias's version
is loading or failed to load, the version loaded before answers, /health says "degraded"
and names both versions, and no answer claims the alias.
"""


import json
import logging
import os
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import pandas as pd
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from mlflow.exceptions import MlflowException
from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, Field, create_model

from engine import names, seal
from engine.logged_model import load_pyfunc
from engine.redaction import redact
from engine.store import Tracking, connect, latest_complete, load_profile, tracking_uri_of
from serving import metrics, webhooks
from serving.inference_log import InferenceLog

log = logging.getLogger("serving")
LOADING = "loading: the first attempt to load the model is under way"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
ANSWER_KEYS = ("prediction", "probability", "confidence", "risk_level")
# Said beside `"explanation": null` by a model version logged before answers could be explained.
NOT_EXPLAINABLE_VERSION = "this model version was logged before answers could be explained"


@dataclass
class Settings:
    profile: str = "local"
    model_name: str = "heart-disease"
    alias: str = "champion"
    local_model_dir: str = str(PROJECT_ROOT / "serving" / "model")
    max_batch_rows: int = 10000
    # How often each worker checks whether the alias moved (0: only POST /reload).
    poll_seconds: float = 30.0
    # What may be served when the alias cannot be: "" (nothing), "run" (the latest complete
    # train run), "dir" (local_model_dir), or both in order: "run,dir".
    fallback: str = ""
    # While nothing (or only a fallback) is served, how often to try the registry again.
    retry_seconds: float = 5.0
    # Opt-in: a folder for the inference log (serving/inference_log.py; patient data).
    log_inputs: str = ""
    # Requests with at most this many patients are scored on the event loop (sub-millisecond);
    # larger ones in a worker thread, so that the worker keeps reading other requests meanwhile.
    inline_rows: int = 100
    # Registry webhooks (serving/webhooks.py): the longest body read, the deepest JSON
    # parsed, and how far a delivery's timestamp may be from now.
    webhook_max_bytes: int = webhooks.Limits.max_body_bytes
    webhook_max_depth: int = webhooks.Limits.max_depth
    webhook_max_age_seconds: float = webhooks.Limits.max_age_seconds

    ENV = {"profile": "HEART_PROFILE", "model_name": "HEART_MODEL_NAME", "alias": "HEART_MODEL_ALIAS",
           "local_model_dir": "HEART_MODEL_DIR", "max_batch_rows": "HEART_MAX_BATCH_ROWS",
           "poll_seconds": "HEART_POLL_SECONDS", "fallback": "HEART_FALLBACK",
           "retry_seconds": "HEART_RETRY_SECONDS", "log_inputs": "HEART_LOG_INPUTS",
           "inline_rows": "HEART_INLINE_ROWS", "webhook_max_bytes": "HEART_WEBHOOK_MAX_BYTES",
           "webhook_max_depth": "HEART_WEBHOOK_MAX_DEPTH", "webhook_max_age_seconds": "HEART_WEBHOOK_MAX_AGE_SECONDS"}
    FALLBACKS = ("run", "dir")

    def fallbacks(self) -> list[str]:
        chosen = [part.strip() for part in self.fallback.split(",") if part.strip()]
        unknown = [part for part in chosen if part not in self.FALLBACKS]
        if unknown:
            raise ValueError(f"--fallback {self.fallback!r}: unknown {unknown}; use any of {list(self.FALLBACKS)}")
        return chosen

    @classmethod
    def from_env(cls) -> "Settings":
        """Settings from HEART_* variables: how `python -m serving` hands them to its workers."""
        defaults = cls()
        return cls(**{name: type(getattr(defaults, name))(os.environ[var])
                      for name, var in cls.ENV.items() if var in os.environ})

    def to_env(self) -> dict[str, str]:
        return {var: str(getattr(self, name)) for name, var in self.ENV.items()}

    def webhook_limits(self) -> webhooks.Limits:
        return webhooks.Limits(max_body_bytes=self.webhook_max_bytes, max_depth=self.webhook_max_depth,
                               max_age_seconds=self.webhook_max_age_seconds)


@dataclass
class LoadedModel:
    model: Any  # mlflow.pyfunc.PyFuncModel
    source: str  # registry | run | dir
    uri: str
    name: Optional[str]
    version: Optional[str]
    alias: Optional[str]
    run_id: Optional[str]
    model_id: Optional[str]
    fallback_reason: Optional[str] = None  # why the registry alias is not what is served
    loaded_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


class NotServable(Exception):
    """The alias's version exists but must not be served."""


def _from_registry(settings: Settings, tracking: Tracking, public_key: Path) -> LoadedModel:
    try:
        version = tracking.client.get_model_version_by_alias(settings.model_name, settings.alias)
    except MlflowException as err:
        raise NotServable(f"alias {settings.model_name}@{settings.alias} does not exist: {err.message}") from None
    status = version.tags.get(names.VALIDATION_STATUS)
    if status != names.VALIDATED:
        raise NotServable(f"{settings.model_name} version {version.version} (@{settings.alias}) is "
                          f"{status or 'not validated'}; only VALIDATED versions are served")
    uri = f"models:/{settings.model_name}/{version.version}"
    model = load_pyfunc(uri, public_key)
    return LoadedModel(model, "registry", uri, settings.model_name, str(version.version), settings.alias,
                       version.run_id, model.metadata.model_id)


def _from_latest_run(settings: Settings, tracking: Tracking, public_key: Path) -> LoadedModel:
    train = latest_complete(tracking, f"tags.`{names.STEP}` = 'train'")
    if train is None:
        raise LookupError("no complete train run in the experiment")
    uri = train.data.tags[names.MODEL_URI]
    model = load_pyfunc(uri, public_key)
    return LoadedModel(model, "run", uri, None, None, None, train.info.run_id, model.metadata.model_id)


def _from_directory(settings: Settings, tracking: Optional[Tracking], public_key: Path) -> LoadedModel:
    model = load_pyfunc(settings.local_model_dir, public_key)
    return LoadedModel(model, "dir", settings.local_model_dir, None, None, None, model.metadata.run_id,
                       model.metadata.model_id)


def load_model(settings: Settings, tracking: Optional[Tracking],
               public_key: Path) -> tuple[Optional[LoadedModel], list[str], bool]:
    """The registry alias, else the fallbacks asked for, in order, each loaded only if its
    seal verifies with public_key (engine/seal.py). Returns the first that loads (marked
    with why the alias was not served), why each earlier one did not, and whether the
    registry refused (the alias is gone or its version not VALIDATED) rather than failed
    to answer. A version whose seal fails is one that fails to load: what answers now
    keeps answering, and /health says degraded with the reason."""
    sources = [("registry", _from_registry), *[(name, {"run": _from_latest_run, "dir": _from_directory}[name])
                                               for name in settings.fallbacks()]]
    failures: list[str] = []
    refused = False
    for name, load in sources:
        if tracking is None and name != "dir":
            failures.append(f"{name}: the tracking store is unreachable")
            continue
        try:
            loaded = load(settings, tracking, public_key)
        except Exception as err:
            refused = refused or isinstance(err, NotServable)
            failures.append(f"{name}: {redact(str(err))}")
            continue
        if failures:
            loaded.fallback_reason = " | ".join(failures)
        return loaded, failures, refused
    return None, failures, refused


@dataclass(frozen=True)
class Serving:
    """What the app serves and what the alias names, swapped whole so that a request sees one
    consistent view: its answer's labels, /health and /model-info agree."""

    model: Optional[LoadedModel] = None
    # The version the alias named when last looked up; None when not known (the alias is
    # gone, or the store did not answer).
    alias_version: Optional[str] = None
    # Why the alias's version is not what is served ("" when it is): still loading, failed
    # to load, or (nothing served) why not.
    problem: str = LOADING

    @property
    def holds_alias(self) -> bool:
        """The served model is the version the alias named when last looked up."""
        return (self.model is not None and self.model.source == "registry"
                and self.model.version == self.alias_version)

    def identity(self) -> dict[str, Any]:
        """What every answer says about the model that gave it: the alias only while the
        served version holds it."""
        model = self.model
        return {"model_name": model.name, "model_version": model.version or model.model_id,
                "model_alias": model.alias if self.holds_alias else None, "model_source": model.source}

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of GET /health. 200 whenever a model answers, so that a load
        balancer keeps routing to it: "ok" (the alias's version), "fallback" (a --fallback
        source) or "degraded" (another version than the alias's: the alias's is loading or
        failed to load). 503 only when nothing answers: "loading" or "unavailable"."""
        if self.model is None:
            return 503, {"status": "loading" if self.problem == LOADING else "unavailable", "reason": self.problem}
        if self.model.fallback_reason:
            return 200, {"status": "fallback", "reason": self.model.fallback_reason, **self.identity()}
        if self.problem:
            return 200, {"status": "degraded", "reason": self.problem, "alias_version": self.alias_version,
                         **self.identity()}
        return 200, {"status": "ok", **self.identity()}


class ModelHolder:
    """The model in use and how it compares with the alias (`state`, a Serving swapped
    whole on reload, so a request sees one model and one story about it)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.state = Serving()
        self._lock = threading.Lock()
        self.tracking: Optional[Tracking] = None
        profile = load_profile(settings.profile)
        # What every model's seal must verify with: the profile's public key (engine/seal.py).
        self.public_key = seal.public_key_path(profile, tracking_uri_of(profile))

    def reload(self, event: str = "reload") -> None:
        with self._lock:
            if self.tracking is None:
                try:
                    self.tracking = connect(load_profile(self.settings.profile))
                except Exception as err:  # no store reachable: keep trying; a local directory may still serve
                    log.warning(json.dumps({"event": "tracking unavailable", "reason": redact(str(err))}))
            before, named = self.state, self._alias_version()
            alias = f"{self.settings.model_name}@{self.settings.alias}"
            if (before.model is not None and before.model.source == "registry" and named is not None
                    and named != before.model.version):
                # Loading can take a while (a remote store, a large model): meanwhile the
                # version loaded before answers, and says it no longer holds the alias.
                self.state = replace(before, alias_version=named,
                                     problem=f"{alias} names version {named}, which is loading")
            loaded, failures, refused = load_model(self.settings, self.tracking, self.public_key)
            if loaded is None:
                reasons = " | ".join(failures)
                if refused or before.model is None:  # what was served is no longer what was asked for
                    self.state = Serving(None, named, "no model to serve: " + reasons)
                else:  # a version that fails to load, or a store outage, keeps what answers now
                    which = f"{alias} names version {named}, which failed to load" if named else \
                        f"{alias} could not be looked up"
                    self.state = Serving(before.model, named, f"{which}: {reasons}")
                metrics.MODEL_EVENTS.labels(event="failed").inc()
                log.error(json.dumps({"event": "model load failed", "reasons": failures}))
                return
            self.state = Serving(loaded, loaded.version if loaded.source == "registry" else named, "")
            metrics.MODEL_EVENTS.labels(event=event).inc()
            log.info(json.dumps({"event": "model loaded", "source": loaded.source, "uri": loaded.uri,
                                 "version": loaded.version, "fallback_reason": loaded.fallback_reason}))

    def _alias_version(self) -> Optional[str]:
        """The version the alias names now; None when the alias is gone or the store does
        not answer (load_model then says which)."""
        if self.tracking is None:
            return None
        try:
            return str(self.tracking.client.get_model_version_by_alias(self.settings.model_name,
                                                                       self.settings.alias).version)
        except Exception:  # any failure to look up, a missing alias or a store outage: not known
            return None

    def needs_reload(self) -> bool:
        """Something other than the alias's version is served (or nothing), the last attempt
        failed, or the alias now points elsewhere (or was removed: stop serving it)."""
        state = self.state
        if not state.holds_alias or state.problem:
            return True
        return self._alias_version() != state.model.version

    def watch(self, stop: threading.Event) -> None:
        """Load in the background from the start (the app answers 503 meanwhile), then keep
        checking: every retry_seconds while the alias is not what is served, every
        poll_seconds otherwise."""
        self.reload(event="load")
        while True:
            model = self.state.model
            serving_alias = model is not None and model.source == "registry"
            if serving_alias and self.settings.poll_seconds <= 0:
                return
            wait = self.settings.poll_seconds if serving_alias else self.settings.retry_seconds
            if stop.wait(wait):
                return
            if self.needs_reload():
                self.reload()


def patient_schema(schema: Any) -> type[BaseModel]:
    """One patient in UCI codes: every feature of the codebook (conf/schema), a finite JSON
    number or null (strict: `true` or `"54"` is refused, not converted). Names and types
    only: codes and ranges are checked by the loaded model, with the rules it was trained with."""
    fields = {
        str(name): (Optional[float], Field(..., description=str(spec.get("description", "")), allow_inf_nan=False,
                                           strict=True))
        for name, spec in schema["columns"].items() if name != schema["target"]
    }
    return create_model("Patient", __config__=ConfigDict(extra="forbid"), **fields)


def _evaluation_of(tracking: Optional[Tracking], train_run_id: Optional[str]) -> dict[str, Any]:
    if tracking is None or not train_run_id:
        return {}
    try:
        train = tracking.client.get_run(train_run_id)
        in_its_experiment = replace(tracking, experiment_id=train.info.experiment_id)
        evaluation = latest_complete(in_its_experiment, f"tags.`{names.INPUT}train` = '{train_run_id}' and "
                                                        f"tags.`{names.STEP}` = 'evaluate'")
    except MlflowException:
        return {}
    digests = [d.dataset.digest for d in (train.inputs.dataset_inputs if train.inputs else [])
               if {(t.key, t.value) for t in d.tags} & {("mlflow.data.context", "training")}]
    info = {
        "trained_at": datetime.fromtimestamp(train.info.start_time / 1000, timezone.utc).isoformat(timespec="seconds"),
        "training_data_digest": digests[0] if digests else None,
        "training_data_sha256": None,
    }
    ingest_id = train.data.tags.get(f"{names.INPUT}ingest")
    if ingest_id:
        info["training_data_sha256"] = tracking.client.get_run(ingest_id).data.tags.get(names.DATA_SHA256)
    if evaluation is not None:
        metrics = evaluation.data.metrics
        keys = ["test_roc_auc", "test_pr_auc", "test_brier", "test_accuracy", "test_recall", "test_precision",
                "cv_roc_auc_mean", "cv_roc_auc_ci_low", "cv_roc_auc_ci_high"]
        info["metrics"] = {k: metrics[k] for k in keys if k in metrics}
        info["validation_status"] = evaluation.data.tags.get(names.VALIDATION_STATUS)
        info["evaluate_run_id"] = evaluation.info.run_id
    return info


def create_app(settings: Optional[Settings] = None) -> FastAPI:
    settings = settings or Settings.from_env()
    holder = ModelHolder(settings)
    # Registry webhooks (serving/webhooks.py), when a secret is set: the worker that gets a
    # delivery bumps a file every worker watches, so all of them reload; the delivery ids
    # seen are kept in the same shared folder, so a replay to any worker is refused.
    webhook_secret = os.environ.get(webhooks.SECRET_ENV, "")
    reload_dir = os.environ.get(webhooks.RELOAD_DIR_ENV)
    reload_signal = webhooks.ReloadSignal(reload_dir) if reload_dir else None
    Patient = patient_schema(OmegaConf.load(PROJECT_ROOT / "conf" / "schema" / "uci_codebook.yaml"))
    feature_names = list(Patient.model_fields)
    predicting = threading.Lock()
    inference_log = InferenceLog(settings.log_inputs, feature_names) if settings.log_inputs else None

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        # Start answering at once (503 until a model is loaded): a slow or absent store
        # must not keep the app from telling health checks why it cannot serve.
        stop = threading.Event()
        threading.Thread(target=holder.watch, args=(stop,), daemon=True, name="model-watch").start()
        if reload_signal is not None:
            reload_signal.start(lambda: holder.reload(event="webhook"), stop)
        yield
        stop.set()
        if inference_log is not None:
            inference_log.close()

    app = FastAPI(title="Heart disease risk", version="1", lifespan=lifespan,
                  description="Risk of heart disease from the 13 UCI Heart Disease features, in UCI codes. "
                              "Not for clinical use.")
    app.state.holder = holder

    app.add_middleware(RequestLog, holder=holder)

    if webhook_secret:
        def alias_changed(name: str, alias: str) -> None:
            if (name, alias) != (settings.model_name, settings.alias):
                return
            if reload_signal is not None:
                reload_signal.bump()  # every worker reloads, this one included
            else:
                threading.Thread(target=holder.reload, kwargs={"event": "webhook"}, daemon=True).start()

        shared = reload_dir or tempfile.mkdtemp(prefix="heart-serving-webhooks-")
        app.include_router(webhooks.router(webhook_secret, alias_changed, settings.webhook_limits(),
                                           webhooks.SeenDeliveries(Path(shared) / "deliveries")))

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, err: RequestValidationError):
        """422 naming each field. Errors of the union branch that does not apply (a list
        when one patient was sent, or the other way round) are left out, and so are the
        offending inputs, which may be NaN and cannot be written as JSON."""
        sent_list = isinstance(err.body, list)
        errors = [e for e in err.errors()
                  if len(e["loc"]) < 2 or str(e["loc"][1]).startswith("list[") == sent_list]
        detail = [{"field": ".".join(str(p) for p in e["loc"][2:]) or "body", "msg": e["msg"], "type": e["type"]}
                  for e in errors or err.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(MlflowException)
    async def bad_input(request: Request, err: MlflowException):
        status = err.get_http_status_code()
        return JSONResponse({"detail": err.message}, status_code=status if 400 <= status < 500 else 500)

    @app.post("/predict", summary="Risk for one patient (object) or several (list)")
    async def predict(patients: Union[Patient, list[Patient]],  # type: ignore[valid-type]
                      explain: bool = Query(False, description="add each answer's explanation: the log-odds as "
                                                               "a base plus one contribution per input field")):
        state = holder.state
        loaded = state.model
        if loaded is None:
            return JSONResponse({"detail": state.problem}, status_code=503)
        rows = patients if isinstance(patients, list) else [patients]
        if not rows:
            return JSONResponse({"detail": "empty list: send at least one patient"}, status_code=400)
        if len(rows) > settings.max_batch_rows:
            return JSONResponse({"detail": f"{len(rows)} patients in one request; at most "
                                           f"{settings.max_batch_rows}"}, status_code=413)
        # Straight from the validated objects to a float matrix (None: NaN), in schema order.
        features = np.array([[getattr(row, name) for name in feature_names] for row in rows], dtype=np.float64)
        if len(rows) <= settings.inline_rows:
            # Scored on the event loop: for a few patients that takes less time than
            # handing the work to a thread and back.
            levels, records = _score(loaded, features, explain)
        else:
            levels, records = await run_in_threadpool(_score, loaded, features, explain)
        metrics.count_predictions(levels, loaded.version or loaded.model_id)
        identity = state.identity()
        if inference_log is not None:
            inference_log.record(features, records, {**identity, "run_id": loaded.run_id, "model_id": loaded.model_id})
        for record in records:
            record.update(identity)
        # A ready Response skips FastAPI's per-field re-encoding of the answer.
        return JSONResponse(records if isinstance(patients, list) else records[0])

    def _score(loaded: LoadedModel, features: np.ndarray,
               explain: bool = False) -> tuple[Sequence[str], list[dict[str, Any]]]:
        """(risk level per row, the answer per row) from the model itself (heart_disease_model/model.py),
        not pyfunc's wrapper: it checks every value, so the wrapper's pass adds only time."""
        model = loaded.model.unwrap_python_model()
        with predicting:  # one prediction at a time per worker: threads would only fight over the GIL
            order = model_order(tuple(model.codebook.features)) if hasattr(model, "score_numbers") else None
            if order is not None:
                checked = features[:, order]
                scores = model.score_numbers(checked)
                levels = scores.risk_level
                records = [
                    {"prediction": int(p), "probability": float(q), "confidence": float(c), "risk_level": str(r)}
                    for p, q, c, r in zip(scores.prediction, scores.probability, scores.confidence, levels)]
                if explain:
                    _add_explanations(model, checked, records)
                return levels, records
            # A model logged before score_numbers existed, or with other features than the
            # schema (its predict names them in a 400), answers through its predict.
            answers = model.predict(None, pd.DataFrame(features, columns=feature_names))
        records = answers[list(ANSWER_KEYS)].to_dict(orient="records")
        if explain:
            _add_explanations(model, None, records)
        return answers["risk_level"].tolist(), records

    def _add_explanations(model: Any, checked: Optional[np.ndarray], records: list[dict[str, Any]]) -> None:
        """Each answer's `explanation`, from the loaded model's own explain (rows already
        checked, in its codebook's order); null with `explanation_unavailable` saying why
        when the model cannot explain exactly or was logged before it could."""
        if checked is None or not hasattr(model, "explain"):
            explanations, reason = [None] * len(records), NOT_EXPLAINABLE_VERSION
        else:
            explanations, reason = model.explain(checked), model.explanation_unavailable
        for record, explanation in zip(records, explanations):
            record["explanation"] = explanation
            if reason:
                record["explanation_unavailable"] = reason

    @lru_cache(maxsize=4)
    def model_order(model_features: tuple[str, ...]) -> Optional[list[int]]:
        """Where each of the model's features sits in the schema's order (the model's stored
        codebook need not keep the order of conf/schema); None unless both have the same features."""
        if sorted(model_features) != sorted(feature_names):
            return None
        return [feature_names.index(name) for name in model_features]

    @app.get("/model-info")
    def model_info():
        state = holder.state
        loaded = state.model
        if loaded is None:
            return JSONResponse({"detail": state.problem}, status_code=503)
        return {"name": loaded.name, "version": loaded.version, "alias": state.identity()["model_alias"],
                "alias_version": state.alias_version, "source": loaded.source,
                "uri": loaded.uri, "run_id": loaded.run_id, "model_id": loaded.model_id,
                "loaded_at": loaded.loaded_at, "fallback_reason": loaded.fallback_reason,
                **_evaluation_of(holder.tracking, loaded.run_id)}

    @app.get("/health")
    def health():
        status, body = holder.state.health()
        return JSONResponse(body, status_code=status)

    @app.post("/reload", summary="Load the model again in the configured order (e.g. after a new champion)")
    def reload():
        holder.reload()
        return health()

    @app.get("/metrics", summary="Prometheus metrics of every worker")
    def prometheus_metrics():
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    return app


class RequestLog:
    """Plain ASGI middleware (cheaper than @app.middleware): refuses non-JSON bodies on
    /predict with 415 and writes one JSON log line per request."""

    def __init__(self, app, holder: ModelHolder):
        self.app, self.holder = app, holder

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        if (scope["method"] == "POST" and scope["path"] == "/predict"
                and not content_type.startswith("application/json")):
            response = JSONResponse(
                {"detail": f"Content-Type must be application/json, got {content_type or 'none'!r}"},
                status_code=415)
            await response(scope, receive, send_and_note)
        else:
            await self.app(scope, receive, send_and_note)
        loaded = self.holder.state.model
        seconds = time.perf_counter() - started
        version = (loaded.version or loaded.model_id) if loaded else None
        metrics.observe_request(scope["path"], status[0], version, seconds)
        log.info(json.dumps({
            "method": scope["method"], "path": scope["path"], "status": status[0],
            "latency_ms": round(seconds * 1000, 2), "model_version": version,
        }))
