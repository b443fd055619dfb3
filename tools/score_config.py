"""Structured config of `score` (conf/score.yaml): the pipeline's schema plus a `score`
section, so a typo in `score.*` fails at start-up like any other key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from engine.config import PipelineConfig, register_configs

ENGINES = ("pandas", "spark")
INPUT_FORMATS = ("auto", "parquet", "csv")


@dataclass
class SparkConfig:
    master: str = "local[*]"  # any Spark master URL: local[2], spark://host:7077, yarn, ...
    # Extra Spark settings, e.g. {spark.driver.memory: 4g}.
    conf: dict[str, str] = field(default_factory=dict)


@dataclass
class ScoreConfig:
    input: str = MISSING  # file, folder, http(s) URL or runs:/<run id>/<path>
    output: str = MISSING  # Parquet file (pandas) or folder of part files (spark)
    rejects: Optional[str] = None  # default: beside the output, <stem>.rejects.parquet
    input_format: str = "auto"  # auto (by file suffix) | parquet | csv
    input_sha256: Optional[str] = None  # a download must have this checksum
    download_timeout_s: float = 60.0
    id_columns: list[str] = field(default_factory=list)  # copied from input to output and rejects
    model_uri: str = "models:/heart-disease@champion"
    batch_rows: int = 65536  # rows read, scored and written at a time
    engine: str = "pandas"  # pandas | spark
    explain: bool = False  # add base_log_odds and contribution_<field> columns (pandas engine)
    spark: SparkConfig = field(default_factory=SparkConfig)


@dataclass
class ScorePipelineConfig(PipelineConfig):
    score: ScoreConfig = field(default_factory=ScoreConfig)


def register_score_config() -> None:
    """Make `score_schema` and the `pipeline_schema` it extends known to Hydra."""
    register_configs()
    ConfigStore.instance().store(name="score_schema", node=ScorePipelineConfig)
