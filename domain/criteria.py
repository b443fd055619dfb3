"""The names of the metrics evaluate logs, and the acceptance criteria written with
them. Light on purpose (no scikit-learn): the config checks read it at every start-up.
The numbers themselves come from domain/metrics.py."""

from __future__ import annotations

import operator
import re

from engine.errors import PipelineError

# binary_metrics() in domain/metrics.py returns these, in this order.
BINARY_METRICS = ("roc_auc", "pr_auc", "accuracy", "precision", "recall", "specificity", "f1", "brier", "log_loss")
SITE_METRICS = ("rows", "prevalence", "roc_auc", "brier", "calibration_slope", "calibration_intercept")
CV_STATISTICS = ("mean", "std", "ci_low", "ci_high")


def evaluate_metric_names(external_sites=()) -> set[str]:
    """Every metric an evaluate run logs: what criteria, register and sweeps may name."""
    return ({f"test_{m}" for m in BINARY_METRICS}
            | {f"cv_{m}_{s}" for m in BINARY_METRICS for s in CV_STATISTICS}
            | {"test_calibration_slope", "test_calibration_intercept"}
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
