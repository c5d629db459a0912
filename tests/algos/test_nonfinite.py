"""Non-finite inputs are reported, never clamped or averaged away."""

import math

import pytest
import torch

from archer.algos import LossInputs, NonFiniteLogprobError, dual_token_clip_loss, token_entropy
from archer.config import AlgoConfig


def _inputs(lp):
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    return LossInputs(lp, torch.full((1, 3), -1.0), torch.tensor([1.0]), mask,
                      torch.zeros(1, 3, dtype=torch.bool), torch.full((1, 3), -1.0))


@pytest.mark.parametrize("bad", [float("-inf"), float("nan")])
def test_nonfinite_logprob_on_valid_token_raises(bad):
    lp = torch.tensor([[-1.0, bad, -1.0]])
    with pytest.raises(NonFiniteLogprobError, match="logprobs: 1 valid"):
        dual_token_clip_loss(_inputs(lp), AlgoConfig())


def test_nonfinite_logprob_on_padding_is_ignored():
    lp = torch.tensor([[-1.0, -1.0, float("nan")]], requires_grad=True)
    out = dual_token_clip_loss(_inputs(lp), AlgoConfig())
    out.loss.backward()
    # ratio = 1 on both valid tokens, A = 1, seq-mean-token-mean over 2 tokens -> -1
    assert out.loss.item() == pytest.approx(-1.0)
    assert torch.isfinite(lp.grad).all() and lp.grad[0, 2] == 0


def test_minus_inf_logit_is_a_zero_probability_token():
    # logits [0, 0, -inf]: two equally likely tokens -> entropy log 2; NaN logits stay NaN.
    logits = torch.tensor([[[0.0, 0.0, float("-inf")], [float("nan"), 0.0, 0.0]]])
    h = token_entropy(logits)
    assert h[0, 0].item() == pytest.approx(math.log(2), abs=1e-6)
    assert math.isnan(h[0, 1].item())
