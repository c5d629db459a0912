"""The compared mechanisms act, and their metrics show it (tiny char-level Llama, CPU).

Every test runs the real trainer on one step's rollout (or two steps) with off-policy settings
(2 mini-batches x 3 PPO epochs, old log-probs from the sampling policy), so ratios move away
from 1 and the clips bind. "Same batch" means the rollout is sampled once and every compared
configuration updates from the same initial weights on it.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import shared_rewards  # noqa: F401  (registers test_parity, test_const)
import torch

import archer.trainer.update as update
from archer.algos import compute_policy_loss
from archer.config import AlgoConfig, TokenClassConfig
from archer.models import build_tiny_model
from archer.train_config import TrainConfig
from archer.trainer import (
    PhaseTimer,
    accumulate_gradients,
    build_context,
    collect_rollouts,
    fit,
    minibatch_split,
    prepare_update_batch,
    setup_torch,
    update_policy,
)
from experiments.presets import load_preset

CLASSES = ("high_entropy", "low_entropy")


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), hidden=32, layers=2, heads=4)


def make_cfg(tiny_path, out_dir, algo: AlgoConfig, **overrides) -> TrainConfig:
    """4 prompts x 4 samples; off-policy: 2 mini-batches of 2 prompts x 3 epochs, lr 3e-3."""
    base = dict(
        model=str(tiny_path), algo=algo, reward="test_parity",
        data={"task": "chain_sum", "size": 40, "seed": 0}, prompts_per_step=4, group_size=4,
        max_new_tokens=5, mini_batch_prompts=2, micro_batch_size=16, ppo_epochs=3, lr=3e-3,
        total_steps=1, val_every=0, val_size=4, out_dir=str(out_dir), num_threads=1,
        deterministic=True, export_final=False,
    )
    base.update(overrides)
    return TrainConfig(**base)


def preset(name: str, **changes) -> AlgoConfig:
    return replace(load_preset(name).algo, **changes)


def rollout(tiny_path, tmp_path, **overrides):
    """The first step's kept groups and rewards (sampled once, shared by the compared runs)."""
    cfg = make_cfg(tiny_path, tmp_path / "rollout", preset("archer"), **overrides)
    setup_torch(cfg)
    batch, rewards, _ = collect_rollouts(build_context(cfg), PhaseTimer())
    assert batch is not None, "no informative group in the first step"
    return batch, rewards


def update_on(tiny_path, tmp_path, batch, rewards, algo: AlgoConfig, **overrides):
    """A fresh context (the initial weights) updated with ``algo`` on ``batch``."""
    cfg = make_cfg(tiny_path, tmp_path / "update", algo, **overrides)
    setup_torch(cfg)
    ctx = build_context(cfg)
    return ctx, update_policy(ctx, prepare_update_batch(ctx, batch, rewards))


def clipfrac(metrics: dict[str, float], name: str) -> float:
    return (metrics[f"actor/clipfrac_{name}_lower"] + metrics[f"actor/clipfrac_{name}_upper"])


def record_losses(monkeypatch, retain_grad: bool = False) -> list:
    """Every loss call of the update (its LossInputs), in order, with the optimizer steps
    between them as the string "step"."""
    events: list = []
    original_loss, original_step = update.compute_policy_loss, update.optimizer_step

    def loss(name, inputs, cfg, with_metrics=True, scales=None):
        if retain_grad:
            inputs.logprobs.retain_grad()
        events.append(inputs)
        return original_loss(name, inputs, cfg, with_metrics, scales)

    def step(ctx):
        events.append("step")
        return original_step(ctx)

    monkeypatch.setattr(update, "compute_policy_loss", loss)
    monkeypatch.setattr(update, "optimizer_step", step)
    return events


# --- the KL monitor ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["grpo", "archer"])
def test_kl_monitor_logs_the_kl_and_leaves_training_bit_identical(tiny_path, tmp_path, name):
    """kl_monitor loads the reference and logs actor/kl_* per class; the parameters after two
    off-policy steps are bit-identical to the run without it (no gradient flows through it,
    and the reference pass changes nothing else, e.g. the sampling random stream)."""
    runs = {}
    for monitor in (False, True):
        cfg = make_cfg(tiny_path, tmp_path / str(monitor), preset(name, kl_monitor=monitor),
                       total_steps=2)
        setup_torch(cfg)
        result = fit(cfg)
        runs[monitor] = (dict(result.model.named_parameters()), result.metrics)
    (p_off, m_off), (p_on, m_on) = runs[False], runs[True]
    for k in p_off:
        assert torch.equal(p_off[k], p_on[k]), k
    for step_off, step_on in zip(m_off, m_on, strict=True):
        assert step_on["train/step_skipped"] == 0.0
        for cls in CLASSES:
            assert step_on[f"actor/kl_{cls}"] > 0  # the policy moved off the reference
            if name == "grpo":  # no KL weight: no KL metric without the monitor
                assert f"actor/kl_{cls}" not in step_off
            else:  # archer has a KL term: the monitor changes nothing
                assert step_on[f"actor/kl_{cls}"] == step_off[f"actor/kl_{cls}"]
        same = [k for k in step_off if not k.startswith(("time/", "perf/"))]
        assert {k: step_on[k] for k in same} == {k: step_off[k] for k in same}
    if name == "grpo":
        assert all(m["actor/kl_loss"] == 0.0 for m in m_on)


@pytest.mark.parametrize("fused", [True, False])
def test_monitored_kl_is_a_metric_only_in_the_loss(fused):
    """With every KL weight 0, giving the loss the reference log-probs adds the per-class KL
    metrics and changes neither the loss value nor its gradient (bit for bit)."""
    from archer.algos import LossInputs, dual_token_clip_loss

    g = torch.Generator().manual_seed(0)
    old = -torch.rand(6, 7, generator=g) * 3
    logp = old + 0.3 * torch.randn(6, 7, generator=g)
    mask = torch.arange(7)[None] < torch.tensor([7, 5, 3, 7, 1, 6])[:, None]
    high = torch.rand(6, 7, generator=g) > 0.7
    adv = torch.randn(6, generator=g)
    ref = old + 0.2 * torch.randn(6, 7, generator=g)
    cfg = preset("grpo", kl_monitor=True)
    outs = {}
    for with_ref in (False, True):
        lp = logp.clone().requires_grad_(True)
        out = dual_token_clip_loss(LossInputs(lp, old, adv, mask, high, ref if with_ref
                                              else None), cfg, fused=fused)
        (grad,) = torch.autograd.grad(out.loss, lp)
        outs[with_ref] = (out, grad)
    (plain, g_plain), (monitored, g_mon) = outs[False], outs[True]
    assert torch.equal(plain.loss, monitored.loss) and torch.equal(g_plain, g_mon)
    assert float(monitored.kl_loss.detach()) == 0.0
    for cls, m in zip(CLASSES, (high & mask, ~high & mask), strict=True):
        assert f"actor/kl_{cls}" not in plain.metrics
        d = ref - logp  # k3 = exp(d) - d - 1, averaged over the class's valid tokens
        expected = ((torch.exp(d) - d - 1)[m]).mean()
        torch.testing.assert_close(monitored.metrics[f"actor/kl_{cls}"], expected)


def test_kl_monitor_loads_the_reference_only_when_asked(tiny_path, tmp_path):
    grpo = preset("grpo")
    assert not grpo.needs_reference and not grpo.loads_reference
    assert build_context(make_cfg(tiny_path, tmp_path, grpo)).ref is None
    monitored = replace(grpo, kl_monitor=True)
    assert monitored.loads_reference and not monitored.needs_reference
    assert build_context(make_cfg(tiny_path, tmp_path, monitored)).ref is not None


# --- clipping ----------------------------------------------------------------------------


def test_off_policy_clips_bind_in_both_classes_and_archer_clips_fewer_high_tokens(
        tiny_path, tmp_path):
    """With 2 mini-batches x 3 epochs the clips bind for both token classes; on the same
    batch, Archer's loose high-entropy bound (0.5) clips fewer high-entropy tokens than
    GRPO's (0.2 / 0.28). On-policy (1 mini-batch, 1 epoch) nothing is ever clipped."""
    batch, rewards = rollout(tiny_path, tmp_path)
    _, archer = update_on(tiny_path, tmp_path, batch, rewards, preset("archer"))
    _, grpo = update_on(tiny_path, tmp_path, batch, rewards, preset("grpo"))
    for cls in CLASSES:
        assert clipfrac(archer, cls) > 0, cls
        assert clipfrac(grpo, cls) > 0, cls
    assert clipfrac(archer, "high_entropy") < clipfrac(grpo, "high_entropy")
    _, on_policy = update_on(tiny_path, tmp_path, batch, rewards, preset("archer"),
                             ppo_epochs=1, mini_batch_prompts=4)
    assert on_policy["actor/clipfrac"] == 0.0


def moved_policy(tiny_path, tmp_path, lr: float = 1e-3, ppo_epochs: int = 1):
    """The context after one Archer update on the first batch, and that batch's update
    inputs (old log-probs from the sampling policy): ratios are away from 1."""
    batch, rewards = rollout(tiny_path, tmp_path)
    ctx, _ = update_on(tiny_path, tmp_path, batch, rewards, preset("archer"), lr=lr,
                       ppo_epochs=ppo_epochs)
    return ctx, prepare_update_batch_from(ctx, batch, rewards)


def prepare_update_batch_from(ctx, batch, rewards):
    """The update inputs of ``batch`` with the old log-probs of the initial weights."""
    fresh = build_context(ctx.cfg)
    return prepare_update_batch(fresh, batch, rewards)


def loss_metrics(ctx, ub, algo: AlgoConfig) -> dict[str, float]:
    """The loss diagnostics of ``algo`` on the whole batch at the context's weights (no step)."""
    ctx.cfg = replace(ctx.cfg, algo=algo, micro_batch_size=ub.num_rows)
    ctx.model.zero_grad(set_to_none=True)
    metrics, _ = accumulate_gradients(ctx, ub, ctx.plan[0], minibatch_split(ctx, ub))
    return metrics


def test_a_class_clips_fewer_tokens_as_its_bound_widens(tiny_path, tmp_path):
    """Same batch, same (moved) policy: widening one class's clip range lowers that class's
    clip fraction and leaves the other class's unchanged."""
    ctx, ub = moved_policy(tiny_path, tmp_path)
    base = preset("archer")
    for cls, field_name in (("high_entropy", "high"), ("low_entropy", "low")):
        fracs, others = [], []
        for eps in (0.02, 0.05, 0.1):
            algo = replace(base, **{field_name: replace(getattr(base, field_name),
                                                        clip_low=eps, clip_high=eps)})
            m = loss_metrics(ctx, ub, algo)
            fracs.append(clipfrac(m, cls))
            other = "low_entropy" if cls == "high_entropy" else "high_entropy"
            others.append(clipfrac(m, other))
        assert fracs[0] > fracs[1] > fracs[2], (cls, fracs)
        assert others[0] == others[1] == others[2], (cls, others)


def test_archer_and_grpo_losses_differ_off_policy_and_agree_on_policy(tiny_path, tmp_path):
    """GRPO with Archer's aggregation and no KL differs from Archer only in its clip bounds:
    at ratio 1 (on-policy) the two PG losses are equal; off-policy they differ."""
    ctx, ub = moved_policy(tiny_path, tmp_path, lr=3e-3, ppo_epochs=3)  # the clips bind
    archer = preset("archer", low=TokenClassConfig(0.2, 0.2, 1.0, 0.0))
    grpo = preset("grpo", loss_agg_mode=archer.loss_agg_mode)
    off = [loss_metrics(ctx, ub, a)["actor/pg_loss"] for a in (archer, grpo)]
    assert abs(off[0] - off[1]) > 1e-4, off
    fresh = build_context(ctx.cfg)  # the initial weights: old log-probs = current ones
    on = [loss_metrics(fresh, ub, a)["actor/pg_loss"] for a in (archer, grpo)]
    assert on[0] == pytest.approx(on[1], abs=1e-7)


# --- KL to the reference -----------------------------------------------------------------


def test_low_entropy_kl_falls_as_its_weight_rises(tiny_path, tmp_path):
    """Same batch: the KL to the reference on low-entropy tokens (measured by the monitor at
    weight 0) falls as algo.low.kl_weight rises."""
    batch, rewards = rollout(tiny_path, tmp_path)
    kls = []
    for weight in (0.0, 1.0, 10.0):
        algo = preset("archer", kl_monitor=True,
                      low=TokenClassConfig(0.2, 0.2, 1.0, weight))
        _, m = update_on(tiny_path, tmp_path, batch, rewards, algo)
        kls.append(m["actor/kl_low_entropy"])
    assert kls[0] > kls[1] > kls[2] > 0, kls


# --- the entropy split -------------------------------------------------------------------


@pytest.mark.parametrize("rho", [0.8, 0.5])
def test_high_entropy_count_per_response_follows_the_quantile_rule(tiny_path, tmp_path,
                                                                  monkeypatch, rho):
    """response scope: a response's high-entropy tokens are exactly those whose entropy is
    above the rho-quantile (linear interpolation) of its own valid tokens' entropies, checked
    with numpy on the entropies the trainer computed for the real rollout (16-token
    responses, so the quantile falls between tokens and on one)."""
    events = record_losses(monkeypatch)
    batch, rewards = rollout(tiny_path, tmp_path, max_new_tokens=16)
    algo = preset("archer", entropy_quantile=rho)
    update_on(tiny_path, tmp_path, batch, rewards, algo, max_new_tokens=16)
    inputs = [e for e in events if e != "step"]
    assert inputs
    checked = 0
    for inp in inputs:
        entropy = inp.entropy.detach().double().numpy()
        valid = inp.response_mask.numpy()
        high = inp.high_entropy_mask.numpy()
        for row in range(entropy.shape[0]):
            values = entropy[row][valid[row]]
            if values.size == 0:
                assert not high[row].any()
                continue
            tau = np.quantile(values, rho)
            assert int(high[row].sum()) == int((values > tau).sum())
            assert high[row][valid[row]].tolist() == (values > tau).tolist()
            assert not (high[row] & ~valid[row]).any()
            checked += 1
    assert checked >= 16


# --- update schedules --------------------------------------------------------------------


@pytest.mark.parametrize("split, first", [("prob", "low_prob"), ("entropy", "low_entropy")])
def test_async_mode_takes_two_passes_per_minibatch_in_order(tiny_path, tmp_path, monkeypatch,
                                                            split, first):
    """ar_lopti (update_mode=async): per mini-batch, one optimizer pass on the first group,
    then one on the rest; the groups split the valid tokens by old-policy probability
    (threshold 0.5, low first) or by the entropy class."""
    events = record_losses(monkeypatch)
    batch, rewards = rollout(tiny_path, tmp_path)
    # the random tiny model gives every token p ~ 0.01: a threshold inside that range
    algo = preset("ar_lopti", async_split=split, async_first=first, async_prob_threshold=0.01)
    _, metrics = update_on(tiny_path, tmp_path, batch, rewards, algo)
    n_minibatches = math.ceil(len(torch.unique(batch.group_index)) / 2)
    # micro_batch_size holds a mini-batch: one loss call, then one step, per phase
    assert events[1::2] == ["step"] * (len(events) // 2)
    phases = events[0::2]
    assert len(phases) == 3 * 2 * n_minibatches  # epochs x phases x mini-batches
    for a, b in zip(phases[0::2], phases[1::2], strict=True):
        valid = a.response_mask
        assert torch.equal(a.response_mask, b.response_mask)  # the same mini-batch
        if split == "prob":
            low_prob = valid & (a.old_logprobs < math.log(algo.async_prob_threshold))
            assert torch.equal(a.token_mask, low_prob)
        else:
            assert torch.equal(a.token_mask, valid & ~a.high_entropy_mask)
        assert torch.equal(b.token_mask, valid & ~a.token_mask)
        assert a.token_mask.any() and b.token_mask.any()
    assert metrics["actor/optimizer_steps"] == len(phases)


def test_per_class_metrics_count_only_the_phases_that_train_the_class(tiny_path, tmp_path,
                                                                       monkeypatch):
    """async split by entropy: each phase trains one class, so a step's clip fraction of a
    class is the mean over the phases that train it (not halved by the other class's
    phases); mask mode trains no low-entropy token, so it logs no low clip fraction, while
    the monitor still measures that class's KL to the reference (it drifts with the shared
    weights)."""
    batch, rewards = rollout(tiny_path, tmp_path)
    losses = []
    original = update.compute_policy_loss

    def keep(name, inputs, cfg, with_metrics=True, scales=None):
        out = original(name, inputs, cfg, with_metrics, scales)
        losses.append({k: float(v) for k, v in out.metrics.items()})
        return out

    monkeypatch.setattr(update, "compute_policy_loss", keep)
    algo = preset("ar_lopti", async_split="entropy", async_first="high_entropy",
                  kl_monitor=True)
    _, metrics = update_on(tiny_path, tmp_path, batch, rewards, algo)
    for name in CLASSES:
        key = f"actor/clipfrac_{name}_upper"
        trained = [m[key] for m in losses if key in m]
        assert 0 < len(trained) == len(losses) // 2  # one phase in two trains the class
        assert metrics[key] == pytest.approx(float(np.mean(trained)), rel=1e-9)
        kls = [m[f"actor/kl_{name}"] for m in losses]  # measured in every phase
        assert len(kls) == len(losses) and max(kls) > 0
    losses.clear()
    _, masked = update_on(tiny_path, tmp_path, batch, rewards,
                          preset("high_entropy_only", kl_monitor=True))
    assert all("actor/clipfrac_low_entropy_upper" not in m for m in losses)
    assert "actor/clipfrac_low_entropy_upper" not in masked
    assert masked["actor/kl_low_entropy"] > 0 and masked["actor/clipfrac_high_entropy_upper"] >= 0
    # the high-entropy share is the split's, over every response token, in every update mode
    # (mask mode once logged 1, the share of trained tokens); the modes' later epochs split
    # their own, differently updated policies, hence "near"
    _, synced = update_on(tiny_path, tmp_path, batch, rewards, preset("archer"))
    assert 0.1 < synced["actor/frac_high_entropy"] < 0.5
    for other in (masked, metrics):
        assert other["actor/frac_high_entropy"] == pytest.approx(
            synced["actor/frac_high_entropy"], abs=0.03)


def test_mask_mode_gives_low_entropy_tokens_exactly_zero_gradient(tiny_path, tmp_path,
                                                                 monkeypatch):
    """update_mode=mask: the gradient of the loss w.r.t. every low-entropy token's log-prob
    is exactly 0 (with the low class's pg_weight left at 1, so the mask alone does it); the
    high-entropy tokens get gradient. In sync mode the low tokens get gradient too."""
    batch, rewards = rollout(tiny_path, tmp_path)
    grads = {}
    for mode in ("mask", "sync"):
        events = record_losses(monkeypatch, retain_grad=True)
        algo = preset("high_entropy_only", update_mode=mode,
                      low=TokenClassConfig(0.2, 0.28, 1.0, 0.0))
        update_on(tiny_path, tmp_path, batch, rewards, algo)
        monkeypatch.undo()
        grads[mode] = [(e.logprobs.grad, e.response_mask & ~e.high_entropy_mask,
                        e.response_mask & e.high_entropy_mask) for e in events if e != "step"]
    for grad, low, high in grads["mask"]:
        assert torch.count_nonzero(grad[low]) == 0
        assert torch.count_nonzero(grad[high]) > 0
    assert any(torch.count_nonzero(grad[low]) > 0 for grad, low, _ in grads["sync"])


# --- ASPO --------------------------------------------------------------------------------


def test_aspo_positive_advantage_gradient_is_ppos_over_r_squared(tiny_path, tmp_path,
                                                                monkeypatch):
    """On the trainer's own inputs at a moved policy: for A > 0 tokens inside both clip
    ranges, d(ASPO)/dlogp = -A w / r and d(PPO)/dlogp = -A w r, so their ratio is 1 / r^2
    (the positive-advantage importance weight flipped to 1 / r)."""
    ctx, ub = moved_policy(tiny_path, tmp_path)
    events = record_losses(monkeypatch)
    loss_metrics(ctx, ub, preset("archer"))
    inp = events[0]
    grads = {}
    for name in ("aspo", "dual_token_clip"):
        lp = inp.logprobs.detach().clone().requires_grad_(True)
        out = compute_policy_loss(name, replace(inp, logprobs=lp), preset("archer"), False)
        (grad,) = torch.autograd.grad(out.loss, lp)
        grads[name] = grad
    ratio = torch.exp(inp.logprobs.detach() - inp.old_logprobs)
    adv = inp.advantages[:, None].expand_as(ratio)
    live = (inp.response_mask & (adv > 0) & (ratio > 0.9) & (ratio < 1.1)
            & (grads["dual_token_clip"] != 0))
    assert live.sum() > 10 and (ratio[live] - 1).abs().max() > 1e-3
    torch.testing.assert_close(grads["aspo"][live] / grads["dual_token_clip"][live],
                               1 / ratio[live] ** 2, rtol=1e-4, atol=0)
