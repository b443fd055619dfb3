"""ingest: load the raw table from its source, check it against the UCI codebook,
and log it as `data/raw.parquet` plus an MLflow dataset input.

    python -m steps.ingest data.url=/path/to/processed.cleveland.data
    python -m steps.ingest data=synthetic data.rows=100000
    python -m steps.ingest data=file data.path=my_patients.csv
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source import DatasetSource
from omegaconf import DictConfig

from steps import sources, synthetic
from steps.codebook import Codebook, validate
from steps.errors import PipelineError
from steps.tracking import StepContext, launch_step


@dataclass
class RawData:
    frame: pd.DataFrame
    source: str | DatasetSource  # where it came from, for the dataset record
    sha256: str | None
    synthetic: bool


def load_source(data: DictConfig, book: Codebook) -> RawData:
    """Read the configured source into a DataFrame, unvalidated."""
    if data.source == "synthetic":
        if not data.rows or data.rows < 1:
            raise PipelineError(f"data.rows={data.rows}: the synthetic source needs a row count >= 1")
        origin = CodeDatasetSource({"generator": "steps.synthetic.generate",
                                    "rows": str(data.rows), "seed": str(data.seed)})
        return RawData(synthetic.generate(int(data.rows), int(data.seed)), origin, None, True)
    if data.source not in ("uci", "file"):
        raise PipelineError(f"data.source={data.source!r}: use uci, file or synthetic")
    location = sources.location_of(data)
    path, digest = sources.fetch(location, data.sha256, data.cache_dir, data.download_timeout_s)
    read = sources.read_uci if data.source == "uci" else sources.read_table
    frame = read(path, book.file_columns)
    if data.rows:
        frame = frame.head(int(data.rows))
    return RawData(frame, location, digest, False)


def run(ctx: StepContext) -> None:
    cfg = ctx.cfg
    book = Codebook.from_config(cfg.schema)
    raw = load_source(cfg.data, book)
    clean, report = validate(raw.frame, book, cfg.data.impossible_values)

    ctx.log_table("raw", clean)
    ctx.log_dict(report, "validation_report.json")
    ctx.log_dataset(clean, source=raw.source, name="uci-heart-raw", context="ingest", targets=book.label)
    ctx.set_tags({"data.source": cfg.data.source, "data.synthetic": str(raw.synthetic).lower(),
                  **({"data.sha256": raw.sha256} if raw.sha256 else {})})
    ctx.log_metrics({
        "rows": report["rows"],
        "duplicate_rows": report["duplicate_rows"],
        "missing_cells": sum(report["missing"].values()),
        "impossible_as_missing": sum(report["impossible_as_missing"].values()),
        "positive_rate": clean[book.label].mean(),
    })
    ctx.summary.update(rows=report["rows"], duplicates=report["duplicate_rows"],
                       missing=sum(report["missing"].values()), synthetic=raw.synthetic)
    if report["impossible_as_missing"]:
        print(f"ingest: impossible values treated as missing: {report['impossible_as_missing']}")


if __name__ == "__main__":
    launch_step("ingest")
