"""All four UCI sites: reading, the `site` column, per-file checksums, and what the
other sites' files contain (written by tests/uci_sites.py)."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from domain.sources import fingerprint
from engine.config import register_configs
from engine.errors import PipelineError
from heart_disease_model.codebook import Codebook, validate
from steps.ingest import SITE, load_source
from tests.conftest import CLEVELAND, QUICK_EVALUATE, REPO
from tests.uci_sites import write_site_file

SIZES = {"hungarian": 294, "switzerland": 123, "va": 200}


@pytest.fixture
def folder(tmp_path):
    shutil.copy(CLEVELAND, tmp_path / "processed.cleveland.data")
    for seed, (site, rows) in enumerate(SIZES.items()):
        write_site_file(tmp_path / f"processed.{site}.data", rows, seed)
    return tmp_path


def config(folder, *overrides):
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"data.url={folder / 'processed.cleveland.data'}",
                                            f"data.cache_dir={folder / 'cache'}", *overrides])


def test_all_four_sites_load_with_their_site(folder):
    cfg = config(folder, "data.sites=[cleveland,hungarian,switzerland,va]")
    book = Codebook.from_config(cfg.schema)
    raw = load_source(cfg.data, book)
    clean, report = validate(raw.frame, book, "missing", keep=(SITE,))
    assert clean[SITE].value_counts().to_dict() == {"cleveland": 303, **SIZES}
    assert set(raw.sha256) == {"cleveland", *SIZES}
    assert raw.sha256["hungarian"] == hashlib.sha256((folder / "processed.hungarian.data").read_bytes()).hexdigest()
    assert report["impossible_as_missing"]["chol"] > 100  # chol 0 means "not measured"
    assert clean["oldpeak"].min() < 0  # negative ST depression is kept
    assert report["by_site"]["switzerland"]["positive_rate"] > 0.8
    assert report["missing"]["ca"] > 450  # the other sites barely record it
    assert report["by_site"]["cleveland"] == {"rows": 303, "positive_rate": 0.4587, "missing_cells": 6}


def test_default_is_cleveland_only(folder):
    cfg = config(folder)
    raw = load_source(cfg.data, Codebook.from_config(cfg.schema))
    assert set(raw.frame[SITE]) == {"cleveland"} and len(raw.frame) == 303


def test_a_pinned_site_checksum_is_enforced(folder):
    cfg = config(folder, "data.sites=[cleveland,va]", "data.site_sha256.va=" + "0" * 64)
    with pytest.raises(PipelineError, match="checksum mismatch.*processed.va.data"):
        load_source(cfg.data, Codebook.from_config(cfg.schema))


def test_unknown_site_is_named(folder):
    cfg = config(folder, "data.sites=[cleveland,mars]")
    with pytest.raises(PipelineError, match=r"data sites \[.cleveland., .mars.\]: choose from"):
        load_source(cfg.data, Codebook.from_config(cfg.schema))


def test_each_site_file_is_part_of_the_cache_key(folder):
    cfg = config(folder, "data.sites=[cleveland,hungarian]")
    before = fingerprint(cfg)
    write_site_file(folder / "processed.hungarian.data", 294, seed=99)
    assert fingerprint(cfg) != before


@pytest.mark.e2e
def test_pipeline_trains_on_several_sites(folder, store):
    store.in_process("steps.main", QUICK_EVALUATE, f"data.url={folder / 'processed.cleveland.data'}",
                     "data.sites=[cleveland,hungarian,va]",
                     "evaluate.criteria=[]", "evaluate.allow_no_criteria=true")
    ingest = store.runs("ingest")[0]
    assert {"data.sha256.cleveland", "data.sha256.hungarian", "data.sha256.va"} <= set(ingest.data.tags)
    assert store.runs("register")[0].data.tags["register.decision"].startswith("v1")


@pytest.mark.e2e
def test_external_validation_scores_held_out_sites_and_explains_the_rest(folder, store):
    write_site_file(folder / "processed.switzerland.data", 123, seed=5, healthy_share=0.0)  # one class only
    result = store.in_process("steps.main", QUICK_EVALUATE, f"data.url={folder / 'processed.cleveland.data'}",
                              "data.external_sites=[hungarian,va,switzerland]")
    assert "external site switzerland not scored" in result.stdout
    evaluation = store.runs("evaluate")[0]
    for site in ("hungarian", "va"):
        for name in ("roc_auc", "brier", "calibration_slope", "calibration_intercept", "prevalence", "rows"):
            assert f"external_{site}_{name}" in evaluation.data.metrics
    assert evaluation.data.metrics["external_va_rows"] == 200
    assert "test_calibration_slope" in evaluation.data.metrics
    artifacts = {a.path for a in store.client.list_artifacts(evaluation.info.run_id, "plots")}
    assert "plots/external_validation.png" in artifacts
    report_path = store.client.download_artifacts(evaluation.info.run_id, "external_validation.json", str(store.root))
    report = json.loads(Path(report_path).read_text())
    assert set(report["scores"]) == {"internal test", "hungarian", "va"}
    assert "label 1" in report["unusable"]["switzerland"]
    register = store.runs("register")[0]
    card = Path(store.client.download_artifacts(register.info.run_id, "model_card.md", str(store.root))).read_text()
    assert "Other sites (external validation)" in card and "| hungarian |" in card and "switzerland" in card
    raw = store.runs("ingest")[0]
    assert {a.path for a in store.client.list_artifacts(raw.info.run_id, "data")} == {
        "data/raw.parquet", "data/external.parquet"}


@pytest.mark.e2e
def test_an_unreachable_external_site_does_not_fail_the_run(folder, store):
    (folder / "processed.va.data").unlink()
    result = store.in_process("steps.main", QUICK_EVALUATE, f"data.url={folder / 'processed.cleveland.data'}",
                              "data.external_sites=[va]")
    assert "external site va cannot be scored: data file not found" in result.stdout
    assert store.runs("register")
