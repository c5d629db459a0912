"""Benchmark: differentiable token log-probs, plain-autograd chunks vs ChunkedTokenLogprob.

For each (T, V): logits of shape (1, T+1, V) requiring grad, sliced ``[:, :-1]`` as the
trainer passes them, and random labels. Two implementations of the same
``log_softmax(logits / temperature)[label]``, chunked over positions:

- old: the chunked formula through plain autograd (``token_logprobs`` before this change),
  which saves every chunk's float32 ``z`` for the backward of ``logsumexp``;
- new: ``archer.algos.entropy.token_logprobs`` (``ChunkedTokenLogprob``), which saves the
  logits, the labels and one logsumexp per position and recomputes the softmax per chunk.

Printed per size: the bytes autograd keeps for the backward apart from the logits' own
storage (distinct storages seen by a ``saved_tensors_hooks`` pack hook; the logits are kept
anyway by the lm_head matmul), and the median time of forward + backward (gradient w.r.t.
the logits), old and new interleaved in one process, with the ratios.

Run: ``.venv/bin/python bench/logprob_memory.py [--threads 2] [--repeats 5]
[--sizes 1024x32000,2048x32000,1024x151936] [--dtype float32|bfloat16]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from archer.algos.entropy import token_logprobs


def old_chunked(logits, labels, temperature=1.0, chunk_size=1024):
    flat = logits.reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1)
    pieces = []
    for start in range(0, flat.shape[0], chunk_size):
        z = flat[start : start + chunk_size].float() / temperature
        picked = z.gather(-1, flat_labels[start : start + chunk_size, None]).squeeze(-1)
        pieces.append(picked - torch.logsumexp(z, dim=-1))
    return torch.cat(pieces).reshape(labels.shape)


def saved_bytes(fn, logits: torch.Tensor) -> tuple[int, torch.Tensor]:
    own = logits.untyped_storage().data_ptr()
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr != own:
            seen[ptr] = max(seen.get(ptr, 0), t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def fwd_bwd(fn, logits) -> float:
    start = time.perf_counter()
    out = fn()
    torch.autograd.grad(out.sum(), logits)
    return time.perf_counter() - start


def bench_size(t: int, v: int, dtype: torch.dtype, repeats: int, temperature: float,
               chunk_size: int) -> dict:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, t + 1, v, generator=g).to(dtype).requires_grad_(True)
    labels = torch.randint(0, v, (1, t), generator=g)
    impls = {
        "old": lambda: old_chunked(logits[:, :-1], labels, temperature, chunk_size),
        "new": lambda: token_logprobs(logits[:, :-1], labels, temperature, chunk_size),
    }
    result = {}
    outs = {}
    for name, fn in impls.items():
        result[f"{name}_saved"], outs[name] = saved_bytes(fn, logits)
    diff = float((outs["old"] - outs["new"]).detach().abs().max())
    del outs
    times = {name: [] for name in impls}
    for fn in impls.values():  # warm-up
        fwd_bwd(fn, logits)
    for _ in range(repeats):
        for name, fn in impls.items():
            times[name].append(fwd_bwd(fn, logits))
    for name in impls:
        result[f"{name}_s"] = statistics.median(times[name])
    result["max_abs_diff"] = diff
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024x32000,2048x32000,1024x151936",
                    help="comma-separated TxV")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--chunk-size", type=int, default=1024)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {args.threads} threads, logits {args.dtype}, "
          f"temperature {args.temperature}, chunk {args.chunk_size}, "
          f"median of {args.repeats} interleaved fwd+bwd")
    header = (f"{'T':>6} {'V':>7} {'TxVx4 MiB':>10} {'old saved MiB':>14} "
              f"{'new saved KiB':>14} {'saved ratio':>12} {'old s':>7} {'new s':>7} "
              f"{'time new/old':>13} {'max|diff|':>10}")
    print(header)
    for size in args.sizes.split(","):
        t, v = (int(x) for x in size.lower().split("x"))
        r = bench_size(t, v, dtype, args.repeats, args.temperature, args.chunk_size)
        print(f"{t:>6} {v:>7} {t * v * 4 / 2**20:>10.1f} {r['old_saved'] / 2**20:>14.1f} "
              f"{r['new_saved'] / 2**10:>14.1f} {r['old_saved'] / r['new_saved']:>11.0f}x "
              f"{r['old_s']:>7.3f} {r['new_s']:>7.3f} {r['new_s'] / r['old_s']:>13.2f} "
              f"{r['max_abs_diff']:>10.2e}", flush=True)


if __name__ == "__main__":
    main()
