"""The runner's guarantees under faults, with real processes on a real store: killed
at named points (engine/faults.py), given bad overrides, fed damaged artifacts, run
twice at once. After each fault a plain `main` must succeed, reuse only complete
runs, and leave a champion that loads and predicts, with card, description and aliases."""

import re
import signal
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from engine import names
from engine.faults import all_points
from engine.store import complete_filter
from steps.main import UP_TO_DATE
from steps.pipeline import STEPS
from tests.conftest import CODE_PACKAGES, QUICK_EVALUATE, REPO, make_store
from tests.forked import Command

pytestmark = pytest.mark.e2e


def complete(run) -> bool:
    return run.data.tags.get(names.COMPLETE) == names.COMPLETE_MARK and run.info.status == "FINISHED"


def latest_main(store):
    return store.client.search_runs([store.experiment_id], f"tags.`{names.ROLE}` = 'main'",
                                    order_by=["attributes.start_time DESC"], max_results=1)[0]


def assert_healthy(store, plain_main=None):
    """Every step run the latest main used is complete, no run is left RUNNING, and the
    champion is published in full and predicts. The runs used are those the table of
    `plain_main` (a plain main's result) lists when it had nothing to do, and logged no
    run (engine/up_to_date.py); else those of the latest main run, which ended FINISHED."""
    if plain_main is not None and UP_TO_DATE in plain_main.stdout:
        used = dict(re.findall(r"^(\w+) +([0-9a-f]{32}) +reused ", plain_main.stdout, re.MULTILINE))
    else:
        main = latest_main(store)
        assert main.info.status == "FINISHED"
        used = {step: main.data.tags[f"pipeline.{step}.run_id"] for step in STEPS}
    assert set(used) == set(STEPS)
    for step, run_id in used.items():
        run = store.client.get_run(run_id)
        assert complete(run), (step, run.data.tags.get(names.COMPLETE), run.info.status)
    running = store.client.search_runs([store.experiment_id], "attributes.status = 'RUNNING'")
    assert running == []
    champion = store.client.get_model_version_by_alias("heart-disease", "champion")
    assert "The whole card:" in champion.description and champion.tags["model_card"].endswith("model_card.md")
    assert champion.tags["decision"] == "champion"
    mlflow.set_tracking_uri(store.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/heart-disease@champion")
    example = pd.read_csv(REPO / "tests" / "data" / "processed.cleveland.data", header=None,
                          na_values="?").iloc[:2, :13]
    example.columns = ["age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak",
                       "slope", "ca", "thal"]
    answer = model.predict(example.fillna({"ca": 0.0, "thal": 3.0}))
    assert list(answer["model_version"]) == [str(champion.version)] * 2


@pytest.fixture(scope="module")
def store(trained):
    return trained


def test_every_named_fault_point_exists_in_the_code():
    source = "".join(p.read_text() for package in CODE_PACKAGES for p in (REPO / package).glob("*.py"))
    for point in all_points(STEPS):
        where = point.split(".", 1)[1]
        assert f'.{where}"' in source or f'"{point}"' in source, point


# Each fault forces only the step that reaches its point (train, for a new version to
# register); the steps after a forced one run again anyway, their upstream being new.
@pytest.mark.parametrize("point, forced", [
    ("train.outputs_written", "train"),  # the model is logged, the run not yet complete: the old poisoned-cache window
    ("register.version_created", "train"),  # a version exists without card, description or aliases
    ("eda.outputs_written", "eda"),  # the side branch, in its thread
])
def test_sigkill_at_a_named_point_then_a_plain_main_recovers(store, point, forced):
    killed = store.steps("main", QUICK_EVALUATE, f"force=[{forced}]", check=False, extra_env={names.FAULT_ENV: point})
    assert killed.returncode == -9, killed.stderr[-2000:]
    versions_before = len(store.client.search_model_versions("name = 'heart-disease'"))

    again = store.in_process("steps.main", QUICK_EVALUATE, check=False)  # the fault was the process's
    assert again.returncode == 0, again.stderr[-3000:]
    assert "marked run" in again.stderr and "KILLED" in again.stderr  # the dead process's runs
    assert_healthy(store)
    if point == "register.version_created":
        # the half-registered version was completed, not left behind or duplicated
        assert len(store.client.search_model_versions("name = 'heart-disease'")) == versions_before
        assert "completing the version an interrupted register created" in again.stdout


@pytest.mark.parametrize("point, signal_name, exit_code", [
    ("split.started", "TERM", 143),
    ("transform.outputs_written", "INT", 130),
])
def test_sigterm_and_sigint_end_the_runs_killed_with_the_signal_named(store, point, signal_name, exit_code):
    step = point.split(".")[0]
    stopped = store.steps("main", QUICK_EVALUATE, f"force=[{step}]", check=False,
                          extra_env={names.FAULT_ENV: f"{point}:{signal_name}"})
    assert stopped.returncode == exit_code, stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr
    main = latest_main(store)
    assert main.info.status == "KILLED" and main.data.tags[names.ERROR] == f"stopped by SIG{signal_name}"
    step_run = store.client.search_runs([store.experiment_id], f"tags.`{names.STEP}` = '{step}'",
                                        order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert step_run.info.status == "KILLED" and step_run.data.tags[names.ERROR] == f"stopped by SIG{signal_name}"
    assert not complete(step_run)

    assert_healthy(store, store.in_process("steps.main", QUICK_EVALUATE))


def _artifact_file(store, step, artifact):
    """A file of the run a plain main reuses for `step`: its newest complete run (every
    main in this module has the same config)."""
    run = store.client.search_runs([store.experiment_id], complete_filter(f"tags.`{names.STEP}` = '{step}'"),
                                   order_by=["attributes.start_time DESC"], max_results=1)[0]
    return run.info.run_id, Path(run.info.artifact_uri.removeprefix("file://")) / artifact


def test_a_truncated_or_deleted_artifact_is_never_reused(store):
    # Every test here leaves the store's latest main healthy: its runs are the ones to damage.
    split_run, train_file = _artifact_file(store, "split", "data/train.parquet")
    train_file.write_bytes(train_file.read_bytes()[:100])
    result = store.in_process("steps.main", QUICK_EVALUATE)
    assert f"not reusing run {split_run}: its artifact data/train.parquet has 100 bytes" in result.stderr
    assert latest_main(store).data.tags["pipeline.split.status"] == "ran"
    assert store.client.get_run(split_run).data.tags[names.COMPLETE].startswith("damaged:")

    transform_run, transformer = _artifact_file(store, "transform", names.TRANSFORMER)
    transformer.unlink()
    result = store.in_process("steps.main", QUICK_EVALUATE)
    assert f"not reusing run {transform_run}: its artifact {names.TRANSFORMER} is missing" in result.stderr
    main = latest_main(store)
    assert main.data.tags["pipeline.split.status"] == "reused" and main.data.tags["pipeline.transform.status"] == "ran"
    assert_healthy(store)


def test_a_changed_artifact_of_the_same_size_is_a_clear_error_then_rebuilt(store):
    split_run, val_file = _artifact_file(store, "split", "data/val.parquet")
    data = bytearray(val_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content
    val_file.write_bytes(bytes(data))

    failed = store.in_process("steps.main", QUICK_EVALUATE, "force=[train]", check=False)
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr
    assert f"split run {split_run}: artifact data/val.parquet does not match its recorded sha256" in failed.stderr
    assert "run the command again to rebuild split" in failed.stderr

    store.in_process("steps.main", QUICK_EVALUATE)
    assert latest_main(store).data.tags["pipeline.split.status"] == "ran"
    assert_healthy(store)


# Through the command line's parsing once per kind of check (a knob's own rule, the model's
# parameters); every rule is checked on its own in tests/test_config_checks.py.
@pytest.mark.parametrize("override", ["split.test_fraction=2", "model.C=-1"])
def test_a_bad_override_exits_2_with_one_line_and_creates_no_run(tmp_path, override):
    store = make_store(tmp_path / "store")
    result = store.in_process("steps.main", override, check=False)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("config error: ") and override.split("=")[0] in lines[0], lines
    assert store.client.search_runs([store.experiment_id]) == []
    assert store.registry_state() == {}


def test_an_override_that_reads_the_environment_is_refused_without_printing_it(tmp_path):
    store = make_store(tmp_path / "store")
    secret = "hunter2-not-for-the-record"
    result = store.in_process("steps.ingest", "data.cache_dir=cache_${oc.env:HEART_TEST_SECRET}", check=False,
                              extra_env={"HEART_TEST_SECRET": secret})
    assert result.returncode == 2
    assert "config error: data.cache_dir: a command-line override may not call a resolver" in result.stderr
    assert secret not in result.stdout + result.stderr
    assert store.client.search_runs([store.experiment_id]) == []


def test_two_identical_mains_at_once_train_and_register_once(store):
    """A config no run has had yet, on the trained store: both reuse the upstream steps and
    reach train together."""
    runs_before = {step: len(store.runs(step)) for step in ("train", "evaluate", "register")}
    versions_before = len(store.client.search_model_versions("name = 'heart-disease'"))
    both = [store.start("steps.main", QUICK_EVALUATE, "model.C=0.05") for _ in range(2)]
    outputs = [process.communicate(timeout=600) for process in both]
    assert [process.returncode for process in both] == [0, 0], outputs
    for step, before in runs_before.items():
        assert len(store.runs(step)) == before + 1, (step, [out + err[-3000:] for out, err in outputs],
                                                     [(r.info.status, r.data.tags.get(names.CACHE_KEY))
                                                      for r in store.runs(step)])
    assert len(store.client.search_model_versions("name = 'heart-disease'")) == versions_before + 1
    assert any("waiting for run" in err for _, err in outputs)  # the second waited for the first's claim


def _wait_until_stopped(process: Command, timeout: float = 300) -> None:
    """Until the process has stopped itself (SIGSTOP at its fault point), or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            state = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:  # it ended after poll(): the next poll() says how
            state = None
        if state == "T":
            return
        time.sleep(0.1)
    raise AssertionError(f"process {process.pid} never reached its fault point")


def test_a_waiter_that_reads_while_the_claimant_finishes_reuses_its_run(tmp_path):
    """The claimant finishes without the store lock: from RUNNING to complete and FINISHED.
    A waiter that looked for live claims just before that, and for complete runs just
    after, must find the complete run, not claim the key a second time."""
    store = make_store(tmp_path / "store")

    def ingest(point):
        return store.start("steps.ingest", extra_env={names.FAULT_ENV: f"{point}:STOP"})

    processes = []
    try:
        claimant = ingest("ingest.started")  # holds the claim, RUNNING, stopped
        processes.append(claimant)
        _wait_until_stopped(claimant)
        waiter = ingest("ingest.claims_read")  # has seen the live claim, stopped before its next read
        processes.append(waiter)
        _wait_until_stopped(waiter)
        claimant.send_signal(signal.SIGCONT)
        claimant_out = claimant.communicate(timeout=300)
        assert claimant.returncode == 0, claimant_out
        waiter.send_signal(signal.SIGCONT)
        out, err = waiter.communicate(timeout=300)
        assert waiter.returncode == 0, (out, err)
    finally:
        for process in processes:  # a stopped process would hold the store's lock
            process.kill()
    runs = store.runs("ingest")
    assert len(runs) == 1 and complete(runs[0]), [(r.info.status, r.data.tags.get(names.COMPLETE)) for r in runs]
    assert f"reused run {runs[0].info.run_id}" in out


def test_eight_processes_starting_on_a_missing_sqlite_store_all_succeed(tmp_path):
    database = tmp_path / "new" / "mlflow.db"
    elsewhere = {"MLFLOW_TRACKING_URI": f"sqlite:///{database}", "MLFLOW_EXPERIMENT_NAME": "brand-new"}
    seed = make_store(tmp_path / "seed")
    processes = [seed.start("steps.ingest", extra_env=elsewhere) for _ in range(8)]
    outputs = [process.communicate(timeout=600) for process in processes]
    assert [process.returncode for process in processes] == [0] * 8, [err[-1500:] for _, err in outputs]
    client = mlflow.MlflowClient(f"sqlite:///{database}")
    experiment = client.get_experiment_by_name("brand-new")
    ingests = client.search_runs([experiment.experiment_id], f"tags.`{names.STEP}` = 'ingest'")
    assert len(ingests) == 1 and complete(ingests[0])  # one ran; seven reused it


def test_two_mains_with_different_configs_at_once_leave_the_best_model_champion(store):
    """Each register decides against the champion it sees; the store lock makes those
    decisions one after the other, so the champion ends up the best of all versions."""
    both = [store.start("steps.main", QUICK_EVALUATE, f"model.C={c}") for c in (0.02, 3.0)]
    outputs = [process.communicate(timeout=600) for process in both]
    assert [process.returncode for process in both] == [0, 0], outputs
    versions = store.client.search_model_versions("name = 'heart-disease'")
    best = max(float(v.tags["primary_metric_value"]) for v in versions
               if v.tags.get("validation.status") == "VALIDATED")
    champion = store.client.get_model_version_by_alias("heart-disease", "champion")
    assert float(champion.tags["primary_metric_value"]) == best
