"""Validation against the UCI codebook: every rule fails with a message that names
the column, the rule, how many rows and example values."""

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from steps.codebook import Codebook, DataValidationError, validate
from steps.config import register_configs
from steps.sources import read_uci
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
