"""The trainer package's seams: the policy loss chosen by ``algo.loss``, reward modules with a
missing dependency, the update's host reads, and the one held-out accuracy implementation.

Tiny char-level Llama (hidden 32, 2 layers), G=4, 4 prompts, 5 new tokens, as test_trainer.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from archer.config import ConfigError
from archer.models import build_tiny_model
from archer.rewards import REWARDS, register_reward
from archer.train_config import TrainConfig
from archer.trainer import (
    accumulate_gradients,
    build_context,
    collect_rollouts,
    minibatch_split,
    prepare_update_batch,
    resolve_reward,
    setup_torch,
    train_step,
    validate,
)
from archer.trainer.metrics import PhaseTimer
from archer.trainer.validation import heldout_scores
from experiments.presets import load_preset

if "test_pkg_parity" not in REWARDS:

    @register_reward("test_pkg_parity")
    def parity_reward(completions, **columns):
        """1.0 when the sum of character codes is even (about half of random responses)."""
        return [float(sum(map(ord, c)) % 2 == 0) for c in completions]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), hidden=32, layers=2, heads=4)


def make_cfg(tiny_path, out_dir, algo=None, **overrides) -> TrainConfig:
    base = dict(
        model=str(tiny_path), algo=algo or load_preset("archer").algo, reward="test_pkg_parity",
        data={"task": "chain_sum", "size": 40, "seed": 0}, prompts_per_step=4, group_size=4,
        max_new_tokens=5, mini_batch_prompts=2, micro_batch_size=4, ppo_epochs=2, lr=1e-3,
        total_steps=2, val_every=0, val_size=4, out_dir=str(out_dir), num_threads=1,
        deterministic=True, export_final=False,
    )
    base.update(overrides)
    return TrainConfig(**base)


# --- the policy loss by name ---------------------------------------------------------------


def test_the_policy_loss_is_the_one_algo_loss_names(tiny_path, tmp_path):
    """Archer's preset with ``algo.loss=ppo_clip``: every token is in the low-entropy class
    (no high-entropy tokens, the low class's clip and KL everywhere), so the same step (same
    seed, same samples) counts no high-entropy token and moves the parameters elsewhere."""
    archer = load_preset("archer").algo
    assert archer.high != archer.low  # the classes' settings differ: the losses must too
    steps = {}
    for loss in ("dual_token_clip", "ppo_clip"):
        cfg = make_cfg(tiny_path, tmp_path / loss, algo=replace(archer, loss=loss))
        setup_torch(cfg)
        ctx = build_context(cfg)
        metrics = train_step(ctx)
        assert metrics["train/step_skipped"] == 0.0
        steps[loss] = metrics, {k: p.detach().clone() for k, p in ctx.model.named_parameters()}
    (dual, dual_params), (ppo, ppo_params) = steps["dual_token_clip"], steps["ppo_clip"]
    assert dual["reward/mean"] == ppo["reward/mean"]  # the same rollout
    assert dual["actor/tokens_high_entropy"] > 0
    assert ppo["actor/tokens_high_entropy"] == 0 and ppo["actor/tokens_low_entropy"] > 0
    assert any(not torch.equal(dual_params[k], ppo_params[k]) for k in dual_params)


def test_an_unknown_policy_loss_is_refused_naming_the_options(tiny_path, tmp_path):
    cfg = make_cfg(tiny_path, tmp_path, algo=replace(load_preset("archer").algo,
                                                     loss="dual_tokn_clip"))
    with pytest.raises(ConfigError, match=r"unknown policy loss algo.loss 'dual_tokn_clip' "
                       r"\(did you mean 'dual_token_clip'\?\); choose one of "
                       r"\['aspo', 'dual_token_clip', 'ppo_clip'\]"):
        build_context(cfg)


# --- reward modules -------------------------------------------------------------------------


def test_a_reward_module_missing_its_own_dependency_says_so(tmp_path, monkeypatch):
    """``archer.rewards.<name>`` exists but imports a package that is not installed: the
    error names that package, not "unknown reward" (a missing reward module still is)."""
    import archer.rewards

    (tmp_path / "needs_dep_xyz.py").write_text("import not_a_real_dep_xyz  # noqa: F401\n")
    monkeypatch.setattr(archer.rewards, "__path__", [*archer.rewards.__path__, str(tmp_path)])
    with pytest.raises(ModuleNotFoundError, match="not_a_real_dep_xyz") as err:
        resolve_reward("needs_dep_xyz")
    assert err.value.name == "not_a_real_dep_xyz"
    assert "reward 'needs_dep_xyz' (archer.rewards.needs_dep_xyz) cannot be imported" in str(
        err.value)
    with pytest.raises(KeyError, match="unknown reward function 'no_such_reward_xyz'"):
        resolve_reward("no_such_reward_xyz")


# --- host reads in the update ----------------------------------------------------------------


def test_the_update_reads_its_diagnostics_to_the_host_once_per_phase(tiny_path, tmp_path,
                                                                     monkeypatch):
    """Four micro-batches of one phase: no ``.item()`` / ``float(tensor)`` per metric (there
    were ~25 per micro-batch); the micro-batches' metrics stay device tensors and are read
    in one ``to_host`` call; the values are the same whatever the micro-batch size."""
    import archer.trainer.update as update

    cfg = make_cfg(tiny_path, tmp_path, micro_batch_size=2)
    setup_torch(cfg)
    ctx = build_context(cfg)
    batch, rewards, _ = collect_rollouts(ctx, PhaseTimer())
    ub = prepare_update_batch(ctx, batch, rewards).rows(torch.arange(8))  # 2 groups
    split = minibatch_split(ctx, ub)
    counts = {"item": 0, "__float__": 0}
    for name in counts:
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            counts[_name] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    reads = []
    real_to_host = update.to_host
    monkeypatch.setattr(update, "to_host", lambda m: reads.append(dict(m)) or real_to_host(m))
    metrics, _ = accumulate_gradients(ctx, ub, ctx.plan[0], split)
    monkeypatch.undo()
    assert counts == {"item": 0, "__float__": 0}, counts
    assert len(reads) == 1 and reads[0].keys() == metrics.keys()
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in reads[0].values())
    assert all(type(v) is float for v in metrics.values())
    assert {"actor/entropy", "actor/pg_loss", "actor/tokens_high_entropy"} <= set(metrics)
    ctx.model.zero_grad(set_to_none=True)
    ctx.cfg = replace(cfg, micro_batch_size=8)
    whole, _ = accumulate_gradients(ctx, ub, ctx.plan[0], minibatch_split(ctx, ub))
    for key in ("actor/loss", "actor/pg_loss", "actor/kl_loss", "actor/tokens_high_entropy",
                "actor/tokens_low_entropy", "actor/pg_contrib_high_entropy"):
        assert metrics[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-7), key


# --- held-out accuracy -------------------------------------------------------------------------


def test_heldout_scores_by_hand():
    """Two prompts, k=2: rewards 1, 0.5 | None, 1. Partial credit and None are wrong."""
    batch = SimpleNamespace(texts=["a", "b", "c", "d"], group_index=torch.tensor([0, 0, 1, 1]),
                            response_lengths=torch.tensor([3, 1, 2, 2]))
    values = iter([[1.0, 0.5, None, 1]])
    records = [{"prompt": "p0", "index": 0}, {"prompt": "p1", "index": 1}]
    scores = heldout_scores(batch, records, 2, lambda completions, **cols: next(values), "r")
    assert scores.correct.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert scores.hits.tolist() == [1.0, 1.0] and scores.per_prompt() == [0.5, 0.5]
    assert scores.accuracy == 0.5
    assert scores.sums() == [2.5, 2.0, 8.0, 2.0, 4.0]  # reward, correct, tokens, solved, n
    with pytest.raises(ValueError, match=r"reward 'r' returned None for 1 of 4 samples, of "
                       r"None record 1"):
        heldout_scores(batch, records, 2, lambda completions, **cols: [1.0, 0.5, None, 1],
                       "r", on_none="error")


def test_sft_and_the_trainer_count_heldout_accuracy_alike(tiny_path, tmp_path):
    """``archer.sft.heldout_accuracy`` (greedy) is the trainer's greedy validation accuracy."""
    from archer.sft import heldout_accuracy
    from archer.trainer import prompt_texts

    cfg = make_cfg(tiny_path, tmp_path, val_size=12)
    setup_torch(cfg)
    ctx = build_context(cfg)
    # greedy answers of a random model are alike: let the record's index decide too
    ctx.reward_fn = lambda completions, index, **cols: [
        float((sum(map(ord, c)) + i) % 2 == 0) for c, i in zip(completions, index)]
    per_prompt: list[float] = []
    trainer = validate(ctx, per_prompt, samples=1, temperature=0.0)
    sft = heldout_accuracy(ctx.model, ctx.tokenizer, prompt_texts(ctx, ctx.val_records),
                           ctx.val_records, ctx.reward_fn, cfg.max_new_tokens)
    assert sft == trainer["val/accuracy"] == sum(per_prompt) / 12
    assert 0 < sft < 1  # parity reward: mixed outcomes
    assert "val/pass@1" not in trainer
