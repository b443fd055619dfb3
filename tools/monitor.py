"""monitor: have the patients the model now sees drifted away from those it was trained on?

    ./run.sh monitor                                         # the app's log, last 7 days
    mlflow run . -e monitor -P overrides="monitor.log_dir=/var/log/heart monitor.last_hours=24"
    python -m tools.monitor monitor.input=new_patients.csv monitor.fail_on_drift=true

Current rows: a time window of the inference log the app writes with `--log-inputs DIR`
(serving/inference_log.py), or any Parquet/CSV table of patients (`monitor.input`).
Reference rows: the train split of the model that served them, found through its train
run's lineage (train -> split -> data/train.parquet, checked against the split run's
manifest).

Per feature, one test of "same distribution": two-sample Kolmogorov-Smirnov for measured
values, chi-squared on the code counts (missing as a code of its own) for coded ones;
plus the same KS test on the model's predicted probability for both sets of rows. The 14
p-values are adjusted together (Holm by default) so that, when nothing has drifted, the
chance of any false alarm stays at or under `monitor.level`. A feature drifted when its
adjusted p-value is below the level. The population stability index (PSI) is reported
beside each test as a size of the shift; it decides nothing (it has no false-alarm rate).

Everything goes to one MLflow run linked to the model (tags, and metrics carrying its
model id): `drift.status` OK or DRIFT, `drift.features`, the metrics, drift_report.json
and an HTML drift card. Exit code 3 on DRIFT when `monitor.fail_on_drift=true`, so a
scheduler can act; 1 when the monitor itself cannot run (the message says why).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from engine import names
from engine.config_checks import ConfigError
from engine.errors import PipelineError
from engine.redaction import redact
from tools.file_checks import read_error_reason

DRIFT_EXIT_CODE = 3
PROBABILITY = "probability"  # the model's output, tested beside the features
OK, DRIFT = "OK", "DRIFT"
CORRECTIONS = ("holm", "bonferroni")
MIN_EXPECTED_COUNT = 5  # chi-squared needs about this many expected rows per cell (Cochran)
PSI_FLOOR = 1e-4  # a bin empty on one side would make PSI infinite


# --------------------------------------------------------------------------- config schema


@dataclass
class MonitorConfig:
    model_uri: Optional[str] = None  # null: the model that answered the newest logged request (or the champion)
    log_dir: Optional[str] = None  # the app's --log-inputs folder
    input: Optional[str] = None  # or a Parquet/CSV table of patients
    since: Optional[str] = None  # window start, ISO 8601 (log_dir only); null: until - last_hours
    until: Optional[str] = None  # window end; null: now
    last_hours: float = 168.0
    min_rows: int = 50
    level: float = 0.05  # family-wise false-alarm rate over all the tests together
    correction: str = "holm"  # holm | bonferroni
    psi_bins: int = 10
    fail_on_drift: bool = False


def register_schema() -> None:
    """`monitor_schema` (conf/monitor.yaml's defaults): the pipeline's schema plus `monitor`."""
    from hydra.core.config_store import ConfigStore

    from engine.config import PipelineConfig

    @dataclass
    class MonitorRunConfig(PipelineConfig):
        monitor: MonitorConfig = field(default_factory=MonitorConfig)

    ConfigStore.instance().store(name="monitor_schema", node=MonitorRunConfig)


# --------------------------------------------------------------------------- statistics (pure)


def psi(reference: np.ndarray, current: np.ndarray, edges: Optional[np.ndarray] = None) -> float:
    """Population stability index sum((c - r) * ln(c / r)) over bins: the given bin edges
    for numbers, each distinct value (NaN included) for codes."""
    if edges is None:
        keys = np.union1d(np.unique(reference[~np.isnan(reference)]), np.unique(current[~np.isnan(current)]))
        r = np.array([np.mean(reference == k) for k in keys] + [np.mean(np.isnan(reference))])
        c = np.array([np.mean(current == k) for k in keys] + [np.mean(np.isnan(current))])
    else:
        r = np.histogram(reference, edges)[0] / len(reference)
        c = np.histogram(current, edges)[0] / len(current)
    r, c = np.maximum(r, PSI_FLOOR), np.maximum(c, PSI_FLOOR)
    return float(np.sum((c - r) * np.log(c / r)))


def numeric_test(reference: np.ndarray, current: np.ndarray, bins: int) -> dict[str, Any]:
    """Two-sample Kolmogorov-Smirnov on the values present; PSI over reference deciles."""
    from scipy import stats

    ref, cur = reference[~np.isnan(reference)], current[~np.isnan(current)]
    if len(ref) == 0 or len(cur) == 0:
        return {"test": "ks", "statistic": math.nan, "p_value": 1.0, "psi": math.nan}
    result = stats.ks_2samp(ref, cur)
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)))
    edges[0], edges[-1] = -np.inf, np.inf
    return {"test": "ks", "statistic": float(result.statistic), "p_value": float(result.pvalue),
            "psi": psi(ref, cur, edges)}


def _min_expected(table: np.ndarray) -> float:
    return float((np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()).min())


def pooled_counts(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """A 2 x k table of counts per code (missing as a code of its own). While some cell's
    expected count is under MIN_EXPECTED_COUNT, the two rarest codes are pooled, so the
    chi-squared approximation holds (Cochran's rule); at least two columns remain."""
    ref = np.where(np.isnan(reference), -1.0, reference)
    cur = np.where(np.isnan(current), -1.0, current)
    codes = np.union1d(ref, cur)
    table = np.array([[np.sum(ref == code) for code in codes], [np.sum(cur == code) for code in codes]], float)
    table = table[:, np.argsort(table.sum(axis=0), kind="stable")]  # rarest first
    while table.shape[1] > 2 and _min_expected(table) < MIN_EXPECTED_COUNT:
        table = np.column_stack([table[:, 0] + table[:, 1], table[:, 2:]])
        table = table[:, np.argsort(table.sum(axis=0), kind="stable")]
    return table


def coded_test(reference: np.ndarray, current: np.ndarray) -> dict[str, Any]:
    """Chi-squared test of homogeneity on the code counts (Fisher's exact test when only
    two codes remain and one is still rare); PSI per code."""
    from scipy import stats

    table = pooled_counts(reference, current)
    summary = {"psi": psi(reference, current)}
    if table.shape[1] < 2:
        return {"test": "chi2", "statistic": 0.0, "p_value": 1.0, **summary}
    if table.shape[1] == 2 and _min_expected(table) < MIN_EXPECTED_COUNT:
        result = stats.fisher_exact(table)
        return {"test": "fisher", "statistic": float(result.statistic), "p_value": float(result.pvalue), **summary}
    result = stats.chi2_contingency(table, correction=False)
    return {"test": "chi2", "statistic": float(result.statistic), "p_value": float(result.pvalue), **summary}


def describe(values: pd.Series, coded: bool) -> str:
    """What the card shows of one column: code shares, or mean and quartiles."""
    if coded:
        counts = values.value_counts(normalize=True, dropna=False).sort_index()
        return ", ".join(f"{_plain(code)}: {share:.0%}" for code, share in counts.items())
    q1, median, q3 = values.quantile([0.25, 0.5, 0.75])
    return f"mean {values.mean():.3g}, quartiles {q1:.3g} / {median:.3g} / {q3:.3g}"


def _plain(value: float) -> str:
    return "missing" if np.isnan(value) else f"{value:g}"


def adjust(p_values: list[float], correction: str) -> list[float]:
    """Family-wise adjusted p-values: Holm's step-down or Bonferroni. Under no drift at
    all, P(any adjusted p < level) <= level, whatever the tests' dependence."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    if correction == "bonferroni":
        return list(np.minimum(1.0, p * m))
    if correction != "holm":
        raise PipelineError(f"monitor.correction={correction!r}: use one of {', '.join(CORRECTIONS)}")
    order = np.argsort(p)
    stepped = np.maximum.accumulate(np.minimum(1.0, p[order] * (m - np.arange(m))))
    adjusted = np.empty(m)
    adjusted[order] = stepped
    return list(adjusted)


def drift_table(reference: pd.DataFrame, current: pd.DataFrame, book, bins: int,
                level: float, correction: str) -> pd.DataFrame:
    """One row per feature (and one for the predicted probability, when both frames have
    it): test, statistic, p-value, adjusted p-value, PSI, drifted."""
    rows = []
    columns = book.features + ([PROBABILITY] if PROBABILITY in reference and PROBABILITY in current else [])
    for name in columns:
        ref = reference[name].to_numpy(dtype="float64", na_value=np.nan)
        cur = current[name].to_numpy(dtype="float64", na_value=np.nan)
        coded = name != PROBABILITY and book.columns[name].codes is not None
        rows.append({"feature": name, **(coded_test(ref, cur) if coded else numeric_test(ref, cur, bins))})
    table = pd.DataFrame(rows)
    table["p_adjusted"] = adjust(table["p_value"].tolist(), correction)
    table["drifted"] = table["p_adjusted"] < level
    return table


def decide(table: pd.DataFrame) -> tuple[str, list[str]]:
    drifted = table.loc[table["drifted"], "feature"].tolist()
    return (DRIFT if drifted else OK), drifted


# --------------------------------------------------------------------------- current rows


def parse_time(text: str, key: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise PipelineError(f"{key}={text!r}: write an ISO 8601 time, e.g. 2026-01-31T00:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def window(cfg: DictConfig, now: datetime) -> tuple[datetime, datetime]:
    until = parse_time(cfg.until, "monitor.until") if cfg.until else now
    since = parse_time(cfg.since, "monitor.since") if cfg.since else until - timedelta(hours=cfg.last_hours)
    if since >= until:
        raise PipelineError(f"monitor.since={since.isoformat()} is not before monitor.until={until.isoformat()}")
    return since, until


def read_log_window(log_dir: Path, since: datetime, until: datetime) -> pd.DataFrame:
    """The logged requests with since <= timestamp < until, from complete files only."""
    import pyarrow.dataset as ds

    from serving.inference_log import TIMESTAMP, log_files

    files = log_files(log_dir)
    if not files:
        raise PipelineError(f"monitor.log_dir={log_dir}: no inference log files there (inferences-*.parquet); "
                            "start the app with --log-inputs DIR and send it requests first")
    stamp = ds.field(TIMESTAMP)
    try:
        table = ds.dataset([str(f) for f in files], format="parquet").to_table(
            filter=(stamp >= pd.Timestamp(since)) & (stamp < pd.Timestamp(until)))
    except (ValueError, OSError) as err:  # the reader names the file
        raise ConfigError([f"monitor.log_dir={log_dir}: cannot be read: {str(err).strip().splitlines()[0]}"]) from None
    return table.to_pandas()


def served_by_newest(rows: pd.DataFrame) -> tuple[str, pd.DataFrame, int]:
    """(URI of the model that answered the newest row, the rows it answered, rows others answered)."""
    newest = rows.sort_values("timestamp").iloc[-1]
    if newest["model_id"] is None or pd.isna(newest["model_id"]):
        raise PipelineError("the newest logged request has no model_id: set monitor.model_uri")
    mine = rows["model_id"] == newest["model_id"]
    return f"models:/{newest['model_id']}", rows[mine], int((~mine).sum())


# --------------------------------------------------------------------------- the model and its training rows


@dataclass
class ServedModel:
    uri: str
    pyfunc: Any
    run_id: str  # its train run
    model_id: Optional[str]
    name: Optional[str]
    version: Optional[str]


def load_model(client, uri: str, public_key: Path) -> ServedModel:
    """The model at `uri`, once its seal verifies with public_key (engine/seal.py)."""
    from engine.logged_model import load_pyfunc
    from engine.seal import SealRefused

    try:
        model = load_pyfunc(uri, public_key)
    except SealRefused:  # its message names the version and why
        raise
    except Exception as err:  # an unknown alias, version or id: MLflow says which
        raise PipelineError(f"monitor.model_uri={uri}: cannot load it ({str(err).splitlines()[0]})") from None
    run_id, model_id = model.metadata.run_id, model.metadata.model_id
    name = version = None
    try:
        versions = client.search_model_versions(f"run_id = '{run_id}'")
        matching = [v for v in versions if getattr(v, "model_id", None) in (None, model_id)]
        if matching:
            newest = max(matching, key=lambda v: int(v.version))
            name, version = newest.name, str(newest.version)
    except Exception:  # no registry here: the model is known by its ids
        pass
    return ServedModel(uri, model, run_id, model_id, name, version)


def training_rows(client, train_run_id: str, workdir: Path) -> tuple[pd.DataFrame, str]:
    """The train split the model was fitted on, checked against the split run's manifest;
    also returns the split run id."""
    from domain.sources import sha256_of
    from engine.context import manifest_of

    train = client.get_run(train_run_id)
    split_id = train.data.tags.get(names.INPUT + "split")
    if split_id is None:
        raise PipelineError(f"train run {train_run_id} records no split run (tag {names.INPUT}split): "
                            "it was not trained by this pipeline, so its training data is unknown")
    artifact = names.split_table("train")
    record = manifest_of(client.get_run(split_id)).get(artifact)
    try:
        path = Path(client.download_artifacts(split_id, artifact, str(workdir)))
    except Exception:
        path = None
    if record is None or path is None or not path.is_file() or sha256_of(path) != record["sha256"]:
        raise PipelineError(f"split run {split_id}: {artifact} is missing or not what the run wrote; "
                            "the model's training data cannot be compared with")
    return pd.read_parquet(path), split_id


def probabilities(model: ServedModel, rows: pd.DataFrame, book) -> np.ndarray:
    from mlflow.exceptions import MlflowException

    try:
        return model.pyfunc.predict(rows[book.features])[PROBABILITY].to_numpy()
    except MlflowException as err:  # the codebook refused rows: say which rule
        raise PipelineError(f"the current rows break the model's input rules: {err.message}") from None


# --------------------------------------------------------------------------- the card


def drift_card(status: str, facts: dict[str, Any], table: pd.DataFrame, reference: pd.DataFrame,
               current: pd.DataFrame, book, level: float, correction: str) -> str:
    from engine.cards import grid, page

    coded = [name != PROBABILITY and book.columns[name].codes is not None for name in table["feature"]]
    shown = table.assign(
        reference=[describe(reference[name], c) for name, c in zip(table["feature"], coded)],
        current=[describe(current[name], c) for name, c in zip(table["feature"], coded)],
        statistic=table["statistic"].map(lambda v: f"{v:.4g}"), p_value=table["p_value"].map(lambda v: f"{v:.3g}"),
        p_adjusted=table["p_adjusted"].map(lambda v: f"{v:.3g}"), psi=table["psi"].map(lambda v: f"{v:.3f}"),
        drifted=table["drifted"].map({True: "DRIFT", False: ""}))
    columns = ["feature", "test", "statistic", "p_value", "p_adjusted", "psi", "drifted", "reference", "current"]
    body = [
        f"<p class='{'failed' if status == DRIFT else 'ran'}'><b>{status}</b></p>",
        grid(["fact", "value"], [{"fact": k, "value": v} for k, v in facts.items()]),
        "<h2>Per feature</h2>", grid(columns, shown[columns].fillna("").to_dict(orient="records")),
        f"<h2>How to read it</h2><p>Each row tests whether the current rows could come from the training "
        f"distribution: Kolmogorov-Smirnov (ks) for measured values and the predicted probability, chi-squared "
        f"(chi2) on code counts with missing as a code and rare codes pooled. The {len(table)} p-values are "
        f"adjusted together ({correction}), so with no drift at all the chance of any false alarm is at most "
        f"{level:g}; a row drifted when its adjusted p-value is below {level:g}. PSI sizes the shift "
        f"(rule of thumb: under 0.1 small, over 0.25 large) and decides nothing. With few rows, a test "
        f"may miss a real shift: an OK is not proof of no drift.</p>",
    ]
    return page(f"Drift card: {status}", body)


# --------------------------------------------------------------------------- the command


def current_rows(cfg: DictConfig, now: datetime) -> tuple[pd.DataFrame, Optional[str], dict[str, Any]]:
    """(rows to compare, URI of the model that served them if known, facts for the record).
    A table without a header has the UCI files' column order (conf/schema)."""
    from domain.sources import read_table

    monitor = cfg.monitor
    if bool(monitor.log_dir) == bool(monitor.input):
        raise PipelineError("set exactly one of monitor.log_dir (the app's --log-inputs folder) and "
                            "monitor.input (a Parquet/CSV table of patients)")
    if monitor.input:
        path = Path(monitor.input).expanduser()
        if not path.is_file():
            raise ConfigError([f"monitor.input={monitor.input}: " + ("is a folder; name a Parquet or CSV file"
                                                                     if path.is_dir() else "no such file")])
        try:
            rows = read_table(path, [str(c) for c in cfg.schema.columns])
        except (ValueError, OSError) as err:  # Arrow's and pandas' read errors are ValueErrors
            raise ConfigError([f"monitor.input={monitor.input}: cannot be read: {read_error_reason(err)}"]) from None
        if len(rows) == 0:
            raise ConfigError([f"monitor.input={monitor.input}: holds no rows"])
        return rows, None, {"source": str(path)}
    since, until = window(monitor, now)
    rows = read_log_window(Path(monitor.log_dir), since, until)
    facts = {"source": str(monitor.log_dir), "since": since.isoformat(), "until": until.isoformat()}
    if len(rows) == 0:
        return rows, None, facts
    served = None
    if not monitor.model_uri:
        served, rows, others = served_by_newest(rows)
        facts["rows answered by other models (not compared)"] = others
    return rows, served, facts


def run_monitor(cfg: DictConfig, tracking) -> str:
    """Compare, record, and return drift.status."""
    from engine.cli import adopt_launcher_run
    from engine.runner import TrackedRun

    monitor = cfg.monitor
    if not 0 < monitor.level < 1:
        raise PipelineError(f"monitor.level={monitor.level}: a false-alarm rate between 0 and 1, e.g. 0.05")
    if monitor.correction not in CORRECTIONS:
        raise PipelineError(f"monitor.correction={monitor.correction!r}: use one of {', '.join(CORRECTIONS)}")
    client = tracking.client
    now = datetime.now(timezone.utc)
    rows, served_uri, facts = current_rows(cfg, now)
    if len(rows) < monitor.min_rows:
        raise PipelineError(f"{len(rows)} row(s) to compare, fewer than monitor.min_rows={monitor.min_rows}: "
                            "widen the window (monitor.last_hours, monitor.since) or wait for more requests")
    uri = monitor.model_uri or served_uri or f"models:/{cfg.register.model_name}@{cfg.register.champion_alias}"
    from engine.seal import public_key_path

    model = load_model(client, uri, public_key_path(cfg.profile, tracking.tracking_uri))
    book = model.pyfunc.unwrap_python_model().codebook  # the model's own features and rules
    absent = [c for c in book.features if c not in rows]
    if absent:
        given = f"monitor.input={monitor.input}" if monitor.input else f"monitor.log_dir={monitor.log_dir}"
        raise ConfigError([f"{given}: no column {absent}; the model needs {book.features} "
                           f"(found {list(map(str, rows.columns))})"])
    with TrackedRun(tracking, "monitor", "monitor", own_run_id=adopt_launcher_run(tracking)) as run:
        run_id = run.run_id
        with tempfile.TemporaryDirectory(prefix="monitor-") as workdir:
            reference, split_id = training_rows(client, model.run_id, Path(workdir))
        current = rows[book.features].assign(**{PROBABILITY: probabilities(model, rows, book)})
        reference = reference[book.features].assign(**{PROBABILITY: probabilities(model, reference, book)})
        table = drift_table(reference, current, book, monitor.psi_bins, monitor.level, monitor.correction)
        status, drifted = decide(table)
        facts = {"model": uri, "model version": f"{model.name} v{model.version}" if model.name else "not registered",
                 "model id": model.model_id, "train run": model.run_id, "training rows (split run "
                 f"{split_id})": len(reference), "current rows": len(current), **facts,
                 "mean probability, training → current": f"{reference[PROBABILITY].mean():.3f} → "
                                                         f"{current[PROBABILITY].mean():.3f}"}
        _record(client, run_id, model, status, drifted, table, facts, reference, current, book, cfg)
    print(f"monitor: {status}" + (f": {', '.join(drifted)}" if drifted else "") +
          f" ({len(current)} current rows against {len(reference)} training rows of {uri}; run {run_id})")
    return status


def _record(client, run_id: str, model: ServedModel, status: str, drifted: list[str], table: pd.DataFrame,
            facts: dict[str, Any], reference: pd.DataFrame, current: pd.DataFrame, book,
            cfg: DictConfig) -> None:
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag

    now = int(time.time() * 1000)
    values = {"rows_current": len(current), "rows_reference": len(reference), "drifted_features": len(drifted),
              "probability_mean_current": float(current[PROBABILITY].mean()),
              "probability_mean_reference": float(reference[PROBABILITY].mean())}
    for row in table.itertuples():
        for statistic in ("statistic", "p_value", "p_adjusted", "psi"):
            value = getattr(row, statistic)
            if not (isinstance(value, float) and math.isnan(value)):
                values[f"drift_{row.feature}_{statistic}"] = float(value)
    metrics = [Metric(key, value, now, 0, model_id=model.model_id) for key, value in values.items()]
    params = {f"monitor.{k}": v for k, v in cfg.monitor.items()}
    tags = {"drift.status": status, "drift.features": ", ".join(drifted) or "none",
            "monitor.model_uri": model.uri, "monitor.train_run_id": model.run_id,
            "model.id": model.model_id or "", "model.name": model.name or "", "model.version": model.version or ""}
    client.log_batch(run_id, metrics=metrics, params=[Param(k, redact(str(v))) for k, v in params.items()],
                     tags=[RunTag(k, redact(str(v))) for k, v in tags.items()])
    # The training rows are the train run's dataset already: only the current rows are logged here.
    dataset = from_pandas(current, source=redact(str(facts["source"])), name="monitored", targets=None)
    client.log_inputs(run_id, [DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context",
                                                                                   "monitoring")])])
    report = {"status": status, "drifted": drifted, "level": cfg.monitor.level,
              "correction": cfg.monitor.correction, "facts": {k: redact(str(v)) for k, v in facts.items()},
              "tests": json.loads(table.to_json(orient="records"))}
    client.log_dict(run_id, report, "drift_report.json")
    card = drift_card(status, facts, table, reference, current, book,
                      cfg.monitor.level, cfg.monitor.correction)
    client.log_text(run_id, redact(card), names.CARD)


def main(cfg: DictConfig) -> None:
    from engine.cli import run_command

    status = run_command(cfg, lambda tracking: run_monitor(cfg, tracking), steps=())
    if status == DRIFT and cfg.monitor.fail_on_drift:
        sys.exit(DRIFT_EXIT_CODE)


if __name__ == "__main__":
    from engine.cli import launch

    register_schema()
    launch(main, config_name="monitor")
