"""`score`: batch scoring with the registered champion, on pandas and Spark, with rejects.

One real store per module (main trains and registers the champion once); scoring runs
in-process where the command line is not what is tested, and once through
`python -m tools.score` on a CSV served over http on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir

from domain.synthetic import generate
from engine import names, seal
from engine.config_checks import ConfigError
from engine.errors import PipelineError
from engine.store import connect
from tests.conftest import REPO
from tools.score import REJECT_REASON, Input, feature_numbers, input_dataset, read_batches, run_score
from tools.score_config import register_score_config

ROWS = 3000
ANSWER = ["prediction", "probability", "confidence", "risk_level", "model_name", "model_version", "run_id", "model_id"]
# (row, column, value, what the reason must say)
BROKEN = [(3, "cp", 0, "unknown code 0"), (4, "chol", 5000, "impossible value 5000"),
          (5, "age", np.nan, "'value required'"), (6, "thal", 2, "unknown code 2")]


@pytest.fixture(scope="module")
def store(trained):
    store = trained
    with pytest.MonkeyPatch.context() as patch:
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
            patch.setenv(key, store.env[key])
        yield store


@pytest.fixture(scope="module")
def patients(store) -> pd.DataFrame:
    frame = generate(ROWS, seed=8).drop(columns=["num"])
    frame.insert(0, "patient_id", [f"P{i:05d}" for i in range(ROWS)])
    for row, column, value, _ in BROKEN:
        frame.loc[row, column] = value
    frame.loc[7:9, ["ca", "thal"]] = np.nan  # may be missing: scored, not rejected
    path = store.root / "patients.parquet"
    frame.to_parquet(path, index=False)
    return frame


def config(*overrides: str):
    register_score_config()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="score", overrides=list(overrides))


def score(store, *overrides: str) -> dict:
    cfg = config(*overrides)
    return run_score(cfg, connect(cfg.profile), None)


def test_pandas_engine_scores_in_chunks_and_rejects_rows_with_reasons(store, patients):
    output = store.root / "pandas" / "scored.parquet"
    result = score(store, f"score.input={store.root / 'patients.parquet'}", f"score.output={output}",
                   "score.id_columns=[patient_id]", "score.batch_rows=500")
    scored, rejects = pd.read_parquet(output), pd.read_parquet(output.with_name("scored.rejects.parquet"))
    assert list(scored.columns) == ["patient_id", *ANSWER]
    assert (result["rows_scored"], result["rows_rejected"]) == (ROWS - len(BROKEN), len(BROKEN))
    assert pq.ParquetFile(output).num_row_groups == -(-ROWS // 500)  # written batch by batch

    # Each rejected row, with the reason naming its column and value; nothing else rejected.
    by_id = rejects.set_index("patient_id")[REJECT_REASON]
    assert sorted(by_id.index) == sorted(f"P{row:05d}" for row, *_ in BROKEN)
    for row, column, _, said in BROKEN:
        assert f"column '{column}'" in by_id[f"P{row:05d}"] and said in by_id[f"P{row:05d}"]

    # The answers are the champion's: the same as its sklearn pipeline on the same rows.
    model = mlflow.pyfunc.load_model(result["model_uri"]).unwrap_python_model()
    assert model.scoring_path.startswith("fast path")
    good = patients[~patients.patient_id.isin(by_id.index)]
    assert list(scored.patient_id) == list(good.patient_id)
    np.testing.assert_allclose(scored.probability,
                               model.pipeline.predict_proba(good[list(model.pipeline.feature_names_in_)])[:, 1],
                               rtol=0, atol=1e-9)
    assert set(scored.model_version) == {result["model_uri"].rsplit("/", 1)[-1]}

    run = store.client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["rows_rejected"] == len(BROKEN) and run.data.metrics["rows_per_second"] > 0
    contexts = {d.dataset.name: d.tags[0].value for d in run.inputs.dataset_inputs}
    assert contexts == {"scoring_input": "scoring", "predictions": "predictions", "rejects": "rejects"}


def test_explain_adds_the_base_and_each_fields_contribution_summing_to_the_log_odds(store, patients, tmp_path):
    output = tmp_path / "explained.parquet"
    result = score(store, f"score.input={store.root / 'patients.parquet'}", f"score.output={output}",
                   "score.id_columns=[patient_id]", "score.batch_rows=700", "score.explain=true")
    scored = pd.read_parquet(output)
    model = mlflow.pyfunc.load_model(result["model_uri"]).unwrap_python_model()
    contributions = [f"contribution_{name}" for name in model.codebook.features]
    assert list(scored.columns) == ["patient_id", *ANSWER, "base_log_odds", *contributions]
    assert len(contributions) == 13 and result["rows_rejected"] == len(BROKEN)
    log_odds = scored.base_log_odds + scored[contributions].sum(axis=1)
    np.testing.assert_allclose(log_odds, np.log(scored.probability / (1 - scored.probability)), rtol=0, atol=1e-9)
    # The same answers as without the flag, and the same explanation the model gives one patient.
    plain = tmp_path / "plain.parquet"
    score(store, f"score.input={store.root / 'patients.parquet'}", f"score.output={plain}",
          "score.id_columns=[patient_id]")
    pd.testing.assert_frame_equal(scored[["patient_id", *ANSWER]], pd.read_parquet(plain))
    row = patients.set_index("patient_id").loc[["P00007"], model.codebook.features]  # ca and thal missing
    (explanation,) = model.explain(row.to_numpy(dtype=np.float64))
    written = scored.set_index("patient_id").loc["P00007"]
    assert written.base_log_odds == explanation["base_log_odds"]
    for entry in explanation["contributions"]:
        assert written[f"contribution_{entry['feature']}"] == pytest.approx(entry["contribution"], abs=1e-12)
    assert store.client.get_run(result["run_id"]).data.params["score.explain"] == "True"


def sealed_version(store, model_uri: str) -> str:
    """`model_uri` registered as a version of its own (no alias) and sealed with the store's
    key, as register would: score loads sealed models only."""
    version = str(store.client.create_model_version("heart-disease", model_uri).version)
    with tempfile.TemporaryDirectory() as workdir:
        seal.seal_version(store.client, "heart-disease", version, seal.private_key_path(None, store.tracking_uri),
                          Path(workdir))
    return version


def test_explain_is_refused_where_it_cannot_be_exact(store, patients, tmp_path):
    """A forest has no exact additive form: score refuses to explain rather than write
    approximations, before writing anything; so does the Spark engine, which cannot."""
    store.in_process("steps.train", "model=random_forest", "model.n_estimators=20")
    version = sealed_version(store, store.runs("train")[0].data.tags[names.MODEL_URI])
    forest = f"models:/heart-disease/{version}"
    common = [f"score.input={store.root / 'patients.parquet'}", "score.explain=true"]
    try:
        with pytest.raises(PipelineError, match="cannot explain its answers exactly: a forest averages its trees"):
            score(store, *common, f"score.output={tmp_path / 'forest.parquet'}", f"score.model_uri={forest}")
        with pytest.raises(PipelineError, match="score.engine=pandas only"):
            score(store, *common, f"score.output={tmp_path / 'spark.parquet'}", "score.engine=spark")
        assert not list(tmp_path.iterdir())
        # Without the flag the forest scores as any model does.
        result = score(store, common[0], f"score.output={tmp_path / 'forest.parquet'}", f"score.model_uri={forest}")
        assert result["rows_scored"] == ROWS - len(BROKEN)
    finally:
        store.client.delete_model_version("heart-disease", version)


def test_command_line_scores_a_csv_url(store, patients, http_server, tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    patients.astype(object).where(patients.notna(), "").to_csv(folder / "patients.csv", index=False)
    url = f"{http_server(folder)}/patients.csv"
    output = tmp_path / "out" / "scored.parquet"
    done = store.in_process("tools.score", f"score.input={url}", f"score.output={output}",
                            "score.id_columns=[patient_id]")
    assert f"{ROWS - len(BROKEN)} rows scored, {len(BROKEN)} rejected" in done.stdout
    assert len(pd.read_parquet(output)) == ROWS - len(BROKEN)
    assert not [p for p in output.parent.iterdir() if "partial" in p.name]


def test_a_killed_score_leaves_no_output_and_the_next_score_removes_its_partial_file(store, patients, tmp_path):
    output = tmp_path / "out" / "scored.parquet"
    overrides = (f"score.input={store.root / 'patients.parquet'}", f"score.output={output}", "score.batch_rows=500")
    killed = store.tool("score", *overrides, check=False, extra_env={names.FAULT_ENV: "score.batch_written"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    left = [p.name for p in output.parent.iterdir()]
    assert len(left) == 1 and left[0].startswith(".scored.parquet.partial-"), left  # nothing that looks finished

    done = store.in_process("tools.score", *overrides)  # the kill was the process's
    assert f"removed {left[0]}, left unfinished by process" in done.stderr
    assert sorted(p.name for p in output.parent.iterdir()) == ["scored.parquet", "scored.rejects.parquet"]
    assert len(pd.read_parquet(output)) == ROWS - len(BROKEN)
    runs = store.client.search_runs([store.experiment_id], f"tags.`{names.ROLE}` = 'score'",
                                    order_by=["attributes.start_time DESC"], max_results=2)
    assert [r.info.status for r in runs] == ["FINISHED", "KILLED"]  # the killed one's run, marked by the next


def test_run_artifact_input_and_bad_input_leave_no_output(store, patients, tmp_path):
    client = store.client
    run = client.create_run(store.experiment_id)
    client.log_artifact(run.info.run_id, str(store.root / "patients.parquet"), "batch")
    output = tmp_path / "scored.parquet"
    result = score(store, f"score.input=runs:/{run.info.run_id}/batch/patients.parquet", f"score.output={output}")
    assert result["rows_scored"] == ROWS - len(BROKEN) and list(pd.read_parquet(output).columns) == ANSWER

    patients.drop(columns=["thal"]).to_parquet(tmp_path / "no_thal.parquet")
    with pytest.raises(PipelineError, match=r"no column \['thal'\]"):
        score(store, f"score.input={tmp_path / 'no_thal.parquet'}", f"score.output={tmp_path / 'never.parquet'}")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".never", "never"))]


def test_csv_text_is_cast_by_arrow_and_a_word_rejects_only_its_row(store, patients, tmp_path):
    """A clean CSV is cast to numbers by Arrow; a batch with a word in it takes the text
    path, which rejects that row by name and scores every other row the same."""
    as_text = patients.astype(object).where(patients.notna(), "")
    as_text.to_csv(tmp_path / "clean.csv", index=False)
    as_text.loc[10, "chol"] = "high"
    as_text.to_csv(tmp_path / "word.csv", index=False)
    out = {}
    for name in ("clean", "word"):
        result = score(store, f"score.input={tmp_path / name}.csv", f"score.output={tmp_path / name}.parquet",
                       "score.id_columns=[patient_id]")
        out[name] = pd.read_parquet(tmp_path / f"{name}.parquet").set_index("patient_id")
        assert result["rows_rejected"] == len(BROKEN) + (name == "word")
    reasons = {name: pd.read_parquet(tmp_path / f"{name}.rejects.parquet").set_index("patient_id")[REJECT_REASON]
               for name in ("clean", "word")}
    said = reasons["word"]["P00010"]
    assert said.startswith("column 'chol': rule '") and said.endswith(": not a number 'high'")
    pd.testing.assert_frame_equal(out["word"], out["clean"].drop(index="P00010"))
    # Both paths give the same reasons: the number read for a bad code or value.
    pd.testing.assert_series_equal(reasons["word"].drop(index="P00010"), reasons["clean"])
    assert reasons["clean"]["P00003"].endswith("unknown code 0")
    # ... and the clean file did take Arrow's cast, the other the text path.
    book = mlflow.pyfunc.load_model(result["model_uri"]).unwrap_python_model().codebook
    for name, cast in (("clean", True), ("word", False)):
        source = Input(tmp_path / f"{name}.csv", "csv", name)
        batch = next(read_batches(input_dataset(source, book, ["patient_id"]), source, book, ["patient_id"], ROWS))
        assert (feature_numbers(batch, book.features) is not None) == cast


def test_arrow_cast_leaves_words_to_the_text_path():
    """Cells Arrow would read as NaN or cannot read are left to the text path, which names
    them; numbers, nulls and floats' own NaN are cast."""
    import pyarrow as pa

    def cast(column) -> bool:
        return feature_numbers(pa.record_batch({"age": column}), ["age"]) is not None

    assert cast(pa.array(["54", None, "1e2", "inf"])) and cast(pa.array([54.0, float("nan"), None]))
    assert cast(pa.array([54, None])) and cast(pa.array([True, None]))
    for words in (pa.array(["54", "nan"]), pa.array(["54", "nan"]).dictionary_encode(),
                  pa.array(["54", "old"], pa.large_string()), pa.array([" 54"]), pa.array([""])):
        assert not cast(words), words


@pytest.mark.e2e
def test_spark_engine_gives_the_same_answer_for_every_row(store, patients, tmp_path):
    pytest.importorskip("pyspark", reason="pyspark is installed by requirements-test.txt")
    common = [f"score.input={store.root / 'patients.parquet'}", "score.id_columns=[patient_id]"]
    pandas_out, spark_out = tmp_path / "pandas.parquet", tmp_path / "spark.parquet"
    score(store, *common, f"score.output={pandas_out}")
    result = score(store, *common, f"score.output={spark_out}", "score.engine=spark", "score.spark.master='local[2]'")
    assert os.environ.get("PYSPARK_PYTHON")
    assert (result["rows_scored"], result["rows_rejected"]) == (ROWS - len(BROKEN), len(BROKEN))
    for pandas_file, spark_file in ((pandas_out, spark_out),
                                    (tmp_path / "pandas.rejects.parquet", tmp_path / "spark.rejects.parquet")):
        by_pandas = pd.read_parquet(pandas_file).sort_values("patient_id").reset_index(drop=True)
        by_spark = pd.read_parquet(spark_file).sort_values("patient_id").reset_index(drop=True)
        pd.testing.assert_frame_equal(by_pandas, by_spark[list(by_pandas.columns)], check_dtype=False)


# --------------------------------------------------------------------------- files refused before anything is written


@pytest.fixture
def files(patients, tmp_path) -> Path:
    """A folder of inputs good and bad, and things an output may not be written over."""
    few = patients.head(50)
    few.to_parquet(tmp_path / "in.parquet", index=False)
    (tmp_path / "batch").mkdir()
    few.to_parquet(tmp_path / "batch" / "part-0.parquet", index=False)
    (tmp_path / "empty.csv").write_bytes(b"")
    few.head(0).to_csv(tmp_path / "header_only.csv", index=False)
    (tmp_path / "zero.parquet").write_bytes(b"")
    (tmp_path / "garbage.parquet").write_bytes(b"these patients were lost in a copy\n" * 20)
    few.drop(columns=["thal"]).to_parquet(tmp_path / "no_thal.parquet", index=False)
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "a_folder").mkdir()
    return tmp_path


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def score_runs(store) -> int:
    return len(store.client.search_runs([store.experiment_id], f"tags.`{names.ROLE}` = 'score'", max_results=1000))


# score.input, score.output, score.rejects (None: the default, beside the output), the one line's start and
# what it says. Paths are relative to the `files` folder.
REFUSED = {
    "output is the input": ("in.parquet", "in.parquet", None, "score.output={}/in.parquet: ", "that is score.input"),
    "rejects is the input": ("in.parquet", "out.parquet", "in.parquet", "score.rejects={}/in.parquet: ",
                             "that is score.input"),
    "output is the rejects": ("in.parquet", "out.parquet", "out.parquet", "score.rejects={}/out.parquet: ",
                              "the same file as score.output"),
    "output inside the input folder": ("batch", "batch/scored.parquet", None, "score.output={}/batch/scored.parquet: ",
                                       "inside score.input="),
    "empty csv": ("empty.csv", "out.parquet", None, "score.input={}/empty.csv: ", "Empty CSV file"),
    "csv without rows": ("header_only.csv", "out.parquet", None, "score.input={}/header_only.csv: ", "holds no rows"),
    "0-byte parquet": ("zero.parquet", "out.parquet", None, "score.input={}/zero.parquet: ", "size is 0 bytes"),
    "garbage parquet": ("garbage.parquet", "out.parquet", None, "score.input={}/garbage.parquet: ",
                        "magic bytes not found"),
    "no such input": ("nowhere.parquet", "out.parquet", None, "score.input={}/nowhere.parquet: ", "no such file"),
    "a column missing": ("no_thal.parquet", "out.parquet", None, "score.input={}/no_thal.parquet: ",
                         "no column ['thal']"),
    "output under a file": ("in.parquet", "a_file/out.parquet", None, "score.output={}/a_file/out.parquet: ",
                            "a_file is a file, not a folder"),
    "output is a folder": ("in.parquet", "a_folder", None, "score.output={}/a_folder: ", "is a folder; name a file"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_what_cannot_be_read_or_would_overwrite_an_input_is_refused_before_any_write(store, files, case):
    """One problem line naming the key, the path and what is wrong; every file as it was,
    none added, no run."""
    source, output, rejects, start, said = REFUSED[case]
    before, runs = contents(files), score_runs(store)
    overrides = [f"score.input={files / source}", f"score.output={files / output}"]
    with pytest.raises(ConfigError) as refused:
        score(store, *overrides, *([f"score.rejects={files / rejects}"] if rejects else []))
    (problem,) = refused.value.problems
    assert problem.startswith(start.format(files)) and said in problem and "\n" not in problem, problem
    assert contents(files) == before and not [p for p in files.rglob(".*")]
    assert score_runs(store) == runs


def test_the_command_line_says_it_in_one_line_and_exits_2(store, files):
    before, runs = contents(files), score_runs(store)
    refused = store.tool("score", f"score.input={files / 'in.parquet'}", f"score.output={files / 'in.parquet'}",
                         check=False)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.splitlines() == [f"config error: score.output={files / 'in.parquet'}: that is score.input; "
                                           "writing it would destroy the input"]
    assert contents(files) == before and score_runs(store) == runs


@contextlib.contextmanager
def tmpfs(folder: Path, options: str):
    """A tmpfs mounted on `folder` for the test (root with CAP_SYS_ADMIN, as in CI's
    container); the test is skipped, saying why, where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): needs root with CAP_SYS_ADMIN")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_output_folder_is_refused_before_any_write(store, files):
    """A read-only mount stops root too (file permissions would not)."""
    with tmpfs(files / "read_only", "ro,size=64k") as folder:
        with pytest.raises(ConfigError) as refused:
            score(store, f"score.input={files / 'in.parquet'}", f"score.output={folder / 'out' / 'scored.parquet'}")
    assert refused.value.problems == [f"score.output={folder / 'out' / 'scored.parquet'}: the folder {folder} "
                                      "cannot be written (read-only)"]


def test_a_disk_that_fills_up_while_writing_is_one_line_and_leaves_no_file(store, patients, tmp_path):
    """Found only while writing, after the run began: the run FAILED, the message names
    the file and the reason, and no partial file stays behind."""
    runs = score_runs(store)
    with tmpfs(tmp_path / "full", "size=8k") as folder:
        output = folder / "scored.parquet"
        # The answers or the rejects, whichever fills the disk first.
        with pytest.raises(PipelineError, match=rf"^cannot write {folder}/scored(\.rejects)?\.parquet: "
                                                r".*No space left on device$"):
            score(store, f"score.input={store.root / 'patients.parquet'}", f"score.output={output}")
        assert list(folder.iterdir()) == []
    (failed, *_) = store.client.search_runs([store.experiment_id], f"tags.`{names.ROLE}` = 'score'",
                                            order_by=["attributes.start_time DESC"], max_results=1)
    assert score_runs(store) == runs + 1 and failed.info.status == "FAILED"
