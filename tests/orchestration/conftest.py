"""Shared pieces of the orchestration tests: a tiny model (hidden 32) and trial overrides
that make a training step take a fraction of a second on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from archer.models import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), hidden=32, layers=2, heads=4)


@pytest.fixture(scope="session")
def tiny_overrides():
    return _tiny_overrides


@pytest.fixture(scope="session")
def write_study():
    return _write_study


def _tiny_overrides(model: Path, steps: int = 2) -> list[str]:
    # data=gym_arith: the task these tests were sized on, whatever the cpu recipe trains
    return [f"model={model}", f"total_steps={steps}", "data=gym_arith", "data.size=24",
            "prompts_per_step=2", "group_size=4", "mini_batch_prompts=2",
            "micro_batch_size=8", "max_new_tokens=4", "val_every=1",
            "val_size=4", "ckpt_every=1", "num_threads=1"]


def _write_study(directory: Path, name: str, **fields) -> Path:
    """A study file ``<directory>/<name>.yaml`` (name set, no warm start unless given: the
    tests' tiny model trains as it is, everything else as given)."""
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "warm_start": None} | fields,
                                   sort_keys=False))
    return path


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray for the test module (2 CPUs, no dashboard)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def fault_reward():
    return write_fault_reward


FAULT_REWARD = """
import os, signal, time
from pathlib import Path

CALLS = [0]

def reward(completions, **columns):
    # in call {at} of this process ({rank}), once (the marker, holding the pid, says it
    # happened): {action}
    CALLS[0] += 1
    marker = Path({marker!r})
    if CALLS[0] == {at} and {rank_ok} and not marker.exists():
        marker.write_text(str(os.getpid()))
        {code}
    time.sleep({pace_s})  # every call: a step cannot be faster than this
    return [0.0] * len(completions)
"""
FAULTS = {"sigkill": ("the process SIGKILLs itself", "os.kill(os.getpid(), signal.SIGKILL)"),
          "sleep40": ("the call lasts 40 s", "time.sleep(40)"),
          "none": ("nothing", "pass")}


def write_fault_reward(directory: Path, fault: str, at: int, rank: int | None = None,
                       pace_s: float = 0.0) -> tuple[str, Path]:
    """A ``file.py:function`` reward that scores 0 and, in its ``at``-th call in a process
    (of training process ``rank``, if given), once, does ``fault`` (:data:`FAULTS`): the
    moment a test needs does not then depend on the machine's speed. Every call also lasts
    at least ``pace_s`` seconds (steps whose groups all score 0 are skipped and otherwise
    take milliseconds). Returns the ``reward=...`` override and the marker file (the pid of
    the process it hit)."""
    marker = directory / f"{fault}.marker"
    what, code = FAULTS[fault]
    path = directory / f"{fault}_reward.py"
    path.write_text(FAULT_REWARD.format(
        at=at, marker=str(marker), action=what, code=code, pace_s=float(pace_s),
        rank="any rank" if rank is None else f"rank {rank}",
        rank_ok="True" if rank is None else f'os.environ.get("RANK") == "{rank}"'))
    return f"reward={path}:reward", marker
