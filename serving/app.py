"""The origin system's API on the pipeline's model: POST /predict, GET /model-info,
GET /health, plus POST /reload to pick up a new champion without a restart.

    python -m serving                      # 127.0.0.1:8000, models:/heart-disease@champion
    python -m serving --alias challenger --port 8001

The answers come from the same MLflow pyfunc `mlflow models serve` loads, so both
check inputs with the same codebook rules (steps/codebook.py) and answer the same.
The request schema here only fixes the shape (the 13 fields, numbers or null, finite,
nothing else: 422 otherwise); codes and ranges are the model's to judge (400).
"""


import json
import logging
import os
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Union

import mlflow
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from mlflow.exceptions import MlflowException
from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, Field, create_model

from steps import names
from steps.codebook import Codebook
from steps.store import Tracking, connect, latest_complete, load_profile

log = logging.getLogger("serving")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Settings:
    profile: str = "local"
    model_name: str = "heart-disease"
    alias: str = "champion"
    local_model_dir: str = str(PROJECT_ROOT / "serving" / "model")
    max_batch_rows: int = 10000
    # How often each worker checks whether the alias moved (0: only POST /reload).
    poll_seconds: float = 30.0

    ENV = {"profile": "HEART_PROFILE", "model_name": "HEART_MODEL_NAME", "alias": "HEART_MODEL_ALIAS",
           "local_model_dir": "HEART_MODEL_DIR", "max_batch_rows": "HEART_MAX_BATCH_ROWS",
           "poll_seconds": "HEART_POLL_SECONDS"}

    @classmethod
    def from_env(cls) -> "Settings":
        """Settings from HEART_* variables: how `python -m serving` hands them to its workers."""
        defaults = cls()
        return cls(**{name: type(getattr(defaults, name))(os.environ[var])
                      for name, var in cls.ENV.items() if var in os.environ})

    def to_env(self) -> dict[str, str]:
        return {var: str(getattr(self, name)) for name, var in self.ENV.items()}


@dataclass
class LoadedModel:
    model: Any  # mlflow.pyfunc.PyFuncModel
    source: str  # registry | run | local
    uri: str
    name: Optional[str]
    version: Optional[str]
    alias: Optional[str]
    run_id: Optional[str]
    model_id: Optional[str]
    loaded_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


def _load_in_order(settings: Settings, tracking: Optional[Tracking]) -> tuple[Optional[LoadedModel], list[str]]:
    """Registry alias -> latest complete train run -> local exported model directory.
    Returns the first that loads and why each earlier one did not."""
    failures: list[str] = []
    if tracking is not None:
        client = tracking.client
        try:
            version = client.get_model_version_by_alias(settings.model_name, settings.alias)
            uri = f"models:/{settings.model_name}/{version.version}"
            model = mlflow.pyfunc.load_model(uri)
            return LoadedModel(model, "registry", uri, settings.model_name, str(version.version), settings.alias,
                               version.run_id, model.metadata.model_id), failures
        except Exception as err:
            failures.append(f"registry {settings.model_name}@{settings.alias}: {err}")
        try:
            train = latest_complete(tracking, f"tags.`{names.STEP}` = 'train'")
            if train is None:
                raise LookupError("no complete train run in the experiment")
            uri = train.data.tags[names.MODEL_URI]
            model = mlflow.pyfunc.load_model(uri)
            return LoadedModel(model, "run", uri, None, None, None, train.info.run_id,
                               model.metadata.model_id), failures
        except Exception as err:
            failures.append(f"latest train run: {err}")
    try:
        model = mlflow.pyfunc.load_model(settings.local_model_dir)
        return LoadedModel(model, "local", settings.local_model_dir, None, None, None, model.metadata.run_id,
                           model.metadata.model_id), failures
    except Exception as err:
        failures.append(f"local directory {settings.local_model_dir}: {err}")
    return None, failures


class ModelHolder:
    """The model in use; swapped whole on reload, so a request sees one model."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.current: Optional[LoadedModel] = None
        self.problem = "not loaded yet"
        self._lock = threading.Lock()
        self.tracking: Optional[Tracking] = None

    def reload(self) -> None:
        with self._lock:
            if self.tracking is None:
                try:
                    self.tracking = connect(load_profile(self.settings.profile))
                except Exception as err:  # no store reachable: the local directory may still serve
                    log.warning(json.dumps({"event": "tracking unavailable", "reason": str(err)}))
            loaded, failures = _load_in_order(self.settings, self.tracking)
            if loaded is None:
                self.problem = "no model could be loaded: " + " | ".join(failures)
                log.error(json.dumps({"event": "model load failed", "reasons": failures}))
                return
            self.current, self.problem = loaded, ""
            log.info(json.dumps({"event": "model loaded", "source": loaded.source, "uri": loaded.uri,
                                 "version": loaded.version, "skipped": failures}))

    def alias_moved(self) -> bool:
        """Does the alias now point at another version than the one being served?"""
        if self.tracking is None:
            return self.current is None
        try:
            version = self.tracking.client.get_model_version_by_alias(self.settings.model_name, self.settings.alias)
        except MlflowException:
            return False
        return self.current is None or self.current.version != str(version.version)

    def watch(self, stop: threading.Event) -> None:
        while not stop.wait(self.settings.poll_seconds):
            if self.alias_moved():
                self.reload()


def patient_schema(book: Codebook) -> type[BaseModel]:
    """One patient in UCI codes: every codebook feature, a finite number or null."""
    fields = {
        name: (Optional[float], Field(..., description=rule.describe(), allow_inf_nan=False))
        for name, rule in book.columns.items() if name != book.target
    }
    return create_model("Patient", __config__=ConfigDict(extra="forbid"), **fields)


def _codebook() -> Codebook:
    return Codebook.from_config(OmegaConf.load(PROJECT_ROOT / "conf" / "schema" / "uci_codebook.yaml"))


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
    digests = [d.dataset.digest for d in train.inputs.dataset_inputs] if train.inputs else []
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
    Patient = patient_schema(_codebook())
    feature_names = list(Patient.model_fields)
    predicting = threading.Lock()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        holder.reload()
        stop = threading.Event()
        if settings.poll_seconds > 0:
            threading.Thread(target=holder.watch, args=(stop,), daemon=True, name="alias-watch").start()
        yield
        stop.set()

    app = FastAPI(title="Heart disease risk", version="1", lifespan=lifespan,
                  description="Risk of heart disease from the 13 UCI Heart Disease features, in UCI codes. "
                              "Not for clinical use.")
    app.state.holder = holder

    app.add_middleware(RequestLog, holder=holder)

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

    def _identity(loaded: LoadedModel) -> dict[str, Any]:
        return {"model_name": loaded.name, "model_version": loaded.version or loaded.model_id,
                "model_alias": loaded.alias}

    @app.post("/predict", summary="Risk for one patient (object) or several (list)")
    def predict(patients: Union[Patient, list[Patient]]):  # type: ignore[valid-type]
        loaded = holder.current
        if loaded is None:
            return JSONResponse({"detail": f"no model loaded: {holder.problem}"}, status_code=503)
        rows = patients if isinstance(patients, list) else [patients]
        if not rows:
            return JSONResponse({"detail": "empty list: send at least one patient"}, status_code=400)
        if len(rows) > settings.max_batch_rows:
            return JSONResponse({"detail": f"{len(rows)} patients in one request; at most "
                                           f"{settings.max_batch_rows}"}, status_code=413)
        frame = pd.DataFrame({name: [getattr(row, name) for row in rows] for name in feature_names}, dtype="float64")
        with predicting:  # one prediction at a time per worker: threads would only fight over the GIL
            answers = loaded.model.predict(frame)
        records = answers[["prediction", "probability", "confidence", "risk_level"]].to_dict(orient="records")
        identity = _identity(loaded)
        for record in records:
            record.update(identity)
        # A ready Response skips FastAPI's per-field re-encoding of the answer.
        return JSONResponse(records if isinstance(patients, list) else records[0])

    @app.get("/model-info")
    def model_info():
        loaded = holder.current
        if loaded is None:
            return JSONResponse({"detail": f"no model loaded: {holder.problem}"}, status_code=503)
        return {"name": loaded.name, "version": loaded.version, "alias": loaded.alias, "source": loaded.source,
                "uri": loaded.uri, "run_id": loaded.run_id, "model_id": loaded.model_id,
                "loaded_at": loaded.loaded_at, **_evaluation_of(holder.tracking, loaded.run_id)}

    @app.get("/health")
    def health():
        loaded = holder.current
        if loaded is None:
            return JSONResponse({"status": "degraded", "reason": holder.problem}, status_code=503)
        return {"status": "ok", "source": loaded.source, **_identity(loaded)}

    @app.post("/reload", summary="Load the model again in the configured order (e.g. after a new champion)")
    def reload():
        holder.reload()
        return health()

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
        if scope["method"] == "POST" and scope["path"] == "/predict" and not content_type.startswith("application/json"):
            response = JSONResponse({"detail": f"Content-Type must be application/json, got {content_type or 'none'!r}"},
                                    status_code=415)
            await response(scope, receive, send_and_note)
        else:
            await self.app(scope, receive, send_and_note)
        loaded = self.holder.current
        log.info(json.dumps({
            "method": scope["method"], "path": scope["path"], "status": status[0],
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            "model_version": (loaded.version or loaded.model_id) if loaded else None,
        }))
