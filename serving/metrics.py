"""Prometheus metrics of the app, correct with several uvicorn workers.

With PROMETHEUS_MULTIPROC_DIR set (`python -m serving` sets it to a fresh folder before
the workers start), every worker writes its samples there and GET /metrics, whichever
worker answers it, adds up all of them. Without it (one process, tests), the default
registry is used.
"""

from __future__ import annotations

import collections
import os
from typing import Iterable, Optional

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

ENDPOINTS = ("/predict", "/health", "/model-info", "/reload", "/metrics")

REQUESTS = Counter("heart_requests_total", "HTTP requests answered", ["endpoint", "status", "model_version"])
LATENCY = Histogram("heart_request_seconds", "Time to answer a request", ["endpoint"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
PREDICTIONS = Counter("heart_predictions_total", "Patients scored, by risk level", ["risk_level", "model_version"])
MODEL_EVENTS = Counter("heart_model_events_total", "Model loads: first load, reload, failed attempt", ["event"])


def observe_request(path: str, status: int, model_version: Optional[str], seconds: float) -> None:
    endpoint = path if path in ENDPOINTS else "other"  # unknown paths must not grow the label set
    REQUESTS.labels(endpoint=endpoint, status=str(status), model_version=model_version or "none").inc()
    LATENCY.labels(endpoint=endpoint).observe(seconds)


def count_predictions(risk_levels: Iterable[str], model_version: Optional[str]) -> None:
    """One increment per risk level present (not per patient): the multiprocess files take a lock per write."""
    for level, count in collections.Counter(risk_levels).items():
        PREDICTIONS.labels(risk_level=str(level), model_version=model_version or "none").inc(count)


def exposition() -> tuple[bytes, str]:
    """The metrics text, summed over every worker when there are several."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
