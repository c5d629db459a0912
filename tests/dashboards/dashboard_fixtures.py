"""Helpers of tests/dashboards, in a module with a name of its own (every test directory's
``conftest`` shares one module name, so tests cannot import from it).

Fabricated studies in a temporary MLflow store, written through the project's own writers
(``archer.tracking.hierarchy.StudyTracker`` for the study/trial/evaluation hierarchy,
``archer.tracking.eval_runs.log_eval`` underneath, ``evals.scoring.write_result`` for the
per-problem table), with per-sample correctness and per-step metrics chosen so every leaderboard number
can be worked out by hand (see ``BASELINES``)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

# Six problems, k=2 samples, two seeds per preset. Hand-computed (per-problem accuracy):
#   grpo   seed 0 [.5,0,1,0,0,.5]   seed 1 [1,0,.5,0,.5,0]   mean of seeds 2/6 each -> 1/3
#   archer seed 0 [1,.5,1,.5,.5,1]  seed 1 [1,1,1,.5,1,.5]   4.5/6, 5/6 -> 19/24
#   dapo   seed 0 [.5,0,1,0,.5,.5]  seed 1 = grpo seed 1      2.5/6, 2/6 -> 3/8
# archer - grpo per problem (seed-averaged): [.25,.75,.25,.5,.5,.5]: all 6 positive, so the
# exact sign-flip p-value is 2/2**6 = 1/32; dapo - grpo: [0,0,0,0,.25,0]: p = 1.
BASELINES = {
    "grpo": [
        [[1, 0], [0, 0], [1, 1], [0, 0], [0, 0], [1, 0]],
        [[1, 1], [0, 0], [1, 0], [0, 0], [0, 1], [0, 0]],
    ],
    "archer": [
        [[1, 1], [1, 0], [1, 1], [0, 1], [1, 0], [1, 1]],
        [[1, 1], [1, 1], [1, 1], [1, 0], [1, 1], [1, 0]],
    ],
    "dapo": [
        [[1, 0], [0, 0], [1, 1], [0, 0], [1, 0], [1, 0]],
        [[1, 1], [0, 0], [1, 0], [0, 0], [0, 1], [0, 0]],
    ],
}
# Per-step trainer metrics of every trial (3 steps, group_size 4): training seconds
# 1+2+3 = 6; generated tokens 4 groups x 4 x (10+20+30) = 960; discarded (0+2+4) x 4 = 24.
STEPS = {
    "time/step": [1.0, 2.0, 3.0],
    "response/length_mean": [10.0, 20.0, 30.0],
    "groups/sampled": [4.0, 4.0, 4.0],
    "groups/kept": [4.0, 2.0, 0.0],
}
GROUP_SIZE = 4


def make_contract(temperature: float = 0.8, n_problems: int = 6, k: int = 2):
    from evals.contracts import EvalContract

    return EvalContract(benchmark="gsm8k", data_file="gsm8k_test", data_sha256="0" * 64,
                        n_problems=n_problems, template="plain_answer", chat_template="plain",
                        temperature=temperature, top_p=1.0, max_new_tokens=32, k=k, seed=0,
                        grader="math", grader_version="archer.math@test",
                        overrides=("k", "max_new_tokens"))


def make_result(correct: list[list[int]], contract, out_dir: Path) -> dict:
    """An evaluation result as ``evals.scoring`` produces it, with its files in ``out_dir``."""
    from evals import metrics as M
    from evals.scoring import write_result

    n = min(len(r) for r in correct)
    result = {
        "benchmark": contract.benchmark, "label": "test slice", "model": str(out_dir),
        "engine": "hf", "contract": contract.to_dict(), "contract_hash": contract.hash,
        "metrics": M.summarize(correct, k_list=range(1, n + 1), seed=0), "breakdowns": {},
        "per_problem": [{"problem_id": f"p{i}", "n": len(c), "c": sum(c),
                         "accuracy": sum(c) / len(c), "correct": c}
                        for i, c in enumerate(correct)],
    }
    write_result(out_dir, result, None, [])
    result["_dir"] = str(out_dir)
    return result


def fabricate_study(uri: str, root: Path, study: str = "baselines",
                    presets: dict | None = None, *, temperature: float = 0.8,
                    axes_key: str = "algo", steps: dict | None = None,
                    curves: bool = True) -> dict[str, str]:
    """Log a finished study (study run, trial runs with per-step metrics, evaluation runs
    nested under them) to ``uri``; returns ``{f"{preset}/{seed}": trial run id}``."""
    from archer.tracking.hierarchy import StudyTracker

    presets = BASELINES if presets is None else presets
    steps = STEPS if steps is None else steps
    study_dir = root / study
    study_dir.mkdir(parents=True, exist_ok=True)
    cfg = study_dir / "study.yaml"
    cfg.write_text(f"name: {study}\n")
    tracker = StudyTracker(study, study_dir, f"study-{study}", uri)
    parent = tracker.open_study_run(None, {"study": study}, cfg)
    contract = make_contract(temperature)
    ids = {}
    number = 0
    for preset, seeds in presets.items():
        for seed, correct in enumerate(seeds):
            axes = f"algo={preset}" if axes_key == "algo" else f"{axes_key}={preset}"
            trial = SimpleNamespace(
                number=number, name=f"t{number:03d}-{preset}-seed={seed}",
                hash=f"{study}-{preset}-{seed}", out_dir=str(study_dir / f"t{number}"),
                overrides=(axes, f"seed={seed}"),
                tags={"archer.study": study, "archer.trial_number": str(number),
                      "archer.preset": preset if axes_key == "algo" else "archer",
                      "archer.seed": str(seed), "archer.model": "tiny",
                      "archer.data": "gym_arith", "archer.variant": "-", "archer.axes": axes})
            number += 1
            Path(trial.out_dir).mkdir(parents=True, exist_ok=True)
            rid = tracker.open_trial_run(trial, None, parent, cfg)
            uploaded: set[int] = set()
            tracker.apply(trial.hash, {"op": "params", "values": {
                "group_size": str(GROUP_SIZE), "algo.entropy_quantile": "0.8"}}, uploaded)
            n_steps = len(next(iter(steps.values())))
            for s in range(n_steps):
                values = {k: v[s] for k, v in steps.items()}
                if curves:  # per-token-class curves, distinct per preset and seed
                    base = 0.1 * (1 + list(presets).index(preset)) + 0.01 * seed
                    values |= {
                        "actor/entropy_high_entropy": 2.0 + base - 0.1 * s,
                        "actor/entropy_low_entropy": 0.5 + base - 0.05 * s,
                        "actor/clipfrac_high_entropy_upper": 0.02 * (s + 1) * (1 + base),
                        "actor/clipfrac_low_entropy_upper": 0.01 * (s + 1) * (1 + base),
                        "actor/kl_high_entropy": 0.001 * (s + 1),
                        "actor/kl_low_entropy": 0.002 * (s + 1),
                        "actor/pg_contrib_high_entropy": 0.6 + base,
                        "actor/pg_contrib_low_entropy": 0.4 - base,
                        "response/repetition_ratio": 0.1 + 0.01 * s,
                        "reward/mean": base + 0.1 * s,
                    }
                tracker.apply(trial.hash, {"op": "metrics", "step": s + 1, "values": values},
                              uploaded)
            acc = sum(sum(r) / len(r) for r in correct) / len(correct)
            tracker.apply(trial.hash, {"op": "metrics", "step": n_steps,
                                       "values": {"val/accuracy": acc}}, uploaded)
            tracker.loggers[trial.hash].log_metrics({"objective": acc}, n_steps)
            res = make_result(correct, contract, Path(trial.out_dir) / "eval" / "gsm8k")
            tracker.log_evaluations(trial, rid, [res])
            tracker.finish_trial(trial.hash, "FINISHED")
            ids[f"{preset}/{seed}"] = rid
    tracker.finish_study("FINISHED", {"trials_finished": float(number)})
    return ids


def approx(a: float, b: float, tol: float = 1e-9) -> bool:
    return math.isclose(a, b, rel_tol=0, abs_tol=tol)


def fabricate_optuna(storage: str, name: str = "archer_clip_kl", n_trials: int = 8) -> None:
    """A finished Optuna study whose objective depends on one parameter only (x), so its
    importance must dominate: value = -(x - 0.3)**2."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: -(t.suggest_float("x", 0.0, 1.0) - 0.3) ** 2
                   + 0.0 * t.suggest_float("noise", 0.0, 1.0), n_trials=n_trials)
