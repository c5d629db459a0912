"""``archer demo``: the quickstart on embedded defaults, end to end on a laptop CPU.

What it does (no downloads; about 3-4 minutes on 2 cores):

1. builds a tiny character-level Llama and its tokenizer locally (``archer.models``);
2. generates reasoning-gym arithmetic problems offline, with a held-out validation split;
3. warm-starts the random model with a short supervised phase (``archer.sft``, the code of
   ``archer sft``): a fixed number of steps, stopped early once held-out accuracy reaches a
   target, because RL needs some successes to learn from and something left to fix;
4. measures held-out accuracy of the warm start: greedy, and avg@4 / pass@4 with 4 samples per
   problem at the training temperature 1.0 (the paper reports avg@k over samples);
5. runs Archer RL through the real trainer (``archer.trainer.fit``: HF sampling, the
   reasoning-gym verifier, group filtering, dual-token PPO-clip, checkpoints), logging to a
   local MLflow store (``runs/mlflow.db``) that ``mlflow ui`` shows;
6. measures the same held-out accuracies after RL and prints before/after.

Every number is from one seed and 200 held-out problems (standard error about 2-3 points);
the README reports the demo over three seeds.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

# The quickstart's task: a +/- b with 1-digit operands and three terms (4000 problems).
TASK = "chain_sum"
TASK_CONFIG = {"min_terms": 3, "max_terms": 3, "min_digits": 1, "max_digits": 1}
DATA_SIZE = 4000
VAL_SIZE = 200
VAL_K = 4  # samples per held-out problem for avg@k / pass@k
MAX_NEW_TOKENS = 5
SFT_STEPS = 400  # supervised warm-up budget (stops earlier at SFT_TARGET)
SFT_TARGET = 0.35  # held-out greedy accuracy that ends the warm-up
SFT_MAX_SECONDS = 200.0
RL_STEPS = 40
RL_LR = 2e-4


def demo_train_config(model: str, algo, out_dir: Path, steps: int, seed: int, **overrides):
    """The trainer config of the quickstart's RL run (also used for the validations)."""
    from archer.train_config import DataConfig, TrainConfig

    base = dict(
        model=model, algo=algo, reward="reasoning_gym",
        data=DataConfig(task=TASK, size=DATA_SIZE, seed=seed, task_config=dict(TASK_CONFIG)),
        template="none", prompts_per_step=32, group_size=8, max_new_tokens=MAX_NEW_TOKENS,
        ppo_epochs=1, mini_batch_prompts=32, micro_batch_size=256, lr=RL_LR,
        warmup_steps=0, total_steps=steps, seed=seed, val_every=steps, val_size=VAL_SIZE,
        val_temperature=algo.temperature, val_samples=VAL_K, ckpt_every=0,
        out_dir=str(out_dir), rollout_batch_size=64, num_threads=2, resume=False,
    )
    base.update(overrides)
    return TrainConfig(**base)


def supervised_warmup(cfg, out_dir: Path, max_seconds: float | None = None,
                      target_accuracy: float | None = None, steps: int | None = None):
    """Teacher-force ``prompt -> answer`` on the training split (``archer.sft``) for at most
    ``steps`` steps / ``max_seconds``, stopping at ``target_accuracy`` held-out accuracy."""
    from archer.sft import SFTConfig, supervised_finetune

    sft = SFTConfig(
        model=cfg.model, data=cfg.data, reward=cfg.reward, template=cfg.template,
        answer_format=" {answer}", out_dir=str(out_dir / "warmup_sft"),
        steps=steps or SFT_STEPS, max_seconds=max_seconds or SFT_MAX_SECONDS,
        target_accuracy=target_accuracy or SFT_TARGET, eval_every=25,
        batch_size=128, lr=3e-3, weight_decay=0.0, val_size=cfg.val_size,
        max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, num_threads=cfg.num_threads)
    return supervised_finetune(sft, log=print)


def heldout_accuracy(cfg) -> dict[str, float]:
    """Greedy accuracy, avg@k and pass@k of ``cfg.model`` on the held-out split."""
    from archer.trainer import build_context, setup_torch, validate

    setup_torch(cfg)
    ctx = build_context(cfg)
    ctx.model.eval()
    sampled = validate(ctx)
    ctx.cfg = replace(cfg, val_temperature=0.0, val_samples=1)
    greedy = validate(ctx)
    return {"greedy": greedy["val/accuracy"], f"avg@{VAL_K}": sampled["val/accuracy"],
            f"pass@{VAL_K}": sampled[f"val/pass@{VAL_K}"]}


def run_demo(out_dir: str = "runs/demo", steps: int | None = None, seed: int = 0,
             preset: str = "archer", tracking_uri: str | None = None) -> int:
    from archer.models import build_tiny_model
    from archer.trainer import fit
    from experiments.presets import load_preset
    from experiments.tracking import MlflowLogger, resolve_tracking_uri

    steps = steps or RL_STEPS
    out = Path(out_dir) / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.manual_seed(seed)
    algo = load_preset(preset).algo
    print(f"[1/5] tiny char-level Llama -> {out / 'tiny_model'}")
    tiny = build_tiny_model(out / "tiny_model", hidden=128, layers=2, heads=4, seed=seed)
    print(f"[2/5] supervised warm-up on reasoning-gym {TASK} {TASK_CONFIG}")
    warm = supervised_warmup(demo_train_config(str(tiny), algo, out / "warmup", steps, seed),
                             out)
    cfg = demo_train_config(str(warm.model_dir), algo, out / preset, steps, seed)
    print(f"[3/5] held-out accuracy of the warm start ({VAL_SIZE} problems)")
    before = heldout_accuracy(cfg)
    print("      " + "  ".join(f"{k} {v:.3f}" for k, v in before.items()))
    uri = resolve_tracking_uri(tracking_uri)
    print(f"[4/5] RL with preset {preset!r}: {steps} steps, logging to MLflow at {uri}")
    logger = MlflowLogger(cfg.out_dir, None, tracking_uri=uri, experiment="archer-demo",
                          run_name=f"demo-{preset}-seed{seed}")
    logger.log_metrics({f"val/{k}": v for k, v in before.items()}, 0)
    result = fit(cfg, logger=logger)
    print("[5/5] held-out accuracy after RL")
    after = heldout_accuracy(replace(cfg, model=str(result.export_dir)))
    last = result.metrics[-1] if result.metrics else {}
    print(f"\n{'held-out (' + str(VAL_SIZE) + ' problems)':26s} {'warm start':>10s} "
          f"{'after RL':>9s} {'change':>8s}")
    for key in before:
        print(f"{key:26s} {before[key]:10.3f} {after[key]:9.3f} {after[key] - before[key]:+8.3f}")
    print(f"\nlast step: reward {last.get('reward/mean', float('nan')):.3f}, entropy "
          f"{last.get('actor/entropy', float('nan')):.3f} (high-entropy tokens "
          f"{last.get('actor/entropy_high_entropy', float('nan')):.3f}), clip fraction "
          f"high/low {last.get('actor/clipfrac_high_entropy_upper', 0.0):.4f}/"
          f"{last.get('actor/clipfrac_low_entropy_upper', 0.0):.4f}, KL(low) "
          f"{last.get('actor/kl_low_entropy', 0.0):.5f}")
    print(f"total {time.perf_counter() - start:.0f} s; MLflow run {result.state.run_id} "
          f"(experiment 'archer-demo')")
    if uri.startswith("sqlite:///"):
        print(f"browse it: mlflow ui --backend-store-uri {uri}")
    print(f"final policy: {result.export_dir}")
    return 0
