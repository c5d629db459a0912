"""Benchmark: asynchronous rollouts (``max_staleness`` = k) against the synchronous loop
(k = 0), at equal work, in one process, one arm after the other.

Every arm trains the same number of steps on the same prompts (``algo.group_filter=none``:
one rollout round per step, every step updates), from the ``cpu`` study recipe (composed as
``archer train`` composes it) with the parity reward (``bench_parity``: mixed groups on a
random model). Each arm is built and warmed up (``--warmup`` untimed steps; for k >= 1 the
rollout worker is started and its first batches requested), then ``--steps`` steps are
timed. Prints, per arm: samples/s (responses generated and trained) and trained tokens/s
(prompt + response tokens of the trained batches) with their ratios to k = 0, and the median
seconds of each phase (``time/<phase>``; for k >= 1, ``rollout`` is the trainer's wait for a
batch generated ahead).

From the k = 0 phases it also prints the speed-up that split devices predict: a step of the
synchronous loop costs rollout + the rest (reward, old log-probs, update, weight sync); with
generation on its own device overlapped with training it costs the larger of the two, so
the bound is (rollout + rest) / max(rollout, rest). On a CPU the two arms share the cores,
so k >= 1 is expected at or below 1x here; the bound is what a GPU pair can approach.

    .venv/bin/python bench/async_vs_sync.py [--steps 6] [--warmup 1] [--ks 0 1 2]
        [--algo grpo] [--model tiny] [override ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

PHASES = ("rollout", "reward", "old_logprob", "update", "weight_sync")


def parity_reward(completions, **columns):
    """1.0 when the sum of the response's character codes is even."""
    return [float(sum(map(ord, c)) % 2 == 0) for c in completions]


def build(overrides: list[str], k: int, out_dir: str):
    from experiments.study import load_recipe
    from experiments.train_cli import build_train_setup, compose_config

    composed = compose_config(load_recipe("cpu")["overrides"] + overrides + [
        f"max_staleness={k}", "algo.group_filter=none", "ckpt_every=0", "val_every=0",
        f"out_dir={out_dir}", "tracking=none"])
    return build_train_setup(composed).train


def run_arm(cfg, warmup: int, steps: int) -> dict:
    """Time ``steps`` training steps after ``warmup`` untimed ones; the arm's raw numbers."""
    from archer.trainer import build_context, setup_torch, train_step

    setup_torch(cfg)
    ctx = build_context(cfg)
    if cfg.max_staleness:
        from archer.trainer.pipeline import build_pipeline

        ctx.pipeline = build_pipeline(ctx)
    try:
        for _ in range(warmup):
            train_step(ctx)
        rows, start = [], time.perf_counter()
        for _ in range(steps):
            rows.append(train_step(ctx))
        wall = time.perf_counter() - start
    finally:
        if ctx.pipeline is not None:
            ctx.pipeline.close()
    samples = steps * cfg.prompts_per_step * cfg.group_size
    tokens = sum(m["perf/tokens_per_s"] * m["time/update"] for m in rows)
    return {"wall_s": wall, "samples": samples, "tokens": tokens,
            "phases": {p: statistics.median(m[f"time/{p}"] for m in rows) for p in PHASES},
            "staleness_max": max(m.get("rollout/staleness_max", 0.0) for m in rows)}


def summarise(arms: dict[int, dict]) -> dict:
    """Throughput and ratios to k = 0 per arm, and the split-device bound from k = 0's
    phases: (rollout + rest) / max(rollout, rest)."""
    base = arms[0]
    out: dict = {}
    for k, arm in arms.items():
        out[f"k{k}"] = {
            "samples_per_s": round(arm["samples"] / arm["wall_s"], 2),
            "tokens_per_s": round(arm["tokens"] / arm["wall_s"], 1),
            "ratio_vs_k0": round((arm["samples"] / arm["wall_s"]) /
                                 (base["samples"] / base["wall_s"]), 3),
            "phase_s": {p: round(s, 4) for p, s in arm["phases"].items()},
            "staleness_max": arm["staleness_max"]}
    rollout = base["phases"]["rollout"]
    rest = sum(s for p, s in base["phases"].items() if p != "rollout")
    out["split_device_bound"] = round((rollout + rest) / max(rollout, rest, 1e-12), 3)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per arm")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps per arm")
    parser.add_argument("--ks", type=int, nargs="+", default=[0, 1, 2],
                        help="staleness levels; 0 (the baseline) is always run")
    parser.add_argument("--algo", default="grpo", help="a preset")
    parser.add_argument("--model", default="tiny", help="tiny or a model directory")
    parser.add_argument("overrides", nargs="*", help="more `archer train` overrides")
    args = parser.parse_args(argv)

    from archer.rewards import REWARDS, register_reward

    if "bench_parity" not in REWARDS:
        register_reward("bench_parity")(parity_reward)
    extra = [f"algo={args.algo}", f"model={args.model}", "reward=bench_parity",
             f"total_steps={args.warmup + args.steps}"] + args.overrides
    arms = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in sorted({0, *args.ks}):
            arms[k] = run_arm(build(extra, k, f"{tmp}/k{k}"), args.warmup, args.steps)
    out = {"setting": f"recipe cpu + {' '.join(extra)} algo.group_filter=none",
           "steps": args.steps} | summarise(arms)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
