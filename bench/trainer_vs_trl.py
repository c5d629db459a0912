"""Benchmark: seconds per training step of our trainer against TRL's GRPOTrainer, and of our
``archer`` preset against our ``grpo`` preset, with a phase breakdown.

What one "step" is, for all three runs: P prompts -> G sampled completions each (HF
``generate``, KV cache, at most T new tokens) -> the same verifier reward -> group-normalised
advantages -> one PPO epoch over the P*G completions as one mini-batch and one micro-batch ->
one AdamW step.

Fairness (the same for ours and TRL unless stated):
- model: one tiny char-level Llama built by ``archer.models.build_tiny_model`` into a temp dir,
  loaded in float32 on CPU by both; the same tokenizer (left padding); no downloads.
- prompts: reasoning-gym ``chain_sum`` via ``archer.data.datasets`` (the demo's 2-digit
  a +/- b), formatted by our template; TRL gets the formatted text as a plain ``prompt``
  column, in the order our prompt sampler draws them (``shuffle_dataset=False``), so step k
  of each run sees the same P prompts; the script checks that both tokenise them alike.
- G = ``num_generations``; T = ``max_completion_length``; P prompts per step =
  ``per_device_train_batch_size=P*G`` with ``gradient_accumulation_steps=1`` and
  ``steps_per_generation=1`` (one generation round and one optimizer step per step);
  ``num_iterations=1`` = ``ppo_epochs=1``.
- loss: our ``grpo`` preset (PPO-clip 0.2/0.28, token-mean, no KL, GRPO advantages) against
  TRL ``loss_type="dapo"`` (token-mean over the batch), ``epsilon=0.2, epsilon_high=0.28``,
  ``beta=0`` (no reference model), ``scale_rewards="group"``.
- sampling: temperature 1 (the presets' ``algo.temperature``), top_p 1, top_k 0, no
  repetition penalty.
- optimiser: AdamW (torch), the same lr and weight decay (0.1), constant schedule, grad clip 1.
- precision and memory knobs: fp32 everywhere. TRL's defaults of bf16 autocast and gradient
  checkpointing are switched off (ours has neither); logging every 10**6 steps, no saving.
- threads: ``torch.set_num_threads(--threads)`` for the whole process (both trainers).
- reward: the same function, ``archer.data.datasets.gym_reward`` (reasoning-gym's checker),
  wrapped as a TRL reward function that looks the prompt's gym entry up by index.
- group filter: our presets drop all-equal groups; a random tiny model scores 0 on every
  sample, so every group would be dropped and our step would skip the update. The bench runs
  both presets with ``group_filter="none"`` (TRL has no filter), so every step updates.
- on-policy shortcut: with one PPO epoch and one mini-batch, neither TRL nor our trainer
  runs a separate no-grad pass for the old log-probs (both use the update forward's detached
  ones; ``archer.trainer.is_on_policy``). ``old_logprob`` is then the advantages for grpo,
  plus the reference model's forward for archer (its low-entropy KL needs it), which runs
  each of the P prompts once and the responses without their padding.
- prompt sharing (``prompt_cache``, our default): our rollout prefills each prompt
  once for its G samples, and our update's forward/backward runs each prompt once for its
  G responses (gradients through the shared KV cache); TRL runs every prompt G times.
  ``--no-prompt-cache`` turns all of it off (every pass over the full padded sequences).
- a fourth run, ``archer_ref_bf16``, is our archer preset with ``ref_dtype=bfloat16``:
  the frozen reference in bfloat16 (as verl keeps it), the policy still float32.
- a fifth run, ``grpo_kl``, is our grpo preset plus a k3 KL of weight 0.001 to the reference
  on every token (verl's GRPO default, ``use_kl_loss`` with ``kl_loss_coef=0.001``): it pays
  for the same reference pass as archer, so archer / grpo_kl is the cost of archer's own
  machinery (entropy split, per-class clip and KL terms).

Timing: the runs are interleaved in one process. TRL's ``trainer.train()`` drives the
loop; a callback runs one step of each of our runs (in reversed order every other
round) after each TRL step, outside TRL's timed window. A TRL step is the time from its
``on_step_begin`` to ``on_step_end`` plus the loop's own overhead before the next step
(logging, data loader), i.e. everything but our steps. Round 0 is a warm-up and is discarded;
the median over ``--steps`` rounds is reported, with the ratios and the per-phase medians.
The runs' policies drift apart, and with them their response lengths, which every phase's
cost follows; so the ratio of the medians of seconds per step per mean response token is
reported too (same steps, length-normalised). ``--sync-weights`` removes the drift instead:
before each round our runs load TRL's current weights, so all runs sample from one policy
(and ours, seeded alike, sample the very same responses); the copy is outside every timed
window.
Besides wall seconds, each step's process CPU seconds (all threads, ``time.process_time``) are
reported: on a shared machine other processes inflate wall time, much less CPU time.
TRL's phases come from wrapping its ``_generate`` (rollout) and ``_calculate_rewards``
(reward); its ``old_logprob`` is the rest of its batch preparation (the analogue of our
``prepare_update_batch``: old/ref log-probs when needed, advantages) and its ``update`` the
rest of the step (loss forward, backward, clipping, optimizer step).

Run: ``.venv/bin/python bench/trainer_vs_trl.py [--steps 8] [--quick] [--profile]``
(needs the ``bench`` extra: ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

PHASES = ("rollout", "reward", "old_logprob", "update")
# our runs: name -> (preset, ref_dtype, algo overrides); archer_ref_bf16 keeps its
# frozen reference model in bfloat16 (ref_dtype, as verl does), the policy stays
# float32; grpo_kl is grpo plus a k3 KL to the reference on every token (verl's GRPO default,
# use_kl_loss with kl_loss_coef 0.001), so it pays for the same reference pass as archer
KL_ALL_TOKENS = {"high.kl_weight": 0.001, "low.kl_weight": 0.001, "kl_estimator": "k3",
                 "kl_normalization": "all_tokens"}
OUR_RUNS = {"grpo": ("grpo", None, {}), "archer": ("archer", None, {}),
            "archer_ref_bf16": ("archer", "bfloat16", {}),
            "grpo_kl": ("grpo", None, KL_ALL_TOKENS)}
RUN_LABELS = {"trl": "TRL GRPO", "grpo": "ours grpo", "archer": "ours archer",
              "archer_ref_bf16": "archer ref bf16", "grpo_kl": "grpo + KL"}
GYM_TASK = "chain_sum"
GYM_CONFIG = {"min_terms": 2, "max_terms": 2, "min_digits": 2, "max_digits": 2}


@dataclass
class Setup:
    prompts: int  # P: prompts per step
    group_size: int  # G
    max_new_tokens: int  # T
    steps: int  # timed rounds (after one warm-up round)
    threads: int
    hidden: int
    layers: int
    lr: float = 1e-4
    weight_decay: float = 0.1
    seed: int = 0
    template: str = "none"
    sync_weights: bool = False  # every round, our runs start from TRL's current weights
    prompt_cache: bool = True  # our no-grad passes: each prompt once, responses unpadded
    device: str = "cpu"  # cpu | cuda: where every run's models live (TRL's use_cpu, ours device)


@dataclass
class Timings:
    step: list[float] = field(default_factory=list)  # wall seconds per step
    cpu: list[float] = field(default_factory=list)  # process CPU seconds per step (all threads)
    phases: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})
    lengths: list[float] = field(default_factory=list)  # mean completion length per step


# --------------------------------------------------------------------------------------
# Our trainer
# --------------------------------------------------------------------------------------


def our_config(s: Setup, model_dir: Path, preset: str, out_dir: Path,
               ref_dtype: str | None = None, overrides: dict | None = None):
    from archer.train_config import DataConfig, TrainConfig
    from experiments.presets import load_preset

    algo = load_preset(preset, {"group_filter": "none", **(overrides or {})}).algo
    return TrainConfig(
        model=str(model_dir), algo=algo, reward="reasoning_gym",
        data=DataConfig(task=GYM_TASK, size=max(64, 4 * s.prompts * (s.steps + 1)),
                        seed=s.seed, task_config=dict(GYM_CONFIG)),
        template=s.template, prompts_per_step=s.prompts, group_size=s.group_size,
        max_new_tokens=s.max_new_tokens, rollout_batch_size=s.prompts, ppo_epochs=1,
        mini_batch_prompts=s.prompts, micro_batch_size=s.prompts * s.group_size, lr=s.lr,
        weight_decay=s.weight_decay, warmup_steps=0, grad_clip=1.0,
        total_steps=s.steps + 1, seed=s.seed, val_every=0, val_size=0, out_dir=str(out_dir),
        export_final=False, num_threads=s.threads, ref_dtype=ref_dtype,
        prompt_cache=s.prompt_cache, device=s.device)


def _sync() -> None:
    """Wait for queued GPU work before reading a clock (no-op on CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def our_step(ctx, timings: Timings | None) -> float:
    from archer.trainer import train_step

    _sync()
    t0, c0 = time.perf_counter(), time.process_time()
    m = train_step(ctx)
    _sync()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if m.get("train/step_skipped"):
        raise RuntimeError("our step skipped its update; the comparison would be unfair")
    if timings is not None:
        timings.step.append(wall)
        timings.cpu.append(cpu)
        for p in PHASES:
            timings.phases[p].append(m[f"time/{p}"])
        timings.lengths.append(m["response/length_mean"])
    return wall


# --------------------------------------------------------------------------------------
# TRL
# --------------------------------------------------------------------------------------


def trl_prompt_order(ctx, s: Setup) -> list[int]:
    """The record indices our trainer draws, step by step (a fresh sampler, same seed)."""
    from archer.trainer import PromptSampler

    sampler = PromptSampler(len(ctx.train_records), s.seed)
    return [i for _ in range(s.steps + 1) for i in sampler.next(s.prompts)]


def make_trl_trainer(s: Setup, model_dir: Path, ctx, out_dir: Path, callback):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from archer.data.datasets import gym_reward
    from archer.models import load_tokenizer
    from archer.trainer import prompt_texts

    records = ctx.train_records
    order = trl_prompt_order(ctx, s)
    texts = prompt_texts(ctx, [records[i] for i in order])
    tokenizer = load_tokenizer(model_dir)
    for text in texts[: s.prompts]:  # TRL tokenises plain prompts with special tokens on
        ours = tokenizer(text, add_special_tokens=False)["input_ids"]
        if tokenizer(text)["input_ids"] != ours:
            raise RuntimeError("TRL would tokenise the prompts differently from our rollout")
    dataset = Dataset.from_dict({"prompt": texts, "record": order})

    def gym_verifier(prompts, completions, record, **_):
        return gym_reward(completions, [records[i]["entry"] for i in record])

    algo = ctx.cfg.algo
    args = GRPOConfig(
        output_dir=str(out_dir), per_device_train_batch_size=s.prompts * s.group_size,
        gradient_accumulation_steps=1, steps_per_generation=1, num_generations=s.group_size,
        max_completion_length=s.max_new_tokens, num_iterations=1, beta=0.0,
        epsilon=algo.low.clip_low, epsilon_high=algo.low.clip_high, loss_type="dapo",
        scale_rewards="group", temperature=algo.temperature, top_p=1.0, top_k=0,
        repetition_penalty=1.0, learning_rate=s.lr, weight_decay=s.weight_decay,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, optim="adamw_torch",
        max_steps=s.steps + 1, num_train_epochs=1, use_cpu=s.device == "cpu", bf16=False,
        fp16=False,
        activation_checkpointing=False, report_to="none", logging_steps=10**6,
        save_strategy="no", shuffle_dataset=False, seed=s.seed, data_seed=s.seed,
        dataloader_num_workers=0, log_completions=False, disable_tqdm=True,
        remove_unused_columns=False, mask_truncated_completions=False)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 local_files_only=True)
    trainer_cls = timed_trl_class(GRPOTrainer)
    trainer = trainer_cls(model=model, reward_funcs=gym_verifier, args=args,
                          train_dataset=dataset, processing_class=tokenizer, callbacks=[callback])
    dtypes = {p.dtype for p in trainer.model.parameters()}
    if trainer.model.is_gradient_checkpointing or args.bf16 or dtypes != {torch.float32}:
        raise RuntimeError(f"TRL is not in plain fp32 without checkpointing: {dtypes}")
    if next(trainer.model.parameters()).device.type != s.device:
        raise RuntimeError(f"TRL's model is on {next(trainer.model.parameters()).device}, "
                           f"not {s.device}")
    return trainer


def timed_trl_class(base):
    """GRPOTrainer with wall-clock timers: ``rollout`` (``_generate``), ``reward``
    (``_calculate_rewards``) and ``old_logprob`` = the rest of ``_generate_and_score_completions``
    (old/ref log-prob passes if any, advantages, padding: the analogue of our
    ``prepare_update_batch``). ``logp_passes`` counts the log-prob passes run while preparing
    a batch (0 when TRL takes the old log-probs from the update's own forward)."""

    class TimedGRPOTrainer(base):
        phase_seconds: dict[str, float]
        logp_passes = 0
        _preparing = False

        def _add(self, name, seconds):
            self.phase_seconds[name] = self.phase_seconds.get(name, 0.0) + seconds

        def _generate(self, *a, **k):
            _sync()
            t0 = time.perf_counter()
            try:
                return super()._generate(*a, **k)
            finally:
                _sync()
                self._add("rollout", time.perf_counter() - t0)

        def _calculate_rewards(self, *a, **k):
            _sync()
            t0 = time.perf_counter()
            try:
                return super()._calculate_rewards(*a, **k)
            finally:
                _sync()
                self._add("reward", time.perf_counter() - t0)

        def _generate_and_score_completions(self, *a, **k):
            _sync()
            self._preparing, t0 = True, time.perf_counter()
            before = self.phase_seconds.get("rollout", 0.0) + self.phase_seconds.get("reward", 0.0)
            try:
                return super()._generate_and_score_completions(*a, **k)
            finally:
                _sync()
                self._preparing = False
                inner = (self.phase_seconds.get("rollout", 0.0)
                         + self.phase_seconds.get("reward", 0.0) - before)
                self._add("old_logprob", time.perf_counter() - t0 - inner)

        def _get_per_token_logps_and_entropies(self, *a, **k):
            if self._preparing:
                type(self).logp_passes += 1
            return super()._get_per_token_logps_and_entropies(*a, **k)

    TimedGRPOTrainer.phase_seconds = {}
    return TimedGRPOTrainer


# --------------------------------------------------------------------------------------
# The interleaved run
# --------------------------------------------------------------------------------------


def make_interleaver(ours: dict, results: dict[str, Timings],
                     profilers: dict[str, cProfile.Profile], sync_weights: bool = False):
    from transformers import TrainerCallback

    class Interleave(TrainerCallback):
        """After each TRL step, one step of each of our presets; TRL's clock is paused."""

        def __init__(self) -> None:
            self.trainer = None
            self.round = 0
            self.t_begin = self.t_resume = self.c_begin = self.c_resume = None
            self.gap = self.cpu_gap = 0.0

        def on_step_begin(self, args, state, control, **kw):
            _sync()
            now = time.perf_counter()
            cpu = time.process_time()
            self.gap = 0.0 if self.t_resume is None else now - self.t_resume
            self.cpu_gap = 0.0 if self.c_resume is None else cpu - self.c_resume
            self.t_begin, self.c_begin = now, cpu
            self.trainer.phase_seconds.clear()
            if "trl" in profilers and self.round > 0:
                profilers["trl"].enable()

        def on_step_end(self, args, state, control, **kw):
            _sync()
            core = time.perf_counter() - self.t_begin
            core_cpu = time.process_time() - self.c_begin
            if "trl" in profilers and self.round > 0:
                profilers["trl"].disable()
            timed = self.round > 0  # round 0 warms up every run
            if timed:
                trl = results["trl"]
                trl.step.append(core + self.gap)
                trl.cpu.append(core_cpu + self.cpu_gap)
                ph = self.trainer.phase_seconds
                for p in ("rollout", "reward", "old_logprob"):
                    trl.phases[p].append(ph.get(p, 0.0))
                trl.phases["update"].append(core - sum(ph.values()))
                trl.lengths.append(_trl_last_length(self.trainer))
            if sync_weights:  # outside every timed window
                src = self.trainer.accelerator.unwrap_model(self.trainer.model).state_dict()
                for ctx in ours.values():
                    ctx.model.load_state_dict(src)
            names = list(ours) if self.round % 2 == 0 else list(reversed(ours))
            for name in names:
                prof = profilers.get(name) if timed else None
                if prof is not None:
                    prof.enable()
                our_step(ours[name], results[name] if timed else None)
                if prof is not None:
                    prof.disable()
            self.round += 1
            _sync()
            self.t_resume, self.c_resume = time.perf_counter(), time.process_time()

    return Interleave()


def _trl_last_length(trainer) -> float:
    values = trainer._metrics["train"].get("completions/mean_length", [])
    return float(values[-1]) if values else float("nan")


def run(s: Setup, profile: bool = False) -> dict:
    from archer.models import build_tiny_model
    from archer.trainer import build_context

    torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    load_before = _loadavg()
    with tempfile.TemporaryDirectory(prefix="archer-bench-") as tmp:
        tmp = Path(tmp)
        model_dir = build_tiny_model(tmp / "model", hidden=s.hidden, layers=s.layers,
                                     heads=4, seed=s.seed)
        ours = {name: build_context(our_config(s, model_dir, preset, tmp / name, ref_dtype,
                                               overrides))
                for name, (preset, ref_dtype, overrides) in OUR_RUNS.items()}
        results = {k: Timings() for k in ("trl", *OUR_RUNS)}
        profilers = {k: cProfile.Profile() for k in ("trl", "grpo")} if profile else {}
        callback = make_interleaver(ours, results, profilers, s.sync_weights)
        trainer = make_trl_trainer(s, model_dir, ours["grpo"], tmp / "trl", callback)
        callback.trainer = trainer
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.train()
    if len(results["trl"].step) != s.steps:
        raise RuntimeError(f"TRL ran {len(results['trl'].step)} timed steps, not {s.steps}")
    out = summarise(results)
    out["trl"]["logp_passes"] = trainer.logp_passes
    out["loadavg"] = (load_before, _loadavg())
    for name, profiler in profilers.items():
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("cumulative").print_stats(40)
        out[f"profile_{name}"] = buf.getvalue()
    return out


def _loadavg() -> float:
    """The 1-minute load average (other processes share these cores), NaN if unknown."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def summarise(results: dict[str, Timings]) -> dict:
    med = statistics.median
    out = {}
    for name, t in results.items():
        out[name] = {"step_s": med(t.step), "cpu_s": med(t.cpu), "length": med(t.lengths),
                     **{f"{p}_s": med(v) for p, v in t.phases.items()}}
        out[name]["other_s"] = med([st - sum(t.phases[p][i] for p in PHASES)
                                    for i, st in enumerate(t.step)])
    def per_token(t: Timings) -> float:  # seconds per step per mean response token
        return med([st / max(n, 1.0) for st, n in zip(t.step, t.lengths)])

    def ratios(a: str, b: str) -> None:  # run a against run b, the same steps
        x, y = results[a], results[b]
        out[f"ratio_{a}_vs_{b}"] = med(x.step) / med(y.step)
        out[f"ratio_{a}_vs_{b}_paired"] = med([u / v for u, v in zip(x.step, y.step)])
        out[f"cpu_ratio_{a}_vs_{b}"] = med(x.cpu) / med(y.cpu)
        out[f"token_ratio_{a}_vs_{b}"] = per_token(x) / per_token(y)

    ratios("grpo", "trl")
    for name in results:
        if name not in ("trl", "grpo"):
            ratios(name, "grpo")
    if "archer" in results and "grpo_kl" in results:  # both pay for a reference pass
        ratios("archer", "grpo_kl")
    return out


def report(s: Setup, out: dict) -> None:
    import transformers
    import trl

    where = (torch.cuda.get_device_name() if s.device.startswith("cuda") else "CPU")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl "
          f"{trl.__version__}, device {s.device} ({where}), threads={s.threads}, "
          f"cpu_count={os.cpu_count()}")
    print(f"tiny Llama hidden={s.hidden} layers={s.layers}; P={s.prompts} prompts x "
          f"G={s.group_size}, max_new_tokens={s.max_new_tokens}, one PPO epoch, one optimizer "
          f"step per step; median of {s.steps} interleaved steps after 1 warm-up"
          + ("; weights synced to TRL's before each round" if s.sync_weights else "")
          + ("" if s.prompt_cache else "; our prompt cache off"))
    print(f"1-min load average before/after: {out['loadavg'][0]:.2f}/{out['loadavg'][1]:.2f}; "
          f"TRL no-grad log-prob passes while preparing batches: {out['trl']['logp_passes']}")
    head = f"{'run':14s} {'s/step':>8s} " + " ".join(f"{p:>11s}" for p in PHASES)
    print(head + f" {'other':>8s} {'cpu_s':>8s} {'resp_len':>8s}")
    for name, label in RUN_LABELS.items():
        if name not in out:
            continue
        r = out[name]
        print(f"{label:14s} {r['step_s']:8.3f} "
              + " ".join(f"{r[p + '_s']:11.3f}" for p in PHASES)
              + f" {r['other_s']:8.3f} {r['cpu_s']:8.3f} {r['length']:8.1f}")
    print(f"ratio ours grpo / TRL   = {out['ratio_grpo_vs_trl']:.3f} (median of per-step "
          f"ratios {out['ratio_grpo_vs_trl_paired']:.3f}; CPU seconds "
          f"{out['cpu_ratio_grpo_vs_trl']:.3f}; per response token "
          f"{out['token_ratio_grpo_vs_trl']:.3f}; target <= 1.0)")
    for name in RUN_LABELS:
        if name in ("trl", "grpo") or f"ratio_{name}_vs_grpo" not in out:
            continue
        print(f"ratio {name + ' / grpo':17s} = {out[f'ratio_{name}_vs_grpo']:.3f} (median of "
              f"per-step ratios {out[f'ratio_{name}_vs_grpo_paired']:.3f}; CPU seconds "
              f"{out[f'cpu_ratio_{name}_vs_grpo']:.3f}; per response token "
              f"{out[f'token_ratio_{name}_vs_grpo']:.3f}"
              + ("; target <= 1.05 at GPU scale only, reported on the tiny CPU model)"
                 if name.startswith("archer") else ")"))
    if "ratio_archer_vs_grpo_kl" in out:
        print(f"ratio archer / grpo+KL  = {out['ratio_archer_vs_grpo_kl']:.3f} (median of "
              f"per-step ratios {out['ratio_archer_vs_grpo_kl_paired']:.3f}; CPU seconds "
              f"{out['cpu_ratio_archer_vs_grpo_kl']:.3f}; both with a reference pass: the "
              f"cost of archer's split, per-class clip and KL; target <= 1.03 at every size)")
    for name in ("trl", "grpo"):
        if f"profile_{name}" in out:
            print(f"cProfile of the timed {name} steps (cumulative):")
            print(out[f"profile_{name}"])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="timed steps per run (after warm-up)")
    ap.add_argument("--group-size", type=int, default=8, help="G, samples per prompt")
    ap.add_argument("--prompts", type=int, default=8, help="P, prompts per step")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="T, response budget")
    ap.add_argument("--hidden", type=int, default=128, help="tiny model width")
    ap.add_argument("--layers", type=int, default=2, help="tiny model depth")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--quick", action="store_true",
                    help="smoke size: 2 steps, P=2, G=4, T=8 (overrides those options)")
    ap.add_argument("--profile", action="store_true", help="cProfile TRL's and our grpo steps")
    ap.add_argument("--json", action="store_true", help="also print a JSON line")
    ap.add_argument("--sync-weights", action="store_true",
                    help="before each round our runs load TRL's current weights, so every run "
                         "samples from the same policy (no drift in response lengths; our "
                         "runs then sample the very same responses)")
    ap.add_argument("--no-prompt-cache", action="store_true",
                    help="prompt_cache=false for our runs: the rollout, the no-grad "
                         "passes and the update run every prompt G times, padded")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="where every run's models live: TRL's use_cpu and our device "
                         "(cuda: the clocks wait for the GPU at every phase boundary)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no CUDA GPU")
    if args.quick:
        args.steps, args.prompts, args.group_size, args.max_new_tokens = 2, 2, 4, 8
    for name in ("steps", "group_size", "prompts", "max_new_tokens", "hidden", "layers",
                 "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.group_size < 2:
        ap.error("--group-size must be >= 2 (TRL's GRPO needs at least 2 generations)")
    from archer.extras import MissingExtraError, require

    try:
        require("trl", "bench", "bench/trainer_vs_trl.py")
    except MissingExtraError as err:
        sys.exit(str(err))
    s = Setup(prompts=args.prompts, group_size=args.group_size,
              max_new_tokens=args.max_new_tokens, steps=args.steps, threads=args.threads,
              hidden=args.hidden, layers=args.layers, sync_weights=args.sync_weights,
              prompt_cache=not args.no_prompt_cache, device=args.device)
    out = run(s, profile=args.profile)
    report(s, out)
    if args.json:
        print(json.dumps({k: v for k, v in out.items() if not k.startswith("profile_")}))
    return out


if __name__ == "__main__":
    main()
