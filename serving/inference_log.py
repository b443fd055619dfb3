"""The opt-in inference log (`python -m serving --log-inputs DIR`): every answered
request's features and answers, appended to Parquet files in DIR that `monitor`
(tools/monitor.py) reads to measure drift.

These files hold patient data. The log writes README.txt into DIR saying so, creates DIR
and every file readable by the server's user only, and keeps nothing else.

Cheap per request: `record` appends the request's arrays to a buffer under a lock. The
buffer becomes one Parquet file when it holds `rotate_rows` rows, when its oldest row is
`rotate_seconds` old (a background thread looks every few seconds), and on `close`.
A file is written under a temporary name and renamed when complete, so a reader never
takes a half-written file for a whole one; a crash loses at most the buffered rows.
Each worker process writes its own files (the name carries host, process and a counter).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

FILE_PREFIX = "inferences-"
FILE_SUFFIX = ".parquet"
TIMESTAMP = "timestamp"
ANSWER_COLUMNS = ("prediction", "probability", "risk_level")
IDENTITY_COLUMNS = ("model_name", "model_version", "model_alias", "run_id", "model_id")

README = """\
PATIENT DATA. The files in this folder hold the features of every patient the
heart-disease API was asked about (age, sex, blood pressure, cholesterol, ...) and
the answer it gave, with the time of the request. Treat them as health records:

- keep them on storage approved for patient data, readable only by the service and
  the people who monitor it (the server creates them readable by its own user only);
- do not copy them to tickets, chats, notebooks or laptops;
- delete them when your retention rule says so: nothing here deletes them for you.

They exist so that `./run.sh monitor` (python -m tools.monitor) can compare recent
patients with the ones the model was trained on (data drift). Each file,
inferences-<UTC time>-<host>-<pid>-<n>.parquet, is complete once it has its name;
names starting with '.' are being written. Written by serving/inference_log.py.
"""


def log_files(directory: Path) -> list[Path]:
    """The complete log files in `directory`, oldest name first (in-progress files start with '.')."""
    return sorted(p for p in Path(directory).glob(f"{FILE_PREFIX}*{FILE_SUFFIX}") if p.is_file())


def _write_private(path: Path, data: bytes | None = None, table: Optional[pa.Table] = None) -> None:
    """Write `path` complete or not at all: temp file (mode 600) in the same folder,
    fsync, rename, fsync the folder."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            if table is not None:
                pq.write_table(table, handle, compression="zstd")
            else:
                handle.write(data or b"")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class InferenceLog:
    """Buffers answered requests and writes them as Parquet files in `directory`."""

    def __init__(self, directory: str | Path, features: Sequence[str], rotate_rows: int = 10_000,
                 rotate_seconds: float = 300.0):
        if rotate_rows < 1 or rotate_seconds <= 0:
            raise ValueError(f"rotate_rows={rotate_rows} must be >= 1 and rotate_seconds={rotate_seconds} > 0")
        self.directory = Path(directory)
        self.features = list(features)
        self.rotate_rows, self.rotate_seconds = rotate_rows, rotate_seconds
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not (self.directory / "README.txt").is_file():
            _write_private(self.directory / "README.txt", README.encode())
        self._origin = f"{socket.gethostname()}-{os.getpid()}"
        self._files_written = 0
        # Per request: (timestamps, feature rows, answers, identity).
        self._buffer: list[tuple[np.ndarray, np.ndarray, Sequence[Mapping], Mapping[str, Optional[str]]]] = []
        self._rows = 0
        self._oldest: Optional[float] = None  # monotonic time of the oldest buffered row
        self._lock = threading.Lock()  # guards the buffer
        self._writing = threading.Lock()  # one file at a time, in order
        self._stop = threading.Event()
        self._timer = threading.Thread(target=self._flush_when_old, daemon=True, name="inference-log")
        self._timer.start()

    def record(self, features: pd.DataFrame | np.ndarray, answers: Sequence[Mapping],
               identity: Mapping[str, Optional[str]]) -> None:
        """Buffer one request: its feature rows (a DataFrame with the `features` columns, or
        the float matrix the app builds, columns in `features` order), the answer per row
        as the app returns it (a mapping with ANSWER_COLUMNS; other keys are ignored) and
        who answered (IDENTITY_COLUMNS)."""
        now = time.time()
        if isinstance(features, pd.DataFrame):
            values = features[self.features].to_numpy(dtype="float64", na_value=np.nan)
        else:
            values = np.array(features, dtype="float64")  # a copy: the buffer outlives the request
        stamps = np.full(len(values), int(now * 1_000_000), dtype="int64")
        with self._lock:
            self._buffer.append((stamps, values, answers, identity))
            self._rows += len(values)
            if self._oldest is None:
                self._oldest = time.monotonic()
            full = self._rows >= self.rotate_rows
        if full:
            self.flush()

    def flush(self) -> Optional[Path]:
        """Write the buffered rows as one file now; returns it (None when nothing was buffered)."""
        with self._writing:
            with self._lock:
                batch, self._buffer, self._rows, self._oldest = self._buffer, [], 0, None
            if not batch:
                return None
            table = self._table(batch)
            first = datetime.fromtimestamp(batch[0][0][0] / 1e6, timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
            self._files_written += 1
            path = self.directory / f"{FILE_PREFIX}{first}-{self._origin}-{self._files_written}{FILE_SUFFIX}"
            _write_private(path, table=table)
            return path

    def close(self) -> None:
        """Stop the timer and write what is buffered (call on server shutdown)."""
        self._stop.set()
        self._timer.join()
        self.flush()

    def _flush_when_old(self) -> None:
        while not self._stop.wait(min(5.0, self.rotate_seconds / 2)):
            with self._lock:
                due = self._oldest is not None and time.monotonic() - self._oldest >= self.rotate_seconds
            if due:
                self.flush()

    def _table(self, batch: list) -> pa.Table:
        stamps = np.concatenate([stamp for stamp, _, _, _ in batch])
        values = np.concatenate([value for _, value, _, _ in batch])
        answers = [row for _, _, answer, _ in batch for row in answer]
        columns: dict[str, pa.Array] = {TIMESTAMP: pa.array(stamps, type=pa.timestamp("us", tz="UTC"))}
        for index, name in enumerate(self.features):
            column = values[:, index]
            columns[name] = pa.array(column, mask=np.isnan(column), type=pa.float64())
        columns["prediction"] = pa.array([int(row["prediction"]) for row in answers], type=pa.int8())
        columns["probability"] = pa.array([float(row["probability"]) for row in answers], type=pa.float64())
        columns["risk_level"] = pa.array([str(row["risk_level"]) for row in answers], type=pa.string())
        for name in IDENTITY_COLUMNS:
            repeated = [identity.get(name) for _, value, _, identity in batch for _ in range(len(value))]
            columns[name] = pa.array([None if v is None else str(v) for v in repeated], type=pa.string())
        return pa.table(columns)
