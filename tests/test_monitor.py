"""Drift monitoring: the inference log the app writes (serving/inference_log.py) and the
`monitor` command (tools/monitor.py). The statistics are tested in-process on seeded
synthetic patients; one end-to-end test runs `python -m tools.monitor` on a real store
with a trained model and a log written by the real InferenceLog."""

from __future__ import annotations

import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from domain import synthetic
from heart_disease_model.codebook import Codebook
from serving.inference_log import FILE_PREFIX, InferenceLog, log_files
from tests.conftest import REPO, make_store
from tools.monitor import DRIFT, OK, adjust, decide, drift_table, pooled_counts, read_log_window

BOOK = Codebook.from_config(OmegaConf.load(REPO / "conf" / "schema" / "uci_codebook.yaml"))
LEVEL = 0.05


def patients(rows: int, seed: int) -> pd.DataFrame:
    """Seeded synthetic patients: the 13 features, in codebook codes."""
    return synthetic.generate(rows, seed)[BOOK.features]


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return patients(3000, 0)


# --------------------------------------------------------------------------- statistics


def test_a_six_year_shift_in_age_is_flagged(reference):
    current = patients(200, 7)
    current["age"] += 6
    table = drift_table(reference, current, BOOK, 10, LEVEL, "holm").set_index("feature")
    assert table.loc["age", "p_adjusted"] < 0.01
    status, drifted = decide(table.reset_index())
    assert status == DRIFT and "age" in drifted
    assert table.loc["age", "psi"] > 0.1


def test_false_alarms_stay_within_the_level_without_drift(reference):
    """Samples from the training distribution: any DRIFT is a false alarm. Over 300 seeded
    samples, not 100: a count out of 100 has a standard error of about 2 points, so a
    procedure calibrated at 5 % would exceed 5 of 100 about a third of the time (seeds 1-100
    alone give 6 here). With 13 tests, an uncorrected rule (any p < level) alarms in about
    half the samples."""
    samples, corrected, uncorrected = 300, 0, 0
    for seed in range(1, samples + 1):
        table = drift_table(reference, patients(200, seed), BOOK, 10, LEVEL, "holm")
        corrected += decide(table)[0] == DRIFT
        uncorrected += bool((table["p_value"] < LEVEL).any())
    assert corrected / samples <= LEVEL
    assert uncorrected / samples > 5 * LEVEL  # the correction is what keeps the rate down


def test_holm_and_bonferroni_adjust_as_defined():
    p = [0.01, 0.04, 0.03, 0.5]
    np.testing.assert_allclose(adjust(p, "holm"), [0.04, 0.09, 0.09, 0.5])
    np.testing.assert_allclose(adjust(p, "bonferroni"), [0.04, 0.16, 0.12, 1.0])


def test_rare_codes_are_pooled_until_chi_squared_applies():
    reference = np.array([0.0] * 500 + [1.0] * 480 + [2.0] * 15 + [np.nan] * 5)
    current = np.array([0.0] * 30 + [1.0] * 29 + [2.0] * 1)
    table = pooled_counts(reference, current)
    assert table.sum() == len(reference) + len(current)
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    assert table.shape[1] == 2 and expected.min() >= 5


def test_missing_codes_count_as_a_code(reference):
    current = patients(300, 3)
    current.loc[current.index[:60], "ca"] = np.nan  # 20 % missing where training had about 1 %
    table = drift_table(reference, current, BOOK, 10, LEVEL, "holm").set_index("feature")
    assert table.loc["ca", "drifted"]


# --------------------------------------------------------------------------- the inference log


def _answers(rows: int) -> list[dict]:
    return [{"prediction": 1, "probability": 0.75, "confidence": 0.75, "risk_level": "High"}] * rows


IDENTITY = {"model_name": "heart-disease", "model_version": "2", "model_alias": "champion", "run_id": "r1",
            "model_id": "m-1"}


def test_inference_log_rotates_by_rows_and_keeps_every_row_from_many_threads(tmp_path):
    log = InferenceLog(tmp_path / "log", BOOK.features, rotate_rows=50, rotate_seconds=600)
    rows = patients(400, 5)[BOOK.features]

    def send(part: pd.DataFrame) -> None:
        for start in range(0, len(part), 2):
            log.record(part.iloc[start:start + 2], _answers(len(part.iloc[start:start + 2])), IDENTITY)

    threads = [threading.Thread(target=send, args=(rows.iloc[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    files = log_files(tmp_path / "log")
    assert len(files) >= 400 // 50
    logged = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    assert len(logged) == 400
    key = BOOK.features
    assert sorted(map(tuple, logged[key].fillna(-1).to_numpy())) == sorted(map(tuple, rows.fillna(-1).to_numpy()))
    assert set(logged["model_id"]) == {"m-1"} and set(logged["risk_level"]) == {"High"}
    assert str(logged["timestamp"].dtype).startswith("datetime64") and logged["timestamp"].dt.tz is not None
    readme = (tmp_path / "log" / "README.txt").read_text()
    assert "PATIENT DATA" in readme
    assert all(f.stat().st_mode & 0o077 == 0 for f in files)  # owner only


def test_inference_log_flushes_old_rows_and_readers_skip_files_being_written(tmp_path):
    log = InferenceLog(tmp_path, BOOK.features, rotate_rows=10_000, rotate_seconds=0.2)
    log.record(patients(3, 1)[BOOK.features], _answers(3), IDENTITY)
    (tmp_path / f".{FILE_PREFIX}half.parquet.1234.tmp").write_bytes(b"PAR1 half a file")
    deadline = time.monotonic() + 20
    while not log_files(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    log.close()
    files = log_files(tmp_path)
    assert len(files) == 1 and len(pd.read_parquet(files[0])) == 3


def test_a_window_reads_only_its_rows(tmp_path):
    log = InferenceLog(tmp_path, BOOK.features, rotate_rows=1, rotate_seconds=600)
    log.record(patients(2, 1)[BOOK.features], _answers(2), IDENTITY)
    middle = datetime.now(timezone.utc)
    time.sleep(0.01)
    log.record(patients(3, 2)[BOOK.features], _answers(3), IDENTITY)
    log.close()
    later = middle + timedelta(hours=1)
    assert len(read_log_window(tmp_path, middle - timedelta(hours=1), later)) == 5
    assert len(read_log_window(tmp_path, middle, later)) == 3


# --------------------------------------------------------------------------- end to end


@pytest.mark.e2e
def test_monitor_command_flags_a_shifted_log_and_passes_an_unshifted_one(trained):
    """A trained champion, a log the real InferenceLog wrote from its real answers, then
    `python -m tools.monitor` against the store: DRIFT (exit 3) for older patients, OK for
    patients like those it was trained on; a run linked to the model with a drift card."""
    import mlflow

    store = trained
    mlflow.set_tracking_uri(store.tracking_uri)
    mlflow.set_registry_uri(store.tracking_uri)  # an earlier test in this process may have set another
    version = store.client.get_model_version_by_alias("heart-disease", "champion")
    model = mlflow.pyfunc.load_model(f"models:/heart-disease/{version.version}")
    split = store.runs("split")[0].info.run_id
    unseen = pd.concat([pd.read_parquet(store.client.download_artifacts(split, f"data/{name}.parquet",
                                                                        str(store.root / name)))
                        for name in ("val", "test")], ignore_index=True)[BOOK.features]
    identity = {"model_name": "heart-disease", "model_version": str(version.version), "model_alias": "champion",
                "run_id": version.run_id, "model_id": model.metadata.model_id}

    def log_requests(folder, rows: pd.DataFrame) -> None:
        log = InferenceLog(folder, BOOK.features, rotate_rows=40)
        for start in range(0, len(rows), 4):
            batch = rows.iloc[start:start + 4]
            log.record(batch, model.predict(batch).to_dict(orient="records"), identity)
        log.close()

    shifted = unseen.assign(age=(unseen["age"] + 10).clip(upper=100))
    log_requests(store.root / "older", shifted)
    drifted = store.tool("monitor", f"monitor.log_dir={store.root / 'older'}", "monitor.fail_on_drift=true",
                          check=False)
    assert drifted.returncode == 3, drifted.stderr
    assert "monitor: DRIFT: age" in drifted.stdout

    log_requests(store.root / "alike", unseen)
    alike = store.tool("monitor", f"monitor.log_dir={store.root / 'alike'}", "monitor.fail_on_drift=true",
                        check=False)
    assert alike.returncode == 0, alike.stderr
    assert "monitor: OK" in alike.stdout

    runs = store.client.search_runs([store.experiment_id], "tags.`pipeline.role` = 'monitor'",
                                    order_by=["attributes.start_time ASC"])
    assert [r.data.tags["drift.status"] for r in runs] == [DRIFT, OK]
    first = runs[0]
    assert first.info.status == "FINISHED"
    assert first.data.tags["drift.features"].split(", ")[0] == "age"
    assert first.data.tags["model.id"] == model.metadata.model_id
    assert first.data.tags["model.version"] == str(version.version)
    assert first.data.metrics["rows_current"] == len(unseen)
    assert first.data.metrics["drift_age_p_adjusted"] < LEVEL
    linked = mlflow.get_logged_model(model.metadata.model_id).metrics  # the model's own record
    assert any(m.key == "drift_age_p_adjusted" and m.run_id == first.info.run_id for m in linked)
    card = store.card(first.info.run_id)
    assert "Drift card: DRIFT" in card and "age" in card


# --------------------------------------------------------------------------- inputs and stores it cannot use


def monitor_runs(store) -> int:
    return len(store.client.search_runs([store.experiment_id], "tags.`pipeline.role` = 'monitor'"))


# What monitor.input is (written into a fresh folder), and what its one line says.
UNUSABLE_INPUTS = {
    "no such file": (None, "no such file"),
    "a folder": ("folder", "is a folder; name a Parquet or CSV file"),
    "empty csv": (b"", "holds no rows"),
    "0-byte parquet": (b"", "cannot be read: Parquet file size is 0 bytes"),
    "garbage parquet": (b"these patients were lost in a copy\n" * 20, "cannot be read: Parquet magic bytes not found"),
}


@pytest.mark.parametrize("case", UNUSABLE_INPUTS)
def test_an_input_it_cannot_use_is_one_config_error_line(tmp_path, case):
    """Found before the model is loaded: an empty store will do. Exit 2, one line naming
    the file, no traceback, no run."""
    store = make_store(tmp_path / "store")
    content, said = UNUSABLE_INPUTS[case]
    path = tmp_path / ("patients.csv" if case == "empty csv" else "patients.parquet")
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    refused = store.in_process("tools.monitor", f"monitor.input={path}", check=False)
    assert refused.returncode == 2, refused.stderr
    (line,) = refused.stderr.splitlines()
    assert line.startswith(f"config error: monitor.input={path}: ") and said in line, line
    assert monitor_runs(store) == 0


@pytest.mark.e2e
def test_a_table_missing_a_column_is_one_config_error_line(trained, tmp_path):
    """The model's own features are the ones it needs (it is loaded to know them); no run."""
    path = tmp_path / "no_thal.parquet"
    patients(100, 5).drop(columns=["thal"]).to_parquet(path)
    runs = monitor_runs(trained)
    refused = trained.tool("monitor", f"monitor.input={path}", check=False)
    assert refused.returncode == 2, refused.stderr
    (line,) = refused.stderr.splitlines()
    assert line.startswith(f"config error: monitor.input={path}: no column ['thal']; the model needs ["), line
    assert monitor_runs(trained) == runs


def test_a_store_that_is_not_a_database_is_one_line(tmp_path):
    store = make_store(tmp_path / "store")
    (store.root / "mlflow.db").write_bytes(b"not a database, whatever it was\n" * 200)
    failed = store.tool("monitor", f"monitor.input={tmp_path / 'patients.parquet'}", check=False)
    assert failed.returncode == 1, failed.stderr
    assert failed.stderr.splitlines() == [f"error: tracking store {store.tracking_uri} cannot be used: file is not a "
                                          "database (it comes from MLFLOW_TRACKING_URI or profile.tracking_uri)"]


def test_a_store_on_a_read_only_mount_is_one_line(tmp_path):
    """Mounted read-only, which stops root too; skipped, saying why, where mounting is not allowed."""
    store = make_store(tmp_path / "store")
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(store.root), str(store.root)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount read-only here ({mounted.stderr.strip()}): needs root with CAP_SYS_ADMIN")
    try:
        failed = store.tool("monitor", f"monitor.input={tmp_path / 'patients.parquet'}", check=False)
    finally:
        subprocess.run(["umount", str(store.root)], check=True)
    assert failed.returncode == 1, failed.stderr
    (line,) = failed.stderr.splitlines()
    assert line.startswith(f"error: tracking store {store.tracking_uri} cannot be used: ") and "Read-only" in line
