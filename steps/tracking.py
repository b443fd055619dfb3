"""All MLflow plumbing, written once: where runs go, cache keys, run lineage and
artifact I/O. Step modules never talk to MLflow directly; they get a StepContext.

A step run carries these tags:
    pipeline.step          the step it executed (only on runs that really ran it)
    pipeline.cache_key     fingerprint of code + resolved config + input runs
    pipeline.input.<step>  run id of every upstream step it was built from
    pipeline.summary       JSON of the step's key outputs (shown when it is reused)
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import json
import os
import shlex
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import mlflow
from mlflow.entities import RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from omegaconf import DictConfig, OmegaConf

from steps.cards import step_card
from steps.config import STEP_NAMES
from steps.errors import PipelineError
from steps.pipeline import STEPS, Step

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = PROJECT_ROOT / "steps"

TAG_STEP = "pipeline.step"
TAG_CACHE_KEY = "pipeline.cache_key"
TAG_INPUT = "pipeline.input."
TAG_SUMMARY = "pipeline.summary"
TAG_SECONDS = "pipeline.step_seconds"
TAG_REUSED = "pipeline.reused_run_id"
TAG_ERROR = "pipeline.error"
TAG_OVERRIDES = "pipeline.overrides"  # what rebuilds the run's config with `-e main`, as JSON
TAG_ROLE = "pipeline.role"  # main | sweep | trial, on runs that group step runs
CARD = "card.html"


# --------------------------------------------------------------------------- where


@dataclass
class Tracking:
    client: MlflowClient
    experiment_id: str
    tracking_uri: str


def _absolute_sqlite(uri: str) -> str:
    """sqlite:///mlflow.db means the project's mlflow.db, wherever the step is started."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(PROJECT_ROOT / uri[len(prefix):])
    return uri


def load_profile(name: str) -> DictConfig:
    """profiles/<name>.yaml, or any YAML file given by path."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PROJECT_ROOT / "profiles" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (PROJECT_ROOT / "profiles").glob("*.yaml"))
        raise PipelineError(f"profile '{name}' not found: expected {path}; known profiles: {known}")
    return OmegaConf.load(path)


def connect(profile_name: str) -> Tracking:
    """Point MLflow at the profile's store (an explicit MLFLOW_TRACKING_URI wins) and
    make sure the profile's experiment exists."""
    profile = load_profile(profile_name)
    explicit_uri = os.environ.get("MLFLOW_TRACKING_URI")
    tracking_uri = explicit_uri or _absolute_sqlite(profile.tracking_uri)
    registry_uri = os.environ.get("MLFLOW_REGISTRY_URI") or (
        None if explicit_uri or not profile.registry_uri else _absolute_sqlite(profile.registry_uri)
    )
    mlflow.set_tracking_uri(tracking_uri)
    if registry_uri:
        mlflow.set_registry_uri(registry_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)

    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or profile.experiment_name
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        artifact_location = None
        if profile.artifact_location and not explicit_uri:
            artifact_location = str(PROJECT_ROOT / profile.artifact_location)
        experiment_id = client.create_experiment(name, artifact_location=artifact_location)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return Tracking(client, experiment_id, tracking_uri)


def adopt_launcher_run(tracking: Tracking) -> Optional[str]:
    """`mlflow run` creates a run and passes its id in MLFLOW_RUN_ID. Use that run when
    it lives in our experiment; otherwise leave it a pointer to the run we make."""
    run_id = os.environ.pop("MLFLOW_RUN_ID", None)
    if not run_id:
        return None
    try:
        run = tracking.client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None  # launched against another store: nothing we can annotate
    if run.info.experiment_id == tracking.experiment_id:
        return run_id
    tracking.client.set_tag(
        run_id,
        "mlflow.note.content",
        "This run only launched the pipeline. Its runs are in experiment "
        f"id {tracking.experiment_id}; pass --experiment-name to `mlflow run` to keep them together.",
    )
    return None


# --------------------------------------------------------------------------- cache keys


# CPython 3.11's ast.parse is not thread-safe ("AST constructor recursion depth mismatch"),
# and main computes eda's cache key in a thread beside the chain's.
_AST_LOCK = threading.Lock()


def _imported_step_modules(path: Path) -> set[Path]:
    """Files of the `steps` package that `path` imports (directly)."""
    found: set[Path] = set()
    with _AST_LOCK:
        tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = "steps" + (f".{base}" if base else "")
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            if name.startswith("steps."):
                candidate = PACKAGE_DIR / (name.split(".", 1)[1].replace(".", "/") + ".py")
                if candidate.exists():
                    found.add(candidate)
    return found


@functools.lru_cache(maxsize=None)
def code_fingerprint(module: str) -> str:
    """sha256 over the source of a step module and every project module it imports,
    read from disk, so uncommitted edits change the key. Computed once per process."""
    start = PACKAGE_DIR / (module.split(".", 1)[1] + ".py")
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(_imported_step_modules(path) - seen)
    digest = hashlib.sha256()
    for path in sorted(seen):
        digest.update(path.relative_to(PROJECT_ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def step_config(cfg: DictConfig, step: Step) -> dict[str, Any]:
    return {key: OmegaConf.to_container(cfg[key], resolve=True) for key in step.config_keys}


def _load_callable(spec: str) -> Callable:
    module, function = spec.split(":")
    return getattr(importlib.import_module(module), function)


def cache_key(step: Step, cfg: DictConfig, upstream_run_id: Optional[str]) -> str:
    config = step_config(cfg, step)
    for dotted in step.not_in_key:
        section, name = dotted.split(".", 1)
        config[section].pop(name, None)
    material = {
        "step": step.name,
        "code": code_fingerprint(step.module),
        "config": config,
        "upstream": upstream_run_id,
    }
    if step.external_input:
        material["external_input"] = _load_callable(step.external_input)(cfg)
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------- lookups


def latest_finished(tracking: Tracking, filter_string: str):
    """The newest FINISHED run of the experiment that matches `filter_string`, or None."""
    runs = tracking.client.search_runs(
        [tracking.experiment_id],
        filter_string=filter_string + " and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def find_cached_run(tracking: Tracking, key: str):
    return latest_finished(tracking, f"tags.`{TAG_CACHE_KEY}` = '{key}'")


def resolve_upstream(tracking: Tracking, step: Step, cfg: DictConfig):
    """The run this step reads: the one named in `upstream.<step>`, else the latest
    FINISHED run of the upstream step in the experiment."""
    name = step.upstream
    explicit = cfg.upstream.get(name)
    if explicit:
        try:
            run = tracking.client.get_run(explicit)
        except mlflow.exceptions.MlflowException as err:
            raise PipelineError(f"upstream.{name}={explicit}: no such run ({err.message})") from None
        if run.data.tags.get(TAG_STEP) != name or run.info.status != "FINISHED":
            raise PipelineError(
                f"upstream.{name}={explicit} is not a FINISHED {name} run "
                f"(step tag {run.data.tags.get(TAG_STEP)!r}, status {run.info.status})"
            )
        return run
    run = latest_finished(tracking, f"tags.`{TAG_STEP}` = '{name}'")
    if run is None:
        raise PipelineError(
            f"step '{step.name}' needs a FINISHED '{name}' run in experiment "
            f"{tracking.experiment_id} and there is none: run `mlflow run . -e {name}` "
            f"(or `-e main`) first, or pass upstream.{name}=<run id>"
        )
    return run


def lineage_of(run) -> dict[str, str]:
    """{step: run id} for a step run and everything it was built from."""
    lineage = {
        key[len(TAG_INPUT):]: value
        for key, value in run.data.tags.items()
        if key.startswith(TAG_INPUT)
    }
    lineage[run.data.tags[TAG_STEP]] = run.info.run_id
    return lineage


# --------------------------------------------------------------------------- step context


@dataclass
class StepContext:
    """What a step's shell uses to read its inputs and record its outputs."""

    tracking: Tracking
    run_id: str
    cfg: DictConfig
    lineage: dict[str, str]
    workdir: Path
    summary: dict[str, Any] = field(default_factory=dict)
    # What the step logged, for its card.
    metrics: dict[str, float] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)

    @property
    def client(self) -> MlflowClient:
        return self.tracking.client

    def input_run(self, step: str):
        if step not in self.lineage:
            raise PipelineError(f"this run has no '{step}' run in its lineage: {self.lineage}")
        return self.client.get_run(self.lineage[step])

    def download(self, step: str, artifact_path: str) -> Path:
        target = self.workdir / "inputs" / step
        target.mkdir(parents=True, exist_ok=True)
        return Path(
            self.client.download_artifacts(self.lineage[step], artifact_path, str(target))
        )

    def artifact_uri(self, step: str, artifact_path: str) -> str:
        return f"{self.input_run(step).info.artifact_uri}/{artifact_path}"

    def has_table(self, step: str, name: str) -> bool:
        listed = self.client.list_artifacts(self.lineage[step], "data")
        return f"data/{name}.parquet" in {artifact.path for artifact in listed}

    def load_table(self, step: str, name: str):
        import pandas as pd

        return pd.read_parquet(self.download(step, f"data/{name}.parquet"))

    def log_table(self, name: str, frame) -> None:
        path = self.workdir / "outputs" / "data" / f"{name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
        self.client.log_artifact(self.run_id, str(path), "data")

    def log_figure(self, name: str, figure) -> Path:
        path = self.workdir / "outputs" / "plots" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, bbox_inches="tight")
        self.client.log_artifact(self.run_id, str(path), "plots")
        self.figures[name] = path
        return path

    def log_file(self, path: Path, artifact_dir: Optional[str] = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_dir)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_dataset(self, frame, source: str, name: str, context: str, targets: Optional[str] = None) -> None:
        """Record `frame` as an MLflow dataset input of this run (source, digest, schema)."""
        from mlflow.data.pandas_dataset import from_pandas
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():
            # MLflow's hints about int columns and ambiguous local sources do not apply here.
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_pandas(frame, source=source, name=name, targets=targets)
            entity = dataset._to_mlflow_entity()
        inputs = [DatasetInput(entity, [InputTag("mlflow.data.context", context)])]
        try:
            self.client.log_inputs(self.run_id, inputs)
        except mlflow.MlflowException:
            # MLflow looks the dataset up, then inserts it: parallel trials logging the same new
            # dataset can both insert, and the store refuses the second (how it says so depends
            # on the database). By now the first has committed, so logging again links this run
            # to it; any other error comes back the second time.
            self.client.log_inputs(self.run_id, inputs)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        self.metrics.update(metrics)
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()]
        )

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def outputs(self) -> list[str]:
        """Artifact paths of this run (two levels deep) and its logged model, if any."""
        paths = []
        for artifact in self.client.list_artifacts(self.run_id):
            children = self.client.list_artifacts(self.run_id, artifact.path) if artifact.is_dir else []
            paths += [child.path for child in children] or [artifact.path]
        model_uri = self.client.get_run(self.run_id).data.tags.get("pipeline.model_uri")
        return paths + ([f"MLflow model {model_uri}"] if model_uri else [])

    def active_run(self):
        """The step run as MLflow's fluent active run, for APIs that only log there
        (mlflow.<flavor>.log_model). Leaving the block marks the run FINISHED; the
        framework marks it FAILED if the step raises afterwards."""
        return mlflow.start_run(run_id=self.run_id)


# --------------------------------------------------------------------------- running a step


@dataclass
class StepResult:
    step: str
    run_id: str
    status: str  # ran | reused
    seconds: float
    summary: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)  # {upstream step: run id} it was built from


def config_params(cfg: DictConfig, step: Step) -> dict[str, Any]:
    """The step's config sections as flat MLflow params (`model.C`, `split.seed`, ...);
    the codebook is left out: it is the same for every run and long."""
    return {k: v for k, v in _flatten("", step_config(cfg, step)).items() if k.split(".")[0] != "schema"}


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(f"{prefix}.{key}" if prefix else str(key), inner))
        return out
    return {prefix: value}


def main_overrides() -> list[str]:
    """The overrides that rebuild this process's config with `mlflow run . -e main`: the
    command line's, less those that only steer a run (force, upstream pins, sweep settings, profile),
    with the model that a sweep's search config chose made explicit."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():  # a sweep's own callbacks, or a caller outside Hydra
        return []
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    kept = [o for o in overrides
            if not o.lstrip("+~").startswith(("force=", "upstream.", "sweep.", "search=", "profile="))]
    if any(o.lstrip("+").startswith("search=") for o in overrides):
        kept.insert(0, f"model={hydra_cfg.runtime.choices['model']}")
    return kept


def _forced(cfg: DictConfig, name: str) -> bool:
    force = list(cfg.force)
    unknown = set(force) - set(STEP_NAMES) - {"all"}
    if unknown:
        raise PipelineError(f"force={force}: unknown step(s) {sorted(unknown)}; use step names or 'all'")
    return "all" in force or name in force


def execute(
    name: str,
    cfg: DictConfig,
    tracking: Tracking,
    parent_run_id: Optional[str] = None,
    own_run_id: Optional[str] = None,
    upstream_run=None,
) -> StepResult:
    """Run one step, or reuse a FINISHED run with the same cache key.

    `own_run_id` is a run made for us (by `mlflow run`); `upstream_run` spares a lookup
    when the caller already knows the input run."""
    step = STEPS[name]
    started = time.perf_counter()
    if step.upstream and upstream_run is None:
        upstream_run = resolve_upstream(tracking, step, cfg)
    lineage = lineage_of(upstream_run) if upstream_run is not None else {}
    key = cache_key(step, cfg, upstream_run.info.run_id if upstream_run is not None else None)

    cached = None if _forced(cfg, name) else find_cached_run(tracking, key)
    if cached is not None:
        if own_run_id:
            tracking.client.set_tag(own_run_id, TAG_REUSED, cached.info.run_id)
            tracking.client.set_tag(own_run_id, "mlflow.note.content",
                                    f"Reused {name} run {cached.info.run_id} (same cache key); "
                                    f"pass force=[{name}] to run it again.")
            tracking.client.set_terminated(own_run_id, "FINISHED")
        return StepResult(name, cached.info.run_id, "reused", time.perf_counter() - started,
                          json.loads(cached.data.tags.get(TAG_SUMMARY, "{}")), lineage)

    tags = {TAG_STEP: name, TAG_CACHE_KEY: key, MLFLOW_RUN_NAME: name, TAG_OVERRIDES: json.dumps(main_overrides())}
    tags.update({TAG_INPUT + step_name: run_id for step_name, run_id in lineage.items()})
    if parent_run_id:
        tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    if own_run_id:
        run_id = own_run_id
        tracking.client.log_batch(run_id, tags=[RunTag(tag, value) for tag, value in tags.items()])
    else:
        run_id = tracking.client.create_run(tracking.experiment_id, tags=tags).info.run_id

    config = step_config(cfg, step)
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as workdir:
        ctx = StepContext(tracking, run_id, cfg, lineage, Path(workdir))
        ctx.log_params(config_params(cfg, step))
        ctx.log_dict(config, "config.yaml")
        try:
            module = importlib.import_module(step.module)
            work_started = time.perf_counter()
            module.run(ctx)
            work_seconds = time.perf_counter() - work_started
        except BaseException as err:
            tracking.client.set_tag(run_id, TAG_ERROR, str(err)[:5000])
            tracking.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
            raise
        ctx.log_text(step_card(name, run_id, lineage, ctx.outputs(), ctx.summary, ctx.metrics, ctx.figures,
                               work_seconds, key), CARD)
        ctx.set_tags({TAG_SUMMARY: json.dumps(ctx.summary, default=str), TAG_SECONDS: f"{work_seconds:.3f}"})
    tracking.client.set_terminated(run_id, "FINISHED")
    return StepResult(name, run_id, "ran", time.perf_counter() - started, ctx.summary, lineage)


# --------------------------------------------------------------------------- command line


def _argv_from_mlproject(argv: list[str]) -> list[str]:
    """MLproject calls `python -m steps.<step> --overrides '<string>' --profile <name>`:
    MLflow passes each parameter as one shell-quoted word. Split the overrides string
    the way a shell would, so `model=random_forest model.n_estimators=300` and
    quoted values like `data.path='/my data/x.csv'` arrive as Hydra overrides."""
    out, rest = [argv[0]], iter(argv[1:])
    for arg in rest:
        if arg == "--overrides":
            out.extend(word for word in shlex.split(next(rest, "")) if word)
        elif arg.startswith("--overrides="):
            out.extend(word for word in shlex.split(arg.split("=", 1)[1]) if word)
        elif arg == "--profile":
            out.append(f"profile={next(rest)}")
        else:
            out.append(arg)
    return out


def launch(task: Callable[[DictConfig], Any], config_name: str = "config", multirun: bool = False) -> None:
    """Entry for `python -m steps.<step>`: run `task` as a Hydra app on conf/<config_name>.yaml,
    accepting MLproject's `--overrides/--profile` form as well as plain overrides."""
    import hydra

    from steps.config import register_configs

    register_configs()
    sys.argv = _argv_from_mlproject(sys.argv)
    # Hydra refuses --multirun beside its other modes (--cfg, --info, --help, ...).
    modes = {"--multirun", "-m", "--run", "-r", "--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help",
             "--shell-completion", "-sc"}
    if multirun and not modes & {arg.split("=")[0] for arg in sys.argv[1:]}:
        sys.argv.insert(1, "--multirun")
    hydra.main(config_path=str(PROJECT_ROOT / "conf"), config_name=config_name, version_base="1.3")(task)()


def launch_step(name: str) -> None:
    launch(lambda cfg: run_single_step(name, cfg))


def exit_on_pipeline_error(function: Callable[[], Any]) -> Any:
    """A PipelineError's message is the whole story: print it without a traceback."""
    try:
        return function()
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


def run_single_step(name: str, cfg: DictConfig) -> StepResult:
    """`python -m steps.<name>` / `mlflow run . -e <name>`: one step, cached like in main."""

    def go() -> StepResult:
        tracking = connect(cfg.profile)
        result = execute(name, cfg, tracking, own_run_id=adopt_launcher_run(tracking))
        verb = "reused" if result.status == "reused" else "ran"
        inputs = ", ".join(f"{step}={run_id}" for step, run_id in result.inputs.items()) or "none"
        print(f"{name}: {verb} run {result.run_id} in {result.seconds:.1f}s {json.dumps(result.summary, default=str)}"
              f"\n{name}: inputs from {inputs}")
        return result

    return exit_on_pipeline_error(go)
