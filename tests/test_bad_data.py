"""Bad data fails the pipeline with a message naming column, rule, rows and examples,
and changes nothing downstream: no new split/.../register run, no model version,
no alias moves. Each case runs `python -m steps.main` against a store that already
holds a champion, in the test's own process (Store.in_process): what is checked is what
the command says and leaves, and the exit code it sets."""

import shutil

import pytest

from tests.conftest import CLEVELAND

pytestmark = pytest.mark.e2e

DOWNSTREAM = ["split", "transform", "train", "evaluate", "register"]


@pytest.fixture(scope="module")
def store(trained):
    store = trained
    assert store.registry_state()["heart-disease"]["aliases"] == {"champion": "1", "challenger": "1"}
    return store


def _lines(transform):
    lines = CLEVELAND.read_text().splitlines()
    return "\n".join(transform(lines)) + "\n"


def _set_field(line, index, value):
    cells = line.split(",")
    cells[index] = value
    return ",".join(cells)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


CASES = {
    "missing column": (
        lambda tmp: ["data=file", "data.path=" + write(
            tmp, "no_chol.csv",
            "age,sex,cp,trestbps,fbs,restecg,thalach,exang,oldpeak,slope,ca,thal,num\n"
            + "\n".join(",".join(line.split(",")[:4] + line.split(",")[5:])
                        for line in CLEVELAND.read_text().splitlines()))],
        ["column 'chol'", "required by the UCI codebook"],
    ),
    "text in a numeric column": (
        lambda tmp: ["data=file", "data.path=" + write(
            tmp, "text.data",
            _lines(lambda ls: [_set_field(line, 3, "high") if i < 3 else line for i, line in enumerate(ls)]))],
        ["column 'trestbps'", "rule 'numeric'", "3 row(s)", "'high'"],
    ),
    "unknown code": (
        lambda tmp: ["data=file", "data.path=" + write(
            tmp, "cp0.data",
            _lines(lambda ls: [_set_field(line, 2, "0.0") if i % 10 == 0 else line for i, line in enumerate(ls)]))],
        ["column 'cp'", "code in [1, 2, 3, 4]", "31 row(s)", "e.g. [0]"],
    ),
    "empty file": (
        lambda tmp: ["data=file", "data.path=" + write(tmp, "empty.data", "")],
        ["rule 'at least one row'", "0 rows"],
    ),
    "single class": (
        lambda tmp: ["data=file", "data.path=" + write(
            tmp, "healthy.data", _lines(lambda ls: [line for line in ls if line.endswith(",0")]))],
        ["column 'target'", "both classes", "all 164 rows"],
    ),
    "impossible value under the fail policy": (
        lambda tmp: ["data=file", "data.impossible_values=fail", "data.path=" + write(
            tmp, "chol0.data",
            _lines(lambda ls: [_set_field(line, 4, "0") if i < 2 else line for i, line in enumerate(ls)]))],
        ["column 'chol'", "50 <= value <= 1000", "2 row(s) hold impossible values", "e.g. [0]"],
    ),
    "checksum mismatch": (
        lambda tmp: ["data.url=" + write(tmp, "processed.cleveland.data", CLEVELAND.read_text() + "\n\n")],
        ["checksum mismatch", "expected a74b7efa"],
    ),
    "unreachable URL": (
        lambda tmp: ["data=file", "data.path=http://127.0.0.1:9/processed.cleveland.data"],
        ["could not download http://127.0.0.1:9/processed.cleveland.data", "no cached copy"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_fails_clearly_and_changes_nothing(store, tmp_path, case):
    make_overrides, fragments = CASES[case]
    registry_before = store.registry_state()
    downstream_before = {step: len(store.runs(step)) for step in DOWNSTREAM}

    result = store.in_process("steps.main", *make_overrides(tmp_path), check=False)

    assert result.returncode == 1, result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in stderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    assert store.registry_state() == registry_before
    assert {step: len(store.runs(step)) for step in DOWNSTREAM} == downstream_before
    failed = store.client.search_runs([store.experiment_id], "tags.`pipeline.step` = 'ingest' and "
                                      "attributes.status = 'FAILED'", order_by=["attributes.start_time DESC"])
    if case != "unreachable URL" and case != "checksum mismatch":
        assert failed and fragments[0] in failed[0].data.tags["pipeline.error"]


def test_ingest_downloads_from_http_and_rereads_from_cache(store, tmp_path, http_server):
    folder = tmp_path / "www"
    folder.mkdir()
    shutil.copy(CLEVELAND, folder / "processed.cleveland.data")
    url = http_server(folder) + "/processed.cleveland.data"
    cache = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    first = store.in_process("steps.ingest", f"data.url={url}", "force=[ingest]", extra_env=cache)
    assert "ingest: ran run" in first.stdout
    (folder / "processed.cleveland.data").unlink()
    second = store.in_process("steps.ingest", f"data.url={url}", "force=[ingest]", extra_env=cache)
    assert "ingest: ran run" in second.stdout  # the server has nothing now: served from the cache
