"""Checking a table against the UCI codebook (conf/schema/uci_codebook.yaml).

`validate` is pure: a DataFrame and the schema in, a clean DataFrame and a report out,
or a DataValidationError whose message names each broken column, the rule, how many
rows break it and example values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from steps.tracking import PipelineError

EXAMPLES = 5


class DataValidationError(PipelineError):
    """The data breaks a codebook rule that cannot be repaired."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("data validation failed:\n  - " + "\n  - ".join(problems))


@dataclass
class Codebook:
    """The schema in the shape validation needs."""

    columns: dict[str, DictConfig]
    target: str
    label: str

    @classmethod
    def from_config(cls, schema: DictConfig) -> "Codebook":
        return cls(dict(schema.columns), schema.target, schema.label)

    @property
    def features(self) -> list[str]:
        return [name for name in self.columns if name != self.target]

    @property
    def file_columns(self) -> list[str]:
        """Column order of the headerless UCI files."""
        return list(self.columns)

    def describe_rule(self, name: str) -> str:
        spec = self.columns[name]
        if spec.codes is not None:
            return f"code in {list(spec.codes)} ({spec.description})"
        return f"{spec.min:g} <= value <= {spec.max:g} ({spec.description})"


def _examples(values: pd.Series) -> list[Any]:
    """A few distinct offending values, as the user would write them (0, not 0.0)."""
    examples = []
    for value in pd.unique(values)[:EXAMPLES]:
        value = value.item() if hasattr(value, "item") else value
        examples.append(int(value) if isinstance(value, float) and value.is_integer() else value)
    return examples


def _label_from(frame: pd.DataFrame, book: Codebook, problems: list[str]) -> pd.Series:
    """The binary label: num > 0, or a given 0/1 `target` column."""
    if book.target in frame:
        num = pd.to_numeric(frame[book.target], errors="coerce")
        return (num > 0).astype("Int64").where(num.notna())
    label = pd.to_numeric(frame[book.label], errors="coerce")
    bad = label.notna() & ~label.isin([0, 1])
    if bad.any():
        problems.append(
            f"column '{book.label}': rule 'label is 0 or 1': {int(bad.sum())} row(s), "
            f"e.g. {_examples(frame[book.label][bad])}"
        )
    return label.astype("Int64")


def validate(frame: pd.DataFrame, schema: DictConfig, impossible_values: str = "missing") -> tuple[pd.DataFrame, dict]:
    """Check `frame` against the codebook and return (features + label as numbers, report).

    Values outside a numeric column's physiological range are "impossible": with
    impossible_values="missing" they become missing and are counted in the report,
    with "fail" they fail validation. Everything else that breaks a rule fails."""
    if impossible_values not in ("missing", "fail"):
        raise PipelineError(f"data.impossible_values={impossible_values!r}: use 'missing' or 'fail'")
    book = Codebook.from_config(schema)
    problems: list[str] = []

    if len(frame) == 0:
        raise DataValidationError(["input: rule 'at least one row': the table is empty (0 rows)"])

    has_label = book.target in frame or book.label in frame
    missing_columns = [c for c in book.features if c not in frame] + (
        [] if has_label else [f"{book.target} (or {book.label})"]
    )
    if missing_columns:
        raise DataValidationError([
            f"column '{c}': rule 'required by the UCI codebook': missing from the input "
            f"(found columns: {list(map(str, frame.columns))})"
            for c in missing_columns
        ])

    clean = pd.DataFrame(index=frame.index)
    impossible_counts: dict[str, int] = {}
    for name in book.features:
        raw = frame[name]
        values = pd.to_numeric(raw, errors="coerce")
        text = values.isna() & raw.notna()
        if text.any():
            problems.append(
                f"column '{name}': rule 'numeric': {int(text.sum())} row(s) hold text, "
                f"e.g. {_examples(raw[text])}"
            )
            continue
        spec = book.columns[name]
        if spec.codes is not None:
            unknown = values.notna() & ~values.isin(list(spec.codes))
            if unknown.any():
                problems.append(
                    f"column '{name}': rule '{book.describe_rule(name)}': {int(unknown.sum())} "
                    f"row(s) hold unknown codes, e.g. {_examples(values[unknown])}"
                )
        else:
            impossible = values.notna() & ~values.between(spec.min, spec.max)
            if impossible.any():
                if impossible_values == "fail":
                    problems.append(
                        f"column '{name}': rule '{book.describe_rule(name)}': "
                        f"{int(impossible.sum())} row(s) hold impossible values, "
                        f"e.g. {_examples(values[impossible])}"
                    )
                impossible_counts[name] = int(impossible.sum())
                values = values.mask(impossible)
        clean[name] = values.astype("float64")

    label = _label_from(frame, book, problems)
    if label.isna().any():
        problems.append(
            f"column '{book.target if book.target in frame else book.label}': rule 'label present': "
            f"{int(label.isna().sum())} row(s) have no label"
        )
    if problems:
        raise DataValidationError(problems)

    clean[book.label] = label.astype("int64")
    classes = clean[book.label].value_counts().sort_index()
    if len(classes) < 2:
        only = int(classes.index[0])
        raise DataValidationError([
            f"column '{book.label}': rule 'both classes present': all {len(clean)} rows have "
            f"label {only}; a classifier needs healthy (0) and diseased (1) patients"
        ])

    extra = [str(c) for c in frame.columns if c not in book.columns and c != book.label]
    report = {
        "rows": int(len(clean)),
        "duplicate_rows": int(clean.duplicated().sum()),
        "missing": {c: int(n) for c, n in clean.isna().sum().items() if n},
        "impossible_as_missing": impossible_counts,
        "class_counts": {str(int(k)): int(v) for k, v in classes.items()},
        "ignored_columns": extra,
    }
    return clean.reset_index(drop=True), report

