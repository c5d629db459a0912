"""The driver's replay of trial events into MLflow, without Ray: placement is recorded, and a
driver killed between an upload and saving its offset uploads nothing twice on the rerun."""

from __future__ import annotations

import time
from pathlib import Path

from experiments.scheduler import STATE, Scheduler, StudyState, format_table
from experiments.study import expand_trials, load_study
from experiments.trial_events import EVENTS, EventLog, EventLogger


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_replay_after_a_lost_offset_save_uploads_nothing_twice(tmp_path, write_study,
                                                                tiny_model, tiny_overrides):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    root = tmp_path / "s"
    spec = load_study(write_study(tmp_path, "replay", axes={"algo": ["grpo"]}, eval=False,
                                  register_best=False))
    (trial,) = expand_trials(spec, tiny_overrides(tiny_model), root)

    def scheduler() -> Scheduler:
        return Scheduler("replay", root / "replay", experiment="study-replay",
                         tracking_uri=uri, progress=False)

    sched = scheduler()
    t = sched._prepare(trial)
    sched.save()  # as when the trial is submitted
    events = EventLog(Path(trial.out_dir) / EVENTS)
    events.append({"op": "start", "attempt": 1, "pid": 1, "resume_step": 0,
                   "time": time.time(), "hostname": "gpu-7", "node_id": "ab" * 28,
                   "node_ip": "10.0.0.7"})
    logger = EventLogger(events, t.run_id, Path(trial.out_dir) / "STOP")
    logger.log_params({"algo.name": "grpo"})
    for step in (1, 2, 3):
        logger.log_metrics({"reward/mean": 0.1 * step, "time/step": 0.5}, step=step)
    events.append({"op": "eval", "time": time.time(), "results": [{
        "benchmark": "gsm8k", "metrics": {"avg_at_1": 0.25}, "contract_hash": "c0ffee",
        "contract": {"k": 1}, "model": "m"}]})
    before_upload = (root / "replay" / STATE).read_text()  # offset 0
    assert sched._drain(trial, t)
    assert t.node_id == "ab" * 28 and t.nodes == ["ab" * 28] and t.hostname == "gpu-7"
    assert f"gpu-7/{'ab' * 4}" in format_table(sched.state)
    # the driver dies after uploading, before its state (how far it got) reaches disk
    (root / "replay" / STATE).write_text(before_upload)
    assert StudyState.load(root / "replay" / STATE).trials[trial.hash].offset == 0
    again = scheduler()
    t2 = again._prepare(trial)  # drains what the dead driver left: everything, again
    assert t2.offset > 0 and t2.run_id == t.run_id and t2.compute_s == 1.5
    client = _client(uri)
    for key in ("reward/mean", "time/step", "eval/gsm8k/avg_at_1"):
        steps = sorted(m.step for m in client.get_metric_history(t.run_id, key))
        assert steps == ([0] if key.startswith("eval/") else [1, 2, 3]), key
    exp = client.get_experiment_by_name("study-replay")
    evals = [r for r in client.search_runs([exp.experiment_id])
             if r.data.tags.get("archer.kind") == "eval"]
    assert len(evals) == 1 and t2.eval_run_ids == [evals[0].info.run_id]
    tags = client.get_run(t.run_id).data.tags
    assert tags["archer.node_id"] == "ab" * 28 and tags["archer.hostname"] == "gpu-7"
    assert tags["archer.node_ip"] == "10.0.0.7" and tags["archer.nodes"] == "ab" * 28
