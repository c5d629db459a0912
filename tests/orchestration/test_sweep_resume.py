"""Who owns a sweep's RUNNING Optuna trials, and what a rerun does with the trials of a dead
driver (no Ray here: the end-to-end SIGKILL test is in test_scheduler_ray.py)."""

from __future__ import annotations

import subprocess
import sys
import time

import optuna
import pytest

from experiments.sweep import (
    HEARTBEAT,
    INVOCATION,
    OWNER,
    SweepInUse,
    SweepSource,
    distributions,
    driver_identity,
    load_sweep,
    owner_alive,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def other_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def identity_of(pid: int) -> dict:
    from experiments.sweep import _process_start

    return driver_identity() | {"pid": pid, "pid_start": _process_start(pid)}


def test_owner_is_alive_while_its_process_runs_and_is_the_same_process(other_process):
    owner = identity_of(other_process.pid)
    assert owner_alive(owner, heartbeat=None)
    assert not owner_alive(owner | {"pid_start": "1"}, heartbeat=None)  # pid reused since
    assert not owner_alive(driver_identity(), heartbeat=None)  # this process: returned
    assert not owner_alive(None, heartbeat=time.time())
    other_process.kill()
    other_process.wait()
    assert not owner_alive(owner, heartbeat=time.time())


def test_owner_on_another_host_is_judged_by_its_heartbeat():
    owner = {"host": "elsewhere", "boot_id": "x", "pid": 1, "pid_start": "1"}
    now = time.time()
    assert owner_alive(owner, heartbeat=now - 10, now=now, timeout=60)
    assert not owner_alive(owner, heartbeat=now - 61, now=now, timeout=60)
    assert not owner_alive(owner, heartbeat=None, now=now, timeout=60)


def _study(tmp_path):
    return optuna.create_study(study_name="archer_clip_kl",
                               storage=f"sqlite:///{tmp_path}/optuna.db")


def test_a_sweep_run_by_a_live_driver_is_refused(tmp_path, other_process):
    spec = load_sweep("archer_clip_kl")
    study = _study(tmp_path)
    trial = study.ask(distributions(spec))
    trial.set_user_attr(OWNER, identity_of(other_process.pid))
    trial.set_user_attr(HEARTBEAT, time.time())
    with pytest.raises(SweepInUse, match=rf"trial 0 is being run by pid {other_process.pid}"):
        SweepSource(spec, study, [], tmp_path / "s", 3)


def test_rerun_of_a_killed_invocation_counts_its_trials_and_requeues_one_without_checkpoint(
        tmp_path, tiny_model, tiny_overrides):
    spec = load_sweep("archer_clip_kl", ["sampler=random"])
    study = _study(tmp_path)
    dead = driver_identity() | {"pid": 2 ** 22 + 7, "pid_start": "1"}  # no such process
    study.set_user_attr(INVOCATION, {"id": "inv1", "n_trials": 3, "owner": dead,
                                     "heartbeat": time.time(), "done": False})
    dists = distributions(spec)
    finished = study.ask(dists)
    finished.set_user_attr(INVOCATION, "inv1")
    study.tell(finished, 0.5)
    orphan = study.ask(dists)
    for key, value in ((INVOCATION, "inv1"), (OWNER, dead), (HEARTBEAT, time.time())):
        orphan.set_user_attr(key, value)
    overrides = tiny_overrides(tiny_model)
    source = SweepSource(spec, study, overrides, tmp_path / "s", 3)
    assert source.invocation == "inv1" and source.budget == 1  # 2 of its 3 asked already
    source.start(None)  # the orphan never wrote a checkpoint: FAIL, params enqueued again
    states = {t.number: t.state for t in study.get_trials()}
    assert states[1] == optuna.trial.TrialState.FAIL and source.requeued == 1
    first = source.next_trial()
    assert first.number == 2 and first.config["algo"]["high"]["clip_high"] == pytest.approx(
        orphan.params["algo.high.clip_high"])  # the same point, a new trial
    assert study.get_trials()[2].user_attrs["archer.requeued_from"] == 1
    assert not source.exhausted()
    second = source.next_trial()
    assert second.number == 3 and source.exhausted()  # the invocation's last trial
    assert source.next_trial() is None
    owners = [study.get_trials()[n].user_attrs[OWNER] for n in (2, 3)]
    assert all(o["pid"] == driver_identity()["pid"] for o in owners)
    assert study.user_attrs[INVOCATION]["id"] == "inv1"


def test_objective_is_logged_before_optuna_is_told_and_once_after_a_kill(
        tmp_path, tiny_model, tiny_overrides, monkeypatch):
    """The objective is logged when the trial ends (``on_done``), Optuna is told only after
    the end is saved (``on_saved``). A driver killed before telling leaves the trial RUNNING;
    the rerun that finishes it tells Optuna without logging the objective again."""
    from archer.tracking.hierarchy import StudyTracker
    from experiments.scheduler import TrialState

    spec = load_sweep("archer_clip_kl", ["sampler=random"])
    study = _study(tmp_path)
    source = SweepSource(spec, study, tiny_overrides(tiny_model), tmp_path / "s", 1)
    source.start(None)
    trial = source.next_trial()
    cfg = tmp_path / "study.yaml"
    cfg.write_text("name: archer_clip_kl\n")
    tracker = StudyTracker(spec.name, tmp_path / "s", "study-archer_clip_kl",
                           f"sqlite:///{tmp_path}/mlflow.db")
    parent = tracker.open_study_run(None, {"study": spec.name}, cfg)
    run_id = tracker.open_trial_run(trial, None, parent, cfg)
    state = TrialState(number=trial.number, name=trial.name, hash=trial.hash,
                       out_dir=trial.out_dir, total_steps=2, status="finished", run_id=run_id,
                       step=2, metrics={spec.objective["metric"]: 0.75})
    otrial = source.open[trial.hash]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("driver killed")

    monkeypatch.setattr(study, "tell", killed)
    source.on_done(trial, state, tracker)
    assert tracker.metric_history(run_id, "objective") == [(2, 0.75)]  # logged, not told
    with pytest.raises(KeyboardInterrupt):
        source.on_saved(trial, state)
    assert study.get_trials()[0].state == optuna.trial.TrialState.RUNNING
    monkeypatch.undo()
    source.open[trial.hash] = otrial  # the rerun takes the RUNNING trial over
    source.on_done(trial, state, tracker)
    source.on_saved(trial, state)
    assert tracker.metric_history(run_id, "objective") == [(2, 0.75)]  # not twice
    done = study.get_trials()[0]
    assert done.state == optuna.trial.TrialState.COMPLETE and done.value == 0.75


def test_driver_killed_after_saving_a_trial_end_before_telling_optuna(
        tmp_path, tiny_model, tiny_overrides, monkeypatch):
    """The scheduler terminates the trial's MLflow run and saves the study state before the
    sweep tells Optuna. Killed right there, the rerun finds the Optuna trial RUNNING with a
    dead owner, knows from the saved state that it finished, and tells Optuna its objective:
    no run is left RUNNING, nothing is rerun or logged twice."""
    from experiments.scheduler import Scheduler, _Running

    spec = load_sweep("archer_clip_kl", ["sampler=random"])
    study = _study(tmp_path)
    root, uri = tmp_path / "s", f"sqlite:///{tmp_path}/mlflow.db"
    overrides = tiny_overrides(tiny_model)

    def scheduler() -> Scheduler:
        return Scheduler(spec.name, root, experiment="study-archer_clip_kl",
                         tracking_uri=uri, progress=False)

    sched = scheduler()
    source = SweepSource(spec, study, overrides, root, 1)
    source.start(sched)
    trial = source.next_trial()
    t = sched._prepare(trial)
    t.step, t.metrics = 2, {spec.objective["metric"]: 0.75}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("driver killed")

    monkeypatch.setattr(study, "tell", killed)
    with pytest.raises(KeyboardInterrupt):
        sched._finish(_Running(trial, None), t, "finished", source)
    monkeypatch.undo()
    run = sched.tracker.client.get_run(t.run_id)
    assert run.info.status == "FINISHED"  # terminated before Optuna was told
    assert sched.tracker.metric_history(t.run_id, "objective") == [(2, 0.75)]
    assert study.get_trials()[0].state == optuna.trial.TrialState.RUNNING
    dead = driver_identity() | {"pid": 2 ** 22 + 7, "pid_start": "1"}  # the killed driver
    optuna.trial.Trial(study, study.get_trials()[0]._trial_id).set_user_attr(OWNER, dead)

    rerun = scheduler()  # loads the saved state: the trial finished
    assert rerun.state.trials[trial.hash].status == "finished"
    source2 = SweepSource(spec, study, overrides, root, 1)
    source2.start(rerun)
    assert source2.next_trial() is None and source2.exhausted()  # nothing to rerun
    done = study.get_trials()[0]
    assert done.state == optuna.trial.TrialState.COMPLETE and done.value == 0.75
    assert len(study.get_trials()) == 1
    assert rerun.tracker.metric_history(t.run_id, "objective") == [(2, 0.75)]  # once
