"""End to end, RL must learn: on a random tiny model, a reward for answers starting with "7"
(about 1 in 50 samples at first) rises several-fold within 30 steps of the archer preset.

This is the trainer's behavioural check (sampling, rewards, advantages, the dual-token loss and
the optimizer working together), independent of any task a tiny model finds hard.
"""

from __future__ import annotations

import pytest

from archer.models import build_tiny_model
from archer.rewards import REWARDS, register_reward
from archer.train_config import TrainConfig
from archer.trainer import fit
from experiments.presets import load_preset

if "test_starts_with_7" not in REWARDS:

    @register_reward("test_starts_with_7")
    def starts_with_7(completions, **columns):
        return [float(c.strip().startswith("7")) for c in completions]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["archer", "grpo"])
def test_reward_rises_under_rl(tmp_path, preset):
    tiny = build_tiny_model(tmp_path / "tiny", hidden=32, layers=2, heads=4)
    cfg = TrainConfig(
        model=str(tiny), algo=load_preset(preset).algo, reward="test_starts_with_7",
        data={"task": "chain_sum", "size": 200, "seed": 0}, template="none",
        prompts_per_step=8, group_size=8, max_new_tokens=3, mini_batch_prompts=8,
        micro_batch_size=64, lr=3e-3, total_steps=30, val_size=8, out_dir=str(tmp_path / "run"),
        num_threads=1, export_final=False)
    rewards = [m["reward/mean"] for m in fit(cfg, progress=False).metrics]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > max(3 * first, 0.1), rewards
