"""Benchmark: the trainer's passes on one device, the choices they depend on, and (on a GPU)
what cuDNN attention costs when shapes change.

Every measurement is a ratio against a baseline timed in the same run:

1. The reference pass (no-grad log-probs, :func:`archer.trainer.forward_tokens_batched`,
   entropy off) over one synthetic rollout batch: P=8 prompts of 79-87 tokens x G=8
   responses of R/3..R tokens (R = 32 tiny, 128 larger), fp32 and bf16 weights, three ways:
   prompt-cached with this device's chunk cost model (``chunk_overhead``, the trainer's
   default), prompt-cached with the CPU's chunk cost model, and the full padded pass
   (``prompt_cache=false``). Median over repeats of the same batch.
2. The update's forward + backward (fp32, entropy on), prompt-shared against the full pass.
3. On CUDA only, cuDNN attention on against off (``archer.models.avoid_cudnn_attention``):
   the bf16 reference pass over shapes not seen before (each call a new batch with a new
   response width; median and max) and HF ``generate`` of 32 bf16 tokens for 64 rows whose
   prompt length is new each call (median, and the first call).

Models: tiny char-level Llamas built locally (``archer.models.build_tiny_model``; ``tiny``:
hidden 128 x 2 layers, ``big``: hidden 1024 x 8 layers); no downloads.

Run: ``.venv/bin/python bench/gpu_passes.py --device cuda [--size tiny|big|both]``
(``--device cpu`` runs parts 1-2 on the CPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

SIZES = {"tiny": (128, 2, 32), "big": (1024, 8, 128)}  # hidden, layers, max response tokens


def make_batch(rmax: int, device: str, seed: int = 0, groups: int = 8, group_size: int = 8,
               prompt_len: int = 87):
    """A rollout batch of random tokens: ``groups`` left-padded prompts (prompt_len-8 ..
    prompt_len tokens) x ``group_size`` right-padded responses (rmax/3 .. rmax tokens)."""
    from archer.types import RolloutBatch

    gen = torch.Generator().manual_seed(seed)
    n = groups * group_size
    plen = torch.randint(prompt_len - 8, prompt_len + 1, (groups,), generator=gen)
    pmask = (torch.arange(prompt_len)[None] >= prompt_len - plen[:, None]).long()
    prompt = torch.randint(5, 60, (groups, prompt_len), generator=gen) * pmask
    lengths = torch.randint(max(2, rmax // 3), rmax + 1, (n,), generator=gen)
    rmask = (torch.arange(rmax)[None] < lengths[:, None]).long()
    resp = torch.randint(5, 60, (n, rmax), generator=gen) * rmask
    rep = lambda t: t.repeat_interleave(group_size, 0)  # noqa: E731
    return RolloutBatch(
        rep(prompt), rep(pmask), resp, rmask, lengths, torch.zeros(n, dtype=torch.bool),
        torch.zeros(n, rmax), torch.arange(groups).repeat_interleave(group_size),
        [""] * n).to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def once(fn, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def median_time(fn, device: str, repeats: int) -> float:
    fn()
    fn()  # warm-up: allocator, kernels, graphs for this shape
    return statistics.median(once(fn, device) for _ in range(repeats))


def ref_pass(model, batch, prompt_cache: bool):
    from archer.trainer import forward_tokens_batched

    return forward_tokens_batched(model, batch, 1.0, batch.num_samples, entropy=False,
                                  prompt_cache=prompt_cache)


def cpu_chunk_model(fn):
    """``fn`` run with the CPU's per-chunk overhead on every device (the pre-GPU default)."""
    import archer.trainer.logprobs as T  # forward_tokens_prompt_cached looks it up there

    def run():
        own = T.chunk_overhead
        T.chunk_overhead = lambda device: own(torch.device("cpu"))
        try:
            return fn()
        finally:
            T.chunk_overhead = own
    return run


def measure(size: str, device: str, repeats: int) -> dict:
    from archer.models import build_tiny_model, load_policy_and_ref
    from archer.trainer import score_tokens

    hidden, layers, rmax = SIZES[size]
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model(Path(tmp) / "m", hidden=hidden, layers=layers,
                                heads=max(4, hidden // 64))
        policy, ref32, _ = load_policy_and_ref(path, device=device)
    ref16 = copy.deepcopy(ref32).to(torch.bfloat16)
    batch = make_batch(rmax, device)
    out: dict = {}
    for name, ref in (("fp32", ref32), ("bf16", ref16)):
        cached, full = partial(ref_pass, ref, batch, True), partial(ref_pass, ref, batch, False)
        out[f"ref_{name}_cached_ms"] = 1e3 * median_time(cached, device, repeats)
        out[f"ref_{name}_cached_cpu_chunks_ms"] = 1e3 * median_time(
            cpu_chunk_model(cached), device, repeats)
        out[f"ref_{name}_full_ms"] = 1e3 * median_time(full, device, repeats)
    def update(shared: bool) -> None:
        lp, _ = score_tokens(policy, batch, 1.0, entropy=True, prompt_cache=shared)
        (lp * batch.response_mask).sum().backward()
        policy.zero_grad(set_to_none=True)

    for shared in (True, False):
        out[f"update_{'cached' if shared else 'full'}_ms"] = 1e3 * median_time(
            partial(update, shared), device, repeats)
    if device.startswith("cuda"):
        out |= cudnn_attention(ref16, rmax, device)
    return out


def cudnn_attention(ref16, rmax: int, device: str) -> dict:
    """bf16 passes over shapes not seen before, cuDNN attention on and off (restored after)."""
    before = torch.backends.cuda.cudnn_sdp_enabled()
    out, seed = {}, 100
    try:
        for on in (False, True):
            torch.backends.cuda.enable_cudnn_sdp(on)
            tag = "on" if on else "off"
            for shared in (True, False):
                times = []
                for k in range(6):  # a new response width (and new prompts) every call
                    seed += 1
                    fresh = make_batch(rmax - 2 * k - (0 if on else 1), device, seed=seed)
                    times.append(once(partial(ref_pass, ref16, fresh, shared), device))
                key = f"fresh_ref_bf16_{'cached' if shared else 'full'}_cudnn_{tag}"
                out[f"{key}_median_ms"] = 1e3 * statistics.median(times)
                out[f"{key}_max_ms"] = 1e3 * max(times)
            times = []
            for k in range(4):  # a new prompt length every call
                ids = torch.randint(5, 60, (64, 40 + 3 * k + (0 if on else 1)), device=device)
                times.append(once(partial(
                    ref16.generate, input_ids=ids, attention_mask=torch.ones_like(ids),
                    do_sample=True, max_new_tokens=32, min_new_tokens=32, pad_token_id=0),
                    device))
            out[f"generate_bf16_cudnn_{tag}_median_ms"] = 1e3 * statistics.median(times)
            out[f"generate_bf16_cudnn_{tag}_first_ms"] = 1e3 * times[0]
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
    return out


def report(size: str, r: dict) -> None:
    print(f"== {size}: hidden {SIZES[size][0]} x {SIZES[size][1]} layers, R={SIZES[size][2]}, "
          "64 rows (8 prompts x 8)")
    for dt in ("fp32", "bf16"):
        c, cc, f = (r[f"ref_{dt}_cached_ms"], r[f"ref_{dt}_cached_cpu_chunks_ms"],
                    r[f"ref_{dt}_full_ms"])
        print(f"reference pass {dt}: prompt-cached {c:8.2f} ms | with the CPU's chunk model "
              f"{cc:8.2f} ms (ratio {cc / c:.2f}) | full pass {f:8.2f} ms (full / cached "
              f"{f / c:.2f})")
    c, f = r["update_cached_ms"], r["update_full_ms"]
    print(f"update fwd+bwd fp32: prompt-shared {c:8.2f} ms | full {f:8.2f} ms (full / shared "
          f"{f / c:.2f})")
    if "generate_bf16_cudnn_on_median_ms" not in r:
        return
    for way in ("cached", "full"):
        on, off = (r[f"fresh_ref_bf16_{way}_cudnn_on_median_ms"],
                   r[f"fresh_ref_bf16_{way}_cudnn_off_median_ms"])
        print(f"bf16 reference pass ({way}), new shapes: cuDNN attention on {on:8.2f} ms "
              f"(max {r[f'fresh_ref_bf16_{way}_cudnn_on_max_ms']:.1f}) | off {off:8.2f} ms "
              f"(max {r[f'fresh_ref_bf16_{way}_cudnn_off_max_ms']:.1f}); on / off "
              f"{on / off:.2f}")
    on, off = r["generate_bf16_cudnn_on_median_ms"], r["generate_bf16_cudnn_off_median_ms"]
    print(f"HF generate 32 bf16 tokens x 64 rows, new prompt lengths: cuDNN on {on:8.1f} ms "
          f"(first {r['generate_bf16_cudnn_on_first_ms']:.1f}) | off {off:8.1f} ms (first "
          f"{r['generate_bf16_cudnn_off_first_ms']:.1f}); on / off {on / off:.2f}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    ap.add_argument("--size", choices=("tiny", "big", "both"), default="both")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no CUDA GPU")
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"torch {torch.__version__}, device {args.device} ({where}), median of "
          f"{args.repeats} repeats after 2 warm-ups")
    sizes = ("tiny", "big") if args.size == "both" else (args.size,)
    results = {}
    for size in sizes:
        results[size] = measure(size, args.device, args.repeats)
        report(size, results[size])
    if args.json:
        print(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
