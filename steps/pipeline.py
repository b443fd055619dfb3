"""The DAG: which steps exist, what each one reads and writes, and which config it sees.

This file is the pipeline's one description. The runner (engine/runner.py) hands each
step the inputs declared here and accepts only the outputs declared here; `main`
walks STEPS in order; the diagram in `main`'s output, the cards and the README is
drawn from these declarations (`python -m steps.pipeline` prints it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from engine import names


@dataclass(frozen=True)
class Input:
    """An artifact of an upstream step's run (or its logged model: names.MODEL)."""

    step: str
    artifact: str
    optional: bool = False  # the upstream run may not have written it
    # Record it as an MLflow dataset input of the reading run, in this context
    # (training, validation, testing); metrics named `<input>_...` are linked to it.
    dataset: Optional[str] = None


@dataclass(frozen=True)
class Output:
    artifact: str
    optional: bool = False  # written only in some configurations


@dataclass(frozen=True)
class Step:
    name: str
    # The step whose run this one is built on. Every other step it reads is reached
    # through the lineage that run recorded, so a step never mixes inputs from two histories.
    upstream: Optional[str]
    # Config sections the step sees; all of them are part of its cache key. Reading any
    # other section is an error, so no setting can change a result without changing the key.
    config_keys: tuple[str, ...]
    reads: dict[str, Input] = field(default_factory=dict)
    writes: dict[str, Output] = field(default_factory=dict)
    # For a step that reads from outside MLflow: "module:function" that digests that
    # outside input (e.g. a local file's bytes) for the cache key.
    external_input: Optional[str] = None
    # Settings inside config_keys that change where or how fast, not what: left out
    # of the cache key (the external_input digest covers the data's content).
    not_in_key: tuple[str, ...] = ()
    # Project packages the step's output carries as code (a logged model's code): every
    # file in them is part of the key, imported by the step or not.
    carries: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        return f"steps.{self.name}"


def _plots(*plot_names: str) -> dict[str, Output]:
    return {name: Output(f"plots/{name}.png") for name in plot_names}


_SPLITS = ("train", "val", "test")
_DATASET_CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}


def _split_input(name: str) -> Input:
    return Input("split", names.split_table(name), dataset=_DATASET_CONTEXTS[name])

STEPS: dict[str, Step] = {
    step.name: step
    for step in [
        Step(
            "ingest", None, ("data", "schema"),
            writes={"raw": Output(names.RAW_TABLE), "external": Output(names.EXTERNAL_TABLE, optional=True),
                    "validation_report": Output(names.VALIDATION_REPORT)},
            external_input="domain.sources:fingerprint",
            not_in_key=("data.url", "data.path", "data.cache_dir", "data.download_timeout_s"),
        ),
        Step(
            "eda", "ingest", ("eda", "schema"),
            reads={"raw": Input("ingest", names.RAW_TABLE)},
            writes={**_plots("feature_histograms", "correlation_heatmap", "class_balance", "missingness"),
                    "report": Output("eda_report.html")},
        ),
        Step(
            "split", "ingest", ("split", "schema"),
            reads={"raw": Input("ingest", names.RAW_TABLE)},
            writes={**{name: Output(names.split_table(name)) for name in _SPLITS},
                    "split_report": Output("split_report.json")},
        ),
        Step(
            "transform", "split", ("transform", "schema"),
            reads={"train": _split_input("train")},
            writes={"transformer": Output(names.TRANSFORMER),
                    "train_features": Output(names.split_table("train"))},
        ),
        Step(
            "train", "transform", ("model", "train", "schema"),
            reads={"transformer": Input("transform", names.TRANSFORMER),
                   "train_features": Input("transform", names.split_table("train")),
                   "train": _split_input("train"),
                   "val": _split_input("val"),
                   # Only to check the fast path on test rows too; not a training dataset.
                   "test": Input("split", names.split_table("test"))},
            writes={"model": Output(names.MODEL)},
            carries=("heart_disease_model",),
        ),
        Step(
            "evaluate", "train", ("evaluate", "schema"),
            not_in_key=("evaluate.n_jobs",),
            reads={"model": Input("train", names.MODEL),
                   **{name: _split_input(name) for name in _SPLITS},
                   "external": Input("ingest", names.EXTERNAL_TABLE, optional=True),
                   "validation_report": Input("ingest", names.VALIDATION_REPORT)},
            writes={**_plots("roc_curve", "pr_curve", "calibration", "confusion_matrix", "decision_curve"),
                    "external_validation_plot": Output("plots/external_validation.png", optional=True),
                    "test_predictions": Output(names.TEST_PREDICTIONS),
                    "subgroups": Output(names.SUBGROUPS),
                    "explanation": Output(names.EXPLANATION),
                    "external_validation": Output(names.EXTERNAL_VALIDATION, optional=True)},
        ),
        Step(
            "register", "evaluate", ("register",),
            reads={"model": Input("train", names.MODEL),
                   # Sites and share of men come from the report, not the raw table: so the
                   # raw table need not stay in memory under `main` once split and eda are done.
                   "validation_report": Input("ingest", names.VALIDATION_REPORT),
                   "test_predictions": Input("evaluate", names.TEST_PREDICTIONS),
                   # Optional: an evaluate run from before they existed still registers.
                   "subgroups": Input("evaluate", names.SUBGROUPS, optional=True),
                   "explanation": Input("evaluate", names.EXPLANATION, optional=True),
                   "external_validation": Input("evaluate", names.EXTERNAL_VALIDATION, optional=True)},
            writes={"model_card": Output("model_card.md", optional=True),
                    "model_card_html": Output("model_card.html", optional=True),
                    "contributions_plot": Output("plots/feature_contributions.png", optional=True)},
        ),
    ]
}

# Steps off the chain (nothing reads them): `main` runs them in a thread beside it.
SIDE_BRANCHES = frozenset({"eda"})


def lineage_steps(name: str) -> list[str]:
    """The steps whose runs a run of `name` is built from, nearest first."""
    chain, upstream = [], STEPS[name].upstream
    while upstream:
        chain.append(upstream)
        upstream = STEPS[upstream].upstream
    return chain


def _check_declarations() -> None:
    """A step may read only steps in its lineage, and only what they declare they write."""
    for step in STEPS.values():
        for key, wanted in step.reads.items():
            if wanted.step not in lineage_steps(step.name):
                raise AssertionError(f"{step.name} reads {key} from {wanted.step}, which is not in its lineage")
            written = {out.artifact: out for out in STEPS[wanted.step].writes.values()}
            if wanted.artifact not in written:
                raise AssertionError(f"{step.name} reads {wanted.artifact}, which {wanted.step} does not write")
            if written[wanted.artifact].optional and not wanted.optional:
                raise AssertionError(f"{step.name} needs {wanted.artifact}, which {wanted.step} writes only sometimes")
        if step.name in SIDE_BRANCHES and any(i.step == step.name for s in STEPS.values() for i in s.reads.values()):
            raise AssertionError(f"{step.name} is read by another step: it cannot run beside the chain")


_check_declarations()


def diagram() -> str:
    """The DAG as text, one line per step: what it reads, from which step."""
    width = max(len(name) for name in STEPS)
    lines = []
    for step in STEPS.values():
        sources: dict[str, list[str]] = {}
        for wanted in step.reads.values():
            label = "model" if wanted.artifact == names.MODEL else wanted.artifact.rsplit("/", 1)[-1]
            sources.setdefault(wanted.step, []).append(label + ("?" if wanted.optional else ""))
        reads = "; ".join(f"{upstream}: {', '.join(labels)}" for upstream, labels in sources.items())
        side = "  (beside the chain)" if step.name in SIDE_BRANCHES else ""
        lines.append(f"{step.name:<{width}}  ◄── {reads}{side}" if reads
                     else f"{step.name:<{width}}  (reads the data source)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(diagram())
