"""ingest: load the raw table from its source, check it against the UCI codebook,
and log it as `data/raw.parquet` plus an MLflow dataset input.

    python -m steps.ingest data.url=/path/to/processed.cleveland.data
    python -m steps.ingest data=synthetic data.rows=100000
    python -m steps.ingest data=file data.path=my_patients.csv
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pandas as pd
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source import DatasetSource
from omegaconf import DictConfig

from steps import sources, synthetic
from steps.codebook import Codebook, validate
from steps.errors import PipelineError
from steps.tracking import StepContext, launch_step

SITE = "site"  # column holding a UCI row's site of origin


@dataclass
class RawData:
    frame: pd.DataFrame
    source: str | DatasetSource  # where it came from, for the dataset record
    sha256: dict[str, str]  # per file read: site (or "file") -> sha256
    synthetic: bool


def load_source(data: DictConfig, book: Codebook) -> RawData:
    """Read the configured source into a DataFrame, unvalidated. UCI rows carry their
    site in the column `site`."""
    if data.source == "synthetic":
        if not data.rows or data.rows < 1:
            raise PipelineError(f"data.rows={data.rows}: the synthetic source needs a row count >= 1")
        origin = CodeDatasetSource({"generator": "steps.synthetic.generate",
                                    "rows": str(data.rows), "seed": str(data.seed)})
        return RawData(synthetic.generate(int(data.rows), int(data.seed)), origin, {}, True)
    if data.source not in ("uci", "file"):
        raise PipelineError(f"data.source={data.source!r}: use uci, file or synthetic")
    files = sources.sources_of(data)
    frames, digests = [], {}
    for source in files:
        path, digests[source.site or "file"] = sources.fetch(source.location, source.sha256, data.cache_dir,
                                                             data.download_timeout_s)
        if source.site is None:
            frames.append(sources.read_table(path, book.file_columns))
        else:
            frames.append(sources.read_uci(path, book.file_columns).assign(site=source.site))
    frame = pd.concat(frames, ignore_index=True)
    if data.rows:
        frame = frame.head(int(data.rows))
    return RawData(frame, files[0].location, digests, False)


@dataclass
class ExternalSites:
    frame: Optional[pd.DataFrame]  # validated rows of every usable held-out site
    sha256: dict[str, str]
    unusable: dict[str, str]  # site -> why it cannot be scored


def load_external_sites(data: DictConfig, book: Codebook) -> ExternalSites:
    """The held-out sites, each read and validated on its own: one that cannot be read
    or breaks a codebook rule is reported, not fatal."""
    frames, digests, unusable = [], {}, {}
    for source in sources.external_sources_of(data):
        try:
            path, digest = sources.fetch(source.location, source.sha256, data.cache_dir, data.download_timeout_s)
            frame = sources.read_uci(path, book.file_columns).assign(site=source.site)
            clean, _ = validate(frame, book, data.impossible_values, keep=(SITE,))
        except PipelineError as err:
            unusable[source.site] = str(err)
            continue
        frames.append(clean)
        digests[source.site] = digest
    return ExternalSites(pd.concat(frames, ignore_index=True) if frames else None, digests, unusable)


def run(ctx: StepContext) -> None:
    cfg = ctx.cfg
    book = Codebook.from_config(cfg.schema)
    raw = load_source(cfg.data, book)
    clean, report = validate(raw.frame, book, cfg.data.impossible_values, keep=(SITE,))

    external = load_external_sites(cfg.data, book)
    report["external"] = {"rows": {} if external.frame is None else external.frame[SITE].value_counts().to_dict(),
                          "unusable": external.unusable}
    for site, reason in external.unusable.items():
        print(f"ingest: external site {site} cannot be scored: {reason}")

    ctx.log_table("raw", clean)
    if external.frame is not None:
        ctx.log_table("external", external.frame)
    ctx.log_dict(report, "validation_report.json")
    ctx.log_dataset(clean, source=raw.source, name="uci-heart-raw", context="ingest", targets=book.label)
    ctx.set_tags({"data.source": cfg.data.source, "data.synthetic": str(raw.synthetic).lower(),
                  **{f"data.sha256.{name}": digest for name, digest in (raw.sha256 | external.sha256).items()}})
    if len(raw.sha256) == 1:
        ctx.set_tags({"data.sha256": next(iter(raw.sha256.values()))})
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
