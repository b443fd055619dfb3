"""Config values checked at start-up: each broken rule is one line naming the key,
the value and what is allowed. The command-line side (exit code 2, no run created)
is in test_runner_faults.py."""

import pytest
from hydra import compose, initialize_config_dir

from engine.config import register_configs
from engine.config_checks import ConfigError, check_config
from tests.conftest import REPO
from tools.monitor import register_schema as register_monitor_schema
from tools.score_config import register_score_config


def compose_with(*overrides, config_name="config"):
    register_configs()
    register_score_config()
    register_monitor_schema()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


def problems(*overrides, config_name="config"):
    try:
        check_config(compose_with(*overrides, config_name=config_name))
    except ConfigError as err:
        return err.problems
    return []


def test_the_default_config_passes():
    assert problems() == []
    assert problems("model=random_forest") == []
    assert problems("data=synthetic", "data.rows=500") == []


@pytest.mark.parametrize("override, expected", [
    ("data.rows=-5", "data.rows=-5: a positive row count"),
    ("data.rows=0", "data.rows=0: a positive row count"),
    ("split.test_fraction=2", "split.test_fraction=2.0: a number strictly between 0 and 1"),
    ("split.test_fraction=-0.1", "split.test_fraction=-0.1: a number strictly between 0 and 1"),
    ("split.val_fraction=0.9", "test_fraction + val_fraction must be below 1"),
    ("evaluate.cv_folds=1", "evaluate.cv_folds=1: a whole number >= 2"),
    ("evaluate.cv_repeats=0", "evaluate.cv_repeats=0: a whole number >= 1"),
    ('evaluate.criteria=["foo >= 1"]', "evaluate.criteria[0]='foo >= 1': 'foo' is not a metric evaluate logs"),
    ('evaluate.criteria=["test_roc_auc about 1"]', "evaluate.criteria[0]='test_roc_auc about 1': write"),
    ("evaluate.criteria=[]", "evaluate.criteria=[]: list at least one criterion"),
    ("model.C=-1", "model.C=-1: The 'C' parameter of LogisticRegression must be"),
    ("+model.colour=red", "cannot build the estimator"),
    ("train.threshold.target=1.5", "train.threshold.target=1.5: a number between 0 and 1"),
    ("train.risk_levels.bounds={Low: 0.7, Moderate: 0.4, High: 1.0}", "train.risk_levels.bounds="),
    ("train.calibration=platt", "train.calibration='platt': use one of none, sigmoid, isotonic"),
    ("register.primary_metric=accuracy", "register.primary_metric='accuracy': a metric evaluate logs"),
    ("data.sites=[mars]", "data.sites=['mars']: one or more of cleveland"),
    ("force=[trian]", "force=['trian']: a list of step names"),
    ("liveness.heartbeat_seconds=0", "liveness.heartbeat_seconds=0.0: a positive number of seconds"),
    ("liveness.grace_seconds=6", "liveness.grace_seconds=6.0: at least twice liveness.heartbeat_seconds"),
    ("transform.one_hot=[colour]", "transform.one_hot=['colour']: codebook features only"),
    ("evaluate.subgroups.codes=[age]", "evaluate.subgroups.codes: 'age' is not a coded column of the codebook"),
    ("evaluate.subgroups.bands={age: [60, 50]}", "evaluate.subgroups.bands.age=[60, 50]: give a numeric codebook"),
    ("evaluate.subgroups.bands={age: [old]}", "evaluate.subgroups.bands.age=['old']: give a numeric codebook"),
    ('evaluate.criteria=["cv_roc_auc_sex_2 >= 0.8"]', "'cv_roc_auc_sex_2' is not a metric evaluate logs"),
    ("evaluate.decision_curve.low=0.9", "evaluate.decision_curve={'low': 0.9, 'high': 0.8, 'step': 0.01}: "),
    ("evaluate.bootstrap_rounds=10", "evaluate.bootstrap_rounds=10: a whole number >= 100"),
])
def test_each_broken_rule_is_one_line_naming_key_value_and_rule(override, expected):
    found = problems(override)
    assert len(found) == 1, found
    assert expected in found[0]
    assert "\n" not in found[0]


@pytest.mark.parametrize("config_name, overrides, expected", [
    ("config", ["data=synthetic", "data.rows=100000000000"], "data.rows=100000000000: at most 10000000 "
                                                             "(limits.data.rows; raise that limit"),
    ("config", ["data.rows=20000000"], "data.rows=20000000: at most 10000000 (limits.data.rows"),
    ("config", ["eda.dpi=100000"], "eda.dpi=100000: at most 600 (limits.eda.dpi"),
    ("config", ["evaluate.cv_repeats=1000000"], "evaluate.cv_repeats=1000000: at most 100 (limits.evaluate.cv_repeats"),
    ("config", ["+limits.data.rowz=5"], "limits.data.rowz=5: data has no setting 'rowz'"),
    ("score", ["score.input=x.parquet", "score.output=y.parquet", "score.batch_rows=1000000000"],
     "score.batch_rows=1000000000: at most 1000000 (limits.score.batch_rows"),
    ("monitor", ["monitor.psi_bins=1000000"], "monitor.psi_bins=1000000: at most 1000 (limits.monitor.psi_bins"),
])
def test_size_like_settings_are_bounded_by_the_limits_config(config_name, overrides, expected):
    found = problems(*overrides, config_name=config_name)
    assert len(found) == 1, found
    assert found[0].startswith(expected) and "\n" not in found[0]


def test_a_limit_is_raised_in_config_and_applies_only_where_its_section_is():
    assert problems("data=synthetic", "data.rows=20000000", "limits.data.rows=20000000") == []
    assert problems("limits.score.batch_rows=1") == []  # the pipeline has no score section
    assert problems("score.input=x", "score.output=y", config_name="score") == []


def test_criteria_may_gate_on_calibration_and_on_the_subgroups_config_names():
    assert problems('evaluate.criteria=["cv_roc_auc_subgroup_min >= 0.75", "cv_calibration_slope <= 1.2", '
                    '"cv_calibration_slope_sex_0_ci_low >= 0.2", "cv_sensitivity_age_ge_60 >= 0.8"]') == []
    assert problems("evaluate.subgroups.bands={age: [45, 65]}",
                    'evaluate.criteria=["cv_roc_auc_age_45_65 >= 0.8"]') == []
    assert problems("evaluate.subgroups.codes=[]", 'evaluate.criteria=["cv_roc_auc_sex_0 >= 0.8"]') != []
    assert problems("~evaluate.subgroups.bands.age", 'evaluate.criteria=["cv_roc_auc_age_50_60 >= 0.8"]') != []


def test_an_empty_criteria_list_is_allowed_only_when_asked():
    assert problems("evaluate.criteria=[]", "evaluate.allow_no_criteria=true") == []


def test_every_problem_is_reported_at_once():
    assert len(problems("data.rows=-5", "evaluate.cv_folds=1", "model.C=-1")) == 3


def test_the_metric_names_checked_are_those_binary_metrics_computes():
    from domain.criteria import BINARY_METRICS
    from domain.metrics import binary_metrics

    assert tuple(binary_metrics([0, 1, 1, 0], [0.2, 0.7, 0.4, 0.1])) == BINARY_METRICS
