"""Every Optuna search space in conf/search/ names keys of its model and yields values
the model accepts, at both ends of every range (a typo or a float where sklearn wants an
int would otherwise surface only trials into a sweep)."""

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from hydra_plugins.optuna_study_sweeper.space import search_space
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from engine.config import register_configs

REPO = Path(__file__).resolve().parent.parent
SEARCHES = sorted(p.stem for p in (REPO / "conf" / "search").glob("*.yaml"))


def ends(distribution) -> list:
    if isinstance(distribution, CategoricalDistribution):
        return [distribution.choices[0], distribution.choices[-1]]
    return [distribution.low, distribution.high]


@pytest.mark.parametrize("search", SEARCHES)
def test_search_space_fits_its_model(search):
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("sweep", overrides=[f"search={search}"], return_hydra_config=True)
    assert cfg.hydra.sweeper.direction == "maximize" and cfg.model._target_.endswith(
        {"logreg": "LogisticRegression", "random_forest": "RandomForestClassifier",
         "hist_gradient_boosting": "HistGradientBoostingClassifier"}[search])
    space, fixed = search_space(cfg.hydra.sweeper.params, [])
    assert space and not fixed
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 4)), np.arange(60) % 2
    for end in (0, 1):
        model_cfg = OmegaConf.to_container(cfg.model)
        for key, distribution in space.items():
            assert key.startswith("model.") and key[len("model."):] in model_cfg, f"{key} is not a model key"
            model_cfg[key[len("model."):]] = ends(distribution)[end]
        instantiate(model_cfg).fit(X, y)


def test_the_sweeper_masks_a_storage_password_wherever_it_shows_the_url():
    from hydra_plugins.optuna_study_sweeper.sweeper import safe_url

    shown = safe_url("postgresql+psycopg2://optuna:s3cret-pw@db.example:5432/studies")
    assert "s3cret-pw" not in shown and shown == "postgresql+psycopg2://optuna:***@db.example:5432/studies"


@pytest.mark.parametrize("override, expected", [
    ("model.C=tag(log, interval(0.01, 10))", FloatDistribution(0.01, 10, log=True)),
    ("model.max_depth=range(2, 8)", IntDistribution(2, 8)),  # Optuna's end is inclusive
    ("model.min_samples_leaf=choice(1, 2, 4)", CategoricalDistribution([1, 2, 4])),
    ("model.C=0.1,1", CategoricalDistribution([0.1, 1])),
])
def test_command_line_sweeps_replace_the_config_space_key_by_key(override, expected):
    config_space = {"model.C": "interval(1, 2)", "model.max_iter": "100"}
    space, fixed = search_space(config_space, [override, "evaluate.cv_repeats=2"])
    key = override.split("=")[0]
    assert space[key] == expected
    assert fixed == ["model.max_iter=100", "evaluate.cv_repeats=2"]
    assert search_space({"model.C": "interval(1, 2)"}, ["model.C=0.5"]) == ({}, ["model.C=0.5"])
