"""The quickstart (``archer demo``) end to end at a toy size: tiny model, SFT warm-up, Archer
RL logged to a local MLflow store, held-out accuracy before and after."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

import experiments.demo as demo
from archer.cli import main


@pytest.mark.slow
def test_demo_runs_end_to_end_and_leaves_an_mlflow_run(tmp_path, monkeypatch, capsys):
    for name, value in {"SFT_STEPS": 6, "DATA_SIZE": 120, "VAL_SIZE": 8}.items():
        monkeypatch.setattr(demo, name, value)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["demo", "--out-dir", str(tmp_path / "demo"), "--steps", "2",
                 "--seed", "3", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    for row in ("greedy", "avg@4", "pass@4"):
        assert row in out.split("warm start")[1], out
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
