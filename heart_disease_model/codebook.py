"""The UCI codebook's rules, written once and used twice: by ingest on whole tables and
by the model on every prediction request (model.py), so serving checks
inputs exactly as training data was checked.

Pure functions over DataFrames. This module imports nothing heavier than pandas,
because the logged model carries it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import pandas as pd

from .errors import DataValidationError, ModelError

EXAMPLES = 5
EXAMPLE_CHARS = 24  # longer text values are cut in messages


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

    @cached_property
    def limits(self) -> "_Limits":
        """The feature rules as arrays, for check_feature_matrix."""
        return _Limits.of(self)

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
    checked = check_feature_matrix(frame, book, impossible_values, allow_missing, reject_unknown_columns, numbers_only)
    clean = pd.DataFrame({name: checked.values[:, j] for j, name in enumerate(checked.columns)}, index=frame.index)
    return clean, checked.problems, checked.impossible_counts


@dataclass(frozen=True)
class CheckedFeatures:
    """check_feature_matrix's answer: the features that could be read as numbers, as one
    float64 matrix (columns in codebook order, NaN for missing and for impossible values
    blanked), and what is wrong with the input."""

    columns: list[str]
    values: np.ndarray
    problems: list[str]
    impossible_counts: dict[str, int]


@dataclass(frozen=True)
class _Limits:
    """Every feature's rule as arrays (codebook feature order), to check all columns of a
    matrix in a few vectorised passes instead of a loop of small ones per column."""

    position: dict[str, int]
    coded: np.ndarray  # bool per feature
    low: np.ndarray  # -inf for coded features
    high: np.ndarray  # +inf for coded features
    codes: np.ndarray  # (feature, code slot), NaN where a feature has fewer codes (or none)

    @classmethod
    def of(cls, book: Codebook) -> "_Limits":
        rules = [book.columns[name] for name in book.features]
        slots = max([len(rule.codes) for rule in rules if rule.codes is not None], default=0)
        codes = np.full((len(rules), slots), np.nan)
        for i, rule in enumerate(rules):
            if rule.codes is not None:
                codes[i, :len(rule.codes)] = rule.codes
        coded = np.array([rule.codes is not None for rule in rules], dtype=bool)
        return cls({name: i for i, name in enumerate(book.features)}, coded,
                   np.array([-np.inf if rule.codes is not None else rule.min for rule in rules], dtype=float),
                   np.array([np.inf if rule.codes is not None else rule.max for rule in rules], dtype=float),
                   codes)


def check_feature_matrix(frame: pd.DataFrame, book: Codebook, impossible_values: str = "missing",
                         allow_missing: Optional[Iterable[str]] = None, reject_unknown_columns: bool = False,
                         numbers_only: bool = False) -> CheckedFeatures:
    """check_features without building a DataFrame: the checked features as one float64
    matrix. Same arguments, same problems in the same order; what the served model calls
    on every request (a frame of numeric columns costs a few vectorised passes)."""
    problems: list[str] = []
    names = frame.columns.tolist()
    given = set(names)
    absent = [c for c in book.features if c not in given]
    problems += [f"column '{c}': rule 'required by the UCI codebook' ({book.columns[c].describe()}): "
                 f"missing from the input (found columns: {list(map(str, names))})" for c in absent]
    if reject_unknown_columns:
        known = set(book.features)
        unknown = [str(c) for c in names if c not in known]
        problems += [f"column '{c}': rule 'known field': not a feature of the UCI codebook; "
                     f"expected exactly {book.features}" for c in unknown]

    # Columns that already hold numbers convert in one step; the others one by one, into
    # the same matrix (columns in codebook order).
    present = [c for c in book.features if c in given]
    whole = frame.to_numpy() if len(present) == len(names) else None
    if whole is not None and whole.dtype.kind in "iuf":  # only numeric features (a request): no dtype lookups
        plain, position = present, {name: i for i, name in enumerate(names)}
        order = [position[c] for c in present]
        in_order = order == list(range(len(order)))
        matrix = (whole if in_order else whole[:, order]).astype("float64", copy=False)
        owned = matrix is not whole  # `whole` may be a read-only view of `frame`
    else:
        dtype_of = dict(zip(names, frame.dtypes))
        plain = [c for c in present if isinstance(dtype_of[c], np.dtype) and dtype_of[c].kind in "iuf"]
        matrix, owned = np.empty((len(frame), len(present))), True
        if plain:
            matrix[:, [present.index(c) for c in plain]] = frame[plain].to_numpy(dtype="float64", na_value=np.nan)
    unreadable: list[int] = []
    for j, name in enumerate(present):
        if name in plain:
            continue
        values = frame[name]
        if numbers_only:
            not_numbers = _not_numbers(values)
            if not_numbers.any():
                problems.append(f"column '{name}': rule 'a number or null' ({book.columns[name].describe()}): "
                                f"{int(not_numbers.sum())} row(s) hold booleans or strings, "
                                f"e.g. {_examples(values[not_numbers])}")
                unreadable.append(j)
                continue
        if not pd.api.types.is_numeric_dtype(values.dtype):  # only such columns can hold text
            raw, values = values, pd.to_numeric(values, errors="coerce")
            text = values.isna() & raw.notna()
            if text.any():
                problems.append(f"column '{name}': rule 'numeric' ({book.columns[name].describe()}): "
                                f"{int(text.sum())} row(s) hold text, e.g. {_examples(raw[text])}")
                unreadable.append(j)
                continue
        matrix[:, j] = values.to_numpy(dtype="float64", na_value=np.nan)
    columns = [c for j, c in enumerate(present) if j not in unreadable]
    if unreadable:
        matrix = matrix[:, [j for j in range(len(present)) if j not in unreadable]]

    matrix, value_problems, impossible_counts = _check_values(matrix, columns, book, impossible_values,
                                                              allow_missing, owned, read_first=plain)
    return CheckedFeatures(columns, matrix, problems + value_problems, impossible_counts)


def check_numbers(matrix: np.ndarray, book: Codebook, impossible_values: str = "missing",
                  allow_missing: Optional[Iterable[str]] = None) -> tuple[np.ndarray, list[str], dict[str, int]]:
    """The value rules of check_features for features that are already numbers: a float64
    matrix with every codebook feature, in codebook order (NaN for missing). Returns (the
    matrix, impossible values blanked under "missing"; problems; impossible-value counts).
    `matrix` itself is never changed."""
    return _check_values(matrix, book.features, book, impossible_values, allow_missing, owned=False,
                         read_first=book.features)


def _check_values(matrix: np.ndarray, columns: list[str], book: Codebook, impossible_values: str,
                  allow_missing: Optional[Iterable[str]], owned: bool,
                  read_first: list[str]) -> tuple[np.ndarray, list[str], dict[str, int]]:
    """Codes, ranges and required values of `matrix` (its columns named by `columns`), in a
    few vectorised passes over all columns. Problems name the columns in `read_first`
    first, then the others, each group in codebook order (the order ingest always used).
    Impossible values are blanked in place only when the caller `owned` the matrix."""
    if impossible_values not in ("missing", "fail"):
        raise ModelError(f"impossible_values={impossible_values!r}: use 'missing' or 'fail'")
    limits = book.limits
    index = [limits.position[c] for c in columns]
    coded, low, high = limits.coded[index], limits.low[index], limits.high[index]
    missing = np.isnan(matrix)
    in_codes = np.zeros(matrix.shape, dtype=bool)
    for slot in limits.codes[index].T:  # NaN slots match nothing
        in_codes |= matrix == slot
    unknown = coded & ~missing & ~in_codes
    impossible = ~coded & ~missing & ((matrix < low) | (matrix > high))
    required = np.array([allow_missing is not None and c not in allow_missing for c in columns], dtype=bool)
    broken = (missing & required).any(axis=0) | unknown.any(axis=0) | impossible.any(axis=0)

    problems: list[str] = []
    impossible_counts: dict[str, int] = {}
    for j in sorted(np.flatnonzero(broken), key=lambda j: (columns[j] not in read_first, j)):
        name, rule = columns[j], book.columns[columns[j]]
        values = matrix[:, j]
        if required[j] and missing[:, j].any():
            problems.append(f"column '{name}': rule 'value required' ({rule.describe()}): "
                            f"{int(missing[:, j].sum())} row(s) are missing it (null, NaN or empty); "
                            f"only {sorted(allow_missing)} may be missing")
        if coded[j] and unknown[:, j].any():
            problems.append(f"column '{name}': rule '{rule.describe()}': {int(unknown[:, j].sum())} row(s) hold "
                            f"unknown codes, e.g. {_examples(pd.Series(values[unknown[:, j]]))}")
        elif impossible[:, j].any():
            if impossible_values == "fail":
                problems.append(f"column '{name}': rule '{rule.describe()}': {int(impossible[:, j].sum())} row(s) "
                                f"hold impossible values, e.g. {_examples(pd.Series(values[impossible[:, j]]))}")
            impossible_counts[name] = int(impossible[:, j].sum())
    if impossible_counts:
        if owned:
            matrix[impossible] = np.nan
        else:
            matrix = np.where(impossible, np.nan, matrix)
    return matrix, problems, impossible_counts


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
                                   f"codebook': missing from the input "
                                   f"(found columns: {list(map(str, frame.columns))})"])
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

