"""The scheduler on a local Ray (one instance for the module, 2 CPUs, no dashboard): the
baselines study end to end, fault tests, concurrent writers, an Optuna sweep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from archer.tracking import sanitize_key
from experiments.scheduler import StudyState
from experiments.study_cli import run_study, study_status
from experiments.trial_events import EventLog

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def kill_driver_while_trial_1_runs(cmd: list[str], state_path: Path):
    """Start the driver ``cmd``, SIGKILL it once trial 0 finished and trial 1 is past its
    first step; returns trial 1's state as last saved."""
    return signal_driver_while_trial_1_runs(cmd, state_path, signal.SIGKILL)[0]


def signal_driver_while_trial_1_runs(cmd: list[str], state_path: Path, sig: int):
    """Start the driver ``cmd``, send it ``sig`` once trial 0 finished and trial 1 is past its
    first step; returns trial 1's state as last saved, the driver's exit code and stderr."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    victim = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            state = StudyState.load(state_path) if state_path.is_file() else None
            if state is not None:
                by_number = {t.number: t for t in state.trials.values()}
                if (0 in by_number and by_number[0].status == "finished" and 1 in by_number
                        and by_number[1].status == "running" and by_number[1].step >= 1):
                    victim = by_number[1]
                    break
            time.sleep(0.1)
    finally:
        proc.send_signal(sig)
        try:
            err = proc.communicate(timeout=120)[1].decode()
        except subprocess.TimeoutExpired:
            proc.kill()
            err = proc.communicate()[1].decode() + "\n(the driver did not stop in 120 s)"
    assert victim is not None, err[-2000:]
    return victim, proc.returncode, err


def runs_of(uri: str, experiment: str) -> list:
    client = client_for(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


def steps_of(uri: str, run_id: str, key: str = "reward/mean") -> list[int]:
    return sorted(m.step for m in client_for(uri).get_metric_history(run_id, key))


def starts(out_dir: str) -> list[dict]:
    return [e for e in EventLog(Path(out_dir) / "events.jsonl").read() if e["op"] == "start"]


def test_baselines_study_trains_evaluates_and_logs_the_hierarchy(ray_address, tmp_path,
                                                                   tiny_model, tiny_overrides):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    evaluation = "study.eval={benchmarks:[gsm8k],limit:2,k:1,max_new_tokens:8}"
    state = run_study("baselines", ["study.seeds=[0]", evaluation, "warm_start=null",
                                    *tiny_overrides(tiny_model)],
                      root=tmp_path / "studies", tracking_uri=uri, ray_address=ray_address,
                      progress=False)
    presets = ["grpo", "dapo", "dr_grpo", "high_entropy_only", "ar_lopti", "archer", "aspo"]
    trials = state.shown()
    assert [t.status for t in trials] == ["finished"] * 7, study_status("baselines",
                                                                        tmp_path / "studies")
    assert all(t.step == 2 and t.attempts == 1 and len(t.eval_run_ids) == 1 for t in trials)
    runs = runs_of(uri, "study-baselines")
    by_kind: dict[str, list] = {}
    for r in runs:
        by_kind.setdefault(r.data.tags.get("archer.kind"), []).append(r)
    assert sorted(by_kind) == ["eval", "study", "trial"]
    (parent,) = by_kind["study"]
    assert parent.info.run_id == state.parent_run_id and parent.info.status == "FINISHED"
    assert parent.data.params["n_trials"] == "7"
    trial_runs = {r.data.tags["archer.trial_number"]: r for r in by_kind["trial"]}
    assert sorted(trial_runs) == [str(i) for i in range(7)]
    for number, run in trial_runs.items():
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["archer.study"] == "baselines"
        assert tags["archer.preset"] == presets[int(number)] and tags["archer.seed"] == "0"
        assert len(tags["archer.config_hash"]) == 12 and tags["archer.code_version"]
        assert len(tags["archer.contract_hash"]) == 16
        assert run.info.status == "FINISHED"
        assert run.data.params["algo.update_mode"]  # params from the trainer, written once
        assert steps_of(uri, run.info.run_id) == [1, 2]
        arts = [a.path for a in client_for(uri).list_artifacts(run.info.run_id)]
        assert "config.yaml" in arts
    # the cpu recipe's eval_start: the starting model once, under the study run
    (start,) = [ev for ev in by_kind["eval"] if ev.data.tags.get("archer.role") == "start"]
    assert start.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert start.data.tags["archer.preset"] == "start" and "gsm8k/avg_at_1" in start.data.metrics
    trial_evals = [ev for ev in by_kind["eval"] if ev is not start]
    assert len(trial_evals) == 7
    for ev in trial_evals:
        tags = ev.data.tags
        parent_trial = trial_runs[tags["archer.trial_number"]]
        assert tags["mlflow.parentRunId"] == parent_trial.info.run_id
        assert tags["archer.contract_hash"] == parent_trial.data.tags["archer.contract_hash"]
        assert tags["archer.preset"] == parent_trial.data.tags["archer.preset"]
        assert "gsm8k/avg_at_1" in ev.data.metrics
    # the best trial's policy is in the model registry
    assert state.registered == "archer-baselines/1"
    assert state.trials[state.best].objective is not None
    # running the study again skips all six (same identity hashes)
    again = run_study("baselines", ["study.seeds=[0]", evaluation, "warm_start=null",
                                    *tiny_overrides(tiny_model)],
                      root=tmp_path / "studies", tracking_uri=uri, ray_address=ray_address,
                      progress=False)
    assert all(len(starts(t.out_dir)) == 1 for t in again.shown())
    assert "finished 7" in study_status("baselines", tmp_path / "studies")


def test_sigkilled_trial_is_retried_and_resumes_from_its_checkpoint(
        ray_address, tmp_path, write_study, tiny_model, tiny_overrides, fault_reward):
    """The trial's process dies by SIGKILL in the middle of step 3 (its reward kills it, so
    the moment does not depend on the machine's speed): the scheduler retries it, the retry
    resumes from step 2's checkpoint, and every step is logged exactly once."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = write_study(tmp_path, "killtrial", axes={"algo": ["grpo"]}, eval=False,
                       max_retries=2, register_best=False)
    # call 5 is step 3's training reward (every step scores its rollout, then validation)
    killer, marker = fault_reward(tmp_path, "sigkill", at=5)
    steps = 5
    state = run_study(path, tiny_overrides(tiny_model, steps=steps) + [killer],
                      root=tmp_path / "s",
                      tracking_uri=uri, ray_address=ray_address, progress=False)
    (t,) = state.shown()
    assert marker.is_file(), "the reward never killed the trial"
    assert t.status == "finished" and t.attempts == 2
    first, second = starts(t.out_dir)
    assert first["pid"] == int(marker.read_text()) and second["pid"] != first["pid"]
    assert second["resume_step"] == 2  # step 2's checkpoint: nothing lost, nothing redone
    assert steps_of(uri, t.run_id) == list(range(1, steps + 1))  # each logged exactly once
    tags = client_for(uri).get_run(t.run_id).data.tags
    assert tags["archer.attempts"] == "2"


def test_configuration_error_inside_a_trial_fails_it_without_retries(
        ray_address, tmp_path, write_study, tiny_model, tiny_overrides):
    """A trial that reaches a configuration error (here an evaluation spec that bypassed the
    study's validation, as a hand-made or stale one could) fails on its first attempt with
    that message: another attempt would only train again to fail the same way."""
    import dataclasses

    from experiments.scheduler import ListSource, Scheduler
    from experiments.study import expand_trials, load_study

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = load_study(write_study(tmp_path, "cfgerr", axes={"algo": ["grpo"]}, eval=False,
                                  max_retries=2))
    (trial,) = expand_trials(spec, tiny_overrides(tiny_model), tmp_path / "s")
    trial = dataclasses.replace(trial, eval={"benchmarks": ["gsm8k"], "limit": 1, "k": 0})
    sched = Scheduler("cfgerr", tmp_path / "s" / "cfgerr", experiment="study-cfgerr",
                      tracking_uri=uri, max_retries=2, ray_address=ray_address, progress=False)
    state = sched.run(ListSource([trial]))
    (t,) = state.shown()
    assert (t.status, t.attempts) == ("failed", 1), t
    assert "ConfigError" in t.error and "eval benchmark gsm8k: contract k=0 must be an int >= 1" \
        in t.error and t.error.endswith("(a configuration error: not retried)")
    assert len(starts(t.out_dir)) == 1
    assert client_for(uri).get_run(t.run_id).info.status == "FAILED"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signalled_driver_stops_cleanly_and_the_same_command_resumes(
        ray_address, tmp_path, write_study, tiny_model, tiny_overrides, sig):
    """Ctrl-C (SIGINT) or SIGTERM to `archer ablate`: the running trial finishes its step and
    checkpoints it (no periodic checkpoint here), stays pending with the attempt not counted,
    the driver says how to resume and exits 128 + the signal; the same command then resumes
    that trial from the checkpoint and skips the finished one."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    root = tmp_path / "s"
    path = write_study(tmp_path, "sigstop", axes={"algo": ["grpo", "archer"]}, eval=False,
                       max_concurrent=1, max_retries=0, register_best=False)
    # enough steps that trial 1 is still running when the signal has reached it (the driver
    # polls every 0.25 s; a tiny step takes a few hundredths of a second)
    steps = 200
    overrides = tiny_overrides(tiny_model, steps=steps) + ["ckpt_every=1000"]
    cmd = [sys.executable, "-m", "archer_cli", "ablate", str(path), f"out_dir={root}",
           *overrides, f"tracking.uri={uri}", f"ray.address={ray_address}", "progress=false"]
    victim, rc, err = signal_driver_while_trial_1_runs(cmd, root / "sigstop" / "study.json", sig)
    name = signal.Signals(sig).name
    assert rc == 128 + sig, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert (f"archer ablate: {name} received: study sigstop stopped; trial(s) {victim.name} "
            "checkpointed and stopped, left pending; run the same command again to resume "
            "(finished trials are skipped)") in err, err[-3000:]
    state = StudyState.load(root / "sigstop" / "study.json")
    t0, t1 = state.shown()
    assert state.status == "interrupted" and t0.status == "finished"
    assert (t1.status, t1.attempts, t1.interrupted, t1.error) == ("pending", 1, 1, None)
    (ckpt,) = (Path(t1.out_dir) / "checkpoints").iterdir()  # written on the signal
    stopped_at = int(ckpt.name.rsplit("_", 1)[1])
    assert victim.step <= stopped_at < steps
    # the same command: trial 1 resumes from that checkpoint, trial 0 is not run again
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    state = StudyState.load(root / "sigstop" / "study.json")
    t0, t1 = state.shown()
    assert state.status == "finished" and t0.status == t1.status == "finished"
    assert len(starts(t0.out_dir)) == 1
    first, second = starts(t1.out_dir)
    assert second["resume_step"] == stopped_at and (t1.attempts, t1.interrupted) == (2, 1)
    assert steps_of(uri, t1.run_id) == list(range(1, steps + 1))  # each step logged once


def test_sigkilled_scheduler_rerun_finishes_only_what_was_missing(
        ray_address, tmp_path, write_study, tiny_model, tiny_overrides):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    root = tmp_path / "s"
    path = write_study(tmp_path, "killsched", axes={"algo": ["grpo", "archer"]}, eval=False,
                       max_concurrent=1, register_best=False)
    steps = 30  # long enough for the poll below to catch trial 1 mid-run
    overrides = tiny_overrides(tiny_model, steps=steps)
    cmd = [sys.executable, "-m", "archer_cli", "ablate", str(path), *overrides,
           f"out_dir={root}", f"tracking.uri={uri}", f"ray.address={ray_address}",
           "progress=false"]
    victim = kill_driver_while_trial_1_runs(cmd, root / "killsched" / "study.json")
    # the dead driver's task dies with its job; wait for its worker before resuming
    old_pid = starts(victim.out_dir)[-1]["pid"]
    for _ in range(300):
        if not _alive(old_pid):
            break
        time.sleep(0.1)
    state = run_study(path, overrides, root=root, tracking_uri=uri, ray_address=ray_address,
                      progress=False)
    t0, t1 = state.shown()
    assert t0.status == t1.status == "finished"
    assert len(starts(t0.out_dir)) == 1  # finished before the kill: not run again
    runs = starts(t1.out_dir)
    assert len(runs) == 2 and runs[1]["resume_step"] >= 1
    assert t0.run_id != t1.run_id
    for t in (t0, t1):
        assert steps_of(uri, t.run_id) == list(range(1, steps + 1)), [
            (e["op"], e.get("step"), e.get("pid")) for e in
            EventLog(Path(t.out_dir) / "events.jsonl").read() if e["op"] != "params"]
    parents = {client_for(uri).get_run(t.run_id).data.tags["mlflow.parentRunId"]
               for t in (t0, t1)}
    assert parents == {state.parent_run_id}  # the rerun continued the same study run


def test_sigkilled_sweep_rerun_resumes_its_running_trial_and_keeps_the_budget(
        ray_address, tmp_path, tiny_model, tiny_overrides):
    import optuna

    from experiments.sweep import OWNER, run_sweep

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    storage = f"sqlite:///{tmp_path}/optuna.db"
    root = tmp_path / "s"
    steps = 30  # long enough for the poll below to catch trial 1 mid-run
    overrides = ["sweep.sampler=random", "sweep.eval=false", "sweep.pruner=null", "warm_start=null",
                 "sweep.max_concurrent=1", *tiny_overrides(tiny_model, steps=steps)]
    cmd = [sys.executable, "-m", "archer_cli", "sweep", "archer_clip_kl", *overrides,
           "n_trials=3", f"out_dir={root}", f"optuna.storage={storage}", f"tracking.uri={uri}",
           f"ray.address={ray_address}", "progress=false"]
    victim = kill_driver_while_trial_1_runs(cmd, root / "archer_clip_kl" / "study.json")
    killed = optuna.load_study(study_name="archer_clip_kl", storage=storage)
    assert [t.state.name for t in killed.trials] == ["COMPLETE", "RUNNING"]  # left behind
    old_pid = starts(victim.out_dir)[-1]["pid"]
    for _ in range(300):
        if not _alive(old_pid):
            break
        time.sleep(0.1)
    state, study = run_sweep("archer_clip_kl", 3, overrides, root=root, storage=storage,
                             tracking_uri=uri, ray_address=ray_address, progress=False)
    loaded = optuna.load_study(study_name="archer_clip_kl", storage=storage)
    assert [t.state.name for t in loaded.trials] == ["COMPLETE"] * 3  # 3, not 1 + 3
    assert loaded.trials[1].user_attrs[OWNER]["pid"] == os.getpid()  # taken over
    trials = state.shown()
    assert [(t.number, t.status) for t in trials] == [(0, "finished"), (1, "finished"),
                                                      (2, "finished")]
    t0, t1, t2 = trials
    assert len(starts(t0.out_dir)) == 1 and len(starts(t2.out_dir)) == 1
    runs1 = starts(t1.out_dir)
    assert len(runs1) == 2 and runs1[1]["resume_step"] >= victim.step  # from its checkpoint
    assert t1.hash == victim.hash and t1.run_id == victim.run_id
    assert loaded.trials[1].value == pytest.approx(t1.objective)
    runs = [r for r in runs_of(uri, "sweep-archer_clip_kl")
            if r.data.tags.get("archer.kind") == "trial"]
    assert sorted(r.data.tags["optuna.trial_number"] for r in runs) == ["0", "1", "2"]
    for t in trials:
        assert steps_of(uri, t.run_id) == list(range(1, steps + 1))  # each step once
        assert client_for(uri).get_run(t.run_id).data.tags["archer.config_hash"] == t.hash


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.is_file() and "\nState:\tZ" in status.read_text())


def test_four_concurrent_trials_lose_no_metrics(ray_address, tmp_path, write_study, tiny_model,
                                                tiny_overrides):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = write_study(tmp_path, "writers", axes={"algo": ["grpo", "dapo", "dr_grpo", "archer"]},
                       eval=False, max_concurrent=4, resources={"num_cpus": 0.5},
                       register_best=False)
    steps = 40  # each trial must outlast the others' start-up (a few seconds each)
    state = run_study(path, tiny_overrides(tiny_model, steps=steps), root=tmp_path / "s",
                      tracking_uri=uri, ray_address=ray_address, progress=False)
    trials = state.shown()
    assert [t.status for t in trials] == ["finished"] * 4
    spans = [(min(e["time"] for e in starts(t.out_dir)), t.ended) for t in trials]
    # Trials wrote while others were writing. Not necessarily all four at once: Ray starts
    # workers one by one (each imports torch for seconds) and an early trial may be done first.
    overlapping = [i for i, (start, end) in enumerate(spans)
                   if any(s2 < end and start < e2 for j, (s2, e2) in enumerate(spans) if j != i)]
    assert len(overlapping) >= 2, f"no two trials overlapped: {spans}"
    client = client_for(uri)
    for t in trials:
        events = [e for e in EventLog(Path(t.out_dir) / "events.jsonl").read()
                  if e["op"] == "metrics"]
        assert [e["step"] for e in events] == list(range(1, steps + 1))
        run = client.get_run(t.run_id)
        for key in events[0]["values"]:
            mkey = sanitize_key(key)
            history = client.get_metric_history(t.run_id, mkey)
            assert sorted(m.step for m in history) == list(range(1, steps + 1)), key
            sent = {e["step"]: e["values"][key] for e in events}
            for m in history:
                if isinstance(sent[m.step], float):
                    assert m.value == pytest.approx(sent[m.step], rel=1e-9, abs=1e-12), key
        assert run.info.status == "FINISHED"


def test_optuna_sweep_of_three_trials_recorded_in_optuna_and_mlflow(
        ray_address, tmp_path, tiny_model, tiny_overrides):
    import optuna

    from experiments.sweep import run_sweep

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    storage = f"sqlite:///{tmp_path}/optuna.db"
    state, study = run_sweep(
        "archer_clip_kl", 3, ["sweep.sampler=random", "sweep.eval=false", "warm_start=null",
                              "sweep.pruner.min_steps=1", *tiny_overrides(tiny_model)],
        root=tmp_path / "s", storage=storage, tracking_uri=uri, ray_address=ray_address,
        progress=False)
    loaded = optuna.load_study(study_name="archer_clip_kl", storage=storage)
    assert len(loaded.trials) == 3
    # the enqueued preset is trial 0 with the archer preset's values
    assert loaded.trials[0].params == {"algo.high.clip_high": 0.5, "algo.low.kl_weight": 0.001,
                                       "algo.entropy_quantile": 0.8}
    runs = {r.data.tags["optuna.trial_number"]: r for r in runs_of(uri, "sweep-archer_clip_kl")
            if r.data.tags.get("archer.kind") == "trial"}
    assert sorted(runs) == ["0", "1", "2"]
    for ot in loaded.trials:
        run = runs[str(ot.number)]
        assert json.loads(run.data.tags["optuna.params"]) == ot.params
        if ot.state == optuna.trial.TrialState.COMPLETE:
            assert run.data.metrics["objective"] == pytest.approx(ot.value)
            assert run.data.metrics["val/accuracy"] == pytest.approx(ot.value)
        else:
            assert ot.state == optuna.trial.TrialState.PRUNED
            assert run.data.tags["archer.pruned"] == "true"
            assert run.info.status == "KILLED"
    assert state.status == "finished"
