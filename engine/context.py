"""What a step's shell holds: its config, its declared inputs and outputs, and the
run it records into. Step modules talk to MLflow only through a StepContext.

Every declared output is written here, with its size and sha256 kept in a manifest
that the runner stores on the run before the completion mark. Every input is read
here: from memory when this process produced it (under `main`, each artifact is read
at most once), else downloaded and checked against the producing run's manifest.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from domain.sources import sha256_of
from engine import logged_model, names
from engine.errors import PipelineError
from engine.lease import lease
from engine.redaction import redact
from engine.store import Tracking, store_lock
from steps.pipeline import Step


class DamagedArtifact(PipelineError):
    """An artifact of a complete run is missing or no longer what the run wrote."""


class ArtifactCache:
    """Artifacts and runs this process has already read or written, by run id. Shared by
    every step of one `main`, so a table passes from split to train in memory."""

    def __init__(self, client: MlflowClient):
        self.client = client
        self.downloads = 0  # artifacts and models fetched from the store
        self._objects: dict[tuple[str, str], Any] = {}  # (run id, artifact path) -> object
        self._runs: dict[str, Any] = {}
        # Set by `main` (retain): the steps still to run that read each object. None in a
        # single step's process, where nothing is let go early.
        self._readers: Optional[dict[tuple[str, str], set[str]]] = None
        self._done_reading: set[tuple[tuple[str, str], str]] = set()  # (object, step that said it is done with it)
        self._lock = threading.Lock()

    def run(self, run_id: str):
        """A complete run (its tags no longer change, so it is fetched once)."""
        with self._lock:
            cached = self._runs.get(run_id)
        if cached is None:
            cached = self.client.get_run(run_id)
            if cached.data.tags.get(names.COMPLETE) == names.COMPLETE_MARK:
                with self._lock:
                    self._runs[run_id] = cached
        return cached

    def get(self, run_id: str, artifact: str) -> Any:
        with self._lock:
            return self._objects.get((run_id, artifact))

    def put(self, run_id: str, artifact: str, value: Any) -> None:
        with self._lock:
            self._objects[(run_id, artifact)] = value

    def retain(self, readers: dict[tuple[str, str], set[str]]) -> None:
        """Let go of every object that no step in `readers` ({(run id, artifact path): steps
        still to run that read it}) still needs (a later read downloads it again): tables
        no step still to run reads need not stay in memory."""
        with self._lock:
            self._readers = readers
            self._objects = {key: value for key, value in self._objects.items() if self._still_read(key)}

    def done_reading(self, key: tuple[str, str], step: str) -> None:
        """`step` no longer needs this object: let go of it at once if no other step
        still to run reads it (eda and evaluate finish with their big tables early)."""
        with self._lock:
            self._done_reading.add((key, step))
            if self._readers is not None and key in self._readers and not self._still_read(key):
                self._objects.pop(key, None)

    def _still_read(self, key: tuple[str, str]) -> bool:
        return any((key, step) not in self._done_reading for step in self._readers.get(key, ()))

    def counted_download(self) -> None:
        with self._lock:
            self.downloads += 1


def manifest_of(run) -> dict[str, Any]:
    return json.loads(run.data.tags.get(names.OUTPUTS, "{}"))


def mark_damaged(client: MlflowClient, run_id: str, reason: str) -> None:
    """Take a run out of the cache for good: it is no longer complete."""
    client.set_tag(run_id, names.COMPLETE, f"damaged: {reason}"[:5000])


def read_card(client: MlflowClient, run_id: str) -> Optional[str]:
    """A run's card.html (engine/cards.py), or None when it has none: to fold into the
    pipeline's or a sweep's card. Not an input of a step: not counted as a download."""
    with tempfile.TemporaryDirectory(prefix="card-") as folder:
        try:
            return Path(client.download_artifacts(run_id, names.CARD, folder)).read_text(encoding="utf-8")
        except (MlflowException, OSError):
            return None


def _damaged(step: str, run_id: str, artifact: str, problem: str) -> DamagedArtifact:
    return DamagedArtifact(
        f"{step} run {run_id}: artifact {artifact} {problem}. It was changed or deleted after the run "
        f"finished. That run is now marked damaged and will not be reused: run the command again to rebuild "
        f"{step} (or pass upstream.{step}=<another run id>).")


def listing_problem(client: MlflowClient, run) -> Optional[tuple[str, str]]:
    """(artifact, what is wrong) for the first declared output of a complete run that is
    missing or has another size than recorded; None when all are there. Sizes only:
    cheap enough to check each reused run, while contents are checked when read."""
    sizes: dict[str, Optional[int]] = {}
    listed: set[str] = set()
    for artifact, record in manifest_of(run).items():
        if artifact == names.MODEL:
            found = logged_model.file_sizes(record["uri"])
            for path, size in record["files"].items():
                if found.get(path) != size:
                    return f"{names.MODEL}/{path}", "is missing" if path not in found else "has another size"
            continue
        folder = artifact.rsplit("/", 1)[0] if "/" in artifact else ""
        if folder not in listed:
            for info in client.list_artifacts(run.info.run_id, folder or None):
                sizes[info.path] = info.file_size
            listed.add(folder)
        if artifact not in sizes:
            return artifact, "is missing"
        if sizes[artifact] != record["size"]:
            return artifact, f"has {sizes[artifact]} bytes where {record['size']} were written"
    return None


@dataclass
class StepContext:
    tracking: Tracking
    run_id: str
    step: Step
    cfg: DictConfig  # the step's own config sections only (fingerprint.step_view)
    lineage: dict[str, str]  # {upstream step: run id}
    workdir: Path
    cache: ArtifactCache
    liveness: Optional[DictConfig] = None  # heartbeats of the shared lease (exclusive); not the step's config
    summary: dict[str, Any] = field(default_factory=dict)
    # What the step wrote, for the manifest and its card.
    outputs: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    # Declared dataset inputs recorded on the run, {input name: (dataset name, digest)},
    # and the logged model this step read: metrics are linked to both (MLflow 3's
    # logged-model records, which the UI's Models tab and search_logged_models show).
    datasets: dict[str, tuple[str, str]] = field(default_factory=dict)
    model_id: Optional[str] = None

    @property
    def client(self) -> MlflowClient:
        return self.tracking.client

    # ------------------------------------------------------------------ inputs

    def input_run(self, step: str):
        if step not in self.lineage:
            raise PipelineError(f"this run has no '{step}' run in its lineage: {self.lineage}")
        return self.cache.run(self.lineage[step])

    def read(self, name: str) -> Any:
        """The declared input `name` (pipeline.py): a DataFrame, dict, fitted object or
        model; None for an optional input its producer did not write."""
        wanted = self._declared_input(name)
        run_id = self.lineage[wanted.step]
        value = self._read(wanted, run_id)
        if wanted.dataset and value is not None and name not in self.datasets:
            self.datasets[name] = self.log_dataset(value, source=self.artifact_uri(wanted.step, wanted.artifact),
                                                   name=name, context=wanted.dataset,
                                                   targets=self.cfg.schema.label if "schema" in self.cfg else None)
        if wanted.artifact == names.MODEL and value is not None:
            self.model_id = manifest_of(self.input_run(wanted.step))[names.MODEL]["uri"].rsplit("/", 1)[-1]
        return value

    def done_with(self, *inputs: str) -> None:
        """This step will not read these declared inputs again: under `main`, the cache lets
        go of each one no other step still to run reads. The caller must drop its own
        references too for the memory to be freed."""
        for name in inputs:
            wanted = self._declared_input(name)
            self.cache.done_reading((self.lineage[wanted.step], wanted.artifact), self.step.name)

    def _declared_input(self, name: str):
        if name not in self.step.reads:
            raise PipelineError(f"step {self.step.name} reads {name!r}, which pipeline.py does not declare "
                                f"for it; declared: {sorted(self.step.reads)}")
        return self.step.reads[name]

    def _read(self, wanted, run_id: str) -> Any:
        held = self.cache.get(run_id, wanted.artifact)
        if held is not None:
            return held
        record = manifest_of(self.input_run(wanted.step)).get(wanted.artifact)
        if record is None:
            if wanted.optional:
                return None
            raise _damaged(wanted.step, run_id, wanted.artifact, "is not in the run's manifest")
        if wanted.artifact == names.MODEL:
            value = self._load_model(wanted.step, run_id, record)
        else:
            value = _load(self._download(wanted.step, run_id, wanted.artifact, record))
        self.cache.put(run_id, wanted.artifact, value)
        return value

    def _download(self, step: str, run_id: str, artifact: str, record: dict) -> Path:
        target = self.workdir / "inputs" / step
        target.mkdir(parents=True, exist_ok=True)
        self.cache.counted_download()
        try:
            path = Path(self.client.download_artifacts(run_id, artifact, str(target)))
        except (MlflowException, OSError):
            path = None
        if path is None or not path.is_file():
            mark_damaged(self.client, run_id, f"{artifact} is missing")
            raise _damaged(step, run_id, artifact, "is missing from the artifact store") from None
        actual = sha256_of(path)
        if actual != record["sha256"]:
            mark_damaged(self.client, run_id, f"{artifact} sha256 {actual} != recorded {record['sha256']}")
            raise _damaged(step, run_id, artifact,
                           f"does not match its recorded sha256 ({path.stat().st_size} bytes, sha256 {actual[:12]}…; "
                           f"recorded {record['size']} bytes, {record['sha256'][:12]}…)")
        return path

    def _load_model(self, step: str, run_id: str, record: dict):
        found = logged_model.file_sizes(record["uri"])
        for path, size in record["files"].items():
            if found.get(path) != size:
                mark_damaged(self.client, run_id, f"model file {path} missing or resized")
                raise _damaged(step, run_id, f"{names.MODEL}/{path}", "is missing or has another size")
        self.cache.counted_download()
        return logged_model.load(record["uri"])

    # ------------------------------------------------------------------ outputs

    def write(self, name: str, value: Any) -> Path:
        """Write the declared output `name`: a DataFrame (.parquet), dict (.json), text
        (.html, .md), matplotlib figure (.png) or fitted estimator (.skops)."""
        artifact = self._declared_output(name)
        path = self.workdir / "outputs" / artifact
        path.parent.mkdir(parents=True, exist_ok=True)
        _save(value, path)
        folder = artifact.rsplit("/", 1)[0] if "/" in artifact else None
        self.client.log_artifact(self.run_id, str(path), folder)
        self.outputs[artifact] = {"size": path.stat().st_size, "sha256": sha256_of(path)}
        if artifact.endswith(".png"):
            self.figures[name] = path
        self.cache.put(self.run_id, artifact, value)
        return path

    def write_model(self, output: str, **model: Any) -> str:
        """Log the declared model output (engine/logged_model.py); returns its URI."""
        artifact = self._declared_output(output)
        uri = logged_model.log(self.run_id, self.workdir, **model)
        self.outputs[artifact] = {"uri": uri, "files": logged_model.file_sizes(uri)}
        return uri

    def _declared_output(self, name: str) -> str:
        if name not in self.step.writes:
            raise PipelineError(f"step {self.step.name} writes {name!r}, which pipeline.py does not declare "
                                f"for it; declared: {sorted(self.step.writes)}")
        return self.step.writes[name].artifact

    def missing_outputs(self) -> list[str]:
        return [out.artifact for out in self.step.writes.values()
                if not out.optional and out.artifact not in self.outputs]

    # ------------------------------------------------------------------ records

    def log_dataset(self, frame, source: str | dict, name: str, context: str,
                    targets: Optional[str] = None) -> tuple[str, str]:
        """Record `frame` as an MLflow dataset input of this run (source, digest, schema);
        return its (name, digest). A dict source means "generated by code with these settings".
        An artifact behind a tracking server's proxy (mlflow-artifacts:/...) is recorded by the
        HTTP address clients download it from: MLflow has no dataset source for that scheme."""
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.http_dataset_source import HTTPDatasetSource
        from mlflow.data.pandas_dataset import from_pandas
        from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

        if isinstance(source, dict):
            origin = CodeDatasetSource({k: redact(str(v)) for k, v in source.items()})
        elif source.startswith("mlflow-artifacts:"):
            url = MlflowArtifactsRepository.resolve_uri(source, self.tracking.tracking_uri)
            origin = HTTPDatasetSource(redact(url))
        else:
            origin = redact(source)
        with warnings.catch_warnings():
            # MLflow's hints about int columns and ambiguous local sources do not apply here.
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_pandas(frame, source=origin, name=name, targets=targets)
            # MLflow finds the columns that may be missing by visiting every cell in Python
            # (a minute per million rows). The same schema from a sample that keeps, for each
            # column with missing values, one row where it is missing; set where MLflow caches it.
            dataset.__dict__["schema"] = from_pandas(_schema_sample(frame)).schema
            entity = dataset._to_mlflow_entity()
        inputs = [DatasetInput(entity, [InputTag("mlflow.data.context", context)])]
        try:
            self.client.log_inputs(self.run_id, inputs)
        except MlflowException:
            # MLflow looks the dataset up, then inserts it: parallel trials logging the same new
            # dataset can both insert, and the store refuses the second (how it says so depends
            # on the database). By now the first has committed, so logging again links this run
            # to it; any other error comes back the second time.
            self.client.log_inputs(self.run_id, inputs)
        return name, dataset.digest

    def artifact_uri(self, step: str, artifact: str) -> str:
        run = self.input_run(step) if step != self.step.name else self.client.get_run(self.run_id)
        return f"{run.info.artifact_uri}/{artifact}"

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """For a read-decide-write of shared state: the store's lock (engine/store.py), which
        orders this machine's processes cheaply, then the lease `name` on the store itself
        (engine/lease.py), which orders every machine's."""
        with store_lock(self.tracking.tracking_uri), lease(self.client, name, self.liveness):
            yield

    def log_metrics(self, metrics: dict[str, float]) -> None:
        """Logged to the run; also to the logged model this step read, if any, each metric
        on the dataset its name starts with (`test_roc_auc` on the test input)."""
        self.metrics.update(metrics)
        now = int(time.time() * 1000)
        records = []
        for key, value in metrics.items():
            dataset_name, digest = next((found for input_name, found in self.datasets.items()
                                         if key.startswith(input_name + "_")), (None, None))
            records.append(Metric(key, float(value), now, 0, model_id=self.model_id,
                                  dataset_name=dataset_name, dataset_digest=digest))
        self.client.log_batch(self.run_id, metrics=records)

    def log_params(self, params: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, params=[Param(k, redact(str(v))) for k, v in params.items()])

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, redact(str(v))) for k, v in tags.items()])


def _schema_sample(frame, rows: int = 1000):
    """The first `rows` rows plus one row per column that is missing somewhere: the same
    MLflow schema (types and which columns are required) as the whole frame."""
    missing = frame.isna().to_numpy()
    with_missing = missing.argmax(axis=0)[missing.any(axis=0)]
    return frame.iloc[sorted(set(range(min(rows, len(frame)))) | set(with_missing.tolist()))]


def _save(value: Any, path: Path) -> None:
    suffix = path.suffix
    if suffix == ".parquet":
        value.to_parquet(path, index=False)
    elif suffix == ".json":
        path.write_text(json.dumps(value, indent=2, default=str))
    elif suffix in (".html", ".md", ".txt"):
        path.write_text(value)
    elif suffix == ".png":
        value.savefig(path, bbox_inches="tight")
    elif suffix == ".skops":
        import skops.io

        skops.io.dump(value, path)
    else:
        raise PipelineError(f"no writer for {path.name}: add one to engine/context.py")


def _load(path: Path) -> Any:
    suffix = path.suffix
    if suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path)
    if suffix == ".json":
        return json.loads(path.read_text())
    if suffix in (".html", ".md", ".txt"):
        return path.read_text()
    if suffix == ".skops":
        # A step's own artifact (transform's transformer), read with the trusted types
        # the model will load it with; only the steps that read one import the package.
        from heart_disease_model.serialization import load_skops

        return load_skops(path)
    if suffix == ".png":
        return path
    raise PipelineError(f"no reader for {path.name}: add one to engine/context.py")
