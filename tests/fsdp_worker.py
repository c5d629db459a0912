"""Worker for tests/test_fsdp.py: run under ``torchrun --nproc_per_node 2`` (FSDP2, gloo) or as a
plain process (single-process reference); rank 0 saves what the test compares.

    python tests/fsdp_worker.py update MODEL_DIR OUT.pt [key=value ...]
    python tests/fsdp_worker.py step MODEL_DIR OUT.pt [key=value ...]
    python tests/fsdp_worker.py ckpt MODEL_DIR OUT.pt [key=value ...]

``update``: a fixed UpdateBatch (fixed token ids, masks, old/ref log-probs, advantages; 4 groups
of 4) -> one phase's gradients (gathered full) and loss, then a 2-epoch update -> parameters.
Each rank takes the rows of its half of the groups, as the trainer shards them.
``step``: one full ``train_step`` (rollout included) from the same seed -> parameters, metrics.
``ckpt``: a step, ``save``, then a fresh context ``resume``s: model and optimizer state compared.

Rank 0 writes OUT.pt after each stage (``out["stage"]``: ``phase`` once one phase's loss and
gradients are in, ``done`` at the end), so when a later stage dies (a collective that the
ranks disagree on aborts gloo: ``Is there a distributed collective mismatch``) the test still
gets the numbers computed so far and compares them before reporting the failure. An exception
on a rank is written to ``OUT.pt.rank<R>.error`` before the process exits non-zero. Collectives
time out after ``FSDP_WORKER_TIMEOUT_S`` (120) seconds, so mismatched ones fail, not hang.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import shared_rewards  # noqa: F401  (registers test_parity, test_const)
import torch

from archer.algos import build_update_plan
from archer.distributed import full_state_dicts, full_tensor, init_distributed, shutdown
from archer.train_config import TrainConfig
from archer.trainer import (
    UpdateBatch,
    accumulate_gradients,
    build_context,
    minibatch_split,
    reduce_update_metrics,
    resume,
    save,
    setup_torch,
    train_step,
    update_policy,
)
from archer.types import RolloutBatch
from experiments.presets import load_preset


def make_cfg(model: str, out_dir: str, **overrides) -> TrainConfig:
    algo = load_preset("archer").algo.to_dict() | overrides.pop("algo", {})
    base = dict(model=model, algo=algo, reward="test_parity",
                data={"task": "chain_sum", "size": 40, "seed": 0}, prompts_per_step=4,
                group_size=4, max_new_tokens=5, mini_batch_prompts=2, micro_batch_size=3,
                ppo_epochs=2, lr=1e-3, total_steps=1, val_every=0, val_size=4,
                out_dir=out_dir, num_threads=1, deterministic=True, export_final=False,
                rollout_batch_size=2)
    return TrainConfig(**(base | overrides))


def fixed_update_batch(vocab: int, pad: int) -> UpdateBatch:
    """4 groups x 4 responses, prompt length 3 (some left padding), response width 6 with
    lengths 1..6; old log-probs near the current ones are replaced below (ratio != 1)."""
    g = torch.Generator().manual_seed(1234)
    n, p, r = 16, 3, 6
    prompt_ids = torch.randint(3, vocab, (n, p), generator=g)
    prompt_mask = torch.ones(n, p, dtype=torch.long)
    prompt_mask[::3, 0] = 0
    prompt_ids[prompt_mask == 0] = pad
    lengths = torch.tensor([1, 2, 3, 4, 5, 6, 6, 5, 4, 3, 2, 6, 3, 6, 1, 4])
    response_mask = (torch.arange(r)[None] < lengths[:, None]).long()
    response_ids = torch.randint(3, vocab, (n, r), generator=g).masked_fill(
        response_mask == 0, pad)
    batch = RolloutBatch(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
        response_mask=response_mask, response_lengths=lengths,
        truncated=torch.zeros(n, dtype=torch.bool),
        sampler_logprobs=torch.zeros(n, r), group_index=torch.arange(4).repeat_interleave(4),
        texts=[""] * n)
    adv = torch.randn(n, generator=g)
    old = -torch.rand(n, r, generator=g) * 3 - 3.0  # the tiny model's log-probs are ~ -4.6
    ref = -torch.rand(n, r, generator=g) * 3 - 3.0
    return UpdateBatch(batch, adv, old, None, ref)


def save_stage(dist, out: dict, path: str, stage: str) -> None:
    """Rank 0 (re)writes what is computed so far, atomically (a rank killed mid-write leaves
    the previous stage's file)."""
    out["stage"] = stage
    if dist.is_main:
        tmp = f"{path}.tmp"
        torch.save(out, tmp)
        os.replace(tmp, path)


def run_update(ctx, out: dict, path: str) -> None:
    dist = ctx.dist
    full = fixed_update_batch(ctx.model.config.vocab_size, ctx.rollout.pad_id)
    groups = torch.arange(4).chunk(dist.world_size)[dist.rank]  # this rank's groups
    ub = full.rows(torch.isin(full.batch.group_index, groups).nonzero().squeeze(-1))
    ctx.model.zero_grad(set_to_none=True)
    split = minibatch_split(ctx, ub)
    metrics, _ = accumulate_gradients(ctx, ub, ctx.plan[0], split)
    out["metrics"] = reduce_update_metrics(dist, metrics)
    out["grads"] = {k: full_tensor(p.grad).detach().clone()
                    for k, p in ctx.model.named_parameters()}
    save_stage(dist, out, path, "phase")  # the numbers to compare, before the update
    ctx.model.zero_grad(set_to_none=True)
    out["update_metrics"] = update_policy(ctx, ub)


def _tensors(tree, prefix: str = "") -> dict[str, torch.Tensor]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out |= _tensors(v, f"{prefix}{k}.")
        elif isinstance(v, torch.Tensor):
            out[f"{prefix}{k}"] = v
    return out


def main() -> None:
    path = sys.argv[3]
    try:
        run(*sys.argv[1:4], sys.argv[4:])
    except BaseException:
        rank = os.environ.get("RANK", "0")
        with open(f"{path}.rank{rank}.error", "w") as f:
            f.write(traceback.format_exc())
        raise


def run(mode: str, model: str, path: str, pairs: list[str]) -> None:
    overrides = {}
    for kv in pairs:
        key, value = kv.split("=", 1)
        overrides[key] = json.loads(value)
    cfg = make_cfg(model, path + ".run", **overrides)
    setup_torch(cfg)
    # a short collective timeout: ranks that disagree on their collectives fail in minutes
    # (each raising, and reported) instead of hanging for the default 30
    dist = init_distributed(cfg.distributed.backend,
                            timeout_s=int(os.environ.get("FSDP_WORKER_TIMEOUT_S", "120")))
    ctx = build_context(cfg, dist)
    ctx.plan = build_update_plan(cfg.algo)
    out: dict = {"world_size": dist.world_size}
    if mode == "update":
        run_update(ctx, out, path)
    elif mode == "step":
        out["metrics"] = train_step(ctx)
    elif mode == "validate":  # held-out shares of unequal size (or none) per rank
        from archer.trainer.validation import validate

        out["metrics"] = validate(ctx)
    elif mode == "ckpt":
        out["metrics"] = train_step(ctx)
        save(ctx, out["metrics"])
        fresh = build_context(cfg, dist)
        out["resumed"] = resume(fresh)
        out["step"] = fresh.state.step
        (m1, o1), (m2, o2) = full_state_dicts(ctx.model, ctx.optimizer), full_state_dicts(
            fresh.model, fresh.optimizer)
        # (the gathered dicts are complete on rank 0 only; rank 0 saves the result)
        out["model_equal"] = bool(m1) and m1.keys() == m2.keys() and all(
            torch.equal(m1[k], m2[k]) for k in m1)
        flat1, flat2 = _tensors(o1.get("state", {})), _tensors(o2.get("state", {}))
        out["optim_equal"] = bool(flat1) and flat1.keys() == flat2.keys() and all(
            torch.equal(flat1[k], flat2[k]) for k in flat1)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    out["params"] = {k: full_tensor(p.detach()).clone() for k, p in ctx.model.named_parameters()}
    save_stage(dist, out, path, "done")
    # every rank is leaving here: wait for the others first, or a rank that tears its gloo
    # connections down early makes gloo abort one still closing (SIGABRT after 'done': seen
    # once in CI in the ckpt mode, where rank 0 writes the stage file while rank 1 leaves)
    shutdown(dist, barrier=True)
    # The result is saved and every rank has left the group. What is left is the interpreter's
    # own teardown, where a gloo worker thread still being destroyed has aborted a rank
    # ("terminate called without an active exception", SIGABRT after 'done'; seen in CI in the
    # update and ckpt modes, both after destroy_process_group): skip it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
