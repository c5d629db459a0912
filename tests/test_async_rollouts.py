"""Asynchronous rollouts (max_staleness = k): k = 0 is the synchronous loop untouched; k >= 1
generates ahead on a Ray rollout worker within the staleness bound, and neither a dead worker
nor SIGTERM + resume skips a prompt or trains one twice."""

from __future__ import annotations

import os
import signal
from dataclasses import replace

import pytest
import shared_rewards  # noqa: F401  (registers test_parity)
import torch

import archer.trainer.pipeline as pipeline_mod
from archer.checkpoint import list_checkpoints, read_state
from archer.config import AlgoConfig, ConfigError
from archer.models import build_tiny_model
from archer.tracking import JsonlLogger
from archer.train_config import TrainConfig
from archer.trainer import fit
from archer.trainer.pipeline import read_prompt_log
from archer.trainer.publishers import ChannelPublisher, resolve_weight_sync
from archer.trainer.records import PromptSampler, load_records
from archer.trainer.stopping import TrainingInterrupted

STEPS = 4
PROMPTS = 4


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), hidden=32, layers=2, heads=4)


@pytest.fixture(scope="module")
def local_ray():
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def make_cfg(tiny_path, out_dir, **overrides) -> TrainConfig:
    base = dict(
        model=str(tiny_path), algo=AlgoConfig(group_filter="none"), reward="test_parity",
        data={"task": "chain_sum", "size": 40, "seed": 0}, prompts_per_step=PROMPTS,
        group_size=4, max_new_tokens=5, mini_batch_prompts=2, micro_batch_size=8, lr=1e-3,
        total_steps=STEPS, val_size=4, out_dir=str(out_dir), num_threads=1,
        deterministic=True, export_final=False,
    )
    base.update(overrides)
    return TrainConfig(**base)


def sampled_prompts(out_dir) -> list[int]:
    return [i for row in read_prompt_log(out_dir) for rnd in row["rounds"] for i in rnd["prompts"]]


def expected_order(cfg: TrainConfig, n: int) -> list[int]:
    """The first ``n`` prompts of the run's data order (the synchronous loop's draws)."""
    train, _ = load_records(cfg)
    return PromptSampler(len(train), cfg.seed).next(n)


def untimed(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if not k.startswith(("time/", "perf/"))}
            for m in metrics]


# --- configuration ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [-1, 1.5, True, "1", None])
def test_bad_staleness_is_refused_naming_the_key(tiny_path, tmp_path, bad):
    with pytest.raises(ConfigError, match="max_staleness"):
        make_cfg(tiny_path, tmp_path, max_staleness=bad)


def test_staleness_with_the_vllm_backend_is_accepted_and_picks_the_collective(tiny_path,
                                                                              tmp_path):
    cfg = make_cfg(tiny_path, tmp_path, max_staleness=1, rollout_backend="vllm")
    assert cfg.rollout_weight_sync == "auto" and resolve_weight_sync(cfg) == "collective"
    assert resolve_weight_sync(make_cfg(tiny_path, tmp_path, max_staleness=1)) == "object_store"
    for backend in ("hf", "vllm"):
        for sync in ("object_store", "collective"):
            cfg = make_cfg(tiny_path, tmp_path, max_staleness=1, rollout_backend=backend,
                           rollout_weight_sync=sync)
            assert resolve_weight_sync(cfg) == sync


@pytest.mark.parametrize("bad", ["nccl", "objectstore", None, 1])
def test_bad_weight_sync_is_refused_naming_the_key_and_the_choices(tiny_path, tmp_path, bad):
    allowed = r"choose one of \['auto', 'object_store', 'collective'\]"
    with pytest.raises(ConfigError, match=rf"rollout_weight_sync={bad!r} is invalid.*{allowed}"):
        make_cfg(tiny_path, tmp_path, max_staleness=1, rollout_weight_sync=bad)
    if bad == "objectstore":
        with pytest.raises(ConfigError, match="did you mean 'object_store'"):
            make_cfg(tiny_path, tmp_path, rollout_weight_sync=bad)


def test_tis_cap_defaults_to_two_only_when_stale(tiny_path, tmp_path):
    assert make_cfg(tiny_path, tmp_path).algo.tis_cap is None
    assert make_cfg(tiny_path, tmp_path, max_staleness=0).algo.tis_cap is None
    assert make_cfg(tiny_path, tmp_path, max_staleness=1).algo.tis_cap == 2.0
    own = make_cfg(tiny_path, tmp_path, max_staleness=2,
                   algo=AlgoConfig(group_filter="none", tis_cap=1.5))
    assert own.algo.tis_cap == 1.5
    assert TrainConfig.from_dict({"max_staleness": 2}).max_staleness == 2


# --- k = 0: the synchronous loop -------------------------------------------------------------

def test_k0_never_builds_the_pipeline_and_is_bit_identical(tiny_path, tmp_path, monkeypatch):
    def refuse(ctx):
        raise AssertionError("max_staleness=0 built the pipeline")

    monkeypatch.setattr(pipeline_mod, "build_pipeline", refuse)
    runs = []
    for name, extra in (("absent", {}), ("zero", {"max_staleness": 0})):
        cfg = make_cfg(tiny_path, tmp_path / name, total_steps=3, **extra)
        runs.append(fit(cfg, progress=False))
        assert not (tmp_path / name / pipeline_mod.PROMPT_LOG).exists()
    a, b = runs
    for (name, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(pa, pb), name
    assert untimed(a.metrics) == untimed(b.metrics)
    assert "rollout/staleness_max" not in a.metrics[-1]


# --- k >= 1 ----------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 2])
def test_staleness_is_bounded_and_prompts_follow_the_data_order(tiny_path, tmp_path, local_ray,
                                                                 k):
    cfg = make_cfg(tiny_path, tmp_path, max_staleness=k)
    result = fit(cfg, progress=False)
    behind = [m["rollout/staleness_max"] for m in result.metrics]
    assert behind == [float(min(s, k)) for s in range(STEPS)]  # the fixed version schedule
    assert all(m["rollout/staleness_mean"] == m["rollout/staleness_max"] for m in result.metrics)
    assert all("rollout/tis_weight_max" in m for m in result.metrics)  # tis_cap=2 by default
    assert all(m["rollout/tis_weight_max"] <= 2.0 for m in result.metrics)
    log = read_prompt_log(tmp_path)
    assert [row["step"] for row in log] == list(range(STEPS))
    assert [row["rounds"][0]["version"] for row in log] == [max(s - k, 0) for s in range(STEPS)]
    assert sampled_prompts(tmp_path) == expected_order(cfg, STEPS * PROMPTS)  # no skip, no dup
    assert all(m["rollout/worker_restarts"] == 0.0 for m in result.metrics)
    final = read_state(list_checkpoints(cfg.out_dir)[-1])
    assert final["pending_prompts"] == []  # nothing was generated past the last step


def test_refill_rounds_run_in_process_at_the_current_policy(tiny_path, tmp_path, local_ray):
    cfg = make_cfg(tiny_path, tmp_path, max_staleness=1, total_steps=3,
                   algo=AlgoConfig(group_filter="refill"), refill_max_rounds=3)
    fit(cfg, progress=False)
    log = read_prompt_log(tmp_path)
    for row in log:  # the first round is from the worker; refills are staleness 0
        assert all(rnd["version"] == row["step"] for rnd in row["rounds"][1:])
    assert sampled_prompts(tmp_path) == expected_order(cfg, len(sampled_prompts(tmp_path)))


@pytest.mark.slow
def test_dead_worker_is_restarted_and_the_run_is_unchanged(tiny_path, tmp_path, local_ray,
                                                           monkeypatch):
    import ray

    clean = fit(make_cfg(tiny_path, tmp_path / "clean", max_staleness=1), progress=False)
    after_step = pipeline_mod.RolloutPipeline.after_step

    def kill_after_step_1(self):
        after_step(self)
        if self.ctx.state.step == 2:  # requests for steps 2 and 3 are in flight
            ray.kill(self.worker, no_restart=True)

    monkeypatch.setattr(pipeline_mod.RolloutPipeline, "after_step", kill_after_step_1)
    crashed = fit(make_cfg(tiny_path, tmp_path / "crashed", max_staleness=1), progress=False)
    restarts = [m["rollout/worker_restarts"] for m in crashed.metrics]
    # the restart shows at step 3, or at step 4 when step 3's batch was finished (and kept in
    # Ray's object store) before the kill landed: the worker is replaced exactly once
    assert restarts in ([0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]), restarts
    assert sampled_prompts(tmp_path / "crashed") == sampled_prompts(tmp_path / "clean")
    # the in-flight requests were submitted again with their own policy versions
    for (name, pa), (_, pb) in zip(clean.model.named_parameters(),
                                   crashed.model.named_parameters()):
        assert torch.equal(pa, pb), name


@pytest.mark.slow
def test_a_finished_run_extended_on_resume_draws_the_same_prompts(tiny_path, tmp_path,
                                                                   local_ray):
    whole = make_cfg(tiny_path, tmp_path / "whole", max_staleness=2)
    fit(whole, progress=False)
    short = make_cfg(tiny_path, tmp_path / "extended", max_staleness=2, total_steps=2)
    fit(short, progress=False)
    fit(replace(short, total_steps=STEPS), progress=False)
    assert sampled_prompts(short.out_dir) == sampled_prompts(whole.out_dir)


class TermAt(JsonlLogger):
    """Sends this process SIGTERM once step ``at`` is logged."""

    at = 2

    def log_metrics(self, metrics, step):
        super().log_metrics(metrics, step)
        if step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_sigterm_and_resume_skip_no_prompt_and_repeat_none(tiny_path, tmp_path, local_ray):
    k = 2
    clean_cfg = make_cfg(tiny_path, tmp_path / "clean", max_staleness=k)
    fit(clean_cfg, progress=False)
    cfg = make_cfg(tiny_path, tmp_path / "stopped", max_staleness=k)
    with pytest.raises(TrainingInterrupted):
        fit(cfg, TermAt(cfg.out_dir), progress=False)
    assert [row["step"] for row in read_prompt_log(cfg.out_dir)] == [0, 1]
    with pytest.raises(ValueError, match="resume it with max_staleness >= 1"):
        fit(replace(cfg, max_staleness=0), progress=False)  # its prompts would be skipped
    resumed = fit(cfg, progress=False)
    assert [m["rollout/staleness_max"] for m in resumed.metrics] == [0.0, 1.0]  # re-queued
    log = read_prompt_log(cfg.out_dir)
    assert [row["step"] for row in log] == list(range(STEPS))
    assert sampled_prompts(cfg.out_dir) == sampled_prompts(clean_cfg.out_dir)
    assert sampled_prompts(cfg.out_dir) == expected_order(cfg, STEPS * PROMPTS)


def test_update_mode_async_warns_that_staleness_compounds(tiny_path, tmp_path, local_ray,
                                                          caplog):
    algo = replace(AlgoConfig(group_filter="none"), update_mode="async")
    cfg = make_cfg(tiny_path, tmp_path, max_staleness=1, total_steps=1, algo=algo)
    with caplog.at_level("WARNING", logger="archer.trainer.pipeline"):
        fit(cfg, progress=False)
    assert "compound the staleness" in caplog.text


# --- the weight transport: a collective (gloo) channel into the HF worker ---------------------

def spy_on_the_channel(monkeypatch) -> tuple[list[int], list[list[int]]]:
    """(versions pushed to the worker, in order; the snapshots kept after each release)."""
    pushed, kept = [], []
    weights_for, release_before = ChannelPublisher.weights_for, ChannelPublisher.release_before

    def record_push(self, worker, version):
        if version != self.held:
            pushed.append(version)
        return weights_for(self, worker, version)

    def record_release(self, version):
        release_before(self, version)
        kept.append(sorted(self.snapshots))

    monkeypatch.setattr(ChannelPublisher, "weights_for", record_push)
    monkeypatch.setattr(ChannelPublisher, "release_before", record_release)
    return pushed, kept


def test_the_collective_gives_the_object_store_run_bit_for_bit(tiny_path, tmp_path, local_ray,
                                                              monkeypatch):
    store = fit(make_cfg(tiny_path, tmp_path / "store", max_staleness=1), progress=False)
    pushed, kept = spy_on_the_channel(monkeypatch)
    cfg = make_cfg(tiny_path, tmp_path / "channel", max_staleness=1,
                   rollout_weight_sync="collective")
    channel = fit(cfg, progress=False)
    for (name, pa), (_, pb) in zip(store.model.named_parameters(),
                                   channel.model.named_parameters()):
        assert torch.equal(pa, pb), name
    assert read_prompt_log(tmp_path / "channel") == read_prompt_log(tmp_path / "store")
    assert untimed(channel.metrics) == untimed(store.metrics)
    # k = 1, 4 steps: steps 0, 1 from version 0, step s >= 2 from s - 1; each version once
    assert pushed == [0, 1, 2]
    # after step s, the versions a request in flight still needs and the new one
    assert kept == [[0, 1], [1, 2], [2, 3], [4]]


def test_a_version_never_received_is_refused(tiny_path, tmp_path):
    from archer.rollout import SamplingParams
    from archer.trainer.rollout_actor import RolloutWorker

    worker = RolloutWorker(make_cfg(tiny_path, tmp_path))
    with pytest.raises(RuntimeError, match="policy version 3 was requested but never received"):
        worker.generate(3, [], ["User: 1+1?\nAssistant:"], SamplingParams(n=1))


@pytest.mark.slow
def test_dead_worker_is_restarted_with_a_fresh_channel_and_the_run_is_unchanged(
        tiny_path, tmp_path, local_ray, monkeypatch):
    import ray

    clean = fit(make_cfg(tiny_path, tmp_path / "clean", max_staleness=1), progress=False)
    after_step = pipeline_mod.RolloutPipeline.after_step
    connected = []
    connect = ChannelPublisher.connect

    def record_connect(self, worker):
        connect(self, worker)
        connected.append(self.sender)

    def kill_after_step_1(self):
        after_step(self)
        if self.ctx.state.step == 2:  # requests for steps 2 and 3 are in flight
            ray.kill(self.worker, no_restart=True)

    monkeypatch.setattr(ChannelPublisher, "connect", record_connect)
    monkeypatch.setattr(pipeline_mod.RolloutPipeline, "after_step", kill_after_step_1)
    crashed = fit(make_cfg(tiny_path, tmp_path / "crashed", max_staleness=1,
                           rollout_weight_sync="collective"), progress=False)
    restarts = [m["rollout/worker_restarts"] for m in crashed.metrics]
    assert restarts in ([0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]), restarts
    assert len(connected) == 2 and connected[0] is not connected[1]  # one channel per worker
    assert sampled_prompts(tmp_path / "crashed") == sampled_prompts(tmp_path / "clean")
    for (name, pa), (_, pb) in zip(clean.model.named_parameters(),
                                   crashed.model.named_parameters()):
        assert torch.equal(pa, pb), name


# --- the vLLM rollout worker, without vLLM ------------------------------------------------------

def test_the_vllm_worker_without_vllm_names_the_extra(tiny_path, tmp_path, monkeypatch):
    from archer.rollout import vllm as vllm_backend
    from archer.trainer.rollout_actor import spawn_worker

    monkeypatch.setattr(vllm_backend, "vllm_available", lambda: False)
    names_the_extra = r"vllm is not installed: pip install 'archer-rlvr\[vllm\]'"
    cfg = make_cfg(tiny_path, tmp_path, max_staleness=1, rollout_backend="vllm")
    with pytest.raises(vllm_backend.VLLMNotInstalledError, match=names_the_extra):
        spawn_worker(cfg)  # before any actor (or Ray) starts
    with pytest.raises(vllm_backend.VLLMNotInstalledError, match=names_the_extra):
        fit(cfg, progress=False)


def test_the_rollout_gpus_are_the_visible_ones_after_the_trainers():
    from archer.trainer.rollout_actor import rollout_gpus

    assert rollout_gpus(["0", "1", "2", "3"], 0, 1) == ["1"]
    assert rollout_gpus(["0", "1", "2", "3"], 0, 2) == ["1", "2"]
    assert rollout_gpus(["4", "6", "7"], 1, 2) == ["4", "7"]  # CUDA_VISIBLE_DEVICES ids
    with pytest.raises(ValueError, match="vllm_tensor_parallel_size=2 GPU.s. besides the "
                                         "trainer's: 2 visible"):
        rollout_gpus(["0", "1"], 0, 2)
    with pytest.raises(ValueError, match="cuda:3 is not among the 2 visible"):
        rollout_gpus(["0", "1"], 3, 1)
