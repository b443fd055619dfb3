"""Domain checks of the whole config, run at start-up before any run exists.

Structured config (engine/config.py) already refuses unknown keys and wrong types;
these rules refuse values a type cannot: a row count of -5, a test fraction of 2, a
criterion naming a metric evaluate never logs, a model keyword its estimator refuses.
Each problem is one line: the key, the value, and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from domain.criteria import evaluate_metric_names, parse_criterion, subgroups
from domain.sources import UCI_SITES
from engine.config import STEP_NAMES
from engine.errors import PipelineError

NUMERIC_IMPUTERS = ("mean", "median", "most_frequent", "constant")
CATEGORICAL_IMPUTERS = ("most_frequent", "constant")


class ConfigError(PipelineError):
    """The config cannot run; `problems` holds one line per broken rule."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class _Rules:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.problems: list[str] = []

    def value(self, key: str) -> Any:
        return OmegaConf.select(self.cfg, key)

    def require(self, key: str, ok: Callable[[Any], bool], allowed: str) -> bool:
        value = self.value(key)
        try:
            holds = bool(ok(value))
        except TypeError:
            holds = False
        if not holds:
            self.problems.append(f"{key}={_show(value)}: {allowed}")
        return holds

    def one_of(self, key: str, choices: tuple) -> None:
        self.require(key, lambda v: v in choices, "use one of " + ", ".join(map(str, choices)))

    def fraction(self, key: str, closed: bool = True) -> bool:
        if closed:
            return self.require(key, lambda v: 0 <= v <= 1, "a number between 0 and 1")
        return self.require(key, lambda v: 0 < v < 1, "a number strictly between 0 and 1")

    def count(self, key: str, minimum: int) -> None:
        self.require(key, lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum,
                      f"a whole number >= {minimum}")


def _show(value: Any) -> str:
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    return str(value) if not isinstance(value, str) else repr(value)


def check_config(cfg: DictConfig, steps: tuple[str, ...] = STEP_NAMES) -> None:
    """Raise ConfigError listing every broken rule; return quietly when all hold. The
    estimator is checked only when `steps` include train."""
    rules = _Rules(cfg)
    _check_data(rules)
    _check_split(rules)
    _check_transform(rules, cfg)
    _check_train(rules)
    _check_evaluate(rules, cfg)
    if "train" in steps:
        _check_model(rules, cfg)
    rules.require("eda.histogram_bins", lambda v: v >= 1, "a whole number >= 1")
    rules.require("eda.dpi", lambda v: v > 0, "a positive number")
    rules.count("eda.plot_rows", 100)
    rules.require("force", lambda v: set(v) <= set(STEP_NAMES) | {"all"},
                  "a list of step names (" + ", ".join(STEP_NAMES) + ") or [all]")
    _check_liveness(rules)
    _check_limits(rules, cfg)
    if rules.problems:
        raise ConfigError(rules.problems)


def _check_liveness(rules: _Rules) -> None:
    rules.require("liveness.heartbeat_seconds", lambda v: v > 0, "a positive number of seconds")
    # A grace period of a single heartbeat would take a slow request for a lost machine.
    rules.require("liveness.grace_seconds", lambda v: v >= 2 * rules.value("liveness.heartbeat_seconds"),
                  "at least twice liveness.heartbeat_seconds")


def _check_data(rules: _Rules) -> None:
    rules.one_of("data.source", ("uci", "file", "synthetic"))
    rows = rules.value("data.rows")
    if rows is not None or rules.value("data.source") == "synthetic":
        rules.require("data.rows", lambda v: isinstance(v, int) and v >= 1,
                      "a positive row count, or null for every row" if rules.value("data.source") != "synthetic"
                      else "a positive row count (the synthetic source generates that many)")
    rules.one_of("data.impossible_values", ("missing", "fail"))
    rules.require("data.download_timeout_s", lambda v: v > 0, "a positive number of seconds")
    rules.require("data.sites", lambda v: len(v) >= 1 and set(v) <= set(UCI_SITES),
                  "one or more of " + ", ".join(UCI_SITES))
    rules.require("data.external_sites",
                  lambda v: set(v) <= set(UCI_SITES) and not set(v) & set(rules.value("data.sites")),
                  "UCI sites (" + ", ".join(UCI_SITES) + ") not in data.sites")


def _check_limits(rules: _Rules, cfg: DictConfig) -> None:
    """Each size-like setting at most its bound in `limits` (conf/limits): a typo of a few
    zeros is refused here, not found out by the machine running out of memory. A bound on
    a section this command does not have (score's, monitor's) waits for the command that has it."""
    for section, bounds in cfg.limits.items():
        if rules.value(section) is None:
            continue
        for name, limit in bounds.items():
            key = f"{section}.{name}"
            if name not in rules.value(section):
                rules.problems.append(f"limits.{key}={limit}: {section} has no setting {name!r}")
            elif rules.value(key) is not None:
                rules.require(key, lambda v, limit=limit: v <= limit,
                              f"at most {limit} (limits.{key}; raise that limit if this machine can hold it)")


def _check_split(rules: _Rules) -> None:
    test_ok = rules.fraction("split.test_fraction", closed=False)
    val_ok = rules.fraction("split.val_fraction", closed=False)
    if test_ok and val_ok:
        rules.require("split", lambda v: v.test_fraction + v.val_fraction < 1,
                      "test_fraction + val_fraction must be below 1 (train gets the rest)")


def _check_transform(rules: _Rules, cfg: DictConfig) -> None:
    features = [str(name) for name in cfg.schema.columns if name != cfg.schema.target]
    rules.require("transform.one_hot", lambda v: set(v) <= set(features),
                  "codebook features only: " + ", ".join(features))
    rules.one_of("transform.numeric_imputer", NUMERIC_IMPUTERS)
    rules.one_of("transform.categorical_imputer", CATEGORICAL_IMPUTERS)


def _check_train(rules: _Rules) -> None:
    rules.one_of("train.calibration", ("none", "sigmoid", "isotonic"))
    rules.count("train.calibration_folds", 2)
    rules.count("train.input_example_rows", 1)
    rules.one_of("train.threshold.strategy", ("sensitivity", "fixed"))
    rules.fraction("train.threshold.target")
    rules.fraction("train.threshold.value")
    rules.one_of("train.risk_levels.strategy", ("data", "fixed"))
    rules.fraction("train.risk_levels.low_sensitivity")
    rules.fraction("train.risk_levels.high_specificity")
    rules.require("train.risk_levels.bounds",
                  lambda v: (all(0 <= b <= 1 for b in v.values())
                             and list(v.values()) == sorted(v.values()) and list(v.values())[-1] == 1.0),
                  "upper bounds between 0 and 1, increasing, the last one 1.0")


def _check_evaluate(rules: _Rules, cfg: DictConfig) -> None:
    rules.count("evaluate.cv_folds", 2)
    rules.count("evaluate.cv_repeats", 1)
    rules.count("evaluate.cv_max_fit_rows", 1)
    rules.require("evaluate.n_jobs", lambda v: isinstance(v, int) and (v >= 1 or v == -1),
                  "a whole number >= 1, or -1 for one per core")
    rules.count("evaluate.bootstrap_rounds", 100)
    rules.count("evaluate.bootstrap_max_rows", 100)
    rules.require("evaluate.decision_curve", lambda v: 0 < v.low < v.high < 1 and 0 < v.step <= v.high - v.low,
                  "thresholds 0 < low < high < 1 and a step > 0 that fits between them")
    try:
        groups = [group.name for group in subgroups(cfg.evaluate.subgroups, cfg.schema.columns)]
    except PipelineError as err:
        rules.problems.append(f"{err} (evaluate.subgroups={_show(cfg.evaluate.subgroups)})")
        groups = []
    if len(set(groups)) != len(groups):
        rules.problems.append(f"evaluate.subgroups={_show(cfg.evaluate.subgroups)}: a column is listed twice")
    known = evaluate_metric_names(cfg.data.external_sites, groups)
    criteria = list(cfg.evaluate.criteria)
    if not criteria and not cfg.evaluate.allow_no_criteria:
        rules.problems.append("evaluate.criteria=[]: list at least one criterion (e.g. 'cv_roc_auc_mean >= 0.85'), "
                              "or set evaluate.allow_no_criteria=true to validate every model")
    for index, text in enumerate(criteria):
        try:
            name, _, _ = parse_criterion(text)
        except PipelineError:
            rules.problems.append(f"evaluate.criteria[{index}]={text!r}: write '<metric> <op> <number>' "
                                  "with op one of >=, <=, >, < (e.g. 'test_roc_auc >= 0.85')")
            continue
        if name not in known:
            rules.problems.append(f"evaluate.criteria[{index}]={text!r}: {name!r} is not a metric evaluate logs; "
                                  f"use e.g. test_roc_auc, cv_roc_auc_mean, cv_brier_ci_high, cv_calibration_slope, "
                                  f"cv_roc_auc_subgroup_min" + (f", cv_roc_auc_{groups[0]}" if groups else ""))
    for key in ("register.primary_metric", "sweep.metric"):
        if OmegaConf.select(cfg, key) is not None:
            rules.require(key, lambda v: v in known, "a metric evaluate logs, e.g. cv_roc_auc_mean or test_roc_auc")


def _check_model(rules: _Rules, cfg: DictConfig) -> None:
    """The estimator's own parameter validation, run on the unfitted estimator. Building it
    imports its library (scikit-learn: about half of `import mlflow` again), so an estimator
    config that passed once is remembered, per version of the libraries that shape results,
    in a marker under data.cache_dir: a command that reuses its model never imports them."""
    if "_target_" not in cfg.model:
        rules.problems.append("model._target_ is missing: name the estimator class, e.g. "
                              "sklearn.linear_model.LogisticRegression")
        return
    marker = _passed_marker(cfg)
    if marker.exists():
        return
    problems_before = len(rules.problems)
    _build_and_validate(rules, cfg)
    if len(rules.problems) == problems_before:
        _write_atomically(marker)


def _passed_marker(cfg: DictConfig) -> Path:
    from engine.fingerprint import library_versions

    material = {"model": OmegaConf.to_container(cfg.model, resolve=True), "libraries": library_versions()}
    digest = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()
    return Path(cfg.data.cache_dir).expanduser() / "checked-estimators" / digest


def _write_atomically(marker: Path) -> None:
    """A marker exists only once complete (a crash leaves a temporary file, never a marker);
    a cache folder that cannot be written only costs the next command the check again."""
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=marker.parent, prefix=".tmp-", delete=False) as handle:
            pass
        os.replace(handle.name, marker)
    except OSError:
        pass


def _build_and_validate(rules: _Rules, cfg: DictConfig) -> None:
    from hydra.utils import instantiate

    try:
        estimator = instantiate(cfg.model)
    except Exception as err:  # Hydra wraps an unknown class or keyword argument
        cause = err.__cause__ or err
        rules.problems.append(f"model={_show(cfg.model)}: cannot build the estimator: {cause}".split("\n")[0])
        return
    validate = getattr(estimator, "_validate_params", None)
    if validate is None:
        return
    try:
        validate()
    except Exception as err:  # sklearn's InvalidParameterError names the parameter
        message = str(err)
        key = next((k for k in cfg.model if k != "_target_" and f"'{k}'" in message), None)
        label = f"model.{key}={_show(cfg.model[key])}" if key else "model"
        rules.problems.append(f"{label}: {message}")
