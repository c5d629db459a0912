"""Token entropy and token log-probs (archer/algos/entropy.py),
step 1 of the method (docs/method.md, section 2)."""

from __future__ import annotations

import math

import pytest
import torch

from archer.algos.entropy import entropy_naive, token_entropy, token_logprobs


def test_uniform_logits_give_log_vocab():
    # All logits equal over V = 7 -> p = 1/7 everywhere -> H = log 7 = 1.9459101.
    logits = torch.zeros(2, 5, 7)
    h = token_entropy(logits, chunk_size=3)
    assert h.shape == (2, 5)
    torch.testing.assert_close(h, torch.full((2, 5), math.log(7)), atol=1e-5, rtol=0)


def test_shifted_uniform_logits_still_log_vocab():
    # Adding a constant to every logit does not change the distribution: H = log 11.
    logits = torch.full((1, 3, 11), 123.0)
    torch.testing.assert_close(token_entropy(logits), torch.full((1, 3), math.log(11)),
                               atol=1e-5, rtol=0)


def test_one_hot_ish_logits_hand_value():
    # z = [10, 0, 0, 0]: H = lse - sum p z = log(e^10 + 3) - 10 p0
    #   = log(1 + 3e^-10) + 10 * 3e^-10 / (1 + 3e^-10) = 1.36190e-4 + 1.36181e-3 = 1.498003e-3.
    logits = torch.tensor([[10.0, 0.0, 0.0, 0.0]])
    expected = 0.001498002929248921
    assert token_entropy(logits).item() == pytest.approx(expected, abs=1e-5)
    assert entropy_naive(logits).item() == pytest.approx(expected, abs=1e-5)


def test_two_point_distribution_hand_value():
    # z = [0, log 3] -> p = [1/4, 3/4] -> H = 0.25 log 4 + 0.75 log(4/3) = 0.5623351.
    logits = torch.tensor([[0.0, math.log(3.0)]])
    assert token_entropy(logits).item() == pytest.approx(0.5623351446188083, abs=1e-6)


def test_temperature_divides_logits():
    # z = [0, 2 log 3] at temperature 2 -> z/T = [0, log 3] -> the 1/4, 3/4 case: 0.5623351.
    logits = torch.tensor([[0.0, 2 * math.log(3.0)]])
    assert token_entropy(logits, temperature=2.0).item() == pytest.approx(0.5623351446, abs=1e-6)
    # At temperature 1 the same logits give p = [1/10, 9/10]:
    # H = 0.1 log 10 + 0.9 log(10/9) = 0.2302585 + 0.0948245 = 0.3250830.
    assert token_entropy(logits, temperature=1.0).item() == pytest.approx(0.3250830, abs=1e-6)
    # Very high temperature -> nearly uniform -> H -> log 2.
    assert token_entropy(logits, temperature=1e6).item() == pytest.approx(math.log(2), abs=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 7, 13, 26, 1000])
def test_chunked_matches_naive_for_any_chunk_size(chunk_size):
    # 2 x 13 = 26 positions: chunks 4, 5, 7 do not divide 26; 1000 > 26.
    g = torch.Generator().manual_seed(chunk_size)
    logits = torch.randn(2, 13, 50, generator=g) * 3.0
    for temperature in (1.0, 0.7):
        torch.testing.assert_close(
            token_entropy(logits, temperature=temperature, chunk_size=chunk_size),
            entropy_naive(logits, temperature=temperature),
            atol=1e-5, rtol=0,
        )


def test_entropy_bounds_and_no_graph():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 9, 17, generator=g) * 4).requires_grad_(True)
    h = token_entropy(logits, chunk_size=4)
    assert h.dtype == torch.float32
    assert not h.requires_grad  # computed under no_grad: used only to split tokens
    assert (h >= -1e-6).all() and (h <= math.log(17) + 1e-5).all()


def test_bf16_logits_give_float32_entropy():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 32, generator=g).to(torch.bfloat16)
    h = token_entropy(logits, chunk_size=3)
    assert h.dtype == torch.float32
    torch.testing.assert_close(h, entropy_naive(logits.float()), atol=1e-5, rtol=0)


def test_nan_logits_give_nan_entropy_not_dropped():
    logits = torch.zeros(1, 4, 6)
    logits[0, 2, 3] = float("nan")
    h = token_entropy(logits, chunk_size=3)
    assert torch.isnan(h[0, 2])
    # The other positions are unaffected (uniform over 6 -> log 6).
    keep = torch.tensor([0, 1, 3])
    torch.testing.assert_close(h[0, keep], torch.full((3,), math.log(6)), atol=1e-5, rtol=0)


def test_empty_sequence():
    assert token_entropy(torch.zeros(2, 0, 5)).shape == (2, 0)


@pytest.mark.parametrize("bad", [{"temperature": 0.0}, {"temperature": -1.0}, {"chunk_size": 0}])
def test_bad_arguments_raise(bad):
    with pytest.raises(ValueError):
        token_entropy(torch.zeros(1, 2, 3), **bad)


@pytest.mark.parametrize("chunk_size", [1, 3, 10, 64])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_token_logprobs_equals_log_softmax_gather(chunk_size, temperature):
    g = torch.Generator().manual_seed(chunk_size)
    logits = (torch.randn(2, 10, 23, generator=g) * 2).requires_grad_(True)
    labels = torch.randint(0, 23, (2, 10), generator=g)
    got = token_logprobs(logits, labels, temperature=temperature, chunk_size=chunk_size)
    want = torch.log_softmax(logits / temperature, dim=-1).gather(-1, labels[..., None])[..., 0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # Differentiable: the gradient matches the reference's too.
    (g1,) = torch.autograd.grad(got.sum(), logits)
    (g2,) = torch.autograd.grad(want.sum(), logits)
    torch.testing.assert_close(g1, g2, atol=1e-5, rtol=0)


def test_token_logprobs_hand_value():
    # z = [0, log 3] -> log p(label 1) = log 3/4 = -0.2876821; log p(label 0) = log 1/4.
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    lp = token_logprobs(logits, torch.tensor([[1, 0]]))
    torch.testing.assert_close(lp, torch.tensor([[math.log(0.75), math.log(0.25)]]),
                               atol=1e-6, rtol=0)


def test_token_logprobs_empty():
    out = token_logprobs(torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.long))
    assert out.shape == (1, 0)
