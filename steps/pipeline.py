"""The DAG: which steps exist, what each one reads, and which config it depends on.

Reading this file shows the whole pipeline (DIAGRAM below). `steps/tracking.py` runs
a step; `steps/main.py` walks STEPS in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


DIAGRAM = """\
ingest ──► split ──► transform ──► train ──► evaluate ──► register
   └─────► eda"""


@dataclass(frozen=True)
class Step:
    name: str
    # The step whose run this one reads. Steps further up are reached through the
    # lineage that run recorded, so a step never mixes inputs from two histories.
    upstream: Optional[str]
    # Config sections that decide the step's output: part of its cache key.
    config_keys: tuple[str, ...]
    # For a step that reads from outside MLflow: "module:function" that digests that
    # outside input (e.g. a local file's bytes) for the cache key.
    external_input: Optional[str] = None
    # Settings inside config_keys that change where or how fast, not what: left out
    # of the cache key (the external_input digest covers the data's content).
    not_in_key: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        return f"steps.{self.name}"


STEPS: dict[str, Step] = {
    step.name: step
    for step in [
        Step(
            "ingest", None, ("data", "schema"),
            external_input="steps.sources:fingerprint",
            not_in_key=("data.url", "data.path", "data.cache_dir", "data.download_timeout_s"),
        ),
        Step("eda", "ingest", ("eda", "schema")),
        Step("split", "ingest", ("split", "schema")),
        Step("transform", "split", ("transform", "schema")),
        Step("train", "transform", ("model", "train", "schema")),
        Step("evaluate", "train", ("evaluate", "schema")),
        Step("register", "evaluate", ("register",)),
    ]
}

# Steps that nothing else waits for: `main` runs them beside the chain.
SIDE_BRANCHES = frozenset({"eda"})
