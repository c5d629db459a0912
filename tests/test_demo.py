"""The quickstart (``archer demo``) end to end at a toy size: tiny model, SFT warm-up, Archer
RL logged to a local MLflow store, held-out accuracy before and after."""

from __future__ import annotations

import json
import re

import pytest
from mlflow import MlflowClient

import experiments.demo as demo
from archer_cli.main import main


@pytest.mark.slow
def test_demo_runs_end_to_end_and_leaves_an_mlflow_run(tmp_path, monkeypatch, capsys):
    for name, value in {"SFT_STEPS": 6, "DATA_SIZE": 120, "VAL_SIZE": 8}.items():
        monkeypatch.setattr(demo, name, value)
    monkeypatch.setenv("ARCHER_CACHE_DIR", str(tmp_path / "cache"))  # the shared warm start
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["demo", "--quick", f"out_dir={tmp_path / 'demo'}", "steps=2",
                 "seed=3", f"tracking.uri={uri}"]) == 0
    out = capsys.readouterr().out
    warm = re.search(r"warm start ([0-9a-f]{16}):", out).group(1)
    for row in ("greedy", "avg@4", "pass@4"):
        assert row in out.split("[5/5]")[1], out
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("archer-demo")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.runName"] == "demo-archer-seed3"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/greedy")] == [0]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "reward/mean")] == [1, 2]
    final = client.get_metric_history(run.info.run_id, "val/accuracy")
    assert [m.step for m in final] == [2] and 0.0 <= final[0].value <= 1.0
    assert (tmp_path / "demo" / "seed3" / "archer" / "final" / "config.json").is_file()
    # per-problem held-out results: their means are the printed accuracies
    held = json.loads((tmp_path / "demo" / "seed3" / "heldout.json").read_text())
    for when in ("before", "after"):
        assert len(held[when]["greedy"]) == len(held[when]["avg@4"]) == 8
        assert all(v in (0.0, 0.25, 0.5, 0.75, 1.0) for v in held[when]["avg@4"])
    greedy_row = next(line for line in out.splitlines() if line.startswith("greedy "))
    before, after = (float(x) for x in greedy_row.split()[1:3])
    assert before == pytest.approx(sum(held["before"]["greedy"]) / 8, abs=5e-4)
    assert after == pytest.approx(sum(held["after"]["greedy"]) / 8, abs=5e-4)
    assert "paired over the held-out problems" in out and "(8 problem pairs)" in out
    # another seed starts from the same warm start (reused, not rebuilt) and problems
    assert main(["demo", "--quick", f"out_dir={tmp_path / 'demo'}", "steps=1",
                 "seed=4", f"tracking.uri={uri}"]) == 0
    again = capsys.readouterr().out
    assert f"reusing the warm start {warm}" in again and f"warm start {warm}:" in again
    held4 = json.loads((tmp_path / "demo" / "seed4" / "heldout.json").read_text())
    assert held4["before"]["greedy"] == held["before"]["greedy"]  # same model, same problems


def test_pooled_report_pairs_every_seed_problem(tmp_path, capsys):
    for seed, (before, after) in enumerate((([0, 0, 1, 1], [1, 0, 1, 1]),
                                            ([0, 1, 0, 0], [1, 1, 1, 0]))):
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        (d / "heldout.json").write_text(json.dumps(
            {"before": {"greedy": before}, "after": {"greedy": after}}))
    assert main(["demo", "--quick", "--pool", f"out_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "over 2 seeds (seed0, seed1)" in out
    # seed0 +1/4, seed1 +2/4: mean +0.375; both seeds improved, and with two seeds the exact
    # sign-flip test over seeds can give no less than 2/4 (pooling the 8 problems, as if the
    # seeds were one run, said p = 2/8)
    assert "greedy    +0.375" in out and "p=0.5 (exact sign-flip over 2 seeds" in out
    assert "smallest attainable p = 0.5" in out and "(8 problem pairs)" in out
    assert "per seed: seed0 +0.250, seed1 +0.500" in out
    assert main(["demo", "--quick", "--pool", f"out_dir={tmp_path / 'none'}"]) == 2


@pytest.fixture
def ray_cleanup():
    yield
    import ray

    if ray.is_initialized():  # the demo starts a local Ray; other tests start their own
        ray.shutdown()


@pytest.mark.slow
def test_full_demo_runs_the_study_and_prints_the_leaderboard(tmp_path, monkeypatch, capsys,
                                                              ray_cleanup):
    """``make demo`` at a toy size: warm start, grpo/dapo/archer through the scheduler on a
    local Ray, every trial evaluated under the warm start's contract, MLflow hierarchy,
    leaderboard printed, dashboard written."""
    monkeypatch.setattr(demo, "SFT_STEPS", 6)
    monkeypatch.setenv("ARCHER_CACHE_DIR", str(tmp_path / "cache"))  # the shared warm start
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    toy = ["data.size=120", "val_size=8", "prompts_per_step=2",
           "group_size=4", "mini_batch_prompts=2", "micro_batch_size=8",
           "val_every=1", "ckpt_every=1"]
    assert main(["demo", f"out_dir={tmp_path / 'demo'}", "steps=2",
                 f"tracking.uri={uri}", f"dashboard.out_dir={tmp_path / 'dash'}",
                 *toy]) == 0
    out = capsys.readouterr().out
    table, mechanisms = out.split("[6/6]")[1].split("the mechanisms, per arm")
    rows = [line.split("|")[1].strip() for line in table.splitlines()
            if line.startswith("|") and not line.startswith("|-")]
    assert sorted(rows[1:]) == ["archer", "dapo", "grpo", "sft warm start"], table
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in mechanisms.splitlines()
             if line.startswith("|") and not line.startswith(("|-", "| arm"))}
    assert sorted(cells) == ["archer", "dapo", "grpo"], mechanisms
    for arm, values in cells.items():  # clip fractions, KL on both classes (the monitor)
        assert len(values) == 5 and all(v != "-" for v in values), (arm, values)
        assert all(float(v) >= 0 for v in values)
    assert (tmp_path / "dash" / "index.html").is_file()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(demo.FULL_EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    evals = [r for r in runs if r.data.tags.get("archer.kind") == "eval"]
    assert len(evals) == 4 and len({r.data.tags["gym/contract_hash"] for r in evals}) == 1
    nested = {r.data.tags.get("mlflow.parentRunId") for r in evals} - {None}
    trials = {r.info.run_id for r in runs if r.data.tags.get("archer.kind") == "trial"}
    assert nested == trials and len(trials) == 3
    # a second run reuses the warm start (cached) and finds every trial finished
    assert main(["demo", f"out_dir={tmp_path / 'demo'}", "steps=2",
                 f"tracking.uri={uri}", f"dashboard.out_dir={tmp_path / 'dash'}",
                 *toy]) == 0
    assert "reusing the warm start" in capsys.readouterr().out
    runs = client.search_runs([exp.experiment_id])
    assert len([r for r in runs if r.data.tags.get("archer.kind") == "eval"]) == 4
