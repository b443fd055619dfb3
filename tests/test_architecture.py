"""The layout's promises: which package may import which, that the model's consumers
never import the project's copy of the model package, and that a step's cache key
covers every project file Python loads for it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.fingerprint import code_files, package_files
from steps.pipeline import STEPS
from tests.conftest import CODE_PACKAGES, REPO

# Who may import whom (by top-level package, or one module where only it is allowed).
MAY_IMPORT = {
    "heart_disease_model": set(),  # the sealed model: nothing of the project
    "domain": {"engine"},
    "engine": {"domain", "heart_disease_model", "steps.pipeline"},  # the DAG it runs; the model it logs
    "steps": {"engine", "domain", "heart_disease_model", "steps"},
    "tools": {"engine", "domain", "steps.pipeline", "serving.inference_log"},
    "serving": {"engine", "serving"},
}


def project_imports(path: Path) -> set[str]:
    """Absolute imports of project modules in a file (relative ones stay in its package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] in CODE_PACKAGES}


def allowed(name: str, rules: set[str]) -> bool:
    return any(name == rule or name.startswith(rule + ".") for rule in rules) or \
        any(rule.startswith(name + ".") for rule in rules)  # `from steps import pipeline`


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_each_package_imports_only_what_the_layout_allows(package):
    rules = MAY_IMPORT[package] | ({package} if package != "heart_disease_model" else set())
    broken = {f"{path.relative_to(REPO)}: {name}"
              for path in (REPO / package).rglob("*.py")
              for name in project_imports(path) if not allowed(name, rules)}
    # entry.py imports the package it has just chosen by path, by its absolute name.
    broken.discard("heart_disease_model/entry.py: heart_disease_model.model")
    broken.discard("heart_disease_model/entry.py: heart_disease_model.model.HeartDiseaseModel")
    assert sorted(broken) == []


def test_the_model_package_uses_relative_imports_only():
    for path in (REPO / "heart_disease_model").glob("*.py"):
        if path.name != "entry.py":
            assert project_imports(path) == set(), path.name


def python(script: str, *args: str) -> str:
    result = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_models_consumers_do_not_import_the_projects_copy_of_its_package():
    """They use the loaded model's own code: importing them loads none of the project's."""
    loaded = json.loads(python(
        "import json, sys, serving.app, serving.__main__, tools.score, tools.monitor, steps.evaluate\n"
        "print(json.dumps(sorted(n for n in sys.modules if n.split('.')[0] == 'heart_disease_model')))"))
    assert loaded == []


# Imported once, before the forks: libraries only (a project module here would hide it from
# every step's list). What each step imports of the project is then loaded in its own fork.
LIBRARIES = ("mlflow", "mlflow.store.tracking.sqlalchemy_store", "hydra", "omegaconf", "pandas", "pyarrow.parquet",
             "sklearn.linear_model", "sklearn.ensemble", "sklearn.calibration", "matplotlib.figure", "seaborn",
             "skops.io")
FORK_EACH_STEP = """
import importlib, json, os, sys
for library in sys.argv[1].split(","):
    importlib.import_module(library)
files = {}
for module in sys.argv[2:]:
    reader, writer = os.pipe()
    if os.fork() == 0:
        importlib.import_module(module)
        loaded = [m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)]
        with os.fdopen(writer, "w") as out:
            json.dump(loaded, out)
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as answer:
        files[module] = json.load(answer)
    assert os.wait()[1] == 0, module
print(json.dumps(files))
"""


def test_every_cache_key_covers_the_project_files_its_step_loads():
    """Each step imported in a process of its own (forked from one that has imported the
    libraries only): every project file Python ran for it is in its key (which may hold
    more: imports inside functions, the model's whole package)."""
    modules = [step.module for step in STEPS.values()]
    files = json.loads(python(FORK_EACH_STEP, ",".join(LIBRARIES), *modules))
    assert not [name for name in LIBRARIES if name.split(".")[0] in CODE_PACKAGES]
    venv = Path(sys.prefix).resolve()
    for name, step in STEPS.items():
        loaded = {Path(f).resolve() for f in files[step.module]}
        project = {f for f in loaded if f.is_relative_to(REPO) and not f.is_relative_to(venv)}
        covered = set(code_files(step.module)).union(*(package_files(p) for p in step.carries))
        assert project, name
        assert sorted(str(f.relative_to(REPO)) for f in project - covered) == [], name


def test_the_key_follows_relative_imports_and_package_init_files():
    ingest = {str(f.relative_to(REPO)) for f in code_files("steps.ingest")}
    # steps.ingest imports heart_disease_model.codebook, which imports `.errors` relatively
    assert {"steps/__init__.py", "steps/ingest.py", "heart_disease_model/__init__.py",
            "heart_disease_model/codebook.py", "heart_disease_model/errors.py", "engine/__init__.py"} <= ingest
    assert "engine/cli.py" not in ingest  # the command-line shell computes nothing
