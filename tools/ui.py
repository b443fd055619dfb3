"""`./run.sh ui`: MLflow's UI on the project's store, and the address to open first.

    python -m tools.ui [mlflow ui options...]     e.g. --port 5001

Prints the address of the experiment's runs table, then becomes `mlflow ui
--backend-store-uri <store> <options>`. The address matters twice in MLflow 3.17:
- the UI opens a new browser on its GenAI view (an empty traces overview), whatever the
  experiment's `mlflow.experimentKind` tag says. The view comes from the address
  (`workflowType=machine_learning`), else from the browser's last choice; the server has
  no setting for it (its JavaScript starts every new browser on GenAI);
- the runs table shows no metric or param column until a browser picks some; an address
  with `viewStateShareKey=pipelines` applies the view the experiment shares in a tag
  (engine/store.py runs_view: headline metrics, model, verdict, registration).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Optional

from engine import names
from engine.store import PROJECT_ROOT, ensure_experiment_tags, load_profile

# `mlflow ui`'s own defaults and the environment variables that replace them.
DEFAULTS = {"--host": ("MLFLOW_HOST", "127.0.0.1"), "--port": ("MLFLOW_PORT", "5000"),
            "--static-prefix": ("MLFLOW_STATIC_PREFIX", "")}
SHORT = {"-h": "--host", "-p": "--port"}
ANY_INTERFACE = {"0.0.0.0", "::", ""}  # bound to every interface: this machine answers on loopback


def option_values(args: list[str], env: dict[str, str]) -> dict[str, str]:
    """--host, --port and --static-prefix as `mlflow ui` will take them: from the arguments
    (`--port 5001`, `--port=5001`, `-p 5001`), else its environment variables, else its defaults."""
    found: dict[str, str] = {}
    words = iter(args)
    for word in words:
        option, equals, value = word.partition("=")
        option = SHORT.get(option, option)
        if option in DEFAULTS:
            found[option] = value if equals else next(words, "")
    return {option: found.get(option, env.get(variable) or default)
            for option, (variable, default) in DEFAULTS.items()}


def base_url(options: dict[str, str]) -> str:
    host = options["--host"]
    host = "127.0.0.1" if host in ANY_INTERFACE else (f"[{host}]" if ":" in host else host)
    return f"http://{host}:{options['--port']}{options['--static-prefix']}"


def runs_url(base: str, experiment_id: Optional[str], shared_view: bool = False) -> str:
    """The experiment's runs table in the model-training view, with the project's columns
    when the experiment shares them (engine/store.py runs_view); without an experiment, the
    list of experiments."""
    if experiment_id is None:
        return f"{base}/#/experiments?{names.UI_MODEL_TRAINING_VIEW}"
    view = f"viewStateShareKey={names.UI_RUNS_VIEW}&" if shared_view else ""
    return f"{base}/#/experiments/{experiment_id}/runs?{view}{names.UI_MODEL_TRAINING_VIEW}"


def find_experiment(tracking_uri: str, name: str):
    """The experiment, its UI tags brought up to date where the store lets us; None when
    there is no such experiment or no store yet (a SQLite file is not created here)."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///"):])
        if not (path if path.is_absolute() else PROJECT_ROOT / path).is_file():
            return None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            return None
        ensure_experiment_tags(client, experiment)  # a store older than the runs view
        return client.get_experiment(experiment.experiment_id)
    except MlflowException:
        return None


def main(args: list[str]) -> None:
    os.chdir(PROJECT_ROOT)  # the store's relative path is the project's, as in run.sh
    profile = load_profile("local")  # the project's own store, as the steps' default profile
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or profile.tracking_uri
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or profile.experiment_name
    experiment = find_experiment(tracking_uri, name)
    experiment_id = experiment.experiment_id if experiment is not None else None
    shared = experiment is not None and names.UI_VIEW_TAG + names.UI_RUNS_VIEW in experiment.tags
    url = runs_url(base_url(option_values(args, dict(os.environ))), experiment_id, shared)
    if experiment_id is None:
        print(f"No experiment {name!r} in the store yet (./run.sh main makes it). MLflow's UI will be at:")
    else:
        print(f"The runs of experiment {name!r}, in MLflow's model-training view:")
    print(f"  {url}", flush=True)
    # MLflow 3's job runner (huey consumer processes beside the UI) runs GenAI jobs only; the
    # project submits none (as for the team server, docs/TEAM_SERVER.md). Off unless asked for.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
    os.execv(mlflow, [mlflow, "ui", "--backend-store-uri", tracking_uri, *args])


if __name__ == "__main__":
    main(sys.argv[1:])
