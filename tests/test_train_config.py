"""TrainConfig / DataConfig / DistributedConfig / SFTConfig validation: bool fields, the group
size the advantage estimators need, and the run directory."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from archer.algos.advantages import compute_advantages, nonuniform_group_mask
from archer.config import ADVANTAGE_ESTIMATORS, AlgoConfig, ConfigError
from archer.sft import SFTConfig
from archer.train_config import DataConfig, DistributedConfig, TrainConfig


def bool_fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.type in ("bool", bool)]


BOOL_CASES = (
    [(TrainConfig, name, name) for name in bool_fields(TrainConfig)]
    + [(DataConfig, name, f"data.{name}") for name in bool_fields(DataConfig)]
    + [(DistributedConfig, name, f"distributed.{name}")
       for name in bool_fields(DistributedConfig)]
    + [(SFTConfig, name, name) for name in bool_fields(SFTConfig)]
)


def test_every_bool_field_is_covered():
    named = {(cls.__name__, name) for cls, name, _ in BOOL_CASES}
    assert {("TrainConfig", "resume"), ("TrainConfig", "export_final"),
            ("TrainConfig", "deterministic"), ("TrainConfig", "shuffle_minibatches"),
            ("DataConfig", "skip_bad_records"),
            ("DistributedConfig", "reshard_after_forward"),
            ("SFTConfig", "share_prefix")} <= named


@pytest.mark.parametrize("cls,name,key", BOOL_CASES,
                         ids=[f"{c.__name__}.{n}" for c, n, _ in BOOL_CASES])
@pytest.mark.parametrize("value", ["no", "maybe", 1, None])
def test_bool_fields_reject_non_bools_naming_key_and_value(cls, name, key, value):
    # "no" is truthy: accepted, it would turn the setting ON
    with pytest.raises(ConfigError, match=f"^{re.escape(f'{key}={value!r}')} must be true or "
                                          "false$"):
        cls(**{name: value})
    cls(**{name: True})
    cls(**{name: False})


def test_nested_bools_from_mappings_name_their_section():
    with pytest.raises(ConfigError, match="data.skip_bad_records='no' must be true or false"):
        TrainConfig(data={"skip_bad_records": "no"})
    with pytest.raises(ConfigError,
                       match="distributed.reshard_after_forward='yes' must be true or false"):
        TrainConfig(distributed={"reshard_after_forward": "yes"})


@pytest.mark.parametrize("group_filter", ["drop", "refill"])
def test_group_size_one_is_an_error_where_groups_are_filtered(group_filter):
    with pytest.raises(ConfigError, match=(
            f"group_size=1 is invalid with algo.group_filter='{group_filter}': group-relative "
            "advantages need at least 2 samples per prompt")):
        TrainConfig(group_size=1, algo=AlgoConfig(group_filter=group_filter))
    TrainConfig(group_size=2, algo=AlgoConfig(group_filter=group_filter))


def test_group_size_one_trains_on_the_raw_reward_without_a_filter():
    # the reason group_filter=none may keep G=1: every group of one is "all-equal" (so drop
    # and refill keep nothing), and every estimator then gives A = reward (no baseline)
    TrainConfig(group_size=1, algo=AlgoConfig(group_filter="none"))
    rewards, groups = torch.tensor([1.0, 0.0, 0.5]), torch.tensor([0, 1, 2])
    assert not nonuniform_group_mask(rewards, groups).any()
    for name in ADVANTAGE_ESTIMATORS:
        assert torch.allclose(compute_advantages(name, rewards, groups), rewards, atol=1e-5)


def test_out_dir_that_is_a_file_is_an_error_naming_key_and_path(tmp_path):
    existing = tmp_path / "notes.txt"
    existing.write_text("x")
    for cls in (TrainConfig, SFTConfig):
        with pytest.raises(ConfigError, match=re.escape(
                f"out_dir='{existing}' is an existing file, not a directory")):
            cls(out_dir=str(existing))
        with pytest.raises(ConfigError, match=re.escape(
                f"out_dir='{existing}/run' is inside '{existing}', which is an existing file")):
            cls(out_dir=str(existing / "run"))
        with pytest.raises(ConfigError, match="out_dir='' is invalid"):
            cls(out_dir="")
        cls(out_dir=str(tmp_path))  # an existing directory
        cls(out_dir=str(tmp_path / "new" / "run"))  # created later
