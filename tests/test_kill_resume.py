"""A run killed with SIGKILL in the middle of a step resumes from its last checkpoint with no
step lost or repeated: the metric rows are steps 1..N exactly once, and the final parameters
equal those of the same run done in one go (deterministic CPU settings)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from archer.checkpoint import list_checkpoints
from archer.models import build_tiny_model
from archer.rewards import REWARDS, register_reward
from archer.tracking import JsonlLogger
from archer.train_config import TrainConfig
from archer.trainer import fit

REPO = Path(__file__).resolve().parents[1]
STEPS = 5
KILL_IN_STEP = 3  # the reward of this step blocks until the test kills the process


def parity(completions):
    return [float(sum(map(ord, c)) % 2 == 0) for c in completions]


if "test_parity_kill" not in REWARDS:
    register_reward("test_parity_kill")(lambda completions, **columns: parity(completions))


def cfg_dict(model_dir: Path, out_dir: Path) -> dict:
    return dict(
        model=str(model_dir), algo={"entropy_quantile": 0.8, "low": {"kl_weight": 0.001}},
        reward="test_parity_kill", data={"task": "chain_sum", "size": 40, "seed": 0},
        prompts_per_step=4, group_size=4, max_new_tokens=5, mini_batch_prompts=2,
        micro_batch_size=4, ppo_epochs=1, lr=1e-3, warmup_steps=2, total_steps=STEPS,
        val_size=4, ckpt_every=1, keep_checkpoints=2, out_dir=str(out_dir), num_threads=1,
        deterministic=True, export_final=False)


# The child registers the same reward, except that the call for step KILL_IN_STEP announces
# itself and then blocks: the parent kills it there, mid-step.
CHILD = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from archer.rewards import register_reward
    from archer.train_config import TrainConfig
    from archer.trainer import fit

    cfg = TrainConfig.from_dict(json.loads(sys.argv[1]))
    marker, calls = Path(sys.argv[2]), []

    @register_reward("test_parity_kill")
    def reward(completions, **columns):
        calls.append(1)
        if len(calls) == {kill_in}:
            marker.write_text("in step {kill_in}")
            time.sleep(600)
        return [float(sum(map(ord, c)) % 2 == 0) for c in completions]

    fit(cfg)
""").replace("{kill_in}", str(KILL_IN_STEP))


@pytest.mark.slow
def test_sigkill_mid_step_resumes_without_losing_or_repeating_a_step(tmp_path):
    model_dir = build_tiny_model(tmp_path / "tiny", hidden=32, layers=2, heads=4)
    killed_dir, marker = tmp_path / "killed", tmp_path / "marker"
    cfg = cfg_dict(model_dir, killed_dir)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(cfg), str(marker)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert child.poll() is None, child.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "child never reached the kill point"
            time.sleep(0.2)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()

    # Killed inside step 3: steps 1 and 2 are checkpointed and logged, step 3 is not.
    assert [p.name for p in list_checkpoints(killed_dir)] == ["step_000001", "step_000002"]
    run_id = json.loads((killed_dir / "run.json").read_text())["run_id"]
    assert [r["step"] for r in JsonlLogger(killed_dir, run_id=run_id).read_metrics()] == [1, 2]

    resumed = fit(TrainConfig.from_dict(cfg))
    assert len(resumed.metrics) == STEPS - 2  # steps 3..5, step 3 redone from scratch
    assert resumed.state.step == STEPS and resumed.state.run_id == run_id
    rows = JsonlLogger(killed_dir, run_id=run_id).read_metrics()
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))

    straight = fit(TrainConfig.from_dict(cfg_dict(model_dir, tmp_path / "straight")))
    for (name, a), (_, b) in zip(straight.model.named_parameters(),
                                 resumed.model.named_parameters()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0, msg=name)


class Crash(BaseException):
    """Stands in for the process dying at a chosen point (SIGKILL cannot be caught)."""


CALLS: list[int] = []  # reward calls of the current test_crash_in_step_4 run


if "test_crash_in_step_4" not in REWARDS:

    @register_reward("test_crash_in_step_4")
    def dies_in_step_4(completions, **columns):
        CALLS.append(1)
        if len(CALLS) == 4:  # one reward call per step (group_filter drop: one round)
            raise Crash(4)
        return parity(completions)


class CrashingLogger(JsonlLogger):
    """Dies when asked to log ``die_at``: the step's checkpoint (if due) is already saved."""

    def __init__(self, run_dir, run_id=None, die_at=None):
        super().__init__(run_dir, run_id)
        self.die_at = die_at

    def log_metrics(self, metrics, step):
        if step == self.die_at:
            raise Crash(step)
        super().log_metrics(metrics, step)


def small_cfg(model_dir, out_dir, steps, ckpt_every):
    return TrainConfig.from_dict({**cfg_dict(model_dir, out_dir), "total_steps": steps,
                                  "ckpt_every": ckpt_every})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), hidden=32, layers=2, heads=4)


def test_death_between_checkpoint_and_log_relogs_the_checkpointed_step(tiny, tmp_path):
    """Checkpoint of step 2 saved, its metrics never logged: the resume logs them from the
    checkpoint, so no step is lost."""
    with pytest.raises(Crash):
        fit(small_cfg(tiny, tmp_path, 4, 1), logger=lambda rid: CrashingLogger(tmp_path, rid, 2))
    assert [p.name for p in list_checkpoints(tmp_path)][-1] == "step_000002"
    run_id = json.loads((tmp_path / "run.json").read_text())["run_id"]
    assert [r["step"] for r in JsonlLogger(tmp_path, run_id).read_metrics()] == [1]
    fit(small_cfg(tiny, tmp_path, 4, 1))
    rows = JsonlLogger(tmp_path, run_id).read_metrics()
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[1]["time/step"] > 0  # the real metrics of step 2, from the checkpoint


def test_steps_after_the_last_checkpoint_are_redone_not_repeated(tiny, tmp_path):
    """ckpt_every=2, death inside step 4: step 3 was logged but never checkpointed. The resume
    restarts from step 2's checkpoint and step 3 appears once (the redone one)."""
    CALLS.clear()
    cfg = small_cfg(tiny, tmp_path, 5, 2)
    with pytest.raises(Crash):
        fit(TrainConfig.from_dict({**cfg.to_dict(), "reward": "test_crash_in_step_4"}))
    run_id = json.loads((tmp_path / "run.json").read_text())["run_id"]
    before = JsonlLogger(tmp_path, run_id).read_metrics()
    assert [r["step"] for r in before] == [1, 2, 3]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000002"]
    fit(cfg)
    rows = JsonlLogger(tmp_path, run_id).read_metrics()
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[:2] == before[:2]
