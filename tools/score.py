"""score: batch scoring with a registered model, on pandas (in-process) or Spark.

    python -m tools.score score.input=patients.parquet score.output=scored.parquet
    mlflow run . -e score -P overrides="score.input=https://host/patients.csv score.output=out.parquet"
    ./run.sh score score.input=runs:/<run id>/data/test.parquet score.output=out.parquet score.engine=spark

In: a Parquet or CSV file (CSV with a header row), a folder of them, an http(s) URL or
a run's artifact (runs:/<run id>/<path>). Out: a Parquet file with the input's
`score.id_columns`, the model's answer per row (prediction, probability, confidence,
risk_level) and the model's identity (name, version, run id, model id), and with
`score.explain=true` each answer's explanation: `base_log_odds` and one
`contribution_<field>` column per input field, summing to the answer's log-odds. Rows that break
the UCI codebook are not scored and do not fail the batch: they go to the rejects file
with the reason. Both engines split rejects with the same function and answer with the
same model version (an alias is resolved once, at the start), so they agree row by row.

pandas reads, scores and writes `score.batch_rows` rows at a time, so memory stays flat
whatever the input's size. It calls the model's own predict (heart_disease_model/model.py: the
codebook check, then the fast path), not pyfunc's: MLflow's signature enforcement
adds a per-cell Python loop and checks nothing the model does not check itself.

The outputs appear only when complete (written beside, then renamed); the next score
of the same output removes what a killed one left. An MLflow run records the input and
output datasets, row counts, rejects and throughput.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from engine import faults
from engine.config_checks import ConfigError
from engine.errors import PipelineError
from engine.liveness import HOST, PID_NAMESPACE, gone
from engine.redaction import redact
from tools.file_checks import overlap_problems, read_error_reason, resolved_path, target_problem

if TYPE_CHECKING:  # pyarrow is imported where a batch is read: a config error need not wait for it
    import pyarrow as pa

REJECT_REASON = "reject_reason"
MISSING_MARKERS = ["", "?", "NA", "NaN", "nan", "null"]


# --------------------------------------------------------------------------- pure core


def split_rejects(frame: pd.DataFrame, book, may_be_missing: set[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """(the features as float64, NaN where missing or not a number; the reason each row
    breaks the codebook, None for rows the model can score). `book` is the loaded model's
    codebook, and the rules are its own (check_features with impossible values failing): a number,
    present unless the column may be missing, a known code, a possible value."""
    absent = [c for c in book.features if c not in frame]
    if absent:
        raise PipelineError(f"input has no column {absent}: the model needs {book.features} "
                            f"(found {list(map(str, frame.columns))})")
    columns: dict[str, np.ndarray] = {}
    # (rows, what is wrong, the cells to quote: the text as written for a word, the number
    # read for a bad code or value, so text and numeric inputs give the same reasons)
    broken: list[tuple[np.ndarray, str, Optional[Sequence]]] = []
    for name in book.features:
        raw = frame[name]
        rule = book.columns[name]
        if pd.api.types.is_numeric_dtype(raw.dtype) or pd.api.types.is_bool_dtype(raw.dtype):
            values = raw.to_numpy(dtype=np.float64, na_value=np.nan)
            text = np.zeros(len(raw), dtype=bool)
        else:
            values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            text = np.isnan(values) & raw.notna().to_numpy() & (raw.astype("string").str.strip() != "").to_numpy(
                dtype=bool, na_value=False)
        missing = np.isnan(values) & ~text
        columns[name] = values
        described = f"column '{name}': rule '{rule.describe()}'"
        broken.append((text, f"{described}: not a number", raw.array))
        if name not in may_be_missing:
            broken.append((missing, f"column '{name}': rule 'value required': missing; only "
                                    f"{sorted(may_be_missing)} may be missing", None))
        present = ~np.isnan(values)
        if rule.codes is not None:
            broken.append((present & ~np.isin(values, rule.codes), f"{described}: unknown code", values))
        else:
            broken.append((present & ((values < rule.min) | (values > rule.max)), f"{described}: impossible value",
                           values))
    reasons = np.full(len(frame), None, dtype=object)
    for rows, message, cells in broken:
        for position in np.flatnonzero(rows):
            cell = None if cells is None else cells[position]
            said = message if cell is None else f"{message} {cell!r}" if isinstance(cell, str) \
                else f"{message} {float(cell):g}"
            reasons[position] = said if reasons[position] is None else f"{reasons[position]}; {said}"
    return pd.DataFrame(columns, index=frame.index), reasons


def feature_numbers(batch, features: list[str]) -> Optional[pd.DataFrame]:
    """The features as float64 columns (NaN where missing), cast by Arrow in one pass per
    column, or None when some cell is text that is not a number: the caller then takes
    split_rejects' text path, which names each such cell. A CSV arrives as text, so this
    is what keeps scoring a clean CSV as fast as scoring Parquet."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = {}
    for name in features:
        column = batch.column(name)
        try:
            numbers = pc.cast(column, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        # Only floats may hold NaN; from any other type (text, dictionary-encoded text) it
        # was a word such as "nan", which the text path rejects as not a number.
        if not pa.types.is_floating(column.type) and pc.any(pc.is_nan(numbers)).as_py():
            return None
        columns[name] = numbers.to_numpy(zero_copy_only=False)  # nulls become NaN
    return pd.DataFrame(columns)


# MLflow's column types in a signature, as Arrow types.
_ARROW_TYPES = {"long": "int64", "integer": "int32", "double": "float64", "float": "float32", "string": "string",
                "boolean": "bool_"}


def answer_fields(loaded) -> list["pa.Field"]:
    """The model's answer columns and their types, as its signature declares them: every
    version's own contract, whichever code it was logged with."""
    import pyarrow as pa

    return [pa.field(column.name, getattr(pa, _ARROW_TYPES[column.type.name])())
            for column in loaded.metadata.get_output_schema().inputs]


def answer_schema(id_fields: list, answer: list) -> "pa.Schema":
    """The output file's columns: the input's id columns, then the model's answer."""
    import pyarrow as pa

    return pa.schema([*id_fields, *answer])


BASE_LOG_ODDS = "base_log_odds"
CONTRIBUTION = "contribution_"  # + an input field


def explanation_fields(features: list[str]) -> list["pa.Field"]:
    """The columns score.explain adds after the answer: the base, then one contribution per field."""
    import pyarrow as pa

    return [pa.field(BASE_LOG_ODDS, pa.float64()), *[pa.field(CONTRIBUTION + name, pa.float64()) for name in features]]


def cannot_explain(python_model) -> Optional[str]:
    """Why the loaded model cannot give exact explanations (None when it can): a version
    logged before explanations existed, or an estimator without an exact additive form."""
    if not hasattr(python_model, "contributions"):
        return "this model version was logged before answers could be explained"
    return python_model.explanation_unavailable


def score_batch(python_model, batch, id_columns: list[str],
                explain: bool = False) -> tuple[Optional["pa.Table"], Optional[pd.DataFrame]]:
    """(scored rows: ids + the model's answer [+ its explanation]; rejected rows: ids +
    features + reason) of one Arrow record batch; None for none. The answer is the
    model's own predict (every registered version has it, whichever code it was logged
    with), the explanation its contributions: one call each per batch."""
    import pyarrow as pa

    book = python_model.codebook
    numbers = feature_numbers(batch, book.features)
    features, reasons = split_rejects(batch.select(book.features).to_pandas() if numbers is None else numbers,
                                      book, python_model.imputable)
    rejected = np.not_equal(reasons, None)
    good = ~rejected
    scored = None
    if good.any():
        rows = features[good].reset_index(drop=True)
        answer = pa.Table.from_pandas(python_model.predict(None, rows), preserve_index=False)
        ids = batch.select(id_columns).filter(pa.array(good))
        columns, names = [*ids.columns, *answer.columns], [*id_columns, *answer.column_names]
        if explain:
            parts = python_model.contributions(rows.to_numpy(dtype=np.float64, na_value=np.nan))
            columns += [pa.array(np.full(len(rows), parts.base)), *(pa.array(column) for column in parts.values.T)]
            names += [BASE_LOG_ODDS, *(CONTRIBUTION + name for name in parts.fields)]
        scored = pa.Table.from_arrays(columns, names=names)
    rejects = None
    if rejected.any():
        rejects = pd.concat([batch.select(id_columns).filter(pa.array(rejected)).to_pandas(),
                             features[rejected].reset_index(drop=True)], axis=1)
        rejects[REJECT_REASON] = pd.Series(reasons[rejected], dtype="string")
    return scored, rejects


# --------------------------------------------------------------------------- input


@dataclass
class Input:
    path: Path  # local file or folder
    format: str  # parquet | csv
    source: str  # as the user gave it
    digest: Optional[str] = None  # sha256 of a downloaded file


def resolve_input(score: DictConfig, workdir: Path) -> Input:
    """A local path for `score.input`: downloaded (http, runs:/) into `workdir` if remote."""
    location = str(score.input)
    scheme = urllib.parse.urlparse(location).scheme
    digest = None
    if scheme in ("http", "https"):
        from domain.sources import fetch

        # A fresh cache: a scoring input is read once, and must never be a stale copy.
        path, digest = fetch(location, score.input_sha256, str(workdir / "download"), score.download_timeout_s)
    elif scheme == "runs":
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            path = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(workdir / "artifact")))
        except (MlflowException, OSError) as err:
            raise PipelineError(f"score.input={location}: cannot download the run's artifact: {err}") from None
    else:
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(location).path)) if scheme == "file" \
            else Path(location).expanduser()
        if not path.exists():
            raise ConfigError([f"score.input={location}: no such file or folder ({path.resolve()})"])
    return Input(path, _format_of(path, score.input_format, location), location, digest)


def _format_of(path: Path, wanted: str, location: str) -> str:
    if wanted != "auto":
        return wanted
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*")
                                                 if p.is_file() and not p.name.startswith(("_", ".")))
    suffixes = {p.suffix.lower() for p in files}
    if suffixes and suffixes <= {".parquet", ".pq"}:
        return "parquet"
    if suffixes and suffixes <= {".csv"}:
        return "csv"
    raise ConfigError([f"score.input={location}: cannot tell the format from the file names "
                       f"{sorted(suffixes) or '(no files)'}; set score.input_format=parquet or csv"])


def input_dataset(source: Input, book, id_columns: list[str]):
    """`source` as an Arrow dataset, checked before anything is written: readable as its
    format, holding every feature and id column, and at least one row. Each problem is a
    ConfigError naming score.input and what is wrong with it."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.dataset as ds

    try:
        if source.format == "csv":
            # Everything as text: a stray word must reject its row, not stop the read mid-file,
            # and an id column must not change type between blocks.
            first = source.path if source.path.is_file() else sorted(source.path.rglob("*.csv"))[0]
            with open(first, encoding="utf-8", errors="replace") as handle:
                header = [cell.strip().strip('"') for cell in handle.readline().strip().split(",")]
            convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in header},
                                           null_values=MISSING_MARKERS, strings_can_be_null=True)
            fmt = ds.CsvFileFormat(convert_options=convert)
        else:
            fmt = "parquet"
        dataset = ds.dataset(str(source.path), format=fmt)
        problem = _column_problem(dataset.schema.names, book.features, id_columns)
        if problem is None and dataset.head(1, columns=[book.features[0]]).num_rows == 0:
            problem = "holds no rows"
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as err:
        problem = f"cannot be read as {source.format}: {_unreadable(source, err)}"
    if problem:
        raise ConfigError([f"score.input={source.source}: {problem}"])
    return dataset


def _column_problem(found: list[str], features: list[str], id_columns: list[str]) -> Optional[str]:
    absent = [c for c in features if c not in found]
    if absent:
        return f"no column {absent}; the model needs {features} (found {found})"
    absent_ids = [c for c in id_columns if c not in found]
    if absent_ids:
        return f"no column {absent_ids} of score.id_columns={list(id_columns)} (found {found})"
    return None


def _unreadable(source: Input, error: BaseException) -> str:
    """The reader's reason; for a folder, with the file it names."""
    return read_error_reason(error) if source.path.is_file() else str(error).strip().splitlines()[0]


def read_batches(dataset, source: Input, book, id_columns: list[str],
                 batch_rows: int) -> Iterator["pa.RecordBatch"]:
    """The id and feature columns of `dataset` (input_dataset of `source`) as Arrow record batches
    of `batch_rows` rows at most. A file of a folder input that cannot be read stops the job
    with one line."""
    import pyarrow as pa

    wanted = list(dict.fromkeys([*id_columns, *book.features]))
    try:
        for batch in dataset.to_batches(columns=wanted, batch_size=batch_rows):
            if batch.num_rows:
                yield batch
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as err:
        raise PipelineError(f"score.input={source.source}: cannot be read as {source.format}: "
                            f"{_unreadable(source, err)}") from None


# --------------------------------------------------------------------------- output


def partial_path(target: Path) -> Path:
    """Where this process writes `target` until it is finished: hidden, beside it, named
    by host, PID namespace and pid so a later score can tell an abandoned one from one
    being written."""
    return target.with_name(f"{_partial_prefix(target)}{HOST}-{PID_NAMESPACE}-{os.getpid()}")


def _partial_prefix(target: Path) -> str:
    return f".{target.name}.partial-"


def remove_abandoned_partials(target: Path) -> None:
    """Delete what killed score processes of this host and container left writing `target`."""
    prefix = _partial_prefix(target)
    if not target.parent.is_dir():
        return
    for partial in target.parent.iterdir():
        if not partial.name.startswith(prefix):
            continue
        owner = partial.name[len(prefix):].rsplit("-", 2)
        if len(owner) != 3 or not owner[2].isdigit() or not gone(owner[0], owner[1], int(owner[2])):
            continue
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
        if not partial.exists():
            print(f"score: removed {partial.name}, left unfinished by process {owner[2]}, which is gone",
                  file=sys.stderr)


class AtomicParquet:
    """A Parquet file written batch by batch under a temporary name beside its target and
    renamed into place only by `commit`: a crash leaves no file that looks finished."""

    def __init__(self, target: Path, schema: Optional["pa.Schema"] = None):
        self.target = target
        self.partial = partial_path(target)
        self.schema = schema  # None: the first batch's
        self.writer = None
        self.rows = 0

    def write(self, rows: "pd.DataFrame | pa.Table") -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pandas(rows, preserve_index=False)
        with self._said_in_one_line():
            if self.writer is None:
                self.target.parent.mkdir(parents=True, exist_ok=True)
                self.writer = pq.ParquetWriter(str(self.partial), self.schema or table.schema)
            self.writer.write_table(table.cast(self.writer.schema))
        self.rows += len(table)

    def commit(self, empty: "pd.DataFrame | pa.Table") -> None:
        if self.writer is None:
            self.write(empty)
        with self._said_in_one_line():
            self.writer.close()
            os.replace(self.partial, self.target)

    @contextlib.contextmanager
    def _said_in_one_line(self) -> Iterator[None]:
        """A disk that fills up (or any other refusal to write) while the file is written:
        the reason and the file, not a traceback."""
        try:
            yield
        except OSError as err:
            raise PipelineError(f"cannot write {self.target}: {err.strerror or read_error_reason(err)}") from None

    def abandon(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.partial.unlink(missing_ok=True)


def empty_rejects(python_model, id_columns: list[str], dataset_schema) -> pd.DataFrame:
    """A zero-row rejects frame with the right columns, for inputs that reject none."""
    ids = dataset_schema.empty_table().select(id_columns).to_pandas() if id_columns else pd.DataFrame()
    features = pd.DataFrame({c: pd.Series(dtype="float64") for c in python_model.codebook.features})
    rejects = pd.concat([ids, features], axis=1)
    rejects[REJECT_REASON] = pd.Series(dtype="string")
    return rejects


def output_path(score: DictConfig) -> Path:
    return Path(score.output).expanduser()


def rejects_path(score: DictConfig) -> Path:
    if score.rejects:
        return Path(score.rejects).expanduser()
    output = output_path(score)
    return output.with_name(f"{output.stem}.rejects.parquet")


def file_problems(score: DictConfig, source: Input) -> list[str]:
    """Why the output or rejects cannot be written without harm (tools/file_checks.py): on
    the input or in its folder, on each other, a folder for the pandas engine's file, or
    somewhere that cannot be written. Spark writes folders, replacing an older one."""
    outputs = {"score.output": output_path(score), "score.rejects": rejects_path(score)}
    folder_ok = score.engine == "spark"
    problems = [problem for key, path in outputs.items() if (problem := target_problem(key, path, folder_ok))]
    problems += overlap_problems({"score.input": resolved_path(source.path)},
                                 {key: resolved_path(path) for key, path in outputs.items()})
    if not score.rejects:  # the default rejects file is beside the output: its problems repeat the output's
        problems = [problem for problem in problems if not problem.startswith("score.rejects=")] or problems
    return problems


# --------------------------------------------------------------------------- engines


@dataclass
class Counts:
    scored: int
    rejected: int


def score_pandas(python_model, answer: list, source: Input, dataset, score: DictConfig) -> Counts:
    """Score `dataset` (input_dataset of `source`) batch by batch into the output and rejects files."""
    ids = list(score.id_columns)
    input_schema = dataset.schema
    if score.explain:
        answer = [*answer, *explanation_fields(list(python_model.codebook.features))]
    schema = answer_schema([input_schema.field(c) for c in ids], answer)
    output, rejects = AtomicParquet(output_path(score), schema), AtomicParquet(rejects_path(score))
    try:
        for batch in read_batches(dataset, source, python_model.codebook, ids, score.batch_rows):
            scored, rejected = score_batch(python_model, batch, ids, score.explain)
            if scored is not None:
                output.write(scored)
                faults.point("score.batch_written")
            if rejected is not None:
                rejects.write(rejected)
        output.commit(schema.empty_table())
        rejects.commit(empty_rejects(python_model, ids, input_schema))
    except BaseException:
        output.abandon()
        rejects.abandon()
        raise
    return Counts(output.rows, rejects.rows)


def score_spark(python_model, answer: list, model_uri: str, source: Input, score: DictConfig) -> Counts:
    """The same split of rejects in a pandas function on each Spark partition, then
    mlflow.pyfunc.spark_udf on the rest. Output and rejects are folders of part files."""
    try:
        from pyspark.sql import SparkSession
        from pyspark.sql import functions as F
    except ImportError:
        raise PipelineError("score.engine=spark needs pyspark: pip install -r requirements-test.txt "
                            "(pyspark==4.3.0, and Java 17), or use score.engine=pandas") from None
    import mlflow

    # Spark's Python workers must run this environment's Python, which has the model's packages.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.master(score.spark.master).appName("heart-disease score")
    for key, value in (score.spark.conf or {}).items():
        builder = builder.config(str(key), str(value))
    spark = builder.getOrCreate()
    book, ids = python_model.codebook, list(score.id_columns)
    if source.format == "csv":
        frame = spark.read.csv(str(source.path), header=True, inferSchema=False, nullValue="")
    else:
        frame = spark.read.parquet(str(source.path))
    absent = [c for c in [*book.features, *ids] if c not in frame.columns]
    if absent:
        raise PipelineError(f"score.input={source.source}: no column {absent} (found {frame.columns})")
    frame = frame.select(*dict.fromkeys([*ids, *book.features]))
    id_fields = [frame.schema[c] for c in ids]
    from pyspark.sql.types import DoubleType, StringType, StructField, StructType

    tagged_schema = StructType([*id_fields, *[StructField(c, DoubleType()) for c in book.features],
                                StructField(REJECT_REASON, StringType())])
    may_be_missing = set(python_model.imputable)

    def tag(batches):
        for batch in batches:
            features, reasons = split_rejects(batch, book, may_be_missing)
            out = pd.concat([batch[ids].reset_index(drop=True), features.reset_index(drop=True)], axis=1)
            out[REJECT_REASON] = pd.Series(reasons, dtype="object")
            yield out

    tagged = frame.mapInPandas(tag, tagged_schema).cache()
    import pyarrow as pa

    spark_types = {pa.int64(): "long", pa.float64(): "double", pa.string(): "string"}
    result_type = ", ".join(f"{field.name} {spark_types[field.type]}" for field in answer)
    predict = mlflow.pyfunc.spark_udf(spark, model_uri, result_type=result_type, env_manager="local")
    good = tagged.filter(F.col(REJECT_REASON).isNull())
    # One struct argument: its field names become the model input's column names (with
    # separate columns and an `any`-typed signature, spark_udf would name them 0..12).
    answered = good.select(*ids, predict(F.struct(*[F.col(c) for c in book.features])).alias("answer"))
    scored = answered.select(*ids, *[F.col(f"answer.{c}").alias(c) for c in [field.name for field in answer]])
    rejected = tagged.filter(F.col(REJECT_REASON).isNotNull())
    counts = []
    for table, target in ((scored, output_path(score)), (rejected, rejects_path(score))):
        partial = partial_path(target)
        try:
            table.write.mode("overwrite").parquet(str(partial))
            _replace(partial, target)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        counts.append(_parquet_rows(target))
    tagged.unpersist()
    return Counts(*counts)


def _replace(partial: Path, target: Path) -> None:
    """Put a finished folder where an older output (file or folder) may be."""
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    os.replace(partial, target)


def _parquet_rows(path: Path) -> int:
    import pyarrow.dataset as ds

    return ds.dataset(str(path), format="parquet").count_rows()


# --------------------------------------------------------------------------- the command


def resolve_model_uri(client, uri: str) -> str:
    """models:/<name>@<alias> as the version it points at now, so every part of the job
    (and the record of it) uses one version even if the alias moves meanwhile."""
    if uri.startswith("models:/") and "@" in uri:
        name, alias = uri[len("models:/"):].split("@", 1)
        from mlflow.exceptions import MlflowException

        try:
            version = client.get_model_version_by_alias(name, alias)
        except MlflowException as err:
            raise PipelineError(f"score.model_uri={uri}: no version of {name} has alias {alias} "
                                f"({err.message.splitlines()[0]}); train and register a model first, or point "
                                "score.model_uri at models:/<name>/<version> or at a train run's pipeline.model_uri "
                                "(models:/m-...)") from None
        return f"models:/{name}/{version.version}"
    return uri


def run_score(cfg: DictConfig, tracking, own_run_id: Optional[str]) -> dict:

    from engine import seal
    from engine.logged_model import load_copy, verified_copy
    from engine.runner import TrackedRun

    score = cfg.score
    if score.engine not in ("pandas", "spark"):
        raise PipelineError(f"score.engine={score.engine!r}: use pandas or spark")
    if score.batch_rows < 1:
        raise PipelineError(f"score.batch_rows={score.batch_rows}: a whole number >= 1")
    if score.explain and score.engine != "pandas":
        raise PipelineError("score.explain=true works with score.engine=pandas only (spark_udf returns the "
                            "answer's columns); score without explanations or use the pandas engine")
    client = tracking.client
    model_uri = resolve_model_uri(client, str(score.model_uri))
    with tempfile.TemporaryDirectory(prefix="heart-score-") as workdir:
        # Everything that can be found wrong without writing is, before the run exists.
        source = resolve_input(score, Path(workdir))
        problems = file_problems(score, source)
        if problems:
            raise ConfigError(problems)
        # The checked copy is what both engines load (Spark's executors too), not the store's files.
        model_copy = verified_copy(model_uri, seal.public_key_path(cfg.profile, tracking.tracking_uri))
        loaded = load_copy(model_copy)
        python_model = loaded.unwrap_python_model()
        why_not = cannot_explain(python_model) if score.explain else None
        if why_not:
            raise PipelineError(f"score.explain=true: {model_uri} cannot explain its answers exactly: {why_not}. "
                                "Score without score.explain, or with a model that can.")
        dataset = input_dataset(source, python_model.codebook, list(score.id_columns))
        with TrackedRun(tracking, "score", "score", own_run_id=own_run_id) as run:
            run_id = run.run_id
            client.log_batch(run_id, params=[_param(k, v) for k, v in {
                "score.input": score.input, "score.output": score.output, "score.rejects": str(rejects_path(score)),
                "score.model_uri": score.model_uri, "score.model_version_uri": model_uri,
                "score.engine": score.engine, "score.batch_rows": score.batch_rows,
                "score.id_columns": ",".join(score.id_columns), "score.explain": score.explain,
                **({"score.spark.master": score.spark.master} if score.engine == "spark" else {})}.items()])
            for target in (output_path(score), rejects_path(score)):
                remove_abandoned_partials(target)
            started = time.perf_counter()
            if score.engine == "pandas":
                counts = score_pandas(python_model, answer_fields(loaded), source, dataset, score)
            else:
                counts = score_spark(python_model, answer_fields(loaded), str(model_copy), source, score)
            seconds = time.perf_counter() - started
            _log_datasets(client, run_id, source, score)  # while a downloaded input is still here
            rows = counts.scored + counts.rejected
            metrics = {"rows_in": rows, "rows_scored": counts.scored, "rows_rejected": counts.rejected,
                       "score_seconds": seconds, "rows_per_second": rows / seconds if seconds > 0 else 0.0}
            from mlflow.entities import Metric, RunTag

            now = int(time.time() * 1000)
            client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                             tags=[RunTag(f"score.{k}", str(v)) for k, v in python_model.identity.items()]
                             + [RunTag("score.scoring_path", python_model.scoring_path)])
    return {"run_id": run_id, "model_uri": model_uri, **metrics}


def _param(key: str, value) -> "object":
    from mlflow.entities import Param

    return Param(key, redact(str(value))[:6000])


def _log_datasets(client, run_id: str, source: Input, score: DictConfig) -> None:
    """The input ("scoring" context) and both outputs ("predictions", "rejects") as MLflow
    datasets: source, schema and a digest (of file metadata, not a read of every row)."""
    import warnings

    import pyarrow.dataset as ds
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.types.utils import _infer_schema

    def record(path: Path, fmt: str, origin: str, name: str, context: str) -> DatasetInput:
        schema_frame = ds.dataset(str(path), format=fmt if fmt == "parquet" else "csv").schema.empty_table().to_pandas()
        scheme = urllib.parse.urlparse(origin).scheme
        if not scheme:
            origin = str(Path(origin).expanduser().resolve())
        elif scheme == "runs":  # where the artifact is stored: a location MLflow's sources know
            from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

            origin = RunsArtifactRepository.get_underlying_uri(origin)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = MetaDataset(source=resolve_dataset_source(redact(origin)), name=name,
                                  schema=_infer_schema(schema_frame))
        return DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", context)])

    inputs = [record(source.path, source.format, source.source, "scoring_input", "scoring"),
              record(output_path(score), "parquet", str(score.output), "predictions", "predictions"),
              record(rejects_path(score), "parquet", str(rejects_path(score)), "rejects", "rejects")]
    client.log_inputs(run_id, inputs)


def main(cfg: DictConfig) -> None:
    from engine.cli import adopt_launcher_run, run_command

    def go(tracking) -> None:
        result = run_score(cfg, tracking, adopt_launcher_run(tracking))
        print(f"score: run {result['run_id']}: {result['rows_scored']} rows scored, {result['rows_rejected']} "
              f"rejected, {result['rows_per_second']:.0f} rows/s with {result['model_uri']}\n"
              f"score: output {cfg.score.output}; rejects {rejects_path(cfg.score)}")

    run_command(cfg, go, steps=())


if __name__ == "__main__":
    from engine.cli import launch
    from tools.score_config import register_score_config

    register_score_config()
    launch(main, config_name="score")
