"""Checkpoints: atomic save, keep-last-K, and exact resume (4 steps == 2 + resume + 2)."""

from __future__ import annotations

import json

import torch

from archer.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from archer.models import build_tiny_model
from archer.rewards import REWARDS, register_reward
from archer.tracking import JsonlLogger
from archer.train_config import TrainConfig
from archer.trainer import fit
from experiments.presets import load_preset

if "test_parity_ckpt" not in REWARDS:

    @register_reward("test_parity_ckpt")
    def parity_reward(completions, **columns):
        return [float(sum(map(ord, c)) % 2 == 0) for c in completions]


def make_cfg(model_dir, out_dir, total_steps):
    return TrainConfig(
        model=str(model_dir), algo=load_preset("archer").algo, reward="test_parity_ckpt",
        data={"task": "chain_sum", "size": 40, "seed": 0}, prompts_per_step=4, group_size=4,
        max_new_tokens=5, mini_batch_prompts=2, micro_batch_size=4, ppo_epochs=2, lr=1e-3,
        warmup_steps=3, total_steps=total_steps, val_size=4, ckpt_every=1, keep_checkpoints=2,
        out_dir=str(out_dir), num_threads=1, deterministic=True, export_final=False)


def test_resume_is_exact_and_metrics_continue_the_run(tmp_path):
    model_dir = build_tiny_model(tmp_path / "tiny", hidden=32, layers=2, heads=4)
    straight = fit(make_cfg(model_dir, tmp_path / "a", 4))
    first = fit(make_cfg(model_dir, tmp_path / "b", 2))
    second = fit(make_cfg(model_dir, tmp_path / "b", 4))
    assert second.state.step == 4 and len(second.metrics) == 2
    for (k, v), (_, w) in zip(straight.model.named_parameters(),
                              second.model.named_parameters()):
        torch.testing.assert_close(w, v, atol=1e-6, rtol=0, msg=k)
    assert any(not torch.equal(a, b) for a, b in zip(first.model.parameters(),
                                                     second.model.parameters()))
    logger = JsonlLogger(tmp_path / "b", run_id=first.state.run_id)
    rows = logger.read_metrics()
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert second.state.run_id == first.state.run_id
    assert json.loads((tmp_path / "b" / "run.json").read_text())["run_id"] == first.state.run_id
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step_000003", "step_000004"]


def test_save_is_atomic_and_keeps_last_k(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, opt, {"sampler": {"pos": step}}, keep=2)
    (tmp_path / "checkpoints" / ".tmp-step_000009-1").mkdir()  # an interrupted save
    assert latest_checkpoint(tmp_path).name == "step_000003"
    assert len(list_checkpoints(tmp_path)) == 2
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    torch.manual_seed(123)
    state = load_checkpoint(latest_checkpoint(tmp_path), fresh, fresh_opt)
    assert state["step"] == 3 and state["sampler"] == {"pos": 3}
    assert torch.equal(fresh.weight, model.weight)
    assert fresh_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
