"""Cache keys: what a step's result depends on, as one sha256.

A key covers the step's code (its module and every project module it imports, read
from disk, so uncommitted edits count), the versions of the libraries that shape
results, the config sections the step sees, its input run and, for ingest, a digest
of the data outside MLflow. Two runs with one key would compute the same thing.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import json
import threading
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig, OmegaConf

from steps.pipeline import Step

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Libraries whose upgrade can change a fitted model, a metric or a file's bytes.
RESULT_LIBRARIES = ("mlflow", "scikit-learn", "numpy", "pandas", "pyarrow", "skops", "scipy")

# CPython 3.11's ast.parse is not thread-safe ("AST constructor recursion depth mismatch"),
# and main computes eda's cache key in a thread beside the chain's.
_AST_LOCK = threading.Lock()


def _is_main_block(node: ast.stmt) -> bool:
    """`if __name__ == "__main__":`: the command-line shell, which computes nothing."""
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value == "__main__")


def module_files(name: str) -> list[Path]:
    """The project files Python runs to import `name`: every package's __init__.py on the
    way down, then the module itself. Empty for a module outside the project."""
    parts = name.split(".")
    if not (PROJECT_ROOT / parts[0] / "__init__.py").is_file():
        return []
    files = []
    for depth in range(1, len(parts) + 1):
        base = PROJECT_ROOT.joinpath(*parts[:depth])
        for candidate in (base / "__init__.py", base.with_suffix(".py")):
            if candidate.is_file():
                files.append(candidate)
                break
    return files


def _package_of(path: Path) -> list[str]:
    """The package a project file's relative imports start from."""
    return list(path.relative_to(PROJECT_ROOT).with_suffix("").parts[:-1])


@functools.lru_cache(maxsize=None)
def imported_files(path: Path) -> frozenset[Path]:
    """Project files that `path` imports (directly, at any depth of its code, relative
    imports included), outside its main block. Parsed once per process: the steps share
    most of their files."""
    found: set[Path] = set()
    with _AST_LOCK:
        tree = ast.parse(path.read_text())
    nodes = [node for top in tree.body if not _is_main_block(top) for node in ast.walk(top)]
    for node in nodes:
        imported: list[str] = []
        if isinstance(node, ast.Import):
            imported = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            package = _package_of(path)
            prefix = package[:len(package) - node.level + 1] if node.level else []
            base = ".".join([*prefix, *(node.module.split(".") if node.module else [])])
            # `from package import name`: name is a submodule or a name in package/__init__.py
            imported = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in imported:
            found.update(module_files(name))
    return frozenset(found)


@functools.lru_cache(maxsize=None)
def code_files(module: str) -> frozenset[Path]:
    """A module's file and every project file it imports, followed to the end."""
    seen: set[Path] = set()
    todo = module_files(module)
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(imported_files(path) - seen)
    return frozenset(seen)


def package_files(package: str) -> frozenset[Path]:
    """Every Python file of a project package (a logged model carries them all)."""
    return frozenset((PROJECT_ROOT / package).rglob("*.py"))


@functools.lru_cache(maxsize=None)
def code_fingerprint(module: str, carries: tuple[str, ...] = ()) -> str:
    """sha256 over the source of a step module, every project module it imports and every
    file of the packages its output carries. Computed once per process."""
    files = set(code_files(module)).union(*(package_files(package) for package in carries))
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.relative_to(PROJECT_ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=None)
def library_versions() -> dict[str, str]:
    return {package: version(package) for package in RESULT_LIBRARIES}


def step_view(cfg: DictConfig, step: Step) -> DictConfig:
    """The config a step sees: its own sections, read-only and closed, so reading any
    other section raises at once instead of changing results behind the cache key."""
    view = OmegaConf.create({key: OmegaConf.to_container(cfg[key], resolve=True) for key in step.config_keys})
    OmegaConf.set_struct(view, True)
    OmegaConf.set_readonly(view, True)
    return view


def _load_callable(spec: str) -> Callable:
    module, function = spec.split(":")
    return getattr(importlib.import_module(module), function)


def cache_key(step: Step, view: DictConfig, upstream_run_id: Optional[str]) -> str:
    config: dict[str, Any] = OmegaConf.to_container(view, resolve=True)
    for dotted in step.not_in_key:
        section, name = dotted.split(".", 1)
        config[section].pop(name, None)
    material = {
        "step": step.name,
        "code": code_fingerprint(step.module, step.carries),
        "libraries": library_versions(),
        "config": config,
        "upstream": upstream_run_id,
    }
    if step.external_input:
        material["external_input"] = _load_callable(step.external_input)(view)
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()
