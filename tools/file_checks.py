"""The files a tool reads and writes, checked before it writes anything: an output never
lands on an input, inside an input folder or on another output, and it can be written
where it is asked to go; an input that cannot be read is said in one line. Each problem is
one line `<key>=<path>: <what is wrong>`, for a ConfigError (engine/config_checks.py): the
command exits 2 and creates no run."""

from __future__ import annotations

import os
from itertools import combinations
from pathlib import Path
from typing import Optional


def overlap_problems(inputs: dict[str, Path], outputs: dict[str, Path]) -> list[str]:
    """Outputs that would overwrite what the tool reads, or each other. Pure: the paths
    are resolved by the caller (resolved_path), so two spellings of one file compare equal."""
    problems = []
    for out_key, output in outputs.items():
        for in_key, source in inputs.items():
            if output == source:
                problems.append(f"{out_key}={output}: that is {in_key}; writing it would destroy the input")
            elif source in output.parents:
                problems.append(f"{out_key}={output}: inside {in_key}={source}, the input folder; "
                                "write outside it")
            elif output in source.parents:
                problems.append(f"{out_key}={output}: holds {in_key}={source}; replacing it would destroy the input")
    for (first_key, first), (second_key, second) in combinations(outputs.items(), 2):
        if first == second:
            problems.append(f"{second_key}={second}: the same file as {first_key}; give each its own path")
    return problems


def read_error_reason(error: BaseException) -> str:
    """What a reader (Arrow, pandas) says is wrong with a file, without the path it repeats
    in quotes: its first line, after the last `'<path>': `."""
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return first_line.rsplit("': ", 1)[-1]


def resolved_path(path: Path) -> Path:
    """The absolute path with symbolic links followed, also for a file not there yet."""
    return path.expanduser().resolve()


def target_problem(key: str, path: Path, folder_ok: bool = False) -> Optional[str]:
    """Why `path` cannot be written (None if it can): it is a folder where a file goes, an
    existing thing that is not a regular file (a device would be replaced), or the nearest
    existing folder on its way is a file or cannot be written (a read-only mount: root
    included, which file permissions do not stop)."""
    if path.is_dir():
        if not folder_ok:
            return f"{key}={path}: is a folder; name a file, e.g. {path / 'scored.parquet'}"
    elif path.exists() and not path.is_file():
        return f"{key}={path}: exists and is not a regular file"
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{key}={path}: {ancestor} is a file, not a folder"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{key}={path}: the folder {ancestor} cannot be written (read-only)"
    return None
