"""Hydra composition and start-up validation: every bad value is one line naming its key."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from conftest import ROOT
from lmmixup.config import TrainConfig, register_configs, to_train_config
from lmmixup.errors import ConfigError

register_configs()


def load(*overrides) -> TrainConfig:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return to_train_config(compose("config", overrides=list(overrides)))


def test_default_config_composes_to_typed_dataclasses():
    cfg = load()
    assert isinstance(cfg, TrainConfig)
    assert cfg.model.name_or_path == "embedded:smollm2-135m-instruct"
    assert cfg.algo.loss == "grpo" and cfg.algo.group_size == 4
    assert cfg.logger.backend == "wandb"
    assert set(cfg.reward.weights) == {"tags", "length"}


def test_experiment_and_group_overrides():
    cfg = load("experiment=smoke", "algo=dr_grpo", "algo.beta=0", "reward.weights.tags=0.5")
    assert cfg.model.name_or_path == "tiny" and cfg.steps == 4
    assert cfg.algo.loss == "dr_grpo" and cfg.algo.adv_scale == "none" and cfg.algo.beta == 0
    assert cfg.reward.weights["tags"] == 0.5


@pytest.mark.parametrize("preset,expect", [
    ("dapo", dict(loss="dapo", eps_high=0.28, beta=0.0, filter_zero_std_groups=True)),
    ("gspo", dict(ratio_level="sequence", eps_low=3e-4, eps_high=4e-4)),
    ("paper", dict(beta=0.01, eps_high=0.3)),
])
def test_algorithm_presets(preset, expect):
    algo = load(f"algo={preset}").algo
    for key, value in expect.items():
        assert getattr(algo, key) == pytest.approx(value) if isinstance(value, float) else getattr(algo, key) == value


@pytest.mark.parametrize("override,fragment", [
    ("algo.no_such_key=1", "no_such_key"),
    ("algo.beta=abc", "beta"),
    ("steps=many", "steps"),
])
def test_unknown_keys_and_wrong_types_fail_at_compose(override, fragment):
    with pytest.raises(ConfigCompositionException) as info:
        load(override)
    assert fragment in str(info.value) + str(info.value.__cause__)


@pytest.mark.parametrize("override,message", [
    ("algo.group_size=1", "algo.group_size: must be >= 2"),
    ("reward.weights.tags=-0.5", "reward.weights.tags: weights must be finite and >= 0"),
    ("rollout.max_new_tokens=0", "rollout.max_new_tokens: must be > 0"),
    ("algo.eps_low=1.0", "algo.eps_low: must be in [0, 1)"),
    ("algo.loss=ppo", "algo.loss: unknown 'ppo'"),
    ("prompts_per_step=4 mini_batch_prompts=3", "mini_batch_prompts: must divide"),
    ("data.max_prompt_tokens=-1", "data.max_prompt_tokens: must be > 0"),
    ("algo.max_resample_rounds=2", "algo.max_resample_rounds: needs algo.filter_zero_std_groups"),
])
def test_validation_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load(*override.split())
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)
