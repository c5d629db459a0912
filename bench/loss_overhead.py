"""Benchmark: the cost of Archer's loss over a plain GRPO loss, and chunked vs naive entropy.

1. Forward + backward time of the Archer loss (entropy split + per-class clipped loss +
   per-class KL) against a plain GRPO loss (PPO-clip + k3 KL to the reference, token-mean, as
   DeepSeekMath/verl's GRPO recipe) on the same inputs: per-token log-probs, old/ref
   log-probs and entropies, B=64, T=4096. Both are timed interleaved, median of repeats.
   Target: ratio <= 1.05. Computing entropies from logits is part of the trainer benchmark.
2. Peak extra memory of chunked against naive entropy at T=8192, V=32000, each measured in a
   fresh subprocess from the peak resident set size (VmHWM, reset via /proc/self/clear_refs).
   Target: chunked at least 8x below naive.

Run: ``.venv/bin/python bench/loss_overhead.py [--threads 1] [--repeats 30]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch


def grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, eps_low=0.2,
              eps_high=0.28, kl_coef=0.001, c=10.0):
    """Plain GRPO: PPO-clip (+ dual clip) + k3 KL, token-mean over all valid tokens."""
    adv = advantages[:, None]
    ratio = torch.exp(torch.clamp(logprobs - old_logprobs, -20, 20))
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    clipped = torch.maximum(pg1, pg2)
    pg = torch.where(adv < 0, torch.minimum(-adv * c, clipped), clipped)
    d = torch.clamp(ref_logprobs - logprobs, -20, 20)
    kl = torch.clamp(torch.exp(d) - d - 1, -10, 10)
    n = mask.sum()
    return ((pg + kl_coef * kl) * mask).sum() / n


def archer_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, entropy, cfg,
                with_metrics):
    from archer.algos import LossInputs, dual_token_clip_loss, split_by_entropy

    split = split_by_entropy(entropy, mask, cfg.entropy_quantile, cfg.entropy_scope)
    inp = LossInputs(logprobs, old_logprobs, advantages, mask, split.high_entropy_mask,
                     ref_logprobs, entropy)
    return dual_token_clip_loss(inp, cfg, with_metrics=with_metrics).loss


def make_inputs(B, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(T // 4, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    old = -torch.rand(B, T, generator=g) * 3
    base = (old + 0.05 * torch.randn(B, T, generator=g))
    ref = old + 0.05 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, generator=g)
    entropy = torch.rand(B, T, generator=g) * 2
    return base, old, ref, adv, mask, entropy


def time_losses(B, T, repeats, with_metrics):
    from archer.config import AlgoConfig

    cfg = AlgoConfig()  # Archer's reference recipe
    base, old, ref, adv, mask, entropy = make_inputs(B, T)
    maskf = mask.float()

    def run_grpo():
        lp = base.clone().requires_grad_(True)
        grpo_loss(lp, old, ref, adv, maskf).backward()

    def run_archer():
        lp = base.clone().requires_grad_(True)
        archer_loss(lp, old, ref, adv, mask, entropy, cfg, with_metrics).backward()

    for _ in range(3):
        run_grpo()
        run_archer()
    tg, ta = [], []
    for _ in range(repeats):  # interleaved so machine noise hits both alike
        t0 = time.perf_counter()
        run_grpo()
        t1 = time.perf_counter()
        run_archer()
        t2 = time.perf_counter()
        tg.append(t1 - t0)
        ta.append(t2 - t1)
    return statistics.median(tg), statistics.median(ta)


MEM_CHILD = r"""
import sys, torch
from archer.algos.entropy import token_entropy, entropy_naive
mode, T, V = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(int(sys.argv[4]))
logits = torch.randn(T, V)
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM'):
            return int(line.split()[1]) * 1024
    raise RuntimeError('no VmHWM')
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) * 1024
token_entropy(logits[:8], chunk_size=8)  # warm up allocator and kernels
entropy_naive(logits[:8])
open('/proc/self/clear_refs', 'w').write('5')  # reset the peak RSS to the current RSS
before = rss()
out = token_entropy(logits) if mode == 'chunked' else entropy_naive(logits)
print(hwm() - before)
"""


def peak_memory(mode, T, V, threads):
    res = subprocess.run([sys.executable, "-c", MEM_CHILD, mode, str(T), str(V), str(threads)],
                         capture_output=True, text=True, check=True)
    return int(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (reported)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--B", type=int, default=64)
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--mem-T", type=int, default=8192)
    ap.add_argument("--mem-V", type=int, default=32000)
    ap.add_argument("--json", action="store_true", help="also print a JSON line")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads={args.threads}, B={args.B}, T={args.T}")
    results = {}
    for with_metrics in (False, True):
        tg, ta = time_losses(args.B, args.T, args.repeats, with_metrics)
        tag = "with_diagnostics" if with_metrics else "loss_only"
        results[tag] = {"grpo_ms": tg * 1e3, "archer_ms": ta * 1e3, "ratio": ta / tg}
        print(f"[{tag:16s}] GRPO fwd+bwd {tg*1e3:8.2f} ms | Archer fwd+bwd {ta*1e3:8.2f} ms | "
              f"ratio Archer/GRPO = {ta/tg:.3f} (target <= 1.05)")
    naive = peak_memory("naive", args.mem_T, args.mem_V, args.threads)
    chunked = peak_memory("chunked", args.mem_T, args.mem_V, args.threads)
    results["entropy_memory"] = {"naive_mb": naive / 2**20, "chunked_mb": chunked / 2**20,
                                 "ratio": naive / max(chunked, 1)}
    print(f"[entropy memory  ] T={args.mem_T} V={args.mem_V}: naive peak +{naive/2**20:.1f} MiB"
          f" | chunked peak +{chunked/2**20:.1f} MiB | naive/chunked = "
          f"{naive/max(chunked, 1):.1f}x (target >= 8x)")
    if args.json:
        print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
