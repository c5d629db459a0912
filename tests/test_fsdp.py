"""FSDP2 data parallelism on CPU (gloo, 2 processes under torchrun) against one process.

The worker (tests/fsdp_worker.py) runs the same computation in both settings; rank 0 saves it.
- ``update``: a fixed UpdateBatch (no sampling), each rank holding half of the groups. The
  loss and the gathered full gradients of one phase must equal the single-process ones
  (float32, relative 1e-5), and so must the parameters after a 2-epoch, 2-mini-batch update.
- ``step``: one whole train_step from the same seed. Every rank draws the same prompts and
  rolls out its half with the single-process generate() seeds, so the rollouts, rewards,
  kept groups and then the update are the same.

Also (single process, fast): the chunked entropy against the naive formula on a 2-row,
V=150k case at a small chunk, gradient checkpointing and length bucketing giving the same
gradients, and the distributed helpers' single-process no-op path.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from archer.algos.entropy import entropy_naive, token_entropy
from archer.distributed import SINGLE, full_params, init_distributed, shard_model
from archer.models import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "fsdp_worker.py"


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), hidden=32, layers=2, heads=4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker(mode: str, model: Path, out: Path, nproc: int, *, partial_ok: bool = False,
               **overrides) -> dict:
    """Run the worker; its saved result with ``failure`` = None, or a report of how it failed.

    ``partial_ok``: a worker that failed after rank 0 saved a stage still returns that stage's
    numbers (``result["stage"]``), so the caller compares them first and a wrong number fails
    as a wrong number; the caller then asserts ``failure is None`` for the rest."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    args = [str(WORKER), mode, str(model), str(out)] + [
        f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    if nproc == 1:
        cmd = [sys.executable] + args
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}"] + args
    # own session: on a timeout the whole tree (torchrun and its workers) is killed
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=600)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        timed_out = True
    done = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    failure = (None if proc.returncode == 0 and not timed_out else
               ("timed out after 600 s; " if timed_out else "") + worker_failure(done, out, nproc))
    if failure is not None and not (partial_ok and out.exists()):
        pytest.fail(failure, pytrace=False)
    result = torch.load(out, weights_only=False)
    result["failure"] = failure
    return result


def worker_failure(proc: subprocess.CompletedProcess, out: Path, nproc: int) -> str:
    """A readable report of a failed worker run: the stage rank 0 saved, each rank's
    exception (its last line), gloo/torchrun root-cause lines, then the output's tail."""
    stage = torch.load(out, weights_only=False).get("stage") if out.exists() else None
    lines = [f"{nproc}-process worker exited with {proc.returncode} after stage {stage!r}"]
    for err in sorted(out.parent.glob(out.name + ".rank*.error")):
        last = err.read_text().strip().splitlines()[-1:]
        lines.append(f"  {err.name.split('.')[-2]}: {last[0] if last else '?'}")
    log = proc.stdout + proc.stderr
    causes = [ln.strip() for ln in log.splitlines() if re.search(
        r"what\(\)|collective mismatch|exitcode\s*:|Signal \d+ \(SIG", ln)]
    lines += [f"  {ln}" for ln in dict.fromkeys(causes)]
    return "\n".join(lines) + "\n--- output tail ---\n" + log[-4000:]


def rel_diffs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    assert a.keys() == b.keys()
    return {k: float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp(min=1e-12)) for k in a}


def max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(rel_diffs(a, b).values())


UPDATE_CASES = {
    # Archer: seq-mean-token-mean, per-class KL (global class denominators), scope=response
    "archer": {},
    # token-mean and a batch-scope split (the quantile over both ranks' tokens)
    "token_mean_batch_scope": {"algo": {"loss_agg_mode": "token-mean",
                                        "entropy_scope": "batch"}},
    # Dr.GRPO-style norm by the padded length, micro-batches bucketed by length and trimmed
    "sum_norm_bucketed": {"algo": {"loss_agg_mode": "seq-mean-token-sum-norm"},
                          "length_bucketing": True, "micro_batch_size": 2},
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(UPDATE_CASES))
def test_fsdp_update_equals_single_process(tiny_path, tmp_path, case):
    overrides = UPDATE_CASES[case]
    one = run_worker("update", tiny_path, tmp_path / "one.pt", 1, **overrides)
    two = run_worker("update", tiny_path, tmp_path / "two.pt", 2, partial_ok=True, **overrides)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    # 1. One phase's loss and gathered gradients, compared even when the 2-process worker
    # died later (a wrong global reduction can also desynchronise the ranks' collectives).
    for key in ("actor/loss", "actor/pg_loss", "actor/kl_loss"):
        got, want = two["metrics"][key], one["metrics"][key]
        assert got == pytest.approx(want, rel=1e-5, abs=1e-9), (
            f"{key}: 2 processes {got!r} != 1 process {want!r}")
    for key in ("actor/tokens_high_entropy", "actor/tokens_low_entropy"):
        assert two["metrics"][key] == one["metrics"][key], key  # the same token split
    assert any(float(g.abs().max()) > 0 for g in one["grads"].values())
    diffs = rel_diffs(one["grads"], two["grads"])
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] < 1e-5, (
        f"gathered gradients: 2 processes differ from 1 by {diffs[worst]:.3g} (relative, "
        f"{worst}); {sum(d >= 1e-5 for d in diffs.values())}/{len(diffs)} tensors differ")
    # 2. The update: the worker must have finished
    assert two["failure"] is None, two["failure"]
    # 2 epochs x 2 mini-batches of AdamW (lr 1e-3): parameters equal to float noise
    assert one["update_metrics"]["actor/optimizer_steps"] == 4
    assert two["update_metrics"]["actor/optimizer_steps"] == 4
    assert two["update_metrics"]["actor/grad_norm"] == pytest.approx(
        one["update_metrics"]["actor/grad_norm"], rel=1e-5)
    for k, p in one["params"].items():
        torch.testing.assert_close(two["params"][k], p, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_fsdp_train_step_equals_single_process(tiny_path, tmp_path):
    one = run_worker("step", tiny_path, tmp_path / "one.pt", 1)
    two = run_worker("step", tiny_path, tmp_path / "two.pt", 2)
    m1, m2 = one["metrics"], two["metrics"]
    assert m1["train/step_skipped"] == 0.0 and m1["groups/kept"] >= 1
    for key in ("reward/mean", "groups/kept", "groups/sampled", "response/length_mean",
                "response/length_max", "actor/tokens_high_entropy", "actor/optimizer_steps"):
        assert m2[key] == m1[key], key  # identical rollouts and filtering
    for key in ("actor/loss", "actor/grad_norm"):
        assert m2[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-8), key
    moved = max(float((p - q).abs().max()) for p, q in zip(
        one["params"].values(), two["params"].values()))
    assert moved < 1e-5
    # ... and the update did something (so equal parameters are not trivially equal)
    from archer.models import load_policy_and_ref

    base, _, _ = load_policy_and_ref(tiny_path, need_ref=False)
    change = max(float((p.detach() - one["params"][k]).abs().max())
                 for k, p in base.named_parameters())
    assert change > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("val_size", [5, 1])
def test_fsdp_validation_with_unequal_shares_equals_single_process(tiny_path, tmp_path,
                                                                    val_size):
    """5 held-out prompts over 2 ranks at rollout_batch_size=2: 3 and 2 prompts, so 2 and 1
    generate calls; 1 prompt: rank 1 has none. Greedy, so the 2-process scores are the single
    process's (transformers' synced_gpus would make each generation step a collective and
    desynchronise the ranks)."""
    one = run_worker("validate", tiny_path, tmp_path / "one.pt", 1, val_size=val_size)
    two = run_worker("validate", tiny_path, tmp_path / "two.pt", 2, val_size=val_size)
    assert two["failure"] is None
    assert two["metrics"] == pytest.approx(one["metrics"], rel=1e-6)
    assert set(one["metrics"]) == {"val/reward_mean", "val/accuracy",
                                   "val/response_length_mean"}


@pytest.mark.slow
def test_fsdp_checkpoint_round_trip(tiny_path, tmp_path):
    out = run_worker("ckpt", tiny_path, tmp_path / "ckpt.pt", 2)
    assert out["resumed"] and out["step"] == 1
    assert out["model_equal"] and out["optim_equal"]  # gathered, written by rank 0, re-sharded
    ckpt = tmp_path / "ckpt.pt.run" / "checkpoints" / "step_000001"
    assert json.loads((ckpt / "state.json").read_text())["world_size"] == 2
    assert len(torch.load(ckpt / "rng_ranks.pt", weights_only=False)) == 2
    state = torch.load(ckpt / "model.pt", weights_only=True)  # full, plain tensors
    from archer.models import load_policy_and_ref

    plain = load_policy_and_ref(tiny_path, need_ref=False)[0].state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in plain.items()}
    assert all(type(v) is torch.Tensor for v in state.values())


# --------------------------------------------------------------------------------------
# Single process: chunked entropy, gradient checkpointing, length bucketing, no-op path
# --------------------------------------------------------------------------------------


def test_chunked_entropy_matches_naive_at_large_vocab():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 150_000, generator=g, dtype=torch.bfloat16) * 4
    logits[0, 1, :100] = float("-inf")  # probability-0 tokens
    want = entropy_naive(logits, temperature=0.7)
    assert torch.isnan(want[0, 1])  # the naive formula: 0 * -inf
    want[0, 1] = entropy_naive(logits[0, 1, 100:], temperature=0.7)  # the -inf tokens dropped
    for chunk in (1, 3, 256):
        got = token_entropy(logits, temperature=0.7, chunk_size=chunk)
        assert got.dtype == torch.float32 and got.shape == (2, 5)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    uniform = torch.zeros(1, 1, 150_000)
    assert float(token_entropy(uniform, chunk_size=1)) == pytest.approx(
        float(torch.log(torch.tensor(150_000.0))), rel=1e-6)


def _grads(tiny_path, tmp_path, **overrides):
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from fsdp_worker import fixed_update_batch, make_cfg
    finally:
        sys.path.pop(0)
    from archer.trainer import accumulate_gradients, build_context, minibatch_split, setup_torch

    cfg = make_cfg(str(tiny_path), str(tmp_path), **overrides)
    setup_torch(cfg)
    ctx = build_context(cfg, SINGLE)
    ub = fixed_update_batch(ctx.model.config.vocab_size, ctx.rollout.pad_id)
    metrics, high = accumulate_gradients(ctx, ub, ctx.plan[0], minibatch_split(ctx, ub))
    return metrics, high, {k: p.grad.clone() for k, p in ctx.model.named_parameters()}, ctx


def test_gradient_checkpointing_gives_the_same_gradients(tiny_path, tmp_path):
    m1, h1, g1, _ = _grads(tiny_path, tmp_path)
    m2, h2, g2, ctx = _grads(tiny_path, tmp_path, gradient_checkpointing=True)
    assert any(getattr(m, "gradient_checkpointing", False) for m in ctx.model.modules())
    assert m2["actor/loss"] == pytest.approx(m1["actor/loss"], rel=1e-6)
    assert torch.equal(h1, h2)
    assert max_rel_diff(g1, g2) < 1e-6


def test_length_bucketing_gives_the_same_gradients(tiny_path, tmp_path):
    for mode in ("seq-mean-token-mean", "seq-mean-token-sum-norm"):
        algo = {"loss_agg_mode": mode}
        m1, h1, g1, _ = _grads(tiny_path, tmp_path, algo=algo, micro_batch_size=4)
        m2, h2, g2, _ = _grads(tiny_path, tmp_path, algo=algo, micro_batch_size=4,
                               length_bucketing=True)
        assert m2["actor/loss"] == pytest.approx(m1["actor/loss"], rel=1e-5)
        assert torch.equal(h1, h2)  # the high-entropy mask is put back in row order
        assert max_rel_diff(g1, g2) < 1e-5


def test_length_bucketing_trims_padding(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from fsdp_worker import fixed_update_batch
    finally:
        sys.path.pop(0)
    from archer.trainer import micro_batch_rows, trim_padding

    ub = fixed_update_batch(50, 0)
    chunks = micro_batch_rows(ub, 4, by_length=True)
    lengths = [ub.batch.response_lengths[c].tolist() for c in chunks]
    assert lengths == [[6, 6, 6, 6], [5, 5, 4, 4], [4, 3, 3, 3], [2, 2, 1, 1]]
    last, width = trim_padding(ub.rows(chunks[-1]))
    assert width == 2 and last.batch.response_ids.shape == (4, 2)
    assert last.old_logprobs.shape == (4, 2) and last.batch.prompt_ids.shape == (4, 3)
    assert sorted(torch.cat(chunks).tolist()) == list(range(16))


def test_single_process_is_a_no_op(tiny_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed() is SINGLE and not SINGLE.enabled and SINGLE.is_main
    assert SINGLE.all_reduce([1.5, 2.0]) == [1.5, 2.0]
    assert SINGLE.all_gather_object({"a": 1}) == [{"a": 1}]
    from archer.models import load_policy_and_ref

    model, _, _ = load_policy_and_ref(tiny_path, need_ref=False)
    assert shard_model(model, SINGLE) is model
    assert type(model.lm_head.weight) is torch.nn.Parameter  # not a DTensor
    with full_params(model, None):
        pass


def test_bad_launch_environment_is_an_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match="launch with torchrun"):
        init_distributed()


@pytest.mark.parametrize("device, message", [
    ("cuda:1", "each rank takes cuda:LOCAL_RANK"),
    ("tpu", "each rank takes cuda:LOCAL_RANK"),
])
def test_torchrun_device_must_be_auto_cuda_or_cpu(monkeypatch, device, message):
    from archer.config import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=message):
        init_distributed(device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_torchrun_cuda_without_a_gpu_is_an_error(monkeypatch):
    from archer.config import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="sees no CUDA GPU"):
        init_distributed(device="cuda")
