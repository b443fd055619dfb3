"""An exclusive lock among this machine's processes, held through a file.

The operating system releases it when its holder dies, so a killed process never leaves
it held (engine/store.py locks the tracking store with it; the study sweeper, a SQLite
study). It imports nothing of the project, so plugins can use it too.
"""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def file_lock(path: Path | str) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
