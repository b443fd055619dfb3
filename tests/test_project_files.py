"""The files a user and CI rely on agree with each other."""

import re

import yaml

from tests.conftest import REPO

STEPS = ["ingest", "eda", "split", "transform", "train", "evaluate", "register"]


def pins(lines):
    return sorted(line.strip() for line in lines if re.match(r"^[A-Za-z0-9_.\-]+==", line.strip()))


def test_conda_env_and_requirements_pin_the_same_packages():
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip_section = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    requirements = (REPO / "requirements.txt").read_text().splitlines()
    assert pins(pip_section) == pins(requirements)
    assert len(pins(requirements)) == len([line for line in requirements if line and not line.startswith("#")])


def test_mlproject_declares_every_step_with_overrides_and_profile():
    project = yaml.safe_load((REPO / "MLproject").read_text())
    assert project["conda_env"] == "conda.yaml"
    assert set(project["entry_points"]) == set(STEPS) | {"main", "sweep", "score", "monitor"}
    for name, entry in project["entry_points"].items():
        assert set(entry["parameters"]) == {"overrides", "profile"}
        package = "steps" if name in STEPS or name == "main" else "tools"
        assert entry["command"] == f"python -m {package}.{name} --overrides {{overrides}} --profile {{profile}}"
        assert (REPO / package / f"{name}.py").exists()


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "./run.sh test" in readme and "./run.sh main" in readme
    assert re.search(r"^\s*(exec\s+)?\./run\.sh test\b", ci, re.M)


def test_every_file_the_readme_links_to_is_in_the_repo():
    readme = (REPO / "README.md").read_text()
    targets = {t for t in re.findall(r"\]\(([^)#\s]+)\)", readme) if not t.startswith(("http://", "https://"))}
    assert "docs/sweep-compare.png" in targets
    assert [t for t in sorted(targets) if not (REPO / t).exists()] == []


def test_every_file_the_docs_link_to_is_in_the_repo():
    """The pictures above all: each is taken by a script (docs/DEVELOPMENT.md#screenshots)."""
    missing = []
    for page in (REPO / "docs").glob("*.md"):
        targets = re.findall(r"\]\(([^)#\s]+)\)", page.read_text())
        missing += [f"{page.name}: {t}" for t in targets
                    if not t.startswith(("http://", "https://")) and not (page.parent / t).exists()]
    assert missing == []


def test_readme_shows_the_dag_pipeline_py_declares():
    from steps.pipeline import diagram

    assert diagram() in (REPO / "README.md").read_text()


def test_no_step_module_imports_another():
    import ast

    from steps.pipeline import STEPS

    for name in STEPS:
        tree = ast.parse((REPO / "steps" / f"{name}.py").read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        imported |= {f"steps.{alias.name}" for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module == "steps" for alias in node.names}
        assert not imported & {f"steps.{other}" for other in STEPS if other != name}, name
        assert "mlflow" not in {module.split(".")[0] for module in imported}, f"{name} talks to MLflow directly"


def test_names_module_imports_nothing():
    import ast

    tree = ast.parse((REPO / "engine" / "names.py").read_text())
    assert not [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def test_no_config_sets_hydras_mode():
    """engine.cli.compose_once takes the run mode from the command line alone."""
    setting = []
    for path in (REPO / "conf").rglob("*.yaml"):
        document = yaml.safe_load(path.read_text()) or {}
        hydra_section = document.get("hydra") or {}
        if "mode" in hydra_section or "hydra.mode" in document:
            setting.append(str(path.relative_to(REPO)))
    assert setting == []
