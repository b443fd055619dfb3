"""Structured config: the schema of conf/, so a typo fails at start-up, not mid-run.

The YAML files under conf/ hold the values; these dataclasses hold the field names,
types and defaults. `model` stays free-form: it is whatever keyword arguments the
estimator named by its `_target_` accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING

STEP_NAMES = ("ingest", "eda", "split", "transform", "train", "evaluate", "register")


@dataclass
class DataConfig:
    source: str = "uci"  # uci | file | synthetic
    url: Optional[str] = None
    path: Optional[str] = None
    rows: Optional[int] = None
    sha256: Optional[str] = None
    cache_dir: str = "${oc.env:XDG_CACHE_HOME,${oc.env:HOME}/.cache}/heart-disease"
    download_timeout_s: float = 30.0
    impossible_values: str = "missing"  # missing | fail
    seed: int = 0
    sites: list[str] = field(default_factory=lambda: ["cleveland"])  # uci source only
    external_sites: list[str] = field(default_factory=list)  # held out entirely, for evaluate
    site_sha256: dict[str, Optional[str]] = field(default_factory=dict)


@dataclass
class ColumnSpec:
    description: str = ""
    codes: Optional[list[int]] = None
    min: Optional[float] = None
    max: Optional[float] = None


@dataclass
class SchemaConfig:
    target: str = "num"
    label: str = "target"
    columns: dict[str, ColumnSpec] = field(default_factory=dict)


@dataclass
class EdaConfig:
    histogram_bins: int = 20
    dpi: int = 90
    plot_rows: int = 100000  # plots draw a seeded sample of at most this many rows
    seed: int = 0


@dataclass
class SplitConfig:
    test_fraction: float = 0.2
    val_fraction: float = 0.2
    seed: int = 42


@dataclass
class TransformConfig:
    one_hot: list[str] = field(default_factory=list)
    numeric_imputer: str = "median"
    categorical_imputer: str = "most_frequent"


@dataclass
class ThresholdConfig:
    strategy: str = "sensitivity"  # sensitivity | fixed
    target: float = 0.90
    value: float = 0.5


@dataclass
class RiskLevelsConfig:
    strategy: str = "data"  # data | fixed
    low_sensitivity: float = 0.97
    high_specificity: float = 0.90
    bounds: dict[str, float] = field(default_factory=lambda: {"Low": 0.3, "Moderate": 0.6, "High": 1.0})


@dataclass
class TrainConfig:
    model_name: Optional[str] = None  # None: the estimator's class
    input_example_rows: int = 3
    calibration: str = "sigmoid"  # none | sigmoid | isotonic
    calibration_folds: int = 5
    calibration_ensemble: bool = False  # mean of the folds' calibrated models instead of one calibrator
    threshold: ThresholdConfig = field(default_factory=lambda: ThresholdConfig())
    risk_levels: RiskLevelsConfig = field(default_factory=lambda: RiskLevelsConfig())


@dataclass
class SubgroupsConfig:
    codes: list[str] = field(default_factory=list)  # coded columns: one subgroup per code
    bands: dict[str, list[Any]] = field(default_factory=dict)  # numeric column: band edges (numbers; checked)


@dataclass
class DecisionCurveConfig:
    low: float = 0.02
    high: float = 0.8
    step: float = 0.01


@dataclass
class EvaluateConfig:
    cv_folds: int = 5
    cv_repeats: int = 10
    seed: int = 42
    bootstrap_rounds: int = 1000  # resampled patients behind the out-of-fold intervals
    bootstrap_max_rows: int = 2000  # patients per resample on large data (variance scaled to all)
    subgroups: SubgroupsConfig = field(default_factory=SubgroupsConfig)
    decision_curve: DecisionCurveConfig = field(default_factory=DecisionCurveConfig)
    criteria: list[str] = field(default_factory=list)
    allow_no_criteria: bool = False  # an empty criteria list would validate every model
    cv_max_fit_rows: int = 4000000  # fewer CV repeats when the fits would train on more rows in all
    n_jobs: int = 1  # folds fitted at once (threads); speed only: not in the cache key


@dataclass
class RegisterConfig:
    model_name: str = "heart-disease"
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"
    primary_metric: str = "cv_roc_auc_mean"
    allow_unvalidated: bool = False
    seal_key: Optional[str] = None  # the private key versions are sealed with (engine/seal.py); None: beside the store


@dataclass
class SweepConfig:
    # Rank trials by this evaluate metric (higher is better, but for Brier scores and log loss).
    metric: str = "cv_roc_auc_mean"
    # Send the best VALIDATED trial through register.
    register_best: bool = False


@dataclass
class ProfileConfig:
    """Where runs are tracked and models registered (profiles/<name>.yaml)."""

    tracking_uri: str = "sqlite:///mlflow.db"  # relative SQLite paths are relative to the project
    registry_uri: Optional[str] = None  # None: the tracking store
    artifact_location: Optional[str] = None  # for a new experiment; relative to the project
    experiment_name: str = "heart-disease"
    seal_public_key: Optional[str] = None  # what seals are verified with (engine/seal.py); None: beside the store


@dataclass
class LivenessConfig:
    """Heartbeats of claims and of register's lease (conf/liveness/default.yaml)."""

    heartbeat_seconds: float = 5.0
    grace_seconds: float = 60.0


@dataclass
class UpstreamConfig:
    ingest: Optional[str] = None
    split: Optional[str] = None
    transform: Optional[str] = None
    train: Optional[str] = None
    evaluate: Optional[str] = None


@dataclass
class PipelineConfig:
    data: DataConfig = MISSING
    schema: SchemaConfig = MISSING
    eda: EdaConfig = MISSING
    split: SplitConfig = MISSING
    transform: TransformConfig = MISSING
    model: Any = MISSING
    train: TrainConfig = MISSING
    evaluate: EvaluateConfig = MISSING
    register: RegisterConfig = MISSING
    profile: ProfileConfig = MISSING
    liveness: LivenessConfig = MISSING
    force: list[str] = field(default_factory=list)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    # Upper bounds: {section: {setting: largest value}} (conf/limits), checked at start-up.
    limits: dict[str, dict[str, int]] = field(default_factory=dict)


def register_configs() -> None:
    """Make `pipeline_schema` (first in conf/config.yaml's defaults) known to Hydra."""
    ConfigStore.instance().store(name="pipeline_schema", node=PipelineConfig)


def main_overrides() -> list[str]:
    """The overrides that rebuild this process's config with `mlflow run . -e main`: the
    command line's, less those that only steer a run (force, upstream pins, sweep settings, profile),
    with the model that a sweep's search config chose made explicit."""
    if not HydraConfig.initialized():  # a sweep's own callbacks, or a caller outside Hydra
        return []
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    kept = [o for o in overrides
            if not o.lstrip("+~").startswith(("force=", "upstream.", "sweep.", "search=", "profile"))]
    if any(o.lstrip("+").startswith("search=") for o in overrides):
        kept.insert(0, f"model={hydra_cfg.runtime.choices['model']}")
    return kept
