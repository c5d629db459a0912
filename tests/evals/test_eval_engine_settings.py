"""The evaluation engine's settings (engine, dtype, vLLM memory share, tensor parallelism,
context length) reach the engine from `archer eval` and from a study's eval spec, named as
the trainer's `vllm_*` keys. vLLM itself is the boundary here (no GPU): the engine class is
replaced by a recorder, and everything up to its constructor is the real code."""

from __future__ import annotations

import pytest

import archer.rollout.vllm as vllm_mod
from archer.validation import ConfigError
from archer_cli.main import parse_args
from evals.runner import make_backend
from experiments.study import check_eval


class RecordingVLLM:
    made: list[dict] = []

    def __init__(self, path, **kwargs):
        RecordingVLLM.made.append({"path": path, **kwargs})


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    from archer.models import build_tiny_model

    RecordingVLLM.made = []
    monkeypatch.setattr(vllm_mod, "VLLMRollout", RecordingVLLM)
    monkeypatch.setattr(vllm_mod, "require_vllm", lambda: None)
    return build_tiny_model(tmp_path / "tiny", hidden=32, layers=1, heads=2)


def test_make_backend_passes_the_vllm_settings_to_the_engine(recorded):
    make_backend("vllm", recorded, dtype="bfloat16", gpu_memory_utilization=0.4,
                 tensor_parallel_size=2, max_model_len=4096)
    (made,) = RecordingVLLM.made
    assert (made["dtype"], made["gpu_memory_utilization"], made["tensor_parallel_size"],
            made["max_model_len"]) == ("bfloat16", 0.4, 2, 4096)
    make_backend("vllm", recorded)  # the defaults: one GPU, the model's own context
    assert (RecordingVLLM.made[1]["tensor_parallel_size"],
            RecordingVLLM.made[1]["max_model_len"]) == (1, None)


def test_archer_eval_takes_the_engine_settings_as_key_value():
    args = parse_args(["eval", "model=m", "engine=vllm", "dtype=bfloat16",
                       "vllm_tensor_parallel_size=4", "vllm_max_model_len=8192"])
    assert (args.engine, args.dtype, args.vllm_tensor_parallel_size,
            args.vllm_max_model_len) == ("vllm", "bfloat16", 4, 8192)
    with pytest.raises(ConfigError, match=r"vllm_tensor_parallel_size=0 is invalid"):
        parse_args(["eval", "model=m", "vllm_tensor_parallel_size=0"])


def test_a_study_eval_spec_takes_them_and_refuses_bad_values():
    spec = {"benchmarks": ["gsm8k"], "engine": "vllm", "dtype": "bfloat16",
            "vllm_tensor_parallel_size": 2, "vllm_max_model_len": 4096}
    assert check_eval("study s", spec) == spec
    with pytest.raises(ConfigError, match=r"vllm_tensor_parallel_size=0 is not allowed"):
        check_eval("study s", spec | {"vllm_tensor_parallel_size": 0})
    with pytest.raises(ConfigError, match=r"vllm_max_modl_len.*did you mean 'vllm_max_model_len'"):
        check_eval("study s", {"benchmarks": ["gsm8k"], "vllm_max_modl_len": 8})
