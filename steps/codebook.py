"""The UCI codebook's rules, written once and used twice: by ingest on whole tables and
by the logged model on every prediction request (steps/model.py), so serving checks
inputs exactly as training data was checked.

Pure functions over DataFrames. This module imports nothing heavier than pandas,
because the logged model carries it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import pandas as pd

from steps.errors import PipelineError

EXAMPLES = 5
EXAMPLE_CHARS = 24  # longer text values are cut in messages


class DataValidationError(PipelineError):
    """Data breaks a codebook rule that cannot be repaired."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("data validation failed:\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class ColumnRule:
    description: str
    codes: Optional[tuple[float, ...]]
    min: Optional[float]
    max: Optional[float]

    def describe(self) -> str:
        if self.codes is not None:
            return f"code in {[_plain(c) for c in self.codes]} ({self.description})"
        return f"{self.min:g} <= value <= {self.max:g} ({self.description})"


@dataclass(frozen=True)
class Codebook:
    columns: dict[str, ColumnRule]
    target: str  # the 0..4 column of the UCI files
    label: str  # the derived 0/1 column

    @classmethod
    def from_config(cls, schema: Mapping) -> "Codebook":
        """From conf/schema (a DictConfig) or the same thing as a plain dict."""
        columns = {}
        for name, spec in schema["columns"].items():
            codes = spec.get("codes")
            columns[str(name)] = ColumnRule(spec.get("description", ""),
                                            None if codes is None else tuple(float(c) for c in codes),
                                            spec.get("min"), spec.get("max"))
        return cls(columns, schema["target"], schema["label"])

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "label": self.label,
            "columns": {name: {"description": r.description, "codes": None if r.codes is None else list(r.codes),
                               "min": r.min, "max": r.max} for name, r in self.columns.items()},
        }

    @property
    def features(self) -> list[str]:
        return [name for name in self.columns if name != self.target]

    @property
    def file_columns(self) -> list[str]:
        """Column order of the headerless UCI files."""
        return list(self.columns)


def _plain(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _examples(values: pd.Series) -> list[Any]:
    """A few distinct offending values, as the user would write them (0, not 0.0); long
    text cut short, so an error (which a shared tracking server shows to all) never
    carries a whole line of someone's file."""
    return [_plain(v) if not isinstance(v, str) or len(v) <= EXAMPLE_CHARS else v[:EXAMPLE_CHARS] + "…"
            for v in pd.unique(values)[:EXAMPLES]]


def check_features(frame: pd.DataFrame, book: Codebook, impossible_values: str = "missing",
                   allow_missing: Optional[Iterable[str]] = None,
                   reject_unknown_columns: bool = False,
                   numbers_only: bool = False) -> tuple[pd.DataFrame, list[str], dict[str, int]]:
    """Check the feature columns of `frame` and return (features as float64, problems,
    impossible-value counts). Nothing is raised: callers decide how to report.

    impossible_values: "missing" blanks values outside a numeric column's physiological
    range and counts them; "fail" reports them as problems.
    allow_missing: the columns that may be missing (None: all of them).
    numbers_only: refuse booleans and strings (even "54") instead of converting them:
    a request's JSON must send numbers or null."""
    if impossible_values not in ("missing", "fail"):
        raise PipelineError(f"impossible_values={impossible_values!r}: use 'missing' or 'fail'")
    problems: list[str] = []
    absent = [c for c in book.features if c not in frame]
    problems += [f"column '{c}': rule 'required by the UCI codebook' ({book.columns[c].describe()}): "
                 f"missing from the input (found columns: {list(map(str, frame.columns))})" for c in absent]
    if reject_unknown_columns:
        unknown = [str(c) for c in frame.columns if c not in book.features]
        problems += [f"column '{c}': rule 'known field': not a feature of the UCI codebook; "
                     f"expected exactly {book.features}" for c in unknown]

    # Numbers as float arrays, vectorised, because this runs on every prediction request as
    # well as on whole tables: columns that already hold numbers convert in one step.
    present = [c for c in book.features if c not in absent]
    dtypes = frame.dtypes
    plain = [c for c in present if isinstance(dtypes[c], np.dtype) and dtypes[c].kind in "iuf"]
    matrix = frame[plain].to_numpy(dtype="float64", na_value=np.nan) if plain else np.empty((len(frame), 0))
    arrays: dict[str, np.ndarray] = {name: matrix[:, i] for i, name in enumerate(plain)}
    for name in (c for c in present if c not in arrays):
        values = frame[name]
        if numbers_only:
            not_numbers = _not_numbers(values)
            if not_numbers.any():
                problems.append(f"column '{name}': rule 'a number or null' ({book.columns[name].describe()}): "
                                f"{int(not_numbers.sum())} row(s) hold booleans or strings, "
                                f"e.g. {_examples(values[not_numbers])}")
                continue
        if not pd.api.types.is_numeric_dtype(values.dtype):  # only such columns can hold text
            raw, values = values, pd.to_numeric(values, errors="coerce")
            text = values.isna() & raw.notna()
            if text.any():
                problems.append(f"column '{name}': rule 'numeric' ({book.columns[name].describe()}): "
                                f"{int(text.sum())} row(s) hold text, e.g. {_examples(raw[text])}")
                continue
        arrays[name] = values.to_numpy(dtype="float64", na_value=np.nan)

    impossible_counts: dict[str, int] = {}
    for name, values in arrays.items():
        rule = book.columns[name]
        missing = np.isnan(values)
        if allow_missing is not None and name not in allow_missing and missing.any():
            problems.append(f"column '{name}': rule 'value required' ({rule.describe()}): "
                            f"{int(missing.sum())} row(s) are missing it (null, NaN or empty); "
                            f"only {sorted(allow_missing)} may be missing")
        if rule.codes is not None:
            unknown = ~missing & ~(values[:, None] == np.asarray(rule.codes)).any(axis=1)
            if unknown.any():
                problems.append(f"column '{name}': rule '{rule.describe()}': {int(unknown.sum())} row(s) hold "
                                f"unknown codes, e.g. {_examples(pd.Series(values[unknown]))}")
        else:
            impossible = ~missing & ((values < rule.min) | (values > rule.max))
            if impossible.any():
                if impossible_values == "fail":
                    problems.append(f"column '{name}': rule '{rule.describe()}': {int(impossible.sum())} row(s) "
                                    f"hold impossible values, e.g. {_examples(pd.Series(values[impossible]))}")
                impossible_counts[name] = int(impossible.sum())
                arrays[name] = np.where(impossible, np.nan, values)
    clean = pd.DataFrame({name: arrays[name] for name in present if name in arrays}, index=frame.index)
    return clean, problems, impossible_counts


def _not_numbers(values: pd.Series) -> pd.Series:
    """Which values are booleans or strings, which pandas would quietly turn into numbers."""
    if pd.api.types.is_bool_dtype(values.dtype):
        return pd.Series(True, index=values.index)
    if pd.api.types.is_numeric_dtype(values.dtype):
        return pd.Series(False, index=values.index)
    return values.map(lambda value: isinstance(value, (bool, np.bool_, str)))


def _label_from(frame: pd.DataFrame, book: Codebook, problems: list[str]) -> pd.Series:
    """The binary label: num > 0, or a given 0/1 `target` column."""
    if book.target in frame:
        num = pd.to_numeric(frame[book.target], errors="coerce")
        return (num > 0).astype("Int64").where(num.notna())
    label = pd.to_numeric(frame[book.label], errors="coerce")
    bad = label.notna() & ~label.isin([0, 1])
    if bad.any():
        problems.append(f"column '{book.label}': rule 'label is 0 or 1': {int(bad.sum())} row(s), "
                        f"e.g. {_examples(frame[book.label][bad])}")
    return label.astype("Int64")


def validate(frame: pd.DataFrame, book: Codebook, impossible_values: str = "missing",
             keep: Iterable[str] = ()) -> tuple[pd.DataFrame, dict]:
    """Check a whole table (features and label) and return (features + label as numbers,
    plus the `keep` columns that are present, as text; report), or raise
    DataValidationError listing every broken rule."""
    if len(frame) == 0:
        raise DataValidationError(["input: rule 'at least one row': the table is empty (0 rows)"])
    if book.target not in frame and book.label not in frame:
        raise DataValidationError([f"column '{book.target}' (or '{book.label}'): rule 'required by the UCI "
                                   f"codebook': missing from the input (found columns: {list(map(str, frame.columns))})"])
    clean, problems, impossible_counts = check_features(frame, book, impossible_values)
    if any(c not in frame for c in book.features):  # nothing more to check without them
        raise DataValidationError(problems)

    label = _label_from(frame, book, problems)
    if label.isna().any():
        column = book.target if book.target in frame else book.label
        problems.append(f"column '{column}': rule 'label present': {int(label.isna().sum())} row(s) have no label")
    if problems:
        raise DataValidationError(problems)

    clean[book.label] = label.astype("int64")
    kept = [c for c in keep if c in frame]
    for column in kept:
        clean[column] = frame[column].astype(str).to_numpy()
    classes = clean[book.label].value_counts().sort_index()
    if len(classes) < 2:
        raise DataValidationError([
            f"column '{book.label}': rule 'both classes present': all {len(clean)} rows have label "
            f"{int(classes.index[0])}; a classifier needs healthy (0) and diseased (1) patients"
        ])

    report = {
        "rows": int(len(clean)),
        "duplicate_rows": int(clean.duplicated().sum()),
        "missing": {c: int(n) for c, n in clean.isna().sum().items() if n},
        "impossible_as_missing": impossible_counts,
        "class_counts": {str(int(k)): int(v) for k, v in classes.items()},
        "ignored_columns": [str(c) for c in frame.columns
                            if c not in book.columns and c != book.label and c not in kept],
    }
    for column in kept:
        groups = clean.groupby(column)
        report[f"by_{column}"] = {
            str(name): {"rows": int(len(group)), "positive_rate": round(float(group[book.label].mean()), 4),
                        "missing_cells": int(group[book.features].isna().sum().sum())}
            for name, group in groups
        }
    return clean.reset_index(drop=True), report

