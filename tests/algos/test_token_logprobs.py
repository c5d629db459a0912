"""Differentiable chunked token log-probs (archer/algos/entropy.py: ChunkedTokenLogprob).

The reference everywhere is the naive ``log_softmax(logits / temperature).gather(label)``
through plain autograd; the memory test measures what autograd keeps for the backward.
"""

from __future__ import annotations

import pytest
import torch

from archer.algos.entropy import token_logprobs


def naive(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    z = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32))
                          / temperature, dim=-1)
    return z.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def old_chunked(logits, labels, temperature=1.0, chunk_size=1024):
    """The chunked formula through plain autograd (token_logprobs before ChunkedTokenLogprob):
    the baseline whose saved float32 chunks add up to the full (T, V) logits."""
    flat = logits.reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1)
    pieces = []
    for start in range(0, flat.shape[0], chunk_size):
        z = flat[start : start + chunk_size].float() / temperature
        picked = z.gather(-1, flat_labels[start : start + chunk_size, None]).squeeze(-1)
        pieces.append(picked - torch.logsumexp(z, dim=-1))
    return torch.cat(pieces).reshape(labels.shape)


def case(shape, seed=0, dtype=torch.float32, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    labels = torch.randint(0, shape[-1], shape[:-1], generator=g)
    return logits, labels


# ---------------------------------------------------------------------------------------
# float64 gradcheck (finite differences against the analytic backward)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "chunk_size", "temperature"), [
    ((2, 10, 23), 3, 0.6),   # 3 does not divide T=10: a short last chunk
    ((2, 10, 23), 64, 1.0),  # one chunk holding several whole rows
    ((13, 7), 4, 1.7),       # (T, V) without a batch dim
    ((2, 2, 5, 9), 2, 0.9),  # two leading dims
])
def test_gradcheck_float64(shape, chunk_size, temperature):
    logits, labels = case(shape, seed=chunk_size, dtype=torch.float64)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: token_logprobs(x, labels, temperature, chunk_size), (logits,))


def test_gradcheck_float64_non_contiguous_views():
    g = torch.Generator().manual_seed(5)
    # the trainer's logits[:, :-1]: leading dims still merge, no copy
    full = torch.randn(3, 8, 11, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    assert torch.autograd.gradcheck(
        lambda x: token_logprobs(x[:, :-1], labels, 0.8, 5), (full,))
    # permuted leading dims that cannot merge, and a transposed (T, V)
    base = torch.randn(4, 3, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    labels4 = torch.randint(0, 7, (3, 4, 6), generator=g)
    assert torch.autograd.gradcheck(
        lambda x: token_logprobs(x.transpose(0, 1), labels4, 1.3, 4), (base,))
    vt = torch.randn(9, 6, generator=g, dtype=torch.float64, requires_grad=True)  # (V, T)
    labels2 = torch.randint(0, 9, (6,), generator=g)
    assert torch.autograd.gradcheck(lambda x: token_logprobs(x.t(), labels2, 1.0, 4), (vt,))


# ---------------------------------------------------------------------------------------
# fp32 / bf16 / fp16 against the naive formula
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_fp32_values_and_gradients_equal_naive(chunk_size, temperature):
    full, labels = case((3, 17, 50), seed=chunk_size)
    full.requires_grad_(True)
    labels = labels[:, :-1]
    weights = torch.randn(labels.shape, generator=torch.Generator().manual_seed(9))
    got = token_logprobs(full[:, :-1], labels, temperature, chunk_size)  # non-contiguous
    assert type(got.grad_fn).__name__ == "ChunkedTokenLogprobBackward"
    want = naive(full[:, :-1], labels, temperature)
    assert got.dtype == torch.float32 and got.shape == (3, 16)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    (g1,) = torch.autograd.grad((got * weights).sum(), full)
    (g2,) = torch.autograd.grad((want * weights).sum(), full)
    torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-5)
    assert g1[:, -1].abs().max() == 0  # the cut-off last position gets no gradient


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_logits(dtype):
    # Both sides compute in float32 from the same rounded logits: values agree to float32
    # noise; gradients are float32 results rounded to the logits' dtype, so equal to within
    # one rounding of that dtype (rtol 1e-2, atol 1e-5).
    logits, labels = case((2, 40, 300), seed=3, dtype=dtype)
    logits.requires_grad_(True)
    got = token_logprobs(logits, labels, temperature=0.7, chunk_size=13)
    want = naive(logits, labels, temperature=0.7)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-6)
    (g1,) = torch.autograd.grad(got.sum(), logits)
    (g2,) = torch.autograd.grad(want.sum(), logits)
    assert g1.dtype == dtype and g1.shape == logits.shape
    torch.testing.assert_close(g1.float(), g2.float(), atol=1e-5, rtol=1e-2)


def test_probability_zero_tokens_give_finite_gradients():
    logits, labels = case((1, 6, 12), seed=4)
    logits[0, 2, :5] = float("-inf")
    labels[0, 2] = 7  # a finite label at that position
    logits.requires_grad_(True)
    got = token_logprobs(logits, labels, 0.9, 4)
    want = naive(logits, labels, 0.9)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    (g1,) = torch.autograd.grad(got.sum(), logits)
    (g2,) = torch.autograd.grad(want.sum(), logits)
    assert torch.isfinite(g1).all() and (g1[0, 2, :5] == 0).all()
    torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-5)


def test_no_grad_path_matches_and_records_nothing():
    logits, labels = case((2, 9, 31), seed=6)
    plain = token_logprobs(logits, labels, 0.7, 4)  # logits do not require grad
    assert plain.grad_fn is None
    with torch.no_grad():
        under = token_logprobs(logits.requires_grad_(True), labels, 0.7, 4)
    assert under.grad_fn is None
    tracked = token_logprobs(logits, labels, 0.7, 4)
    assert tracked.grad_fn is not None
    # the same forward computation in both paths, and the same as the previous formula
    assert torch.equal(plain, tracked.detach()) and torch.equal(plain, under)
    assert torch.equal(plain, old_chunked(logits.detach(), labels, 0.7, 4))


def test_empty_sequence_backward():
    logits = torch.zeros(2, 0, 5, requires_grad=True)
    out = token_logprobs(logits, torch.zeros(2, 0, dtype=torch.long))
    assert out.shape == (2, 0)
    out.sum().backward()
    assert logits.grad.shape == (2, 0, 5)


@pytest.mark.parametrize("bad", [{"temperature": 0.0}, {"chunk_size": 0}])
def test_bad_arguments_raise(bad):
    with pytest.raises(ValueError):
        token_logprobs(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), **bad)


def test_mismatched_labels_raise():
    with pytest.raises(ValueError, match="do not match"):
        token_logprobs(torch.zeros(1, 2, 3), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels on meta"):
        token_logprobs(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long, device="meta"))


# ---------------------------------------------------------------------------------------
# Memory: what autograd keeps for the backward
# ---------------------------------------------------------------------------------------


def saved_bytes(fn, logits: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Run ``fn()`` and return (bytes of the distinct storages autograd saved for the
    backward, other than the logits' own storage; fn's output)."""
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


def test_saved_memory_is_o_of_t_not_t_times_v():
    t, v = 2048, 32_000
    full_fp32 = t * v * 4  # one float32 copy of the (T, V) logits: 262 MB
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, t + 1, v, generator=g).requires_grad_(True)
    labels = torch.randint(0, v, (1, t), generator=g)
    view = logits[:, :-1]  # as the trainer passes them
    old, old_out = saved_bytes(lambda: old_chunked(view, labels, 0.7, 1024), logits)
    new, new_out = saved_bytes(lambda: token_logprobs(view, labels, 0.7, 1024), logits)
    assert old >= full_fp32, old
    assert new < 0.05 * full_fp32, new
    assert new <= t * (8 + 4)  # the labels (int64) and one logsumexp (float32) per position
    torch.testing.assert_close(new_out, old_out, atol=1e-5, rtol=0)
    del old_out
    (grad,) = torch.autograd.grad(new_out[0, ::97].sum(), logits)
    p = torch.softmax(logits[0, 0].detach() / 0.7, dim=-1)
    expect = -p / 0.7
    expect[labels[0, 0]] += 1 / 0.7
    torch.testing.assert_close(grad[0, 0], expect, atol=1e-6, rtol=1e-5)
    assert grad[0, 1].abs().max() == 0 and grad[0, -1].abs().max() == 0

