"""Downloads against a real HTTP server on 127.0.0.1, the cache that makes later runs
offline, checksums, and the UCI file format (LF or CRLF, `?` for missing)."""

import hashlib
import shutil

import pytest

from domain.sources import fetch, fingerprint, read_table, read_uci
from engine.errors import PipelineError
from tests.conftest import CLEVELAND

PINNED = "a74b7efa387bc9d108d7d0115d831fe9b414b29ae7124f331b622b4efa0427c8"
COLUMNS = ["age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak",
           "slope", "ca", "thal", "num"]


@pytest.fixture
def served(tmp_path, http_server):
    folder = tmp_path / "www"
    folder.mkdir()
    shutil.copy(CLEVELAND, folder / "processed.cleveland.data")
    return folder, http_server(folder)


def test_download_verifies_caches_and_then_works_offline(served, tmp_path):
    folder, base = served
    url = f"{base}/processed.cleveland.data"
    path, digest = fetch(url, PINNED, str(tmp_path / "cache"), 5)
    assert digest == PINNED
    assert path.read_bytes() == CLEVELAND.read_bytes()
    (folder / "processed.cleveland.data").unlink()  # the server no longer has it
    again, _ = fetch(url, PINNED, str(tmp_path / "cache"), 5)
    assert again == path


def test_checksum_mismatch_is_refused_and_not_cached(served, tmp_path):
    folder, base = served
    (folder / "processed.cleveland.data").write_bytes(CLEVELAND.read_bytes() + b"63.0,1.0\n")
    with pytest.raises(PipelineError, match="checksum mismatch.*expected " + PINNED):
        fetch(f"{base}/processed.cleveland.data", PINNED, str(tmp_path / "cache"), 5)
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


def test_unreachable_url_says_what_to_do(tmp_path, http_server):
    base = http_server(tmp_path)  # serves an empty folder: the file is not there
    with pytest.raises(PipelineError, match="could not download .*no cached copy.*data.url="):
        fetch(f"{base}/processed.cleveland.data", PINNED, str(tmp_path / "cache"), 5)


def test_unpinned_download_is_cached_by_url(served, tmp_path):
    folder, base = served
    path, digest = fetch(f"{base}/processed.cleveland.data", None, str(tmp_path / "cache"), 5)
    assert digest == hashlib.sha256(CLEVELAND.read_bytes()).hexdigest()
    assert str(tmp_path / "cache" / "url") in str(path)


def test_local_copy_seeds_the_cache_for_the_pinned_url(tmp_path):
    cache = tmp_path / "cache"
    fetch(str(CLEVELAND), PINNED, str(cache), 5)
    # Later, the default (unreachable) URL is served from the cache by content.
    path, _ = fetch("http://127.0.0.1:9/processed.cleveland.data", PINNED, str(cache), 1)
    assert path.read_bytes() == CLEVELAND.read_bytes()


def test_crlf_and_question_marks(tmp_path):
    crlf = tmp_path / "crlf.data"
    crlf.write_bytes(CLEVELAND.read_bytes().replace(b"\n", b"\r\n"))
    lf, cr = read_uci(CLEVELAND, COLUMNS), read_uci(crlf, COLUMNS)
    assert lf.equals(cr)
    assert len(lf) == 303
    assert lf["ca"].isna().sum() == 4 and lf["thal"].isna().sum() == 2


def test_read_table_detects_header_or_uci_format(tmp_path):
    canonical = tmp_path / "patients.csv"
    read_uci(CLEVELAND, COLUMNS).to_csv(canonical, index=False)
    assert list(read_table(canonical, COLUMNS).columns) == COLUMNS
    assert len(read_table(CLEVELAND, COLUMNS)) == 303
    parquet = tmp_path / "patients.parquet"
    read_uci(CLEVELAND, COLUMNS).to_parquet(parquet)
    assert len(read_table(parquet, COLUMNS)) == 303


def test_fingerprint_follows_local_file_content(tmp_path):
    from omegaconf import OmegaConf

    copy = tmp_path / "mine.data"
    shutil.copy(CLEVELAND, copy)
    cfg = OmegaConf.create({"data": {"source": "file", "path": str(copy), "url": None, "sha256": None,
                                     "external_sites": []}})
    before = fingerprint(cfg)
    copy.write_bytes(copy.read_bytes() + b"\n")
    assert fingerprint(cfg) != before
