"""``archer ablate STUDY --dry-run``: what a study would run, reuse and cost, nothing started.

The cost model (:func:`estimate_cost`) is a per-step rate times the work, with its assumptions
printed beside the numbers:

- a training step costs ``s_per_step`` seconds of one trial's resources for a reference shape:
  the trials' model's rate where one is measured (:data:`MODEL_RATES`, e.g. SmolLM2-135M,
  whose steps cost about 200 times the tiny model's), else the recipe's (:data:`STEP_RATES`:
  measured for ``cpu``, the tiny model on one thread), scaled linearly by sampled tokens,
  ``prompts_per_step x group_size x max_new_tokens``, relative to that shape (rollout dominates at these sizes);
- the trainer's validations (every ``val_every`` steps and at the end) and the per-trial
  evaluation (``eval.k`` samples of each of ``val_size`` held-out problems) cost the step rate
  per sampled response, i.e. ``s_per_step x samples / (prompts_per_step x group_size)``;
- a warm start that is not built yet costs ``SFT_S_PER_STEP x warm_start.steps`` (measured:
  600 steps of batch 64 in about 80 s on one core), once;
- CPU-hours = wall time x ``resources.num_cpus``, GPU-hours = wall time x ``num_gpus``, summed
  over trials (retries and Ray's start-up are not counted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# recipe -> (seconds per training step, (prompts, group, new tokens) it was measured at, note)
STEP_RATES: dict[str, tuple[float, tuple[int, int, int], str]] = {
    "cpu": (0.25, (16, 8, 5), "measured: the warm-started tiny model, 1 thread, two trials "
            "at once on a 2-core machine: 60 steps in 15 s"),
}
# prepared model name -> its rate on CPU (as STEP_RATES), whatever the recipe
MODEL_RATES: dict[str, tuple[float, tuple[int, int, int], str]] = {
    "smollm2-135m": (50.0, (8, 8, 16), "measured: baselines_smollm2, median time/step 49 s "
                     "over its 9 trials (dapo's refill rounds up to 118 s), two trials at once "
                     "on a loaded 2-core machine"),
}
GPU_RATE = (30.0, (32, 8, 1024), "assumed, not measured: a 1.5B model on one GPU")
SFT_S_PER_STEP = 0.12  # warm-start SFT step, tiny model: 0.08 s measured at batch 64, 1.5x assumed at 128


@dataclass(frozen=True)
class CostEstimate:
    trial_seconds: list[float]  # each trial's estimated wall time
    warm_start_seconds: float  # building the warm start(s) not built yet
    cpu_hours: float
    gpu_hours: float
    assumptions: list[str]


def trial_seconds(train: dict[str, Any], evaluation: dict[str, Any] | None,
                  rate: tuple[float, tuple[int, int, int], str]) -> float:
    s_ref, (p0, g0, t0), _ = rate
    samples = train["prompts_per_step"] * train["group_size"]
    s_step = s_ref * samples * train["max_new_tokens"] / (p0 * g0 * t0)
    per_sample = s_step / samples
    steps = train["total_steps"]
    vals = (steps // train["val_every"] + (1 if steps % train["val_every"] else 0)) \
        if train["val_every"] else 0
    val_s = vals * train["val_size"] * train["val_samples"] * per_sample
    eval_s = 0.0
    if evaluation:
        eval_s = len(evaluation["benchmarks"]) * train["val_size"] * (evaluation.get("k") or 1) \
            * per_sample
    return steps * s_step + val_s + eval_s


def step_rate(recipe: str, models: set[str], resources: dict[str, Any]
              ) -> tuple[tuple[float, tuple[int, int, int], str], str]:
    """(rate, what it is the rate of) for trials of ``models`` under ``recipe``: a CPU
    model's measured rate, else the recipe's, else the cpu recipe's (a CPU recipe) or the
    GPU guess."""
    gpu = bool(resources.get("num_gpus"))
    known = sorted(m for m in models if m in MODEL_RATES)
    if known and not gpu:
        slowest = max(known, key=lambda m: MODEL_RATES[m][0])
        return MODEL_RATES[slowest], f"model {slowest}"
    if recipe in STEP_RATES:
        return STEP_RATES[recipe], f"recipe {recipe}"
    rate = GPU_RATE if gpu else STEP_RATES["cpu"]
    return (rate[0], rate[1], rate[2] + f" (recipe {recipe} has no rate of its own)"), \
        f"recipe {recipe}"


def estimate_cost(recipe: str, trials, resources: dict[str, Any], warm_to_build: int,
                  warm_steps: int) -> CostEstimate:
    rate, source = step_rate(recipe, {str(t.train["model"]) for t in trials}, resources)
    seconds = [trial_seconds(t.train, t.eval, rate) for t in trials]
    warm_s = warm_to_build * warm_steps * SFT_S_PER_STEP
    cpus, gpus = float(resources.get("num_cpus", 1)), float(resources.get("num_gpus", 0))
    s_ref, (p0, g0, t0), note = rate
    assumptions = [
        f"{s_ref:g} s per training step at {p0} prompts x {g0} samples x {t0} new tokens "
        f"({source}: {note}), scaled by sampled tokens",
        "validation and evaluation cost the step rate per sampled response",
        f"warm start: {SFT_S_PER_STEP:g} s per SFT step (measured, tiny model), "
        f"{warm_to_build} to build",
        f"per trial: {cpus:g} CPU(s), {gpus:g} GPU(s); retries and Ray start-up not counted"]
    total = sum(seconds)
    return CostEstimate(seconds, warm_s, (total * cpus + warm_s) / 3600, total * gpus / 3600,
                        assumptions)


def format_plan(spec, trials, common: list[str], warm: list, cost: CostEstimate,
                warnings: list[str]) -> str:
    """The dry run's report (see ``archer ablate --dry-run``)."""
    arms = len(trials) // len(spec.seeds)
    lines = [f"study {spec.name} (recipe {spec.recipe}): {len(trials)} trials = {arms} arm(s) "
             f"x {len(spec.seeds)} seed(s) {list(spec.seeds)}; nothing is started (dry run)",
             f"every trial: {' '.join(common) or '-'}"]
    for t, seconds in zip(trials, cost.trial_seconds):
        own = [ov for ov in t.overrides if ov not in common]
        lines.append(f"  {t.name:44s} {' '.join(own) or '-'}  (~{seconds / 60:.1f} min)")
    if not warm:
        lines.append("warm start: none (warm_start=null): the trials train the model as given")
    for w in warm:
        state = (f"present, reused (held-out accuracy {w.heldout_accuracy})" if w.present
                 else f"absent: will be built ({spec.warm_start.steps} SFT steps at most)")
        if w.cut_short:
            state += (f"; it stopped on its time budget after {w.sft_steps} of "
                      f"{spec.warm_start.steps} steps: delete it to build it again")
        lines.append(f"warm start: {w.hash[:16]} at {w.model_dir} ({state})")
    lines.append(f"estimate: {cost.cpu_hours:.2f} CPU-hours"
                 + (f", {cost.gpu_hours:.2f} GPU-hours" if cost.gpu_hours else "")
                 + f" (trials {sum(cost.trial_seconds) / 3600:.2f} h of trial time, warm start "
                 f"{cost.warm_start_seconds / 60:.1f} min); assumptions:")
    lines += [f"  - {a}" for a in cost.assumptions]
    lines += [f"WARNING: study {spec.name}: {w}" for w in warnings]
    return "\n".join(lines)
