"""Rollout/train mismatch metric and truncated importance sampling in the trainer, on the HF
backend (no vLLM needed): the HF sampler's log-probs equal the trainer's, so the mismatch is
~0 and every TIS ratio is ~1, which makes the effect of a cap below 1 exact and checkable."""

from __future__ import annotations

import dataclasses

import pytest
import shared_rewards  # noqa: F401  (registers test_parity, test_const)

from archer.config import AlgoConfig
from archer.models import build_tiny_model
from archer.train_config import TrainConfig
from archer.trainer import build_context, is_on_policy, setup_torch, train_step
from experiments.presets import load_preset


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), hidden=32, layers=2, heads=4)


def make_cfg(tiny_path, out_dir, **overrides) -> TrainConfig:
    base = dict(
        model=str(tiny_path), algo=load_preset("archer").algo, reward="test_parity",
        data={"task": "chain_sum", "size": 40, "seed": 0}, prompts_per_step=4, group_size=4,
        max_new_tokens=5, mini_batch_prompts=2, micro_batch_size=4, ppo_epochs=2, lr=1e-3,
        total_steps=2, val_every=0, val_size=4, out_dir=str(out_dir), num_threads=1,
        deterministic=True, export_final=False)
    return TrainConfig(**(base | overrides))


def first_step(cfg: TrainConfig) -> dict[str, float]:
    setup_torch(cfg)
    ctx = build_context(cfg)
    metrics = train_step(ctx)
    assert metrics["train/step_skipped"] == 0.0, "the seed should give a mixed group"
    return metrics


@pytest.mark.parametrize("on_policy", [True, False])
def test_hf_mismatch_is_logged_and_tiny(tiny_path, tmp_path, on_policy):
    overrides = dict(ppo_epochs=1, mini_batch_prompts=4) if on_policy else {}
    cfg = make_cfg(tiny_path, tmp_path, **overrides)
    setup_torch(cfg)
    ctx = build_context(cfg)
    assert is_on_policy(ctx, cfg.prompts_per_step) is on_policy
    m = train_step(ctx)
    # The HF sampler scores tokens with the same weights: only float noise separates them.
    assert 0.0 <= m["rollout/mismatch_kl"] < 1e-9
    assert m["rollout/mismatch_abs_max"] < 1e-4
    assert abs(m["rollout/mismatch_kl_k1"]) < 1e-5


def test_tis_cap_below_one_scales_the_pg_gradient(tiny_path, tmp_path):
    """Every ratio p_t / p_s is 1 (+-1e-6), so cap 0.5 makes every weight exactly 0.5: the
    same rollout's policy gradient is halved (the on-policy PG loss itself is ~0: GRPO
    advantages sum to 0 in each group); a cap of 2 leaves it as it is. No KL term here."""
    algo = dataclasses.replace(load_preset("grpo").algo, tis_cap=None)
    assert not algo.needs_reference
    base = make_cfg(tiny_path, tmp_path / "a", ppo_epochs=1, mini_batch_prompts=4, algo=algo)
    plain = first_step(base)

    def with_cap(cap: float, sub: str) -> dict[str, float]:
        algo = dataclasses.replace(base.algo, tis_cap=cap)
        return first_step(dataclasses.replace(base, algo=algo, out_dir=str(tmp_path / sub)))

    half, loose = with_cap(0.5, "b"), with_cap(2.0, "c")
    assert half["reward/mean"] == plain["reward/mean"]  # the same rollout
    assert plain["actor/grad_norm"] > 1e-3
    assert half["actor/grad_norm"] == pytest.approx(0.5 * plain["actor/grad_norm"], rel=1e-4)
    assert half["rollout/tis_weight_mean"] == pytest.approx(0.5)
    assert half["rollout/tis_capped_frac"] == 1.0
    assert loose["actor/grad_norm"] == pytest.approx(plain["actor/grad_norm"], rel=1e-4)
    assert loose["rollout/tis_capped_frac"] == 0.0
    assert "rollout/tis_weight_mean" not in plain


@pytest.mark.parametrize("overrides, field", [
    ({"rollout_backend": "vlm"}, "rollout_backend"),
    ({"vllm_gpu_memory_utilization": 0.0}, "vllm_gpu_memory_utilization"),
    ({"vllm_gpu_memory_utilization": 1.5}, "vllm_gpu_memory_utilization"),
    ({"vllm_tensor_parallel_size": 0}, "vllm_tensor_parallel_size"),
    ({"vllm_max_model_len": 0}, "vllm_max_model_len"),
    ({"vllm_enable_sleep_mode": "yes"}, "vllm_enable_sleep_mode"),
])
def test_rollout_config_validation_names_the_field(overrides, field):
    from archer.config import ConfigError

    with pytest.raises(ConfigError, match=field):
        TrainConfig(**overrides)
    assert TrainConfig(rollout_backend="vllm", algo=AlgoConfig(tis_cap=2.0)).rollout_backend \
        == "vllm"


def test_hydra_composes_the_vllm_backend_and_tis():
    from experiments.train_cli import build_train_setup, compose_config

    setup = build_train_setup(compose_config(
        ["rollout_backend=vllm", "vllm_enable_sleep_mode=true",
         "algo.tis_cap=2.0", "tracking=none"]))
    assert setup.train.rollout_backend == "vllm" and setup.train.vllm_enable_sleep_mode
    assert setup.train.algo.tis_cap == 2.0
