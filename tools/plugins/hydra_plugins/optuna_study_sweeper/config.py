"""The sweeper's config schema (`hydra/sweeper=optuna_study`) and its samplers
(`hydra/sweeper/sampler=tpe|random`)."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    # A factory, not a sampler: the sweeper gives each worker of a shared study its own seed.
    _partial_: bool = True
    seed: Optional[int] = None
    n_startup_trials: int = 10
    # Trials running in other workers count as bad while they run, so workers spread out.
    constant_liar: bool = True


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    _partial_: bool = True
    seed: Optional[int] = None


@dataclass
class OptunaStudySweeperConf:
    _target_: str = "hydra_plugins.optuna_study_sweeper.sweeper.OptunaStudySweeper"
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])
    sampler: Any = MISSING
    direction: str = "minimize"  # or maximize: what the task function returns
    # A database URL (sqlite:///study.db, postgresql+psycopg2://user@host/db) that workers
    # share; None keeps the study in this process's memory.
    storage: Optional[str] = None
    study_name: Optional[str] = None  # required with a storage: workers and re-runs join by name
    n_trials: int = 20  # in all, over every worker of the study
    n_jobs: int = 1  # trials asked for at once and handed to the launcher together
    heartbeat_interval: int = 10  # seconds between a running trial's heartbeats (storage only)
    grace_period: int = 30  # seconds without a heartbeat after which a trial counts as dead
    max_retry: int = 2  # times a dead worker's trial is run again before it stays FAILED
    # The search space: config key -> Hydra sweep syntax; the command line's sweeps replace it key by key.
    params: Optional[Dict[str, str]] = None


store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="optuna_study", node=OptunaStudySweeperConf, provider="optuna_study_sweeper")
store.store(group="hydra/sweeper/sampler", name="tpe", node=TPESamplerConf, provider="optuna_study_sweeper")
store.store(group="hydra/sweeper/sampler", name="random", node=RandomSamplerConf, provider="optuna_study_sweeper")
