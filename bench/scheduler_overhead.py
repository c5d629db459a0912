"""Scheduler overhead: wall time of N trivially short trials through ``archer ablate``'s
scheduler (Ray tasks, events, MLflow study/trial hierarchy, study state) against running the
same trials directly, one after another, in this process (``archer.trainer.fit`` with a
JSON-lines logger). Prints both times and their ratio, measured in the same run.

    .venv/bin/python bench/scheduler_overhead.py --trials 4 --steps 1

Ray's start-up (a local cluster) is timed separately and excluded from the scheduler's time:
it is paid once per session, not per study. Each trial: a tiny model (hidden 32), 1 step of
2 prompts x 4 samples, no evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import yaml


def trial_overrides(model: Path, steps: int) -> list[str]:
    return [f"model={model}", f"total_steps={steps}", "data.size=24",
            "prompts_per_step=2", "group_size=4", "mini_batch_prompts=2",
            "micro_batch_size=8", "max_new_tokens=4", "val_every=0",
            "val_size=4",
            "ckpt_every=1", "num_threads=1", "export_final=false"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--max-concurrent", type=int, default=1,
                   help="1 = the same sequential order as the direct baseline")
    args = p.parse_args()
    os.environ.setdefault("ARCHER_DATA_DIR", str(Path(__file__).resolve().parents[1].parent
                                                 / "shared" / "data"))
    import ray

    from archer.models import build_tiny_model
    from archer.train_config import TrainConfig
    from archer.trainer import fit
    from experiments.study import expand_trials, load_study
    from experiments.study_cli import run_study

    work = Path(tempfile.mkdtemp(prefix="archer-sched-bench-"))
    model = build_tiny_model(work / "tiny", hidden=32, layers=2, heads=4)
    seeds = list(range(args.trials))
    study = work / "overhead.yaml"
    study.write_text(yaml.safe_dump({
        "name": "overhead", "axes": {"algo": ["grpo"]}, "seeds": seeds, "eval": False,
        "max_concurrent": args.max_concurrent, "max_retries": 0, "register_best": False,
        "resources": {"num_cpus": 1}}))
    overrides = trial_overrides(model, args.steps)

    # direct: the same trials (same resolved configs), one after another in this process
    trials = expand_trials(load_study(study), overrides, work / "direct")
    t0 = time.perf_counter()
    for t in trials:
        fit(TrainConfig.from_dict(t.train), logger=None, progress=False)
    direct = time.perf_counter() - t0

    t0 = time.perf_counter()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        state = run_study(study, overrides, root=work / "scheduled",
                          tracking_uri=f"sqlite:///{work}/mlflow.db", progress=False)
        scheduled = time.perf_counter() - t0
    finally:
        ray.shutdown()
    assert all(t.status == "finished" for t in state.shown()), state.counts()
    out = {"trials": args.trials, "steps": args.steps, "max_concurrent": args.max_concurrent,
           "direct_s": round(direct, 2), "scheduler_s": round(scheduled, 2),
           "ray_start_s": round(ray_start, 2), "ratio": round(scheduled / direct, 2),
           "per_trial_overhead_s": round((scheduled - direct) / args.trials, 2)}
    print(json.dumps(out))
    print(f"scheduler {scheduled:.1f} s vs direct {direct:.1f} s for {args.trials} trials x "
          f"{args.steps} step(s): ratio {scheduled / direct:.2f}x "
          f"({(scheduled - direct) / args.trials:+.2f} s per trial; Ray start-up "
          f"{ray_start:.1f} s not included)")


if __name__ == "__main__":
    main()
