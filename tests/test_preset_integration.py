"""Two full training steps per method preset through ``fit`` on a tiny model: parameters
change, every logged loss is finite, and the metric keys each preset must report are logged.

Each preset runs exactly as shipped (no overrides except DAPO's overlong buffer, scaled to the
5-token budget). A synthetic parity reward gives mixed groups on a random model.
"""

from __future__ import annotations

import math

import pytest
import torch

from archer.algos import build_update_plan
from archer.models import build_tiny_model
from archer.rewards import REWARDS, register_reward
from archer.tracking import JsonlLogger
from archer.train_config import TrainConfig
from archer.trainer import STEP_METRICS, build_context, fit, setup_torch
from experiments.presets import load_preset, preset_names

if "test_parity_presets" not in REWARDS:

    @register_reward("test_parity_presets")
    def parity_reward(completions, **columns):
        return [float(sum(map(ord, c)) % 2 == 0) for c in completions]


PRESETS = ("grpo", "dapo", "dr_grpo", "high_entropy_only", "ar_lopti", "archer", "aspo")
LOSSES = ("actor/pg_loss", "actor/kl_loss", "actor/loss", "actor/grad_norm")


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), hidden=32, layers=2, heads=4)


def test_every_shipped_preset_is_covered():
    assert sorted(PRESETS) == preset_names()


@pytest.mark.parametrize("preset", PRESETS)
def test_two_steps_per_preset(tiny_path, tmp_path, preset):
    algo = load_preset(preset, {"overlong_buffer_len": 2} if preset == "dapo" else None).algo
    cfg = TrainConfig(
        model=str(tiny_path), algo=algo, reward="test_parity_presets",
        data={"task": "chain_sum", "size": 40, "seed": 0}, prompts_per_step=4, group_size=4,
        max_new_tokens=5, mini_batch_prompts=2, micro_batch_size=3, ppo_epochs=2, lr=1e-3,
        total_steps=2, val_every=2, val_size=4, out_dir=str(tmp_path), num_threads=1,
        export_final=False)
    setup_torch(cfg)
    before = {k: v.detach().clone() for k, v in build_context(cfg).model.named_parameters()}
    result = fit(cfg)
    changed = [k for k, v in result.model.named_parameters() if not torch.equal(v, before[k])]
    assert changed, f"{preset}: no parameter changed in 2 steps"

    rows = JsonlLogger(tmp_path, run_id=result.state.run_id).read_metrics()
    assert [r["step"] for r in rows] == [1, 2]
    updated = [r for r in rows if r["train/step_skipped"] == 0.0]
    assert updated, f"{preset}: both steps were skipped"
    expected = set(STEP_METRICS)
    if algo.update_mode == "mask":  # trains no low-entropy token: no clip fraction there
        low_clips = {"actor/clipfrac_low_entropy_upper", "actor/clipfrac_low_entropy_lower"}
        assert not low_clips & {k for row in rows for k in row}
        expected -= low_clips
    for row in updated:
        missing = sorted(expected - set(row))
        assert not missing, f"{preset}: metrics not logged: {missing}"
        for key in LOSSES:
            assert isinstance(row[key], float) and math.isfinite(row[key]), (key, row[key])
        # The two classes' PG contributions add up to the PG loss (ARCHER.md section 4).
        pg = row["actor/pg_contrib_high_entropy"] + row["actor/pg_contrib_low_entropy"]
        assert pg == pytest.approx(row["actor/pg_loss"], abs=1e-5)
        phases = len(build_update_plan(algo))
        assert row["actor/optimizer_steps"] == 2 * 2 * phases  # epochs x mini-batches x phases
    assert "val/reward_mean" in rows[-1]
    if algo.needs_reference:
        assert any(r["actor/kl_loss"] != 0.0 for r in updated), f"{preset}: KL never active"
    else:
        assert all(r["actor/kl_loss"] == 0.0 for r in updated)

