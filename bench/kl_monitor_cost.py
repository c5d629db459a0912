"""Benchmark: the cost per step of ``algo.kl_monitor`` (the reference loaded and its
log-probs computed only to log ``actor/kl_{high,low}_entropy``) against the same run without
it, measured in the same process.

The setting is the ``cpu`` study recipe's (experiments/conf/recipe/cpu.yaml, composed as
``archer train`` composes it) with a KL-free preset (default grpo), so the reference pass is
the monitor's alone. The random tiny model solves no chain_sum problem (every group would be
all-equal and every step skipped), so the bench's reward is the parity of the response's
character codes (``bench_parity``, about half the responses): every step updates, and the
reward's cost (negligible) is the same for both runs. The two runs share seed and weights and stay bit-identical (the monitor
adds no gradient), so every step does the same rollout and update work in both; their steps
are interleaved (off, on, off, on, ...) so machine load hits both alike. Prints the median
seconds per step of each and their ratio (after ``--warmup`` steps each, not timed), and the
median ``time/old_logprob`` of each (the old-policy pass, plus the reference pass with the
monitor): their difference is the monitor's own cost, less noisy than the whole step.

    .venv/bin/python bench/kl_monitor_cost.py [--steps 8] [--warmup 1] [--algo grpo]
        [--model tiny] [--reward bench_parity] [override ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time


def parity_reward(completions, **columns):
    """1.0 when the sum of the response's character codes is even."""
    return [float(sum(map(ord, c)) % 2 == 0) for c in completions]


def build(overrides: list[str], monitor: bool, out_dir: str):
    from experiments.study import load_recipe
    from experiments.train_cli import build_train_setup, compose_config

    recipe = [o for o in load_recipe("cpu")["overrides"] if not o.startswith("algo.kl_monitor")]
    composed = compose_config(recipe + overrides + [
        f"algo.kl_monitor={str(monitor).lower()}", "ckpt_every=0", "val_every=0",
        f"out_dir={out_dir}", "tracking=none"])
    return build_train_setup(composed).train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per arm")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps per arm")
    parser.add_argument("--algo", default="grpo", help="a preset with no KL weight")
    parser.add_argument("--model", default="tiny", help="tiny or a model directory")
    parser.add_argument("--reward", default="bench_parity",
                        help="bench_parity (mixed groups on a random model) or a reward name")
    parser.add_argument("overrides", nargs="*", help="more `archer train` overrides")
    args = parser.parse_args()

    import torch

    from archer.rewards import REWARDS, register_reward
    from archer.trainer import build_context, setup_torch, train_step

    if "bench_parity" not in REWARDS:
        register_reward("bench_parity")(parity_reward)
    with tempfile.TemporaryDirectory() as tmp:
        extra = [f"algo={args.algo}", f"model={args.model}", f"reward={args.reward}",
                 f"total_steps={args.warmup + args.steps}"] + args.overrides
        arms = {}
        for monitor in (False, True):
            cfg = build(extra, monitor, f"{tmp}/{monitor}")
            if monitor is False and cfg.algo.needs_reference:
                raise SystemExit(f"algo={args.algo} has a KL weight: it loads the reference "
                                 "anyway; pick a preset without one (grpo, dapo)")
            setup_torch(cfg)
            arms[monitor] = build_context(cfg)
        rng = {m: None for m in arms}  # each arm continues its own random stream
        seconds: dict[bool, list[float]] = {False: [], True: []}
        passes: dict[bool, list[float]] = {False: [], True: []}  # old (+ reference) pass
        kl, clip = [], []
        for i in range(args.warmup + args.steps):
            for monitor, ctx in arms.items():
                if rng[monitor] is not None:
                    torch.set_rng_state(rng[monitor])
                start = time.perf_counter()
                metrics = train_step(ctx)
                took = time.perf_counter() - start
                rng[monitor] = torch.get_rng_state()
                if i >= args.warmup:
                    seconds[monitor].append(took)
                    passes[monitor].append(metrics["time/old_logprob"])
                    if metrics["train/step_skipped"]:
                        raise SystemExit(f"step {i} had no informative group: nothing to time")
                    if monitor:
                        kl.append(metrics["actor/kl_low_entropy"])
                        clip.append(metrics["actor/clipfrac"])
    off, on = (statistics.median(seconds[m]) for m in (False, True))
    print(json.dumps({
        "setting": f"recipe cpu + {' '.join(extra)}", "steps": args.steps,
        "s_per_step_off": round(off, 4), "s_per_step_on": round(on, 4),
        "ratio_on_over_off": round(on / off, 3),
        "old_logprob_s_off": round(statistics.median(passes[False]), 4),
        "old_logprob_s_on": round(statistics.median(passes[True]), 4),
        "all_s_off": [round(s, 3) for s in seconds[False]],
        "all_s_on": [round(s, 3) for s in seconds[True]],
        "kl_low_entropy_last": kl[-1], "clipfrac_mean": statistics.mean(clip)}))


if __name__ == "__main__":
    main()
