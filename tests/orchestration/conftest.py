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
    return [f"model={model}", f"trainer.steps={steps}", "data.size=24",
            "trainer.prompts_per_step=2", "trainer.group_size=4", "trainer.mini_batch_prompts=2",
            "trainer.micro_batch_size=8", "trainer.max_new_tokens=4", "trainer.val_every=1",
            "trainer.val_size=4", "trainer.ckpt_every=1", "trainer.num_threads=1"]


def _write_study(directory: Path, name: str, **fields) -> Path:
    """A study file ``<directory>/<name>.yaml`` (name set, everything else as given)."""
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name} | fields, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray for the test module (2 CPUs, no dashboard)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
