"""``archer demo``: the main job on its embedded default, end to end on a laptop CPU.

What it does (no downloads; a few minutes on 2 cores):
1. builds a tiny character-level Llama and tokenizer locally (``archer.models``);
2. generates reasoning-gym ``chain_sum`` problems (2-digit a +/- b) with a held-out split;
3. gives the random model a short supervised warm-up on the training split, stopping early
   (RL needs some successes to learn from; from a fully converged warm-up it has nothing left
   to fix, per DESIGN.md's measurements);
4. trains the same warm-up checkpoint with the ``grpo``, ``dapo`` and ``archer`` presets
   through the real trainer (``archer.trainer.fit``: HF sampling, verifier rewards, group
   filtering, PPO-clip with the configured token split, checkpoints);
5. prints held-out greedy accuracy before and after RL for each preset, with per-class
   diagnostics from the last step.

This is a smoke-sized comparison (one seed, ~200 validation problems: about +/-3.5 points of
standard error), not a result; the study/evaluation harness runs seeds and CIs.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

DEMO_PRESETS = ("grpo", "dapo", "archer")


def _demo_train_config(model: str, algo, out_dir: Path, steps: int, seed: int):
    from archer.train_config import DataConfig, TrainConfig

    return TrainConfig(
        model=model, algo=algo, reward="reasoning_gym",
        data=DataConfig(task="chain_sum", size=2400, seed=seed,
                        task_config={"min_terms": 2, "max_terms": 2, "min_digits": 2,
                                     "max_digits": 2}),
        template="none", prompts_per_step=32, group_size=8, max_new_tokens=6,
        ppo_epochs=1, mini_batch_prompts=32, micro_batch_size=256, lr=1e-4,
        warmup_steps=0, total_steps=steps, seed=seed, val_every=steps, val_size=200,
        ckpt_every=0, out_dir=str(out_dir), rollout_batch_size=32, num_threads=2,
    )


def supervised_warmup(cfg, out_dir: Path, max_seconds: float = 120.0,
                      target_accuracy: float = 0.35) -> tuple[Path, float]:
    """Teacher-force ``prompt -> answer`` on the training split until the greedy held-out
    accuracy reaches ``target_accuracy`` (checked every 25 steps) or time runs out
    (``archer.sft``, the same code as ``archer sft``)."""
    from archer.sft import SFTConfig, supervised_finetune

    sft = SFTConfig(
        model=cfg.model, data=cfg.data, reward=cfg.reward, template=cfg.template,
        answer_format=" {answer}", out_dir=str(out_dir / "warmup_sft"), steps=1_000_000,
        max_seconds=max_seconds, target_accuracy=target_accuracy, eval_every=25,
        batch_size=128, lr=3e-3, weight_decay=0.0, val_size=cfg.val_size,
        max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, num_threads=cfg.num_threads)
    result = supervised_finetune(sft, log=print)
    return result.model_dir, result.accuracy


def run_demo(out_dir: str = "runs/demo", steps: int | None = None, seed: int = 0) -> int:
    from archer.models import build_tiny_model
    from archer.trainer import fit
    from experiments.presets import load_preset

    steps = steps or 30
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    print(f"[1/4] building a tiny char-level Llama in {out / 'tiny_model'}")
    tiny = build_tiny_model(out / "tiny_model", hidden=128, layers=2, heads=4, seed=seed)
    base_cfg = _demo_train_config(str(tiny), load_preset("grpo").algo, out / "warmup", steps,
                                  seed)
    print("[2/4] supervised warm-up on reasoning-gym chain_sum (2-digit a +/- b)")
    warm, warm_acc = supervised_warmup(base_cfg, out)
    rows = []
    for i, name in enumerate(DEMO_PRESETS):
        print(f"[3/4] RL with preset {name!r} ({i + 1}/{len(DEMO_PRESETS)}), {steps} steps")
        # DAPO's overlong buffer (4096 tokens at 20k) scaled to the demo's 6-token budget.
        overrides = {"overlong_buffer_len": 2} if name == "dapo" else None
        algo = load_preset(name, overrides).algo
        cfg = replace(_demo_train_config(str(warm), algo, out / name, steps, seed),
                      resume=False)
        t0 = time.perf_counter()
        result = fit(cfg)
        last = result.metrics[-1] if result.metrics else {}
        rows.append((name, warm_acc, last.get("val/reward_mean", float("nan")),
                     time.perf_counter() - t0, last))
    print("[4/4] held-out greedy accuracy (200 problems, one seed)")
    print(f"{'preset':8s} {'before':>7s} {'after':>7s} {'delta':>7s} {'time_s':>7s} "
          f"{'clip_hi_ent':>11s} {'clip_lo_ent':>11s} {'kl_lo_ent':>9s}")
    for name, before, after, secs, m in rows:
        print(f"{name:8s} {before:7.3f} {after:7.3f} {after - before:+7.3f} {secs:7.1f} "
              f"{m.get('actor/clipfrac_high_entropy_upper', 0.0):11.4f} "
              f"{m.get('actor/clipfrac_low_entropy_upper', 0.0):11.4f} "
              f"{m.get('actor/kl_low_entropy', 0.0):9.5f}")
    print(f"runs, metrics (metrics.jsonl) and final policies: {out.resolve()}")
    return 0
