"""Getting raw bytes in: download with a local cache and a checksum, and reading the
headerless UCI format or a canonical CSV/Parquet table. Nothing here validates values;
that is heart_disease_model/codebook.py's job.

pandas is imported by the readers only: the config checks and the cache key use this
module in every command, including those that read no table.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from omegaconf import DictConfig

from engine.errors import PipelineError

if TYPE_CHECKING:
    import pandas as pd

MISSING_MARKERS = ["?", ""]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_remote(location: str) -> bool:
    return urllib.parse.urlparse(location).scheme in ("http", "https")


def _local_path(location: str) -> Path:
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    return Path(location).expanduser()


UCI_SITES = ("cleveland", "hungarian", "switzerland", "va")


@dataclass(frozen=True)
class Source:
    """One file to read: where it is, the checksum it must have (if pinned), and the
    UCI site it holds (None for a `file` source)."""

    location: str
    sha256: Optional[str]
    site: Optional[str] = None


def sources_of(data: DictConfig, sites: Optional[list[str]] = None) -> list[Source]:
    """The files the `uci` or `file` source reads: for `uci`, one per site of `sites`
    (default data.sites)."""
    location = data.url if data.source == "uci" else data.path
    if not location:
        field = "data.url" if data.source == "uci" else "data.path"
        raise PipelineError(f"{field} is empty: say where the {data.source} data is")
    if data.source == "file":
        return [Source(str(location), data.sha256)]
    sites = list(data.sites if sites is None else sites)
    unknown = [site for site in sites if site not in UCI_SITES]
    if unknown:
        raise PipelineError(f"data sites {sites}: choose from {list(UCI_SITES)}")
    folder = str(location).rsplit("/", 1)[0] if "/" in str(location) else "."
    return [
        Source(str(location), data.sha256, site) if site == "cleveland"
        else Source(f"{folder}/processed.{site}.data", data.site_sha256.get(site), site)
        for site in sites
    ]


def external_sources_of(data: DictConfig) -> list[Source]:
    """The held-out sites' files (data.external_sites; uci source only)."""
    if not data.external_sites:
        return []
    if data.source != "uci":
        raise PipelineError("data.external_sites needs data.source=uci")
    overlap = sorted(set(data.sites) & set(data.external_sites))
    if overlap:
        raise PipelineError(f"data.external_sites {overlap} are also in data.sites: a site is either trained on "
                            "or held out")
    return sources_of(data, list(data.external_sites))


def _fingerprint_one(source: Source) -> str:
    if not _is_remote(source.location) and _local_path(source.location).is_file():
        return f"sha256:{sha256_of(_local_path(source.location))}"
    if source.sha256:
        return f"sha256:{source.sha256.lower()}"
    return f"location:{source.location}"


def fingerprint(cfg: DictConfig) -> Optional[str]:
    """What the cache key needs to know about data outside MLflow. A local file is
    hashed (cheap, and a changed or wrong file then re-runs ingest, which checks it);
    a download is known by its pinned checksum, or else only by its URL."""
    if cfg.data.source == "synthetic":
        return None  # fully determined by config
    files = sources_of(cfg.data) + external_sources_of(cfg.data)
    return " ".join(f"{s.site or 'file'}={_fingerprint_one(s)}" for s in files)


def _verify(path: Path, expected: Optional[str], origin: str) -> str:
    actual = sha256_of(path)
    if expected and actual != expected.lower():
        raise PipelineError(
            f"checksum mismatch for {origin}: rule 'data.sha256 must match', expected "
            f"{expected}, got {actual} ({path.stat().st_size} bytes). The file is not the one "
            "this config pins: fix data.url/data.path, or set data.sha256 to the new file's "
            "checksum if you trust it."
        )
    return actual


def _cache_path(cache_dir: str, location: str, expected_sha256: Optional[str]) -> Path:
    """Pinned files are cached by content, so any verified copy (download, mirror or
    local file) serves every later run; unpinned downloads are cached by URL."""
    root = Path(cache_dir).expanduser()
    if expected_sha256:
        return root / "sha256" / expected_sha256.lower()
    name = Path(urllib.parse.urlparse(location).path).name or "download"
    return root / "url" / hashlib.sha256(location.encode()).hexdigest()[:16] / name


def _download(location: str, target: Path, timeout_s: float) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as partial:
        try:
            with urllib.request.urlopen(location, timeout=timeout_s) as response:
                shutil.copyfileobj(response, partial)
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            Path(partial.name).unlink(missing_ok=True)
            reason = getattr(err, "reason", err)
            raise PipelineError(
                f"could not download {location}: {reason}; no cached copy at {target}. "
                "Offline? Point data.url at a local copy or a mirror "
                "(data.url=/path/to/processed.cleveland.data)."
            ) from None
    return Path(partial.name)


def fetch(location: str, expected_sha256: Optional[str], cache_dir: str, timeout_s: float) -> tuple[Path, str]:
    """Return a verified local copy of `location` and its sha256. Downloads are kept in
    `cache_dir` and served from there afterwards, so later runs need no network."""
    cached = _cache_path(cache_dir, location, expected_sha256)
    if not _is_remote(location):
        path = _local_path(location)
        if not path.is_file():
            raise PipelineError(f"data file not found: {location} (resolved to {path.resolve()})")
        digest = _verify(path, expected_sha256, location)
        if expected_sha256 and not cached.is_file():
            cached.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, cached)
        return path, digest

    if cached.is_file():
        return cached, _verify(cached, expected_sha256, f"{location} (cached at {cached})")
    partial = _download(location, cached, timeout_s)
    try:
        digest = _verify(partial, expected_sha256, location)
    except PipelineError:
        partial.unlink()
        raise
    partial.replace(cached)
    return cached, digest


def read_uci(path: Path, columns: list[str]) -> pd.DataFrame:
    """The headerless UCI format: comma separated, `?` for missing, LF or CRLF.
    Everything is read as text so that validation can name the cells that are not numbers."""
    import pandas as pd

    if not path.read_bytes().strip():
        return pd.DataFrame(columns=columns)
    expected = (f"not the headerless UCI format: expected {len(columns)} comma-separated fields per line "
                f"({', '.join(columns)})")
    try:
        frame = pd.read_csv(path, header=None, dtype=str, na_values=MISSING_MARKERS, keep_default_na=False,
                            skipinitialspace=True, skip_blank_lines=True)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        # pandas says where, not what: the error never quotes the file's lines.
        raise PipelineError(f"{path.name}: {expected}; {type(err).__name__}: {str(err).strip()[:200]}") from None
    if frame.shape[1] != len(columns):
        raise PipelineError(f"{path.name}: {expected}, found {frame.shape[1]}")
    frame.columns = columns
    return frame


def read_table(path: Path, columns: list[str]) -> pd.DataFrame:
    """A canonical table (Parquet, or CSV with a header row) or a headerless UCI file."""
    import pandas as pd

    if path.suffix.lower() == ".parquet":
        return pd.read_parquet(path)
    with open(path, encoding="utf-8", errors="replace") as handle:
        first_line = handle.readline().strip().lower()
    header = [cell.strip().strip('"') for cell in first_line.split(",")]
    if columns[0] in header:
        return pd.read_csv(path, dtype=str, na_values=MISSING_MARKERS, keep_default_na=False,
                           skipinitialspace=True)
    return read_uci(path, columns)
