"""The names of the metrics evaluate logs, and the acceptance criteria written with
them. Light on purpose (no scikit-learn): the config checks read it at every start-up.
The numbers themselves come from domain/metrics.py."""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from engine.errors import PipelineError

# binary_metrics() in domain/metrics.py returns these, in this order.
BINARY_METRICS = ("roc_auc", "pr_auc", "accuracy", "precision", "recall", "specificity", "f1", "brier", "log_loss")
SITE_METRICS = ("rows", "prevalence", "roc_auc", "brier", "calibration_slope", "calibration_intercept")
CV_STATISTICS = ("mean", "std", "ci_low", "ci_high")
# Measured on the pooled out-of-fold predictions of each CV repeat (steps/evaluate.py):
# `cv_<metric>` is the estimate, `cv_<metric>_ci_low` / `_ci_high` its 95 % interval.
OUT_OF_FOLD_METRICS = ("calibration_slope", "calibration_intercept")
SUBGROUP_METRICS = ("roc_auc", "calibration_slope", "calibration_intercept", "sensitivity")
INTERVAL_SUFFIXES = ("", "_ci_low", "_ci_high")
# Each subgroup's size and prevalence (`cv_rows_<subgroup>`), and the gate's view over the
# subgroups: the worst ROC-AUC and sensitivity, the calibration slope furthest either way.
SUBGROUP_FACTS = ("rows", "prevalence")
SUBGROUP_EXTREMES = (("roc_auc", "min"), ("sensitivity", "min"), ("calibration_slope", "min"),
                     ("calibration_slope", "max"))


@dataclass(frozen=True)
class Subgroup:
    """Patients with one code of a coded column, or with a numeric column in [low, high)."""

    name: str  # in metric names: sex_0, age_lt_50, age_50_60, age_ge_60
    label: str  # for people: "sex = 0 (...)", "50 <= age < 60"
    column: str
    code: Optional[float] = None
    low: Optional[float] = None
    high: Optional[float] = None

    def contains(self, values):
        """Which of `values` (a NumPy array of the column) belong; missing values never do."""
        if self.code is not None:
            return values == self.code
        inside = values == values  # not NaN
        if self.low is not None:
            inside &= values >= self.low
        if self.high is not None:
            inside &= values < self.high
        return inside


def _number(value: float) -> str:
    """An edge or code as a metric name can hold it: 50, 2p5, m1 (no dots or signs)."""
    return f"{value:g}".replace(".", "p").replace("-", "m")


def subgroups(spec: Mapping[str, Any], columns: Mapping[str, Mapping[str, Any]]) -> list[Subgroup]:
    """The subgroups `evaluate.subgroups` asks for: one per code of each column in
    `spec["codes"]`, and the bands cut by each column's edges in `spec["bands"]`
    ([50, 60] gives < 50, 50 to < 60, >= 60). `columns` is the codebook (conf/schema's
    columns). Raises PipelineError for a column the codebook lacks or cannot cut so."""
    found = []
    for column in spec.get("codes") or ():
        rule = columns.get(column)
        if rule is None or not rule.get("codes"):
            raise PipelineError(f"evaluate.subgroups.codes: {column!r} is not a coded column of the codebook")
        for code in rule["codes"]:
            # The code's meaning, where the description spells it out: "sex (1 male, 0 female)".
            meaning = re.search(rf"[(,]\s*{float(code):g}\s+([^,()]+)", str(rule.get("description") or ""))
            label = f"{column} = {float(code):g}" + (f" ({meaning.group(1).strip()})" if meaning else "")
            found.append(Subgroup(f"{column}_{_number(float(code))}", label, column, code=float(code)))
    for column, given in (spec.get("bands") or {}).items():
        try:
            edges = [float(e) for e in given]
        except (TypeError, ValueError):
            edges = []
        rule = columns.get(column)
        if rule is None or rule.get("codes") or not edges or edges != sorted(set(edges)):
            shown = given if isinstance(given, (str, int, float)) else list(given)
            raise PipelineError(f"evaluate.subgroups.bands.{column}={shown}: give a numeric codebook column "
                                "and increasing edges")
        found.append(Subgroup(f"{column}_lt_{_number(edges[0])}", f"{column} < {edges[0]:g}", column,
                              high=edges[0]))
        found += [Subgroup(f"{column}_{_number(low)}_{_number(high)}", f"{low:g} <= {column} < {high:g}", column,
                           low=low, high=high) for low, high in zip(edges, edges[1:])]
        found.append(Subgroup(f"{column}_ge_{_number(edges[-1])}", f"{column} >= {edges[-1]:g}", column,
                              low=edges[-1]))
    return found


def out_of_fold_metric_names(subgroup_names: Sequence[str] = ()) -> set[str]:
    names = {f"cv_{m}{s}" for m in OUT_OF_FOLD_METRICS for s in INTERVAL_SUFFIXES}
    for group in subgroup_names:
        names |= {f"cv_{m}_{group}{s}" for m in SUBGROUP_METRICS for s in INTERVAL_SUFFIXES}
        names |= {f"cv_{fact}_{group}" for fact in SUBGROUP_FACTS}
    if subgroup_names:
        names |= {f"cv_{m}_subgroup_{extreme}" for m, extreme in SUBGROUP_EXTREMES}
    return names


def evaluate_metric_names(external_sites=(), subgroup_names: Sequence[str] = ()) -> set[str]:
    """Every metric an evaluate run logs: what criteria, register and sweeps may name."""
    return ({f"test_{m}" for m in BINARY_METRICS}
            | {f"cv_{m}_{s}" for m in BINARY_METRICS for s in CV_STATISTICS}
            | {"test_calibration_slope", "test_calibration_intercept"}
            | out_of_fold_metric_names(subgroup_names)
            | {f"external_{site}_{m}" for site in external_sites for m in SITE_METRICS})


OPERATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_CRITERION = re.compile(r"^\s*(\w+)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*$")


def parse_criterion(text: str) -> tuple[str, str, float]:
    """'test_roc_auc >= 0.85' -> ('test_roc_auc', '>=', 0.85)."""
    match = _CRITERION.match(text)
    if not match:
        raise PipelineError(f"evaluate.criteria: cannot read {text!r}; write e.g. 'test_roc_auc >= 0.85'")
    name, op, value = match.groups()
    try:
        return name, op, float(value)
    except ValueError:
        raise PipelineError(f"evaluate.criteria: {value!r} in {text!r} is not a number") from None
