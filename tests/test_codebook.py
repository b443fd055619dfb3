"""Validation against the UCI codebook: every rule fails with a message that names
the column, the rule, how many rows and example values."""

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from domain.sources import read_uci
from engine.config import register_configs
from heart_disease_model.codebook import (
    Codebook,
    DataValidationError,
    check_feature_matrix,
    check_features,
    check_numbers,
    validate,
)
from tests.conftest import CLEVELAND, REPO


@pytest.fixture(scope="module")
def schema():
    """The codebook as the pipeline builds it from conf/schema."""
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return Codebook.from_config(compose("config").schema)


@pytest.fixture
def cleveland(schema):
    return read_uci(CLEVELAND, schema.file_columns)


def test_real_cleveland_file_is_valid(cleveland, schema):
    clean, report = validate(cleveland, schema)
    assert report["rows"] == 303
    assert report["class_counts"] == {"0": 164, "1": 139}
    assert report["missing"] == {"ca": 4, "thal": 2}
    assert report["duplicate_rows"] == 0
    assert list(clean.columns) == schema.features + ["target"]
    assert clean.dtypes.drop("target").eq(np.float64).all()


def _fails(frame, schema, *fragments, policy="missing"):
    with pytest.raises(DataValidationError) as caught:
        validate(frame, schema, policy)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_missing_column_is_named(cleveland, schema):
    _fails(cleveland.drop(columns=["chol"]), schema, "column 'chol'", "required by the UCI codebook")


def test_text_in_numeric_column_names_rows_and_examples(cleveland, schema):
    frame = cleveland.copy()
    frame.loc[[3, 7], "trestbps"] = ["high", "n/a"]
    _fails(frame, schema, "column 'trestbps'", "rule 'numeric'", "2 row(s)", "'high'", "'n/a'")


def test_unknown_code_explains_the_codebook(cleveland, schema):
    frame = cleveland.copy()
    frame.loc[[0, 1, 2], "cp"] = "0"  # the 0..3 coding of other copies of this data
    _fails(frame, schema, "column 'cp'", "code in [1, 2, 3, 4]", "3 row(s)", "e.g. [0]")


def test_empty_table(schema):
    _fails(pd.DataFrame(columns=schema.file_columns), schema, "empty", "0 rows")


def test_single_class(cleveland, schema):
    frame = cleveland[cleveland["num"] == "0"]
    _fails(frame, schema, "column 'target'", "both classes", f"all {len(frame)} rows")


def test_missing_label_fails(cleveland, schema):
    frame = cleveland.copy()
    frame.loc[5, "num"] = np.nan
    _fails(frame, schema, "column 'num'", "label present", "1 row(s)")


def test_impossible_values_become_missing_and_are_counted(cleveland, schema):
    frame = cleveland.copy()
    frame.loc[[0, 1], "chol"] = "0"
    clean, report = validate(frame, schema, "missing")
    assert report["impossible_as_missing"] == {"chol": 2}
    assert clean["chol"].isna().sum() == 2


def test_impossible_values_fail_under_fail_policy(cleveland, schema):
    frame = cleveland.copy()
    frame.loc[[0, 1], "chol"] = "0"
    _fails(frame, schema, "column 'chol'", "50 <= value <= 1000", "2 row(s) hold impossible values", "e.g. [0]",
           policy="fail")


def test_all_problems_are_reported_at_once(cleveland, schema):
    frame = cleveland.copy()
    frame.loc[0, "thal"] = "2"
    frame.loc[1, "age"] = "old"
    message = _fails(frame, schema, "column 'thal'", "column 'age'")
    assert message.count("\n  - ") == 2


def test_duplicates_are_reported(cleveland, schema):
    frame = pd.concat([cleveland, cleveland.head(4)], ignore_index=True)
    _, report = validate(frame, schema)
    assert report["duplicate_rows"] == 4


def test_canonical_table_with_binary_target(cleveland, schema):
    clean, _ = validate(cleveland, schema)  # has `target` (0/1) instead of `num`
    again, report = validate(clean, schema)
    assert report["rows"] == 303
    pd.testing.assert_frame_equal(again, clean)


# --------------------------------------------------------------------------- the request path
# The served model checks each request with check_feature_matrix: numeric frames take one
# vectorised pass, others the column-by-column one; both must say exactly what ingest says.

def _bad_rows(cleveland, schema) -> pd.DataFrame:
    clean, _ = validate(cleveland, schema)
    rows = clean[schema.features].head(6).copy()
    rows.loc[0, "cp"] = 0  # unknown code
    rows.loc[1, "chol"] = 20  # impossible
    rows.loc[2, "trestbps"] = np.nan  # required
    rows.loc[3, ["ca", "thal"]] = np.nan  # may be missing
    rows.loc[4, "thal"] = 2
    return rows


@pytest.mark.parametrize("policy", ["missing", "fail"])
def test_numeric_and_mixed_frames_get_the_same_problems_in_the_same_order(cleveland, schema, policy):
    rows = _bad_rows(cleveland, schema)
    kwargs = dict(impossible_values=policy, allow_missing={"ca", "thal"}, numbers_only=True)
    mixed = rows.astype({"age": object})  # one object column: the column-by-column path
    reordered = rows[sorted(rows.columns)]  # numeric, another column order: the one-pass path
    fast_clean, fast_problems, fast_counts = check_features(reordered, schema, **kwargs)
    slow_clean, slow_problems, slow_counts = check_features(mixed, schema, **kwargs)
    assert fast_problems == slow_problems and fast_counts == slow_counts
    pd.testing.assert_frame_equal(fast_clean, slow_clean)
    named = {"cp", "trestbps", "thal"} | ({"chol"} if policy == "fail" else set())
    assert [p.split("'")[1] for p in slow_problems] == [c for c in schema.features if c in named]
    assert fast_counts == {"chol": 1} and np.isnan(fast_clean.loc[1, "chol"])  # blanked under both policies
    assert rows.loc[1, "chol"] == 20  # the caller's frame is never changed


def test_check_numbers_is_check_features_on_a_matrix(cleveland, schema):
    rows = _bad_rows(cleveland, schema)
    values = rows.to_numpy(dtype=np.float64)
    checked, problems, counts = check_numbers(values, schema, "fail", allow_missing={"ca", "thal"})
    _, expected, expected_counts = check_features(rows, schema, "fail", allow_missing={"ca", "thal"})
    assert problems == expected and counts == expected_counts and len(problems) == 4
    blanked, _, _ = check_numbers(values, schema, "missing")
    assert np.isnan(blanked[1, schema.features.index("chol")]) and values[1, schema.features.index("chol")] == 20


def test_a_text_column_is_named_and_left_out_of_the_matrix(cleveland, schema):
    rows = _bad_rows(cleveland, schema).astype({"age": object})
    rows.loc[5, "age"] = "54"
    checked = check_feature_matrix(rows, schema, numbers_only=True, reject_unknown_columns=True)
    assert checked.problems[0].startswith("column 'age': rule 'a number or null'")
    assert "age" not in checked.columns and checked.values.shape == (6, len(schema.features) - 1)
