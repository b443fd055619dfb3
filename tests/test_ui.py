"""What a user sees in `mlflow ui`: the address `./run.sh ui` prints, the names and params
that tell `main` runs apart, and cards whose links work where they are viewed. (The runs'
own records are checked on real runs in test_pipeline_e2e.py and test_sweep.py.)"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from engine.cards import folded_card, pipeline_card, step_card, sweep_card
from steps.main import chosen_groups, pipeline_params, run_name
from tests.conftest import REPO, make_store
from tools.ui import base_url, find_experiment, option_values, runs_url

# --------------------------------------------------------------------------- run names and params


CHOICES = {"data": "uci", "schema": "uci_codebook", "eda": "default", "split": "default", "transform": "default",
           "model": "random_forest", "train": "default", "evaluate": "default", "register": "default",
           "profile": "local", "hydra/job_logging": "stdout", "hydra/sweeper": "basic"}


def test_only_groups_with_alternatives_define_a_pipeline():
    """A group with one option says nothing; the profile says where runs go."""
    assert chosen_groups(CHOICES) == {"data": "uci", "model": "random_forest"}


def test_a_main_run_is_named_after_its_model_and_overrides():
    groups = {"data": "uci", "model": "random_forest"}
    assert run_name(groups, []) == "main · model=random_forest"
    assert run_name(groups, ["model=random_forest", "model.max_depth=3", "+split.seed=7"]) == \
        "main · model=random_forest model.max_depth=3 split.seed=7"
    assert run_name({}, []) == "main"
    long = run_name(groups, [f"evaluate.criteria=['{'x' * 300}']"])
    assert len(long) == 120 and long.endswith("…")


def test_params_are_the_groups_and_overrides_with_secrets_redacted():
    params = pipeline_params({"data": "file", "model": "logreg"},
                             ["model.C=0.3", "data.url=http://alice:s3cret@127.0.0.1/x.data", "~train.calibration"])
    assert params == {"data": "file", "model": "logreg", "model.C": "0.3",
                      "data.url": "http://***:***@127.0.0.1/x.data", "train.calibration": "(removed)"}
    assert "s3cret" not in run_name({"model": "logreg"}, ["data.url=http://alice:s3cret@127.0.0.1/x.data"])


# --------------------------------------------------------------------------- cards


def links(page: str) -> list[str]:
    return re.findall(r"""(?:href|src)=['"]([^'"]*)['"]""", page)


def a_step_card(step: str, figure: Path) -> str:
    return step_card(step, f"{step}-run", {"raw.parquet of ingest": "ingest-run"}, ["data/x.parquet"], {"rows": 3},
                     {"test_roc_auc": 0.9}, {"roc_curve": figure}, 1.0, f"key-of-{step}")


@pytest.fixture
def figure(tmp_path) -> Path:
    path = tmp_path / "figure.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return path


def test_the_pipeline_card_carries_each_step_card_and_links_nowhere(figure):
    """MLflow's preview follows no link (engine/cards.py): the step cards travel inside."""
    results = [{"step": step, "run_id": f"{step}-run", "status": "ran", "seconds": 1.0, "summary": {"rows": 3},
                "card": a_step_card(step, figure)} for step in ("ingest", "split")]
    results.append({"step": "eda", "run_id": "eda-run", "status": "reused", "seconds": 0.0, "summary": {},
                    "card": None})
    page = pipeline_card("main-run", "ingest\nsplit", results, 2.0, "FINISHED")
    assert page.count("<details>") == 3
    for step in ("ingest", "split"):
        assert f"Step card: {step}" in page and f"key-of-{step}" in page
    assert "This run has no card.html" in page
    assert all(link.startswith("data:image/png") for link in links(page)) and len(links(page)) == 2
    assert "<body>" not in page.split("<body>", 1)[1]  # bodies folded in, not whole pages


def test_a_sweep_card_folds_every_model_and_keeps_the_best_ones_figures(figure):
    columns = ["train run", "model", "params", "status"]
    rows = [{"train run": f"t{i}", "model": "logreg", "params": f"C={c}", "status": "VALIDATED",
             "card": a_step_card("evaluate", figure), "card_title": f"logreg C={c} (train run t{i})"}
            for i, c in enumerate((0.1, 0.3, 1.0))]
    page = sweep_card("sweep-run", {}, [], 3, columns, rows, {}, "cv_roc_auc_mean", {}, "none", 1.0)
    assert page.count("Step card: evaluate") == 3 and "1. logreg C=0.1 (train run t0)" in page
    assert len(links(page)) == 1  # figures of the best model only
    assert page.count("figure left out here") == 2


def test_a_folded_card_without_figures_says_where_they_are(figure):
    folded = folded_card("train", a_step_card("train", figure), figures=False)
    assert links(folded) == [] and "it is in the run's own card.html" in folded


# --------------------------------------------------------------------------- ./run.sh ui


@pytest.mark.parametrize("args, env, expected", [
    ([], {}, "http://127.0.0.1:5000"),
    (["--port", "5001"], {}, "http://127.0.0.1:5001"),
    (["-p", "5002", "--host=0.0.0.0"], {}, "http://127.0.0.1:5002"),
    (["--host", "::1", "--static-prefix", "/mlflow"], {"MLFLOW_PORT": "5003"}, "http://[::1]:5003/mlflow"),
    (["--workers", "2"], {"MLFLOW_HOST": "10.0.0.7", "MLFLOW_STATIC_PREFIX": "/ui"}, "http://10.0.0.7:5000/ui"),
])
def test_the_address_follows_mlflow_uis_options_and_environment(args, env, expected):
    assert base_url(option_values(args, env)) == expected


def test_the_printed_address_opens_the_model_training_view_with_the_projects_columns():
    assert runs_url("http://127.0.0.1:5000", "7", shared_view=True) == \
        "http://127.0.0.1:5000/#/experiments/7/runs?viewStateShareKey=pipelines&workflowType=machine_learning"
    assert runs_url("http://127.0.0.1:5000", "7") == \
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
    assert runs_url("http://127.0.0.1:5000", None) == "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.e2e
def test_run_sh_ui_prints_the_experiments_runs_and_serves_that_store(tmp_path):
    """The real command: `python -m tools.ui` (what `./run.sh ui` runs) prints the address,
    then becomes `mlflow ui` on the same store, which knows that experiment by that id."""
    store = make_store(tmp_path / "store")
    port = free_port()
    env = {**store.env, "MLFLOW_EXPERIMENT_NAME": store.experiment_name}
    ui = subprocess.Popen([sys.executable, "-m", "tools.ui", "--port", str(port), "--workers", "1"], cwd=REPO,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        printed = [ui.stdout.readline() for _ in range(2)]
        assert printed[1].strip() == (f"http://127.0.0.1:{port}/#/experiments/{store.experiment_id}/runs"
                                      "?viewStateShareKey=pipelines&workflowType=machine_learning"), printed
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/get-by-name"
                                            f"?experiment_name={store.experiment_name}", timeout=5) as answer:
                    served = json.loads(answer.read())["experiment"]["experiment_id"]
                break
            except OSError:
                assert ui.poll() is None and time.monotonic() < deadline, "mlflow ui did not answer"
                time.sleep(0.5)
        assert served == store.experiment_id
        # The store, made before the view existed, now shares it (what the address asks for).
        view = json.loads(store.client.get_experiment(store.experiment_id).tags["mlflow.sharedViewState.pipelines"])
        assert "metrics.`cv_roc_auc_mean`" in view["selectedColumns"]
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)


def test_without_a_store_no_experiment_is_found_and_no_store_is_made(tmp_path):
    missing = tmp_path / "nothing-here.db"
    assert find_experiment(f"sqlite:///{missing}", "heart-disease") is None and not missing.exists()
