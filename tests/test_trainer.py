"""Trainer on a tiny char-level Llama (hidden 32, 2 layers), G=4, 4 prompts, 5 new tokens.

A synthetic reward (parity of the response's character codes) gives mixed groups on a random
model, so updates happen; a constant reward makes every group all-equal.
"""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import shared_rewards  # noqa: F401  (registers test_parity, test_const)
import torch

from archer.config import AlgoConfig, ConfigError
from archer.models import build_tiny_model
from archer.train_config import TrainConfig
from archer.trainer import (
    STEP_METRICS,
    PhaseTimer,
    accumulate_gradients,
    build_context,
    collect_rollouts,
    fit,
    minibatch_split,
    prepare_update_batch,
    setup_torch,
    train_step,
)
from experiments.presets import load_preset


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), hidden=32, layers=2, heads=4)


def make_cfg(tiny_path, out_dir, algo: AlgoConfig | None = None, **overrides) -> TrainConfig:
    base = dict(
        model=str(tiny_path), algo=algo or load_preset("archer").algo, reward="test_parity",
        data={"task": "chain_sum", "size": 40, "seed": 0}, prompts_per_step=4, group_size=4,
        max_new_tokens=5, mini_batch_prompts=2, micro_batch_size=4, ppo_epochs=2, lr=1e-3,
        total_steps=2, val_every=0, val_size=4, out_dir=str(out_dir), num_threads=1,
        deterministic=True, export_final=False,
    )
    base.update(overrides)
    return TrainConfig(**base)


def params_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_smoke_two_steps_change_params_and_log_metrics(tiny_path, tmp_path):
    cfg = make_cfg(tiny_path, tmp_path, val_every=2, export_final=True)
    setup_torch(cfg)
    before = params_of(build_context(cfg).model)
    result = fit(cfg)
    after = params_of(result.model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    updated = [m for m in result.metrics if m["train/step_skipped"] == 0.0]
    assert updated, "no step had an informative group"
    for m in updated:
        missing = [k for k in STEP_METRICS if k not in m]
        assert not missing, missing
        bad = {k: v for k, v in m.items() if not math.isfinite(v)}
        assert not bad, bad
    assert "val/reward_mean" in result.metrics[-1]
    assert result.metrics[0]["actor/optimizer_steps"] == 4  # 2 epochs x 2 mini-batches
    assert (result.export_dir / "config.json").is_file()
    assert result.state.step == 2


def test_all_equal_groups_are_filtered_and_step_skipped(tiny_path, tmp_path):
    cfg = make_cfg(tiny_path, tmp_path, reward="test_const")
    setup_torch(cfg)
    ctx = build_context(cfg)
    before = params_of(ctx.model)
    metrics = train_step(ctx)
    assert metrics["train/step_skipped"] == 1.0
    assert metrics["groups/kept"] == 0.0 and metrics["groups/solved_all_frac"] == 1.0
    assert ctx.state.steps_skipped == 1 and ctx.state.step == 1
    assert all(torch.equal(before[k], v) for k, v in params_of(ctx.model).items())


def test_refill_samples_more_rounds(tiny_path, tmp_path):
    algo = replace(load_preset("dapo").algo)
    cfg = make_cfg(tiny_path, tmp_path, algo=algo, refill_max_rounds=3)
    setup_torch(cfg)
    ctx = build_context(cfg)
    batch, rewards, metrics = collect_rollouts(ctx, PhaseTimer())
    assert 1 <= metrics["rollout/rounds"] <= 3
    if metrics["rollout/rounds"] < 3:
        assert metrics["groups/kept"] == 4  # refilled up to prompts_per_step exactly
    assert batch.num_samples == 4 * int(metrics["groups/kept"])
    assert sorted(torch.unique(batch.group_index).tolist()) == list(
        range(int(metrics["groups/kept"])))


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_micro_batch_accumulation_matches_one_batch(tiny_path, tmp_path, mode):
    algo = replace(load_preset("archer").algo, loss_agg_mode=mode)  # per-class KL included
    cfg = make_cfg(tiny_path, tmp_path, algo=algo, micro_batch_size=16)
    setup_torch(cfg)
    ctx = build_context(cfg)
    batch, rewards, _ = collect_rollouts(ctx, PhaseTimer())
    assert batch is not None
    ub = prepare_update_batch(ctx, batch, rewards)
    # perturb the policy so ratios differ from 1 (clipping and KL are exercised)
    with torch.no_grad():
        for p in ctx.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    grads = {}
    for micro in (ub.num_rows, 3):
        ctx.cfg = replace(cfg, micro_batch_size=micro)
        ctx.model.zero_grad(set_to_none=True)
        split = minibatch_split(ctx, ub)
        metrics, _ = accumulate_gradients(ctx, ub, ctx.plan[0], split)
        grads[micro] = ({k: p.grad.clone() for k, p in ctx.model.named_parameters()}, metrics)
    (g1, m1), (g3, m3) = grads[ub.num_rows], grads[3]
    for k in g1:
        torch.testing.assert_close(g3[k], g1[k], atol=1e-6, rtol=1e-4)
    for key in ("actor/loss", "actor/pg_loss", "actor/kl_loss"):
        assert m3[key] == pytest.approx(m1[key], rel=1e-4, abs=1e-7)
    assert m1["actor/kl_loss"] > 0


def test_async_mode_steps_twice_per_minibatch(tiny_path, tmp_path):
    cfg = make_cfg(tiny_path, tmp_path, algo=load_preset("ar_lopti").algo)
    setup_torch(cfg)
    ctx = build_context(cfg)
    calls = []
    original = ctx.optimizer.step
    ctx.optimizer.step = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    metrics = train_step(ctx)
    assert metrics["train/step_skipped"] == 0.0
    minibatches = math.ceil(metrics["groups/kept"] / cfg.mini_batch_prompts)
    assert len(calls) == cfg.ppo_epochs * minibatches * 2
    assert metrics["actor/optimizer_steps"] == len(calls)


def test_nonfinite_gradient_skips_the_step(tiny_path, tmp_path):
    cfg = make_cfg(tiny_path, tmp_path)
    setup_torch(cfg)
    ctx = build_context(cfg)
    before = params_of(ctx.model)
    p = next(ctx.model.parameters())
    p.register_hook(lambda g: g * float("nan"))
    metrics = train_step(ctx)
    assert metrics["train/step_skipped"] == 0.0
    assert metrics["actor/optimizer_steps"] == 0  # every phase had a NaN grad norm
    assert metrics["actor/updates_skipped"] == 4  # 2 epochs x 2 mini-batches
    assert ctx.state.updates_skipped == metrics["actor/updates_skipped"]
    assert all(torch.equal(before[k], v) for k, v in params_of(ctx.model).items())


def test_bad_config_key_names_the_key(tiny_path, tmp_path):
    with pytest.raises(ConfigError, match="lr_rate"):
        TrainConfig.from_dict({"model": "tiny", "lr_rate": 0.1})
    with pytest.raises(ConfigError, match="entropy_quantil"):
        TrainConfig.from_dict({"algo": {"entropy_quantil": 0.8}})
    with pytest.raises(ConfigError, match="tsk"):
        TrainConfig.from_dict({"data": {"tsk": "chain_sum"}})
    with pytest.raises(ConfigError, match="micro_batch_size"):
        TrainConfig.from_dict({"micro_batch_size": 0})
    with pytest.raises(ConfigError, match="temperature"):
        TrainConfig.from_dict({"temperature": 0.7})


@pytest.mark.parametrize("preset,overrides", [
    ("high_entropy_only", {}),  # mask mode (phase by entropy -> mini-batch split up front)
    ("dr_grpo", {}),
    ("dapo", {"overlong_buffer_len": 2}),
    ("archer", {"entropy_scope": "group", "entropy_source": "old"}),
    ("ar_lopti", {"async_split": "entropy", "async_first": "high_entropy"}),
])
def test_every_preset_runs_a_finite_step(tiny_path, tmp_path, preset, overrides):
    cfg = make_cfg(tiny_path, tmp_path, algo=load_preset(preset, overrides).algo,
                   micro_batch_size=3)
    setup_torch(cfg)
    ctx = build_context(cfg)
    metrics = train_step(ctx)
    assert metrics["train/step_skipped"] == 0.0
    assert all(math.isfinite(v) for v in metrics.values()), metrics


def test_reasoning_gym_reward_path(tiny_path, tmp_path):
    """The registered gym reward gets the record columns (answer, entry); a random model
    scores 0 everywhere, so with group_filter none the step runs with zero advantages."""
    algo = replace(load_preset("grpo").algo, group_filter="none")
    cfg = make_cfg(tiny_path, tmp_path, algo=algo, reward="reasoning_gym")
    setup_torch(cfg)
    metrics = train_step(build_context(cfg))
    assert metrics["reward/mean"] == 0.0 and metrics["groups/solved_none_frac"] == 1.0
    assert metrics["groups/kept"] == 4 and metrics["actor/pg_loss"] == 0.0


def test_validation_avg_at_k_and_pass_at_k(tiny_path, tmp_path):
    """avg@k is the mean over all k samples of every held-out prompt; pass@k counts a prompt
    once when any of its k samples scores 1 (hand-checked against the per-sample rewards)."""
    from archer.trainer import validate

    cfg = make_cfg(tiny_path, tmp_path, val_size=6, val_temperature=1.0, val_samples=4,
                   rollout_batch_size=4)  # 6 prompts over two generate() calls
    setup_torch(cfg)
    ctx = build_context(cfg)
    seen = []
    inner = ctx.reward_fn
    ctx.reward_fn = lambda completions, **cols: seen.extend(inner(completions, **cols)) or \
        inner(completions, **cols)
    out = validate(ctx)
    assert len(seen) == 24
    rewards = torch.tensor(seen).view(6, 4)  # prompt-major, k samples each
    assert out["val/reward_mean"] == pytest.approx(rewards.mean().item())
    assert out["val/accuracy"] == pytest.approx((rewards >= 1).float().mean().item())
    assert out["val/pass@4"] == pytest.approx((rewards.max(1).values >= 1).float().mean().item())
    assert 0 < out["val/reward_mean"] < 1  # parity reward: mixed outcomes
    with pytest.raises(ConfigError, match="val_samples"):
        make_cfg(tiny_path, tmp_path, val_samples=2)  # greedy samples would all be equal


@pytest.mark.parametrize("preset", ["grpo", "archer", "high_entropy_only"])
def test_on_policy_update_skips_the_old_pass_with_the_same_result(tiny_path, tmp_path,
                                                                  monkeypatch, preset):
    """One epoch, one mini-batch, one phase: the update's own detached log-probs are the old
    ones. The step must equal the one with a separate old-policy pass, minus that pass."""
    import archer.trainer.update as update  # prepare_update_batch looks is_on_policy up there

    def run(force_old_pass: bool):
        if force_old_pass:
            monkeypatch.setattr(update, "is_on_policy", lambda ctx, n: False)
        cfg = make_cfg(tiny_path, tmp_path / str(force_old_pass),
                       algo=load_preset(preset).algo, ppo_epochs=1, mini_batch_prompts=4,
                       micro_batch_size=8, prompt_cache=False)  # the old pass as the update's
        setup_torch(cfg)
        ctx = build_context(cfg)
        calls = []
        ctx.model.register_forward_hook(lambda *a: calls.append(1))
        metrics = train_step(ctx)
        monkeypatch.undo()
        return params_of(ctx.model), metrics, len(calls), ctx

    fast, m_fast, n_fast, ctx = run(False)
    slow, m_slow, n_slow, _ = run(True)
    assert update.is_on_policy(ctx, 4)
    assert m_fast["train/step_skipped"] == 0.0 and m_fast["time/old_logprob"] >= 0
    assert n_slow - n_fast == 2  # 16 responses / micro 8: the old pass's two forwards
    for k in fast:
        torch.testing.assert_close(fast[k], slow[k], atol=1e-6, rtol=0, msg=k)
    assert m_fast["actor/pg_loss"] == pytest.approx(m_slow["actor/pg_loss"], abs=1e-6)


def test_off_policy_settings_keep_the_old_pass(tiny_path, tmp_path):
    import archer.trainer as trainer

    for overrides in ({"ppo_epochs": 2}, {"mini_batch_prompts": 2}):
        cfg = make_cfg(tiny_path, tmp_path, **{"ppo_epochs": 1, "mini_batch_prompts": 4,
                                               **overrides})
        assert not trainer.is_on_policy(build_context(cfg), 4)
    lopti = make_cfg(tiny_path, tmp_path, algo=load_preset("ar_lopti").algo, ppo_epochs=1,
                     mini_batch_prompts=4)
    assert not trainer.is_on_policy(build_context(lopti), 4)


def test_reference_in_bfloat16(tiny_path, tmp_path):
    """``ref_dtype=bfloat16``: the frozen reference is cast (the policy is not), its
    log-probs stay float32 and near the float32 reference's, and a step trains."""
    cfg = make_cfg(tiny_path, tmp_path, ref_dtype="bfloat16", ppo_epochs=1,
                   mini_batch_prompts=4)
    setup_torch(cfg)
    ctx = build_context(cfg)
    assert {p.dtype for p in ctx.ref.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in ctx.model.parameters()} == {torch.float32}
    batch, rewards, _ = collect_rollouts(ctx, PhaseTimer())
    ub = prepare_update_batch(ctx, batch, rewards)
    full = build_context(replace(cfg, ref_dtype=None))
    ub32 = prepare_update_batch(full, batch, rewards)
    assert ub.ref_logprobs.dtype == torch.float32
    mask = batch.response_mask.bool()
    gap = (ub.ref_logprobs - ub32.ref_logprobs)[mask].abs()
    assert 0 < gap.max() < 0.05  # bf16 rounding, not another model
    before = params_of(ctx.model)
    metrics = train_step(ctx)
    assert math.isfinite(metrics["actor/kl_low_entropy"])
    assert any(not torch.equal(before[k], v) for k, v in params_of(ctx.model).items())
    with pytest.raises(ConfigError, match="ref_dtype='fp8' is invalid"):
        make_cfg(tiny_path, tmp_path, ref_dtype="fp8")


def test_prompt_cache_gives_the_same_step(tiny_path, tmp_path):
    """``prompt_cache`` (each distinct prompt run once, in the no-grad passes and in the
    update's forward and backward) changes only the cost: with old, reference and entropy
    pre-passes all used (2 PPO epochs, 2 mini-batches, a group-scope split), two steps end at
    the same parameters and metrics as without it. (No group filter: which groups are
    all-equal depends on the device's sampler, and the row counts below assume all 4 kept.)"""
    def run(prompt_cache: bool):
        algo = replace(load_preset("archer").algo, entropy_scope="group", group_filter="none")
        cfg = make_cfg(tiny_path, tmp_path / str(prompt_cache), algo=algo, micro_batch_size=3,
                       prompt_cache=prompt_cache)
        setup_torch(cfg)
        ctx = build_context(cfg)
        ref_rows = []  # (prompt pass?, rows) of each reference forward
        ctx.ref.register_forward_hook(
            lambda mod, args, kwargs, out: ref_rows.append(
                (kwargs["use_cache"], kwargs["input_ids"].shape[0])), with_kwargs=True)
        update_rows = []  # (prompt pass?, rows) of each policy forward with gradients
        ctx.model.register_forward_hook(
            lambda mod, args, kwargs, out: update_rows.append(
                (kwargs["use_cache"], kwargs["input_ids"].shape[0]))
            if torch.is_grad_enabled() else None, with_kwargs=True)
        metrics = [train_step(ctx) for _ in range(2)]
        return params_of(ctx.model), metrics, ref_rows, update_rows

    cached, m_cached, rows_cached, update_cached = run(True)
    plain, m_plain, rows_plain, update_plain = run(False)
    # the update: 2 steps x 2 epochs x 2 mini-batches of 8 rows, micro-batches of 3, 3, 2
    assert update_plain == [(False, rows) for rows in [3, 3, 2] * 8]
    prompts = [rows for prompt, rows in update_cached if prompt]
    assert len(prompts) == 24 and all(rows <= 2 for rows in prompts)  # a micro-batch's prompts
    assert [rows for prompt, rows in update_cached if not prompt] == [3, 3, 2] * 8
    assert all(m["train/step_skipped"] == 0.0 for m in m_cached)
    # 16 responses (4 groups of 4) in micro-batches of 3 rows: without the cache one forward
    # per micro-batch; with it, each micro-batch's distinct prompts (rows 3-5 span groups 0
    # and 1: 2 prompts), then its rows (in length chunks). The last micro-batch (one row, no
    # repeated prompt) runs in full.
    assert rows_plain == [(False, rows) for rows in [3, 3, 3, 3, 3, 1] * 2]
    assert [rows for prompt, rows in rows_cached if prompt] == [1, 2, 2, 1, 1] * 2
    assert sum(rows for prompt, rows in rows_cached if not prompt) == 2 * 16
    for k in cached:
        torch.testing.assert_close(cached[k], plain[k], atol=1e-5, rtol=0, msg=k)
    for a, b in zip(m_cached, m_plain):
        for key in ("actor/pg_loss", "actor/kl_low_entropy", "actor/entropy"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    with pytest.raises(ConfigError, match="prompt_cache='yes' must be true or false"):
        make_cfg(tiny_path, tmp_path, prompt_cache="yes")


def test_call_reward_passes_every_field_as_an_aligned_column():
    """Columns are the union of the records' fields (not the first record's), repeated n
    times in record order, None where a record lacks the field; ``prompt`` is not one."""
    from archer.trainer import call_reward

    seen = {}

    def fn(completions, **columns):
        seen.update(columns)
        return [float(i) for i in range(len(completions))]

    records = [{"prompt": "p0", "answer": "1"}, {"prompt": "p1", "answer": "2", "tier": "x"}]
    out = call_reward(fn, "fn", ["a", "b", "c", "d"], records, 2)
    assert out == [0.0, 1.0, 2.0, 3.0]
    assert seen == {"answer": ["1", "1", "2", "2"], "tier": [None, None, "x", "x"]}


def test_records_lacking_the_answer_are_named_whatever_the_batch(tiny_path, tmp_path):
    """The reward's columns come from the whole data set: a batch whose records all lack
    ``answer`` still passes it (as None), and the math reward's None then stops the run
    naming the records and the missing field, not with a TypeError for a missing argument."""
    import json

    from archer.trainer import score

    path = tmp_path / "half.jsonl"
    rows = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(4)]
    rows += [{"prompt": "2+2="}, {"prompt": "3+3="}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ctx = build_context(make_cfg(tiny_path, tmp_path, data={"file": str(path)}, val_size=0,
                                 reward="math"))
    assert ctx.columns == ("answer", "data_source", "index")
    lacking = [r for r in ctx.train_records if "answer" not in r]
    batch = SimpleNamespace(texts=["\\boxed{4}", "5", "\\boxed{6}", "7"],
                            response_lengths=torch.ones(4))
    with pytest.raises(ValueError, match=(
            r"reward 'math' returned None for 4 of 4 samples, of half record 4, half record "
            r"5 \(lacking answer\); fix the data, or set reward_on_none=zero")):
        score(ctx, batch, lacking, 2)
    ctx.cfg = replace(ctx.cfg, reward_on_none="zero")
    assert score(ctx, batch, lacking, 2).tolist() == [0.0] * 4
    batch.texts = ["\\boxed{1}", "0", "\\boxed{2}", "\\boxed{2}"]
    assert score(ctx, batch, ctx.train_records[:2], 2).tolist() == [1.0, 0.0, 1.0, 1.0]


def test_a_reward_argument_no_record_has_is_an_error_at_start_up(tiny_path, tmp_path):
    """The math reward needs ``answer``; a file none of whose records has it stops the run
    before the model trains, naming the reward, the argument and the file's columns."""
    import json

    path = tmp_path / "bare.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{i}+1=", "solution": i + 1}) + "\n"
                            for i in range(6)))
    cfg = make_cfg(tiny_path, tmp_path, data={"file": str(path)}, val_size=0, reward="math")
    with pytest.raises(ValueError, match=r"reward 'math' needs the column\(s\) \['answer'\], "
                                         r"which no record of .*bare.jsonl has \(its records "
                                         r"have: \['data_source', 'index', 'solution'\]\)"):
        build_context(cfg)
    build_context(replace(cfg, reward="test_parity"))  # a reward that reads no column


@pytest.mark.parametrize("values, message", [
    ([1.0], "returned 1 values for 2 completions"),
    ("10", "returned a str for 2 completions"),
    ([1.0, float("nan")], r"returned nan for sample 1 \(completion 'b'\)"),
    ([1.0, "1"], "returned '1' for sample 1"),
    ([None, 2 + 0j], r"returned \(2\+0j\) for sample 1"),
    ([1.0, float("inf")], "returned inf for sample 1"),
])
def test_call_reward_refuses_what_is_not_one_number_or_none_per_completion(values, message):
    from archer.trainer import call_reward

    with pytest.raises(ValueError, match=message):
        call_reward(lambda completions, **_: values, "mine", ["a", "b"], [{"prompt": "p"}], 2)
    ok = call_reward(lambda completions, **_: [None, True], "mine", ["a", "b"],
                     [{"prompt": "p"}], 2)
    assert ok == [None, True]


def test_lr_schedule_hand_computed():
    """10 steps, 2 of warm-up, floor 0.1: warm-up 0.5, 1; then cosine at progress 4/8 is
    0.1 + 0.9 * 0.5 = 0.55 and at 7/8 0.1 + 0.9 * (1 + cos(7pi/8)) / 2 = 0.134254; linear
    0.55 and 0.1 + 0.9 / 8 = 0.2125; constant stays 1."""
    from archer.trainer import lr_factor

    cos = [lr_factor(s, 2, "cosine", 10, 0.1) for s in range(10)]
    assert cos[:3] == [0.5, 1.0, 1.0]
    assert cos[6] == pytest.approx(0.55) and cos[9] == pytest.approx(0.1342542, abs=1e-7)
    assert all(a > b for a, b in zip(cos[2:], cos[3:]))  # strictly decreasing after warm-up
    lin = [lr_factor(s, 2, "linear", 10, 0.1) for s in range(10)]
    assert lin[6] == pytest.approx(0.55) and lin[9] == pytest.approx(0.2125)
    assert [lr_factor(s, 2, "constant", 10) for s in range(10)] == [0.5] + [1.0] * 9
    assert lr_factor(0, 0, "cosine", 1) == 1.0  # one step: no decay to divide by zero with
    assert lr_factor(12, 0, "linear", 10, 0.2) == pytest.approx(0.2)  # past the end: the floor


def test_trainer_follows_the_lr_schedule(tiny_path, tmp_path):
    from archer.trainer import lr_factor

    cfg = make_cfg(tiny_path, tmp_path, total_steps=3, ppo_epochs=1, lr_schedule="cosine",
                   min_lr_ratio=0.2, warmup_steps=1)
    lrs = [m["actor/lr"] for m in fit(cfg).metrics]
    assert lrs == pytest.approx([1e-3 * lr_factor(s, 1, "cosine", 3, 0.2) for s in range(3)])
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3 * (0.2 + 0.8 * 0.5)])
    for bad, named in ((dict(lr_schedule="cosin"), "lr_schedule='cosin'"),
                       (dict(min_lr_ratio=1.5), "min_lr_ratio=1.5")):
        with pytest.raises(ConfigError, match=named):
            make_cfg(tiny_path, tmp_path, **bad)


def test_prompts_over_max_prompt_tokens_are_an_error_or_dropped(tiny_path, tmp_path, caplog):
    """The limit counts the prompt as the rollout sees it (template + chat template, tokens:
    one per character here). Over it: an error naming the count and the first record, or,
    with overlong_prompts=drop, the record is gone from training and held-out data."""
    import json
    import logging

    path = tmp_path / "mixed.jsonl"
    rows = [{"prompt": f"{i}+1=", "answer": i + 1} for i in range(10)]
    rows[3:3] = [{"prompt": f"{i}+1= " + "x" * 200, "answer": i + 1} for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_cfg(tiny_path, tmp_path, data={"file": str(path)}, val_size=4,
                   max_prompt_tokens=80)
    short = len("<s>User: 9+1=\nReply with only the final number.\nAssistant:")
    assert short <= 80 < short + 200  # short prompts fit, long ones do not
    with pytest.raises(ValueError, match=r"of 12 training prompts are longer than "
                                         r"max_prompt_tokens=80 \(the first: mixed record 3, "
                                         r"2\d\d tokens\); raise max_prompt_tokens"):
        build_context(cfg)
    with caplog.at_level(logging.WARNING):
        ctx = build_context(replace(cfg, overlong_prompts="drop"))
    kept = ctx.train_records + ctx.val_records
    assert len(kept) == 10 and all("x" not in r["prompt"] for r in kept)
    assert ctx.sampler.size == len(ctx.train_records)  # the sampler draws from what is kept
    assert "prompts are longer than max_prompt_tokens=80" in caplog.text
    with pytest.raises(ValueError, match="none is left"):
        build_context(replace(cfg, overlong_prompts="drop", max_prompt_tokens=5))
    with pytest.raises(ConfigError, match="overlong_prompts='truncate'"):
        make_cfg(tiny_path, tmp_path, overlong_prompts="truncate")
    with pytest.raises(ConfigError, match="max_prompt_tokens=0"):
        make_cfg(tiny_path, tmp_path, max_prompt_tokens=0)


def test_prompt_plus_response_over_the_context_is_an_error_at_start_up(tmp_path):
    """A prompt that leaves no room for max_new_tokens in the model's context is an error
    before any step, naming the record, its tokens and the context (not a position-embedding
    crash, or silent positions past the model's, at the step that first samples it).
    Char-level tokenizer: one token per character; this model's context is 80."""
    import json

    from archer.models import build_tiny_model

    small = build_tiny_model(tmp_path / "ctx80", max_positions=80)
    path = tmp_path / "lengths.jsonl"
    rows = [{"prompt": "1+1=", "answer": 2}] * 6 + [{"prompt": "1+1=" + " " * 20, "answer": 2}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    template = 1 + len("User: 1+1=\nReply with only the final number.\nAssistant:")  # <s>: 1
    assert template + 20 + 8 > 80 >= template + 8  # only the padded record overflows
    cfg = make_cfg(small, tmp_path, data={"file": str(path)}, val_size=0, max_new_tokens=8)
    with pytest.raises(ValueError, match=(
            rf"longest training prompt \(lengths record 6, {template + 20} tokens\) \+ "
            r"max_new_tokens=8 exceeds the model's context length of 80 tokens \(6 of 7 "
            r"training prompts fit\): lower max_new_tokens, set max_prompt_tokens=72")):
        build_context(cfg)
    # the suggested fix works: the long record is dropped, the rest fit with their responses
    ctx = build_context(replace(cfg, max_prompt_tokens=72, overlong_prompts="drop"))
    assert len(ctx.train_records) == 6
    # a budget that no prompt leaves room for is the same error, whatever the data
    with pytest.raises(ValueError, match="0 of 6 training prompts fit"):
        build_context(replace(cfg, max_prompt_tokens=72, overlong_prompts="drop",
                              max_new_tokens=30))


# --- where the run lives: trainer.device ----------------------------------------------


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "", 0, "cuda:-1"])
def test_device_setting_is_validated(tiny_path, tmp_path, bad):
    with pytest.raises(ConfigError, match="device="):
        make_cfg(tiny_path, tmp_path, device=bad)


def test_device_cpu_keeps_the_run_on_the_cpu(tiny_path, tmp_path):
    from archer.distributed import resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    ctx = build_context(make_cfg(tiny_path, tmp_path, device="cpu"))
    assert {p.device.type for p in ctx.model.parameters()} == {"cpu"}
    assert ctx.ref is not None and next(ctx.ref.parameters()).device.type == "cpu"
    # the memory metric is the process's resident set (MB), also where a GPU is present
    assert train_step(ctx)["perf/peak_memory_mb"] > 50


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_asking_for_a_gpu_that_is_not_there_is_a_config_error(tiny_path, tmp_path):
    with pytest.raises(ConfigError, match="sees no CUDA GPU"):
        build_context(make_cfg(tiny_path, tmp_path, device="cuda"))


class _CPUSamples:
    """A rollout backend that hands back CPU tensors whatever the policy's device, as the
    vLLM engine does (the boundary this test cannot reach without vLLM on a GPU)."""

    def __init__(self, inner):
        self.inner, self.pad_id = inner, inner.pad_id

    def generate(self, prompts, params):
        return self.inner.generate(prompts, params).to("cpu")

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("preset", ["grpo", "archer", "ar_lopti"])
def test_cuda_step_with_a_backend_that_returns_cpu_tensors(tiny_path, tmp_path, preset):
    """On a GPU, a step whose samples come back on the CPU (vLLM) trains the GPU policy:
    rewards, advantages, the group filter and validation all run beside the policy."""
    cfg = make_cfg(tiny_path, tmp_path, algo=load_preset(preset).algo, device="cuda",
                   val_every=1, deterministic=False)
    setup_torch(cfg)
    ctx = build_context(cfg)
    ctx.rollout = _CPUSamples(ctx.rollout)
    before = params_of(ctx.model)
    metrics = train_step(ctx)
    assert next(ctx.model.parameters()).is_cuda
    assert metrics["train/step_skipped"] == 0.0
    assert all(math.isfinite(v) for v in metrics.values())
    assert any(not torch.equal(before[k], v) for k, v in params_of(ctx.model).items())
    from archer.trainer import validate

    assert 0.0 <= validate(ctx)["val/reward_mean"] <= 1.0
