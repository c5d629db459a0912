"""Loss aggregation modes (archer/algos/aggregate.py) and KL estimators (archer/algos/kl.py)."""

from __future__ import annotations

import math

import pytest
import torch

from archer.algos.aggregate import AGGREGATIONS, aggregate
from archer.algos.kl import KL_ESTIMATORS, kl_penalty

MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]

# Row 0: 4 valid tokens, row 1: 2 valid tokens, row 2: fully masked. Masked entries hold 100
# so a mode that forgot the mask would be far off.
LOSS = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 100.0, 100.0], [100.0, 100.0, 100.0, 100.0]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize(
    ("mode", "norm_length", "expected"),
    [
        # 6 valid tokens: (1 + 2 + 3 + 4 + 5 + 6) / 6 = 21 / 6 = 3.5
        ("token-mean", None, 3.5),
        # Row means 10/4 = 2.5 and 11/2 = 5.5; the empty row is excluded: (2.5 + 5.5) / 2 = 4.0
        ("seq-mean-token-mean", None, 4.0),
        # Row sums 10 and 11; empty row excluded: (10 + 11) / 2 = 10.5
        ("seq-mean-token-sum", None, 10.5),
        # As above divided by the padded length T = 4: 10.5 / 4 = 2.625
        ("seq-mean-token-sum-norm", None, 2.625),
        # ... or by a constant norm_length = 7: 10.5 / 7 = 1.5
        ("seq-mean-token-sum-norm", 7, 1.5),
    ],
)
def test_aggregation_hand_values(mode, norm_length, expected):
    got = aggregate(LOSS, MASK, mode, norm_length=norm_length)
    assert got.shape == ()
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_bool_mask_equals_float_mask():
    for mode in MODES:
        a = aggregate(LOSS, MASK.bool(), mode)
        b = aggregate(LOSS, MASK.float(), mode)
        assert a.item() == pytest.approx(b.item(), abs=1e-7)


@pytest.mark.parametrize(
    ("mode", "grad_row0", "grad_row1"),
    [
        # d/dx of sum / 6 = 1/6 on every valid token
        ("token-mean", 1 / 6, 1 / 6),
        # 1/(n_i * 2 rows): row 0 1/8, row 1 1/4
        ("seq-mean-token-mean", 1 / 8, 1 / 4),
        # 1/2 on every valid token
        ("seq-mean-token-sum", 1 / 2, 1 / 2),
        # 1/(2 * T) = 1/8
        ("seq-mean-token-sum-norm", 1 / 8, 1 / 8),
    ],
)
def test_aggregation_gradients(mode, grad_row0, grad_row1):
    x = LOSS.clone().requires_grad_(True)
    aggregate(x, MASK, mode).backward()
    want = torch.zeros_like(LOSS)
    want[0] = grad_row0
    want[1, :2] = grad_row1
    torch.testing.assert_close(x.grad, want)


@pytest.mark.parametrize("mode", MODES)
def test_all_masked_input_gives_zero_with_graph(mode):
    x = torch.randn(3, 5).requires_grad_(True)
    out = aggregate(x, torch.zeros(3, 5), mode)
    assert out.item() == 0.0
    assert out.requires_grad  # still attached, so backward() works on an empty phase
    out.backward()
    assert torch.equal(x.grad, torch.zeros(3, 5))


def test_unknown_mode_lists_options():
    with pytest.raises(KeyError) as err:
        aggregate(LOSS, MASK, "token-sum")
    for mode in MODES:
        assert mode in str(err.value)
    assert sorted(AGGREGATIONS.names()) == sorted(MODES)


# --- KL estimators ------------------------------------------------------------------------

LOGP = torch.tensor([-1.0, -2.0, -0.5])
REF = torch.tensor([-1.5, -1.0, -0.5])


def test_k1_hand_values():
    # k1 = logp - logp_ref = [-1 + 1.5, -2 + 1, 0] = [0.5, -1.0, 0.0] (can be negative)
    torch.testing.assert_close(kl_penalty(LOGP, REF, "k1"), torch.tensor([0.5, -1.0, 0.0]))


def test_k2_hand_values():
    # k2 = 0.5 (logp - logp_ref)^2 = [0.5 * 0.25, 0.5 * 1, 0] = [0.125, 0.5, 0.0]
    torch.testing.assert_close(kl_penalty(LOGP, REF, "k2"), torch.tensor([0.125, 0.5, 0.0]))


def test_k3_hand_values():
    # d = logp_ref - logp = [-0.5, 1.0, 0.0]; k3 = e^d - d - 1
    #   = [0.6065307 + 0.5 - 1, 2.7182818 - 2, 0] = [0.1065307, 0.7182818, 0.0]
    want = torch.tensor([math.exp(-0.5) - 0.5, math.e - 2.0, 0.0])
    torch.testing.assert_close(kl_penalty(LOGP, REF, "k3"), want)
    torch.testing.assert_close(kl_penalty(LOGP, REF), want)  # k3 is the default


def test_k3_gradient_hand_value():
    # d k3 / d logp = -(e^d - 1) = 1 - e^d: d = -0.5 -> 0.3934693; d = 1 -> -1.7182818; d = 0 -> 0.
    logp = LOGP.clone().requires_grad_(True)
    kl_penalty(logp, REF, "k3").sum().backward()
    torch.testing.assert_close(
        logp.grad, torch.tensor([1 - math.exp(-0.5), 1 - math.e, 0.0])
    )


def test_k3_nonnegative_random():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(64, 50, generator=g) * 5
    ref = torch.randn(64, 50, generator=g) * 5
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    assert (kl_penalty(logp, ref, "k2") >= 0).all()


def test_k3_clamps():
    # d = 30 -> clamped to 20 -> e^20 - 21 = 4.85e8 -> clamped to 10.
    # d = -30 -> clamped to -20 -> e^-20 + 19 = 19.0 -> clamped to 10.
    # d = 2.5 -> e^2.5 - 3.5 = 8.6824940 (inside both clamps).
    # d = 3.0 -> e^3 - 4 = 16.0855 -> clamped to 10.
    logp = torch.zeros(4, requires_grad=True)
    ref = torch.tensor([30.0, -30.0, 2.5, 3.0])
    k3 = kl_penalty(logp, ref, "k3")
    torch.testing.assert_close(k3.detach(), torch.tensor([10.0, 10.0, math.exp(2.5) - 3.5, 10.0]))
    assert torch.isfinite(k3).all()
    # Clamped entries have zero gradient; the unclamped one has 1 - e^2.5 = -11.1824940.
    k3.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([0.0, 0.0, 1 - math.exp(2.5), 0.0]))


def test_k3_extreme_log_ratio_is_finite():
    # Without the d clamp, e^1000 = inf; with it the result is the clamped 10.
    out = kl_penalty(torch.tensor([-1000.0, 0.0]), torch.tensor([0.0, -1000.0]), "k3")
    torch.testing.assert_close(out, torch.tensor([10.0, 10.0]))


def test_unknown_estimator_lists_options():
    with pytest.raises(KeyError) as err:
        kl_penalty(LOGP, REF, "k4")
    for name in ("k1", "k2", "k3"):
        assert name in str(err.value)
    assert KL_ESTIMATORS.names() == ["k1", "k2", "k3"]
