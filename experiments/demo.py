"""``archer demo``: the quickstart on embedded defaults, end to end on a laptop CPU.

What it does (no downloads; about 3 minutes on 2 cores):

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

import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

# The quickstart's task: a +/- b with 1-digit operands and three terms (4000 problems).
TASK = "chain_sum"
TASK_CONFIG = {"min_terms": 3, "max_terms": 3, "min_digits": 1, "max_digits": 1}
DATA_SIZE = 4000
VAL_SIZE = 200
VAL_K = 4  # samples per held-out problem for avg@k / pass@k
MAX_NEW_TOKENS = 5
SFT_STEPS = 800  # supervised warm-up budget (stops earlier at SFT_TARGET)
SFT_TARGET = 0.35  # held-out greedy accuracy that ends the warm-up
# The warm-up's lr stays constant. A cosine decay to 5% (sft.lr_schedule) settles the seeds
# whose accuracy swings at 3e-3 (seed 5: 0.64 after 800 steps instead of 0.075), but RL then
# added nothing: seeds 0-3 went 0.340 -> 0.315, 0.250 -> 0.260, 0.415 -> 0.390, 0.350 -> 0.330
# greedy (commit 378215a). The quickstart keeps the warm start RL measurably improves.
SFT_MAX_SECONDS = 230.0  # a safety net: 800 steps take about 140 s on 2 idle cores
RL_STEPS = 40
RL_LR = 1e-4  # 2e-4 drifted (KL(low) up to 1.5, reward falling) on a weak warm start


def demo_train_config(model: str, algo, out_dir: Path, steps: int, seed: int, **overrides):
    """The trainer config of the quickstart's RL run (also used for the validations)."""
    from archer.train_config import DataConfig, TrainConfig

    base = dict(
        model=model, algo=algo, reward="reasoning_gym",
        # the problems and their held-out split do not depend on the seed (the warm start is
        # shared by every seed); the seed changes the sampling and the RL run
        data=DataConfig(task=TASK, size=DATA_SIZE, seed=0, task_config=dict(TASK_CONFIG)),
        template="none", prompts_per_step=32, group_size=8, max_new_tokens=MAX_NEW_TOKENS,
        ppo_epochs=3, mini_batch_prompts=16, micro_batch_size=256, lr=RL_LR,
        warmup_steps=0, total_steps=steps, seed=seed, val_every=steps, val_size=VAL_SIZE,
        val_temperature=algo.temperature, val_samples=VAL_K, ckpt_every=0,
        out_dir=str(out_dir), rollout_batch_size=64, num_threads=2, resume=False,
    )
    base.update(overrides)
    return TrainConfig(**base)


def heldout_accuracy(cfg, per_problem: dict[str, list[float]] | None = None
                     ) -> dict[str, float]:
    """Greedy accuracy, avg@k and pass@k of ``cfg.model`` on the held-out split;
    ``per_problem`` receives each problem's greedy and avg@k scores (for paired tests)."""
    from archer.trainer import build_context, setup_torch, validate

    setup_torch(cfg)
    ctx = build_context(cfg)
    ctx.model.eval()
    sampled_pp: list[float] = []
    greedy_pp: list[float] = []
    sampled = validate(ctx, sampled_pp)
    greedy = validate(ctx, greedy_pp, samples=1, temperature=0.0)
    if per_problem is not None:
        per_problem.update({"greedy": greedy_pp, f"avg@{VAL_K}": sampled_pp})
    return {"greedy": greedy["val/accuracy"], f"avg@{VAL_K}": sampled["val/accuracy"],
            f"pass@{VAL_K}": sampled[f"val/pass@{VAL_K}"]}


def paired_lines(before: dict[str, list[float]], after: dict[str, list[float]]) -> list[str]:
    """After - before per metric: difference, paired bootstrap 95% CI and sign-flip p-value
    over the held-out problems (``evals.metrics.paired_comparison``)."""
    from evals.metrics import paired_comparison

    lines = []
    for key in before:
        c = paired_comparison(after[key], before[key])
        lines.append(f"{key:9s} {c['diff']:+.3f}  95% CI [{c['ci_low']:+.3f}, "
                     f"{c['ci_high']:+.3f}]  p={c['p_value']:.3g}  ({c['n_problems']} "
                     "problem pairs)")
    return lines


def pooled_report(out_dir: str | Path) -> list[str]:
    """The quickstart's after-minus-before comparison over every seed run under ``out_dir``
    (``seed*/heldout.json``), seed-aware (``evals.statistics.seed_paired_comparison``): pairs
    are (seed, held-out problem); the CI is a hierarchical bootstrap (seeds, then problems) and
    the p-value a sign-flip test over the per-seed differences, whose smallest attainable
    value with this many seeds is printed beside it; each seed's difference is listed."""
    from evals.statistics import seed_paired_comparison

    files = sorted(Path(out_dir).glob("seed*/heldout.json"))
    if not files:
        raise FileNotFoundError(f"no seed*/heldout.json under {out_dir}: run "
                                "`archer demo --quick seed=S` first")
    before: dict[str, dict[str, list[float]]] = {}
    after: dict[str, dict[str, list[float]]] = {}
    for f in files:
        rec = json.loads(f.read_text())
        for key, values in rec["before"].items():
            before.setdefault(key, {})[f.parent.name] = values
            after.setdefault(key, {})[f.parent.name] = rec["after"][key]
    seeds = ", ".join(f.parent.name for f in files)
    lines = [f"over {len(files)} seeds ({seeds}): after RL - warm start"]
    for key in before:
        c = seed_paired_comparison(after[key], before[key])
        per_seed = ", ".join(f"{s} {d:+.3f}" for s, d in c["per_seed"].items())
        lines.append(f"{key:9s} {c['diff']:+.3f}  95% CI [{c['ci_low']:+.3f}, "
                     f"{c['ci_high']:+.3f}]  p={c['p_value']:.3g} ({c['p_value_method']})  "
                     f"per seed: {per_seed}  ({c['n_problems']} problem pairs)")
    return lines


def run_demo(out_dir: str = "runs/demo", steps: int | None = None, seed: int = 0,
             algo: str = "archer", tracking_uri: str | None = None) -> int:
    """The quickstart (``archer demo --quick``): one RL run of the method preset ``algo``
    between two held-out measurements of its warm start."""
    from archer.trainer import fit
    from experiments.presets import load_preset
    from experiments.tracking import MlflowLogger, resolve_tracking_uri

    steps = steps or RL_STEPS
    out = Path(out_dir) / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.manual_seed(seed)
    preset, algo = algo, load_preset(algo).algo
    print(f"[1/5] tiny char-level Llama (hidden 128, seed {demo_warm_start_settings().seed})")
    print(f"[2/5] the shared supervised warm start on reasoning-gym {TASK} {TASK_CONFIG} "
          "(the same for every seed; cached)")
    probe = demo_train_config("tiny", algo, out / "warmup", steps, seed)
    warm_dir, info = prepare_warm_start(Path(out_dir) / "warm_start", probe.to_dict())
    print(f"      warm start {info['hash'][:16]}: {info['sft_steps']} SFT steps, held-out "
          f"greedy accuracy {info['sft_accuracy']:.3f}")
    cfg = demo_train_config(str(warm_dir), algo, out / preset, steps, seed)
    print(f"[3/5] held-out accuracy of the warm start ({VAL_SIZE} problems)")
    before_pp: dict[str, list[float]] = {}
    before = heldout_accuracy(cfg, before_pp)
    print("      " + "  ".join(f"{k} {v:.3f}" for k, v in before.items()))
    uri = resolve_tracking_uri(tracking_uri)
    print(f"[4/5] RL with algo={preset}: {steps} steps, logging to MLflow at {uri}")
    logger = MlflowLogger(cfg.out_dir, None, tracking_uri=uri, experiment="archer-demo",
                          run_name=f"demo-{preset}-seed{seed}")
    logger.log_metrics({f"val/{k}": v for k, v in before.items()}, 0)
    result = fit(cfg, logger=logger)
    print("[5/5] held-out accuracy after RL")
    after_pp: dict[str, list[float]] = {}
    after = heldout_accuracy(replace(cfg, model=str(result.export_dir)), after_pp)
    last = result.metrics[-1] if result.metrics else {}
    print(f"\n{'held-out (' + str(VAL_SIZE) + ' problems)':26s} {'warm start':>10s} "
          f"{'after RL':>9s} {'change':>8s}")
    for key in before:
        print(f"{key:26s} {before[key]:10.3f} {after[key]:9.3f} {after[key] - before[key]:+8.3f}")
    print("\npaired over the held-out problems, after RL - warm start:")
    for line in paired_lines(before_pp, after_pp):
        print("  " + line)
    (out / "heldout.json").write_text(json.dumps(
        {"seed": seed, "preset": preset, "steps": steps, "before": before_pp,
         "after": after_pp}) + "\n")
    print(f"per-problem results: {out / 'heldout.json'} (pool seeds: archer demo --quick "
          f"--pool out_dir={out_dir})")
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


# --------------------------------------------------------------------------------------------
# The full demo (`make demo`): warm start, the baselines study on a local Ray, evaluation and
# MLflow (the leaderboard and dashboards over it: archer_cli.demo)
# --------------------------------------------------------------------------------------------

FULL_PRESETS = ("grpo", "dapo", "archer")
FULL_STUDY = "baselines"
FULL_EXPERIMENT = "archer-demo-baselines"
WARM_LABEL = "sft warm start"  # the warm start's row in the leaderboard


def demo_warm_start_settings():
    """The full demo's shared warm start (experiments.warm_start): the quickstart's
    supervised warm-up budget with the warm start's own seed 0, so every trial seed starts
    from the same model; the time budget is a safety net (800 steps take about 140 s on 2
    idle cores)."""
    from experiments.warm_start import WarmStartSettings

    return WarmStartSettings(steps=SFT_STEPS, target=SFT_TARGET, lr=3e-3, batch_size=128,
                             eval_every=25, seed=0, max_seconds=SFT_MAX_SECONDS)


def prepare_warm_start(out: Path, train: dict, log=print) -> tuple[Path, dict]:
    """The demo's tiny model (hidden 128, built with the warm start's seed) after the shared
    supervised warm start on the training split of ``train`` (a trial's TrainConfig dict:
    its data, held-out split, template and response budget; the trial seed is not used),
    so the warm-up never sees the problems the trials are evaluated on. Cached by content
    under ``$ARCHER_CACHE_DIR/warm_starts`` and reused (:mod:`experiments.warm_start`).
    Returns the model directory and a summary (``hash``, ``sft_steps``, ``sft_accuracy``)."""
    from archer.models import build_tiny_model
    from experiments.warm_start import prepare_warm_start as shared_warm_start

    settings = demo_warm_start_settings()
    tiny = build_tiny_model(out / "tiny_model", hidden=128, layers=2, heads=4,
                            seed=settings.seed)
    warm = shared_warm_start(train | {"model": str(tiny), "num_threads": None}, settings,
                             log=lambda line: log("      " + line))
    info = {"model_dir": str(warm.model_dir), "hash": warm.hash, "sft_steps": warm.sft_steps,
            "sft_accuracy": warm.heldout_accuracy}
    return warm.model_dir, info


def evaluate_warm_start(trial, warm_dir: Path, out: Path, tracking_uri: str, seed: int):
    """The warm start evaluated under exactly the trials' evaluation contract (the same code
    as a trial's evaluation), logged as the leaderboard's "sft warm start" row. A rerun
    reuses the samples and the MLflow run when the contract and store are the same
    (:func:`experiments.start_eval.evaluate_start`)."""
    from experiments.start_eval import evaluate_start

    return evaluate_start(trial, out, tracking_uri, model_dir=warm_dir, label=WARM_LABEL,
                          experiment=FULL_EXPERIMENT, tags={"archer.seed": str(seed)})


@dataclass(frozen=True)
class DemoStudy:
    """What the full demo's study left: ``returncode`` 0 when every trial finished (else the
    exit code), the MLflow store it logged to and when it started (``time.perf_counter``)."""

    returncode: int
    tracking_uri: str
    started: float


def run_demo_study(out_dir: str = "runs/demo", seed: int = 0, tracking_uri: str | None = None,
                   presets: tuple[str, ...] = FULL_PRESETS, steps: int | None = None,
                   num_cpus: int | None = None, progress: bool | None = None,
                   overrides: list[str] | None = None) -> DemoStudy:
    """Steps 1-4 of ``make demo`` (see the README for measured times on 2 CPU cores): the
    warm start, its evaluation and the baselines study, each trial evaluated and logged.
    ``overrides`` go to every trial after the ``demo`` recipe (e.g. ``total_steps=20``).
    The leaderboard and dashboards over the result are built one layer up
    (``archer_cli.demo.run_full_demo``)."""
    from experiments.scheduler import StudyInterrupted
    from experiments.study import expand_trials, load_study, split_overrides
    from experiments.study_cli import run_study
    from experiments.tracking import resolve_tracking_uri

    start = time.perf_counter()
    out = Path(out_dir) / "full"
    out.mkdir(parents=True, exist_ok=True)
    uri = resolve_tracking_uri(tracking_uri)
    base = [f"study.axes.algo=[{','.join(presets)}]", f"study.seeds=[{seed}]", "recipe=demo",
            f"study.experiment={FULL_EXPERIMENT}"] + list(overrides or [])
    if steps:
        base.append(f"total_steps={steps}")
    root = out / "studies"

    def trials_for(model: str):
        study_ovs, trial_ovs = split_overrides(base + [f"model={model}"])
        return expand_trials(load_study(FULL_STUDY, study_ovs), trial_ovs, root)

    probe = trials_for("tiny")[0]  # the trials' data, split and budget (model aside)
    print(f"[1/6] prepare a model: tiny char-level Llama + supervised warm-up on reasoning-gym "
          f"{probe.train['data']['task']} {probe.train['data']['task_config']}")
    warm_dir, info = prepare_warm_start(out / "warm_start", probe.train)
    print(f"      warm start: {info['sft_steps']} SFT steps, held-out greedy accuracy "
          f"{info['sft_accuracy']:.3f} ({time.perf_counter() - start:.0f} s)")
    trials = trials_for(str(warm_dir))
    k = trials[0].eval["k"]
    print(f"[2/6] evaluate the warm start: {k} samples on each of the "
          f"{trials[0].train['val_size']} held-out problems (benchmark gym)")
    warm_results, _ = evaluate_warm_start(trials[0], warm_dir, out / "warm_start_eval", uri,
                                          seed)
    m = warm_results[0]["metrics"]
    print(f"      avg@{k} {m[f'avg_at_{k}']:.3f}  pass@{k} {m[f'pass_at_{k}']:.3f}")
    print(f"[3/6] study {FULL_STUDY!r} ({', '.join(presets)}; seed {seed}; "
          f"{trials[0].train['total_steps']} steps each) on a local Ray, logging to {uri}")
    try:
        state = run_study(FULL_STUDY, base + [f"model={warm_dir}"], root=root,
                          tracking_uri=uri, num_cpus=num_cpus, progress=progress)
    except StudyInterrupted as stopped:
        print(f"archer demo: {stopped}; run the same command again to resume (the warm start "
              "and finished trials are reused)", file=sys.stderr)
        return DemoStudy(128 + stopped.signum, uri, start)
    if state.status != "finished":
        print(f"the study did not finish (status {state.status}); see {root / FULL_STUDY}")
        return DemoStudy(1, uri, start)
    print("[4/6] each trial was evaluated on the same held-out problems and logged to MLflow "
          f"(experiment {FULL_EXPERIMENT!r}, study run {state.parent_run_id})")
    return DemoStudy(0, uri, start)
