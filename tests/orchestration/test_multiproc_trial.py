"""Trials trained by several processes (``resources.procs_per_trial``): torchrun inside the
trial's Ray task, 2 gloo processes on CPU.

Fast: the setting's validation (refused before any trial starts) and its default. Slow (one
local Ray for the module): a 2-process trial end to end (metrics logged once per step, the
checkpoint, the export and the evaluation, final parameters equal to a 1-process run of the
same config), a SIGKILLed rank (the attempt fails with the rank named, the retry resumes from
the checkpoint), and a stop request (every rank stops at the same step, the trial is pruned).
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from archer.config import ConfigError
from experiments.study import expand_trials, identity_hash, load_study
from experiments.trial_events import EventLog

# Each rank rolls out 1 of the 2 prompts with rollout_batch_size=1: its generate() seeds are
# the single process's (archer.trainer.collect_rollouts), so the runs see the same samples.
SAME_ROLLOUTS = ["rollout_batch_size=1", "deterministic=true"]


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def study(write_study, tmp_path: Path, name: str, **fields):
    return write_study(tmp_path, name, **({"axes": {"algo": ["grpo"]}, "eval": False,
                                           "register_best": False} | fields))


# --------------------------------------------------------------------------------------------
# Validation (fast)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("resources", "message"), [
    ({"procs_per_trial": 0}, "procs_per_trial=0 must be an integer >= 1"),
    ({"procs_per_trial": "two"}, "procs_per_trial='two' must be an integer >= 1"),
    ({"procs_per_trial": 1.5}, "procs_per_trial=1.5 must be an integer >= 1"),
    ({"procs_per_trial": True}, "procs_per_trial=True must be an integer >= 1"),
    ({"num_gpus": 2, "procs_per_trial": 4}, "procs_per_trial=4 exceeds resources.num_gpus=2"),
    ({"num_gpus": 0.5, "procs_per_trial": 2}, "procs_per_trial=2 exceeds resources.num_gpus"),
    ({"num_gpus": 2.5}, "num_gpus=2.5: a trial with more than one GPU must ask for a whole"),
    ({"procs_per_trail": 2}, "unknown key 'procs_per_trail' (did you mean 'procs_per_trial'?)"),
])
def test_bad_procs_per_trial_is_refused(write_study, tmp_path, resources, message):
    path = study(write_study, tmp_path, "badprocs", resources=resources)
    with pytest.raises(ConfigError, match="resources") as err:
        load_study(path)
    assert message in str(err.value)


def test_procs_that_do_not_suit_the_trial_refuse_the_study_before_any_trial(
        write_study, tmp_path, tiny_model, tiny_overrides):
    from experiments.study_cli import run_study

    path = study(write_study, tmp_path, "oddprocs", resources={"procs_per_trial": 3})
    with pytest.raises(ConfigError) as err:  # prompts_per_step=2 cannot be split 3 ways
        run_study(path, tiny_overrides(tiny_model), root=tmp_path / "s",
                  tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", progress=False)
    assert "prompts_per_step=2 must be divisible by resources.procs_per_trial=3" in str(
        err.value)
    assert not (tmp_path / "s").exists()  # nothing ran, nothing was written
    path = study(write_study, tmp_path, "ncclcpu", resources={"procs_per_trial": 2})
    with pytest.raises(ConfigError, match="backend=nccl needs GPUs"):
        expand_trials(load_study(path), [*tiny_overrides(tiny_model),
                                         "distributed.backend=nccl"], tmp_path / "s")


def test_procs_default_and_identity(write_study, tmp_path, tiny_model, tiny_overrides):
    def procs(resources):
        return load_study(study(write_study, tmp_path, "p", resources=resources)
                          ).resources["procs_per_trial"]

    assert procs({}) == 1
    assert procs({"num_gpus": 1}) == 1
    assert procs({"num_gpus": 0.5}) == 1
    assert procs({"num_gpus": 8}) == 8  # several GPUs: one process each, unless told
    assert procs({"num_gpus": 8, "procs_per_trial": 4}) == 4
    assert procs({"procs_per_trial": 2}) == 2  # CPU processes (gloo)
    # a 1-process trial keeps the identity it always had; N processes are another trial
    one = expand_trials(load_study(study(write_study, tmp_path, "p")),
                        tiny_overrides(tiny_model), tmp_path / "s")[0]
    two = expand_trials(load_study(study(write_study, tmp_path, "p",
                                         resources={"procs_per_trial": 2})),
                        tiny_overrides(tiny_model), tmp_path / "s")[0]
    assert one.hash == identity_hash(one.config, one.eval)
    assert (one.procs, two.procs) == (1, 2)
    assert two.hash != one.hash


ROOT_CAUSE = """torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
experiments.trial_worker FAILED
------------------------------------------------------------
Failures:
[1]:
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 5980)  (SIGTERM)
  traceback : Traceback (most recent call last):
  RuntimeError: Connection closed by peer
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-01-01_00:00:00
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : {code}
  error_file: <N/A>
  traceback : {traceback}
============================================================
"""


def test_failure_message_names_the_rank_that_failed_first():
    from experiments.trial_worker import failure_message

    killed = ROOT_CAUSE.format(code="-9 (pid: 6016)  (SIGKILL)",
                               traceback="Signal 9 (SIGKILL) received by PID 6016")
    assert failure_message(1, "training...\n" + killed, 2) == (
        "training process rank 1 of 2 failed (signal SIGKILL): Signal 9 (SIGKILL) received by "
        "PID 6016")
    raised = ROOT_CAUSE.format(code="1 (pid: 5981) ", traceback=(
        "Traceback (most recent call last):\n    File \"x.py\", line 10, in main\n"
        "      raise ValueError(\"reward returned None\")\n  ValueError: reward returned None"))
    assert failure_message(1, raised, 4) == (
        "training process rank 1 of 4 failed (exit code 1): ValueError: reward returned None")
    assert failure_message(1, "no summary", 2) == (
        "2 training processes: torchrun exited with code 1 (see the trial's trial.log)")


def test_a_configuration_error_in_a_training_process_is_not_retried():
    """The exception a rank raised is read from torchrun's summary; a ConfigError there fails
    the trial at once (another attempt repeats it), a crash or a signal is retried."""
    from experiments.scheduler import not_retried
    from experiments.trial_worker import TrialWorkerError, failure_type

    def summary(last: str) -> str:
        return ROOT_CAUSE.format(code="1 (pid: 5981) ", traceback=(
            "Traceback (most recent call last):\n    File \"x.py\", line 10, in main\n"
            f"  {last}"))

    # the name traceback prints: where the class is defined (archer.validation), not a module
    # re-exporting it (archer.config)
    config = summary("archer.validation.ConfigError: algo.rho=2 is invalid; allowed: (0, 1]")
    assert failure_type(config) == "archer.validation.ConfigError"
    assert not_retried(TrialWorkerError("rank 0 failed", failure_type(config)))
    data = summary("archer.data.datasets.DataFormatError: train.jsonl line 3: bad JSON")
    assert not_retried(TrialWorkerError("rank 1 failed", failure_type(data)))
    crash = summary("torch.OutOfMemoryError: CUDA out of memory")
    assert failure_type(crash) == "torch.OutOfMemoryError"
    assert not not_retried(TrialWorkerError("rank 0 failed", failure_type(crash)))
    assert failure_type(summary("ValueError: reward returned None")) == "ValueError"
    killed = ROOT_CAUSE.format(code="-9 (pid: 6016)  (SIGKILL)",
                               traceback="Signal 9 (SIGKILL) received by PID 6016")
    assert failure_type(killed) is None and failure_type("no summary") is None
    assert not not_retried(TrialWorkerError("rank 1 failed (signal SIGKILL)", None))


# --------------------------------------------------------------------------------------------
# Through Ray (slow)
# --------------------------------------------------------------------------------------------


def events_of(out_dir: str, op: str) -> list[dict]:
    return [e for e in EventLog(Path(out_dir) / "events.jsonl").read() if e["op"] == op]


def rank_pids(parent_pid: int) -> dict[int, int]:
    """RANK -> pid of the training processes under a trial's process."""
    import psutil

    out = {}
    for child in psutil.Process(parent_pid).children(recursive=True):
        try:
            env = child.environ()
            if "experiments.trial_worker" in " ".join(child.cmdline()) and "RANK" in env:
                out[int(env["RANK"])] = child.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def assert_metrics_once(uri: str, t, steps: int) -> None:
    """Every metric of every step is in the trial's MLflow run exactly once."""
    client = client_for(uri)
    logged = events_of(t.out_dir, "metrics")
    keys = set().union(*(e["values"] for e in logged))
    assert "reward/mean" in keys
    from archer.tracking import sanitize_key

    for key in keys:
        history = client.get_metric_history(t.run_id, sanitize_key(key))
        assert sorted(m.step for m in history) == [
            s for s in range(1, steps + 1) if any(key in e["values"] and e["step"] == s
                                                  for e in logged)], key


@pytest.mark.slow
def test_two_process_trial_logs_once_and_equals_one_process(
        ray_address, tmp_path, write_study, tiny_model, tiny_overrides):
    from archer.train_config import TrainConfig
    from archer.trainer import fit
    from experiments.study_cli import run_study

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    steps = 3
    path = study(write_study, tmp_path, "twoprocs", resources={"procs_per_trial": 2},
                 eval={"benchmarks": ["gsm8k"], "limit": 2, "k": 1, "max_new_tokens": 8})
    overrides = [*tiny_overrides(tiny_model, steps=steps), *SAME_ROLLOUTS]
    state = run_study(path, overrides, root=tmp_path / "s", tracking_uri=uri,
                      ray_address=ray_address, progress=False)
    (t,) = state.shown()
    log = (Path(t.out_dir) / "trial.log").read_text()
    assert t.status == "finished" and t.attempts == 1, log[-3000:]
    # both ranks trained (torchrun's per-rank prefixes in the trial's log) ...
    assert "[default0]:" in log and "[default1]:" in log
    (start,) = events_of(t.out_dir, "start")
    assert start["procs"] == 2
    # ... rank 0 alone wrote events: one metrics event per step, params once
    assert [e["step"] for e in events_of(t.out_dir, "metrics")] == list(range(1, steps + 1))
    assert len(events_of(t.out_dir, "params")) == 1
    assert_metrics_once(uri, t, steps)
    run = client_for(uri).get_run(t.run_id)
    assert run.data.tags["archer.num_devices"] == "2" and run.info.status == "FINISHED"
    # checkpoints, the export and its evaluation
    out = Path(t.out_dir)
    assert (out / "checkpoints" / f"step_{steps:06d}" / "model.pt").is_file()
    assert t.export_dir == str(out / "final") and (out / "final" / "config.json").is_file()
    assert (out / "eval" / "gsm8k" / "samples.jsonl").is_file() and len(t.eval_run_ids) == 1
    assert "gsm8k/avg_at_1" in t.eval_metrics

    # the same trial config in one process gives the same parameters
    (spec,) = expand_trials(load_study(path), overrides, tmp_path / "s")
    cfg = TrainConfig.from_dict(spec.train | {"out_dir": str(tmp_path / "one")})
    one = fit(cfg, logger=None, progress=False)
    assert one.state.step == steps
    from archer.models import load_policy_and_ref

    two_model = load_policy_and_ref(out / "final", need_ref=False)[0]
    base = load_policy_and_ref(tiny_model, need_ref=False)[0].state_dict()
    ref = {k: v.detach() for k, v in one.model.state_dict().items()}
    two = two_model.state_dict()
    assert ref.keys() == two.keys()
    diff = max(float((ref[k] - two[k]).abs().max()) for k in ref)
    moved = max(float((ref[k] - base[k]).abs().max()) for k in ref)
    assert diff < 2e-6, diff  # measured ~2.5e-7
    assert moved > 1e-4  # training changed the weights: equality is not trivial


@pytest.mark.slow
def test_sigkilled_rank_fails_the_attempt_and_the_retry_resumes(
        ray_address, tmp_path, write_study, tiny_model, tiny_overrides, fault_reward):
    """Rank 1 of a 2-process trial dies by SIGKILL mid-run (its reward kills it, so the moment
    does not depend on the machine's speed): the attempt fails naming the rank, the retry
    resumes from the last checkpoint, and every metric of every step is logged once."""
    from experiments.study_cli import run_study

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    steps = 6
    path = study(write_study, tmp_path, "killrank", resources={"procs_per_trial": 2},
                 max_retries=1)
    killer, marker = fault_reward(tmp_path, "sigkill", at=3, rank=1)  # step >= 2
    state = run_study(path, tiny_overrides(tiny_model, steps=steps) + [killer],
                      root=tmp_path / "s",
                      tracking_uri=uri, ray_address=ray_address, progress=False)
    (t,) = state.shown()
    log = (Path(t.out_dir) / "trial.log").read_text()
    assert marker.is_file(), "rank 1 was never killed"
    assert t.status == "finished" and t.attempts == 2, log[-3000:]
    # the attempt's error names the rank torchrun saw fail first: usually the killed rank 1,
    # sometimes rank 0, whose collective broke when its peer vanished
    assert re.search(r"training process rank (1 of 2 failed \(signal SIGKILL\)|0 of 2 "
                     r"failed)", log), log[-3000:]
    first, second = events_of(t.out_dir, "start")
    assert 1 <= second["resume_step"] < steps  # from a checkpoint, not from scratch
    assert (first["attempt"], second["attempt"]) == (1, 2)
    assert [e["step"] for e in events_of(t.out_dir, "rewind")] == [second["resume_step"]]
    assert_metrics_once(uri, t, steps)
    assert client_for(uri).get_run(t.run_id).data.tags["archer.attempts"] == "2"
    assert not alive(int(marker.read_text()))


@pytest.mark.slow
def test_killed_trial_process_takes_its_ranks_down_and_the_retry_resumes(
        ray_address, tmp_path, write_study, tiny_model, tiny_overrides):
    """The Ray worker running the trial dies (SIGKILL: an OOM kill, a force-cancelled task):
    torchrun and its ranks must not train on as orphans beside the retry."""
    from experiments.study_cli import run_study

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    steps = 30
    path = study(write_study, tmp_path, "killparent", resources={"procs_per_trial": 2},
                 max_retries=1)
    orphans: list[list[int]] = []

    def observer(state) -> None:
        (t,) = state.trials.values()
        if not orphans and t.status == "running" and t.step >= 1:
            parent = events_of(t.out_dir, "start")[-1]["pid"]
            ranks = rank_pids(parent)
            if len(ranks) == 2:
                os.kill(parent, signal.SIGKILL)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and any(map(alive, ranks.values())):
                    time.sleep(0.1)
                orphans.append([pid for pid in ranks.values() if alive(pid)])

    state = run_study(path, tiny_overrides(tiny_model, steps=steps), root=tmp_path / "s",
                      tracking_uri=uri, ray_address=ray_address, progress=False,
                      observer=observer)
    (t,) = state.shown()
    assert orphans == [[]], "ranks outlived the trial's process"
    assert t.status == "finished" and t.attempts == 2
    first, second = events_of(t.out_dir, "start")
    assert second["pid"] != first["pid"] and second["resume_step"] >= 1
    assert_metrics_once(uri, t, steps)


@pytest.mark.slow
def test_torchrun_and_its_ranks_die_with_the_trial_process(tmp_path):
    """Without Ray's own clean-up of a dead worker's children: the launcher's parent-death
    signal stops torchrun, which stops its ranks (here ``sleep``s)."""
    import subprocess
    import sys

    import psutil

    parent = subprocess.Popen([sys.executable, "-c", (
        "import os, subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-m', 'experiments.trial_worker', 'launch', "
        "str(os.getpid()), '--', '--standalone', '--local-addr', '127.0.0.1', "
        "'--nproc-per-node=2', '--no-python', 'sleep', '300'])\n"
        "time.sleep(300)\n")], cwd=Path(__file__).resolve().parents[2])
    children: list = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(c.name() == "sleep" for c in children) < 2:
            time.sleep(0.2)
            children = psutil.Process(parent.pid).children(recursive=True)
        assert sum(c.name() == "sleep" for c in children) == 2, "torchrun started no 2 ranks"
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(alive(c.pid) for c in children):
            time.sleep(0.2)
        assert not [c.pid for c in children if alive(c.pid)], "orphans of the trial process"
    finally:
        parent.kill()
        for child in children:  # a failed test leaves no orphans behind
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass


def alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_stop_request_stops_every_rank_at_the_same_step(
        ray_address, tmp_path, write_study, tiny_model, tiny_overrides):
    from experiments.study_cli import run_study

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    steps = 30
    path = study(write_study, tmp_path, "stopranks", resources={"procs_per_trial": 2})
    asked: list[int] = []

    def observer(state) -> None:
        (t,) = state.trials.values()
        if not asked and t.status == "running" and t.step >= 1:
            (Path(t.out_dir) / "STOP").touch()  # what the driver does to prune a trial
            asked.append(t.step)

    began = time.monotonic()
    state = run_study(path, tiny_overrides(tiny_model, steps=steps), root=tmp_path / "s",
                      tracking_uri=uri, ray_address=ray_address, progress=False,
                      observer=observer)
    (t,) = state.shown()
    log = (Path(t.out_dir) / "trial.log").read_text()
    assert asked and t.status == "pruned" and t.attempts == 1, log[-3000:]
    (done,) = events_of(t.out_dir, "done")
    logged = [e["step"] for e in events_of(t.out_dir, "metrics")]
    assert done["status"] == "pruned" and logged == list(range(1, done["step"] + 1))
    assert asked[0] <= done["step"] < steps
    # both ranks saw the request at the same step and left cleanly (no rank waited in a
    # collective for the other: that would take the process group's 30-minute timeout)
    stops = [line for line in log.splitlines() if "stopped by the scheduler after step" in line]
    assert sorted(s.split(":", 1)[0] for s in stops) == ["[default0]", "[default1]"], stops
    assert len({s.rsplit(" ", 1)[1] for s in stops}) == 1
    assert "failed" not in log
    assert time.monotonic() - began < 300


@pytest.mark.slow
@pytest.mark.parametrize("slow_step", [False, True], ids=["step", "step_of_40s"])
def test_ctrl_c_of_the_driver_checkpoints_a_multiprocess_trial_and_the_rerun_resumes(
        ray_address, tmp_path, write_study, tiny_model, tiny_overrides, slow_step, fault_reward):
    """Ctrl-C to `archer ablate` while a 2-process trial trains: the stop reaches torchrun's
    ranks, which finish the step under way and checkpoint it together, also when that step
    lasts longer than the 30 s torchrun gives its ranks after its own SIGTERM (``step_of_40s``:
    the ranks get the signal directly); the trial stays pending (the attempt not counted), no
    rank outlives the driver, and the same command resumes the trial from that checkpoint
    with every metric logged once."""
    import subprocess
    import sys

    from experiments.scheduler import StudyState

    repo = Path(__file__).resolve().parents[2]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    root = tmp_path / "s"
    steps = 200  # never reached: the signal comes once the trial is past its first step
    path = study(write_study, tmp_path, "sigrank", resources={"procs_per_trial": 2},
                 max_retries=0)
    # slow_step: rank 0's third reward call lasts 40 s, and the stop comes meanwhile. Every
    # reward call lasts 0.1 s: the tiny model's steps are all skipped (no reward) and would
    # otherwise finish all 200 steps in seconds, before a stop sent on a loaded machine
    # arrives
    slow, marker = fault_reward(tmp_path, "sleep40" if slow_step else "none", at=3, rank=0,
                                pace_s=0.1)
    extra = [slow]
    cmd = [sys.executable, "-m", "archer_cli", "ablate", str(path), f"out_dir={root}",
           *tiny_overrides(tiny_model, steps=steps), "ckpt_every=1000", *extra,
           f"tracking.uri={uri}", f"ray.address={ray_address}", "progress=false"]
    state_path = root / "sigrank" / "study.json"
    proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, ranks = time.monotonic() + 240, {}
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            state = StudyState.load(state_path) if state_path.is_file() else None
            t = next(iter(state.trials.values()), None) if state is not None else None
            if t is not None and t.status == "running" and t.step >= 1 and (
                    marker.is_file() or not slow_step):
                ranks = rank_pids(events_of(t.out_dir, "start")[-1]["pid"])
                break
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            err = proc.communicate(timeout=180)[1].decode()
        except subprocess.TimeoutExpired:
            proc.kill()
            err = proc.communicate()[1].decode() + "\n(the driver did not stop in 180 s)"
    assert len(ranks) == 2, err[-3000:]
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert "checkpointed and stopped, left pending" in err, err[-3000:]
    state = StudyState.load(state_path)
    (t,) = state.shown()
    assert (t.status, t.attempts, t.interrupted) == ("pending", 1, 1), t
    (ckpt,) = (Path(t.out_dir) / "checkpoints").iterdir()  # written on the signal
    stopped_at = int(ckpt.name.rsplit("_", 1)[1])
    assert 1 <= stopped_at < steps, (Path(t.out_dir) / "trial.log").read_text()[-6000:]
    deadline = time.monotonic() + 60
    while any(alive(pid) for pid in ranks.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in ranks.values())  # no rank trains on
    # the same command resumes the trial from the signal's checkpoint
    again = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    (t,) = StudyState.load(state_path).shown()
    assert t.status == "finished" and (t.attempts, t.interrupted) == (2, 1)
    first, second = events_of(t.out_dir, "start")
    assert second["resume_step"] == stopped_at
    assert_metrics_once(uri, t, steps)
