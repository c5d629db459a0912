"""Token split by entropy (archer/algos/split.py), the method's steps 2-3
(docs/method.md, section 2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from archer.algos.split import (
    NonFiniteEntropyError,
    masked_quantile,
    split_by_entropy,
    split_change_fraction,
)

NAN = float("nan")


def _row(values):
    return torch.tensor([values], dtype=torch.float32)


def test_rho_08_linear_interpolation_hand_example():
    # Sorted [1,2,3,4,5], rho 0.8: pos = 0.8 * (5 - 1) = 3.2 -> tau = 4 + 0.2 * (5 - 4) = 4.2.
    # Only 5 > 4.2 is high-entropy. Order in the response does not matter.
    ent = _row([3.0, 5.0, 1.0, 4.0, 2.0])
    mask = torch.ones(1, 5, dtype=torch.bool)
    s = split_by_entropy(ent, mask, rho=0.8)
    assert s.threshold.item() == pytest.approx(4.2, abs=1e-6)
    assert s.high_entropy_mask.tolist() == [[False, True, False, False, False]]
    assert s.low_entropy_mask.tolist() == [[True, False, True, True, True]]


def test_rho_075_strict_rule_hand_example():
    # rho 0.75: pos = 0.75 * 4 = 3.0 exactly -> tau = 4.0. 4 > 4.0 is False (strict): only 5.
    ent = _row([1.0, 2.0, 3.0, 4.0, 5.0])
    s = split_by_entropy(ent, torch.ones(1, 5, dtype=torch.bool), rho=0.75)
    assert s.threshold.item() == pytest.approx(4.0, abs=1e-7)
    assert s.high_entropy_mask.tolist() == [[False, False, False, False, True]]


def test_rho_05_hand_example_with_padding():
    # Valid [1,2,3,4] (padding holds 9 and NaN, ignored): rho 0.5: pos = 1.5 -> tau = 2.5
    # -> 3 and 4 high. The padding is in neither mask.
    ent = _row([4.0, 1.0, 9.0, 3.0, 2.0, NAN])
    mask = torch.tensor([[1, 1, 0, 1, 1, 0]])
    s = split_by_entropy(ent, mask, rho=0.5)
    assert s.threshold.item() == pytest.approx(2.5, abs=1e-7)
    assert s.high_entropy_mask.tolist() == [[True, False, False, True, False, False]]
    assert s.low_entropy_mask.tolist() == [[False, True, False, False, True, False]]


def test_one_token_response_is_low():
    # A single valid token: tau = its own entropy, and e > e is False.
    s = split_by_entropy(_row([2.0, 0.0, 0.0]), torch.tensor([[1, 0, 0]]), rho=0.8)
    assert s.threshold.item() == 2.0
    assert not s.high_entropy_mask.any()
    assert s.low_entropy_mask.tolist() == [[True, False, False]]


def test_fully_padded_response_has_nothing_and_nan_threshold():
    ent = torch.tensor([[1.0, 2.0, 3.0], [NAN, NAN, 5.0]])
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])
    s = split_by_entropy(ent, mask, rho=0.5)
    assert math.isnan(s.threshold[1].item())
    assert not s.high_entropy_mask[1].any() and not s.low_entropy_mask[1].any()
    # The other response is unaffected: tau = 2.0 -> 3 high.
    assert s.high_entropy_mask[0].tolist() == [False, False, True]


def test_constant_entropy_is_all_low():
    s = split_by_entropy(torch.full((2, 6), 0.7), torch.ones(2, 6), rho=0.8)
    assert not s.high_entropy_mask.any()
    assert s.low_entropy_mask.all()
    torch.testing.assert_close(s.threshold, torch.full((2,), 0.7))


def test_rho_one_gives_no_high_tokens():
    ent = torch.rand(4, 20, generator=torch.Generator().manual_seed(0))
    s = split_by_entropy(ent, torch.ones(4, 20), rho=1.0)
    assert not s.high_entropy_mask.any()
    torch.testing.assert_close(s.threshold, ent.max(dim=1).values)


def test_argmax_entropy_token_is_high():
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        ent = torch.randperm(30, generator=g).float().reshape(3, 10)  # distinct values
        mask = torch.ones(3, 10, dtype=torch.bool)
        for rho in (0.1, 0.5, 0.8, 0.99):
            s = split_by_entropy(ent, mask, rho=rho)
            top = ent.argmax(dim=1)
            assert s.high_entropy_mask[torch.arange(3), top].all()


def _random_case(seed: int):
    g = torch.Generator().manual_seed(seed)
    b = int(torch.randint(1, 7, (1,), generator=g))
    t = int(torch.randint(1, 25, (1,), generator=g))
    ent = torch.rand(b, t, generator=g) * 3
    lengths = torch.randint(0, t + 1, (b,), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    ent = ent.masked_fill(~mask, NAN)  # NaN padding must be harmless
    groups = torch.randint(0, 3, (b,), generator=g)
    rho = float(torch.rand((), generator=g)) * 0.99 + 0.01
    return ent, mask, groups, rho


@pytest.mark.parametrize("scope", ["response", "group", "batch"])
def test_masks_partition_response_mask_random(scope):
    for seed in range(60):
        ent, mask, groups, rho = _random_case(seed)
        s = split_by_entropy(ent, mask, rho=rho, scope=scope, group_index=groups)
        assert not (s.high_entropy_mask & s.low_entropy_mask).any()
        assert torch.equal(s.high_entropy_mask | s.low_entropy_mask, mask)
        assert s.high_entropy_mask.dtype == torch.bool
        # High tokens are exactly the valid tokens strictly above their row's threshold.
        above = ent > s.threshold[:, None]
        assert torch.equal(s.high_entropy_mask, mask & above)


def test_high_count_per_response_random():
    # Distinct entropies, n valid tokens: tau sits at sorted position pos = rho (n - 1), so the
    # tokens above it are exactly the n - 1 - floor(pos) largest.
    for seed in range(40):
        ent, mask, _, rho = _random_case(seed)
        s = split_by_entropy(ent, mask, rho=rho)
        for i in range(ent.shape[0]):
            n = int(mask[i].sum())
            want = 0 if n == 0 else n - 1 - math.floor(rho * (n - 1))
            assert int(s.high_entropy_mask[i].sum()) == want, (seed, i, n, rho)


def _scope_example():
    # A: a high-entropy response, B: a low-entropy one (same group, 1 padded token),
    # C: another prompt's response.
    ent = torch.tensor(
        [
            [2.0, 2.1, 2.2, 2.3, 2.4, NAN],
            [0.1, 0.2, 0.3, 0.4, 0.5, NAN],
            [10.0, 20.0, 30.0, 40.0, 50.0, 60.0],
        ]
    )
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0]])
    groups = torch.tensor([0, 0, 1])
    return ent, mask, groups


def test_scope_response_hand_example():
    # Per response, pos = 0.8 * 4 = 3.2:
    #   A: 2.3 + 0.2 * 0.1 = 2.32 -> {2.4};  B: 0.42 -> {0.5};  C: 40 + 0.2 * 10 = 42 -> {50}.
    ent, mask, groups = _scope_example()
    s = split_by_entropy(ent, mask, rho=0.8, scope="response")
    torch.testing.assert_close(s.threshold, torch.tensor([2.32, 0.42, 42.0]))
    assert s.high_entropy_mask.sum(dim=1).tolist() == [1, 1, 1]
    assert s.high_entropy_mask[:, 4].all()


def test_scope_group_hand_example():
    # Group 0 = A + B (10 values): pos = 0.8 * 9 = 7.2 -> sorted[7] = 2.2, sorted[8] = 2.3
    #   -> tau = 2.22 -> A gets {2.3, 2.4}, B gets nothing.
    # Group 1 = C alone -> tau 42 as in the response scope -> {50}.
    ent, mask, groups = _scope_example()
    s = split_by_entropy(ent, mask, rho=0.8, scope="group", group_index=groups)
    torch.testing.assert_close(s.threshold, torch.tensor([2.22, 2.22, 42.0]))
    assert s.high_entropy_mask.sum(dim=1).tolist() == [2, 0, 1]


def test_scope_batch_hand_example():
    # Whole batch, 15 values sorted: 0.1..0.5, 2.0..2.4, 10..50; pos = 0.8 * 14 = 11.2
    #   -> sorted[11] = 20, sorted[12] = 30 -> tau = 22 -> only C's {30, 40, 50} are high.
    # The low-entropy response B gets no high-entropy token at all (the paper's argument for
    # the per-response threshold), and even A loses its forks.
    ent, mask, groups = _scope_example()
    s = split_by_entropy(ent, mask, rho=0.8, scope="batch")
    torch.testing.assert_close(s.threshold, torch.full((3,), 22.0))
    assert s.high_entropy_mask.sum(dim=1).tolist() == [0, 0, 3]


def test_group_scope_needs_index():
    with pytest.raises(ValueError, match="group_index"):
        split_by_entropy(torch.rand(2, 3), torch.ones(2, 3), scope="group")


@pytest.mark.parametrize("rho", [0.0, -0.1, 1.01])
def test_bad_rho_raises(rho):
    with pytest.raises(ValueError, match="rho"):
        split_by_entropy(torch.rand(2, 3), torch.ones(2, 3), rho=rho)


def test_unknown_scope_lists_choices():
    with pytest.raises(ValueError, match="response.*group.*batch"):
        split_by_entropy(torch.rand(2, 3), torch.ones(2, 3), scope="token")


@pytest.mark.parametrize("bad", [NAN, float("inf"), float("-inf")])
@pytest.mark.parametrize("scope", ["response", "batch"])
def test_non_finite_entropy_on_valid_token_raises(bad, scope):
    ent = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    ent[1, 1] = bad
    with pytest.raises(NonFiniteEntropyError, match=r"\[1\]"):
        split_by_entropy(ent, torch.ones(2, 3), scope=scope)


def test_non_finite_entropy_on_padding_is_fine():
    ent = torch.tensor([[0.1, 0.2, NAN, float("inf")]])
    s = split_by_entropy(ent, torch.tensor([[1, 1, 0, 0]]), rho=0.5)
    # tau = 0.15 -> 0.2 high; padding in neither mask.
    assert s.high_entropy_mask.tolist() == [[False, True, False, False]]
    assert s.low_entropy_mask.tolist() == [[True, False, False, False]]


def test_masked_quantile_matches_nanquantile():
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        n, length = 5, int(torch.randint(1, 40, (1,), generator=g))
        values = torch.randn(n, length, generator=g)
        mask = torch.rand(n, length, generator=g) < 0.7
        mask[0] = False  # an all-masked row -> NaN in both
        mask[1] = False
        mask[1, 0] = True  # a one-element row
        for q in (0.0, 0.2, 0.5, 0.8, 0.95, 1.0):
            ours = masked_quantile(values, mask, q)
            ref = torch.nanquantile(values.masked_fill(~mask, NAN), q, dim=-1)
            torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0, equal_nan=True)


def test_masked_quantile_hand_values():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [5.0, 1.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    # row 0: 0.8 -> 4.2 (see above); row 1: sorted [1, 5], pos 0.8 -> 1 + 0.8 * 4 = 4.2.
    torch.testing.assert_close(masked_quantile(values, mask, 0.8), torch.tensor([4.2, 4.2]))


def test_split_change_fraction():
    prev = torch.tensor([[True, False, False, True]])
    cur = torch.tensor([[True, True, False, False]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # Valid tokens 0..2; only token 1 changed (token 3 is padding) -> 1/3.
    assert split_change_fraction(prev, cur, mask) == pytest.approx(1 / 3)
    assert split_change_fraction(prev, cur, torch.zeros(1, 4)) == 0.0


def test_entropy_that_requires_grad_is_accepted():
    # The reference recomputes entropy in every micro-batch from the current forward pass, so a
    # trainer may hand over an entropy tensor that is part of the autograd graph. The split (a
    # threshold and two boolean masks) must work on it and equal the split of the detached one.
    logits = torch.randn(3, 7, 11, generator=torch.Generator().manual_seed(0)) * 2
    logits.requires_grad_(True)
    ent = torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)
    assert ent.requires_grad
    mask = torch.ones(3, 7, dtype=torch.bool)
    s = split_by_entropy(ent, mask, rho=0.8)
    d = split_by_entropy(ent.detach(), mask, rho=0.8)
    assert torch.equal(s.high_entropy_mask, d.high_entropy_mask)
    torch.testing.assert_close(s.threshold.detach(), d.threshold)
    q = masked_quantile(ent, mask, 0.5)
    torch.testing.assert_close(q.detach(), masked_quantile(ent.detach(), mask, 0.5))


def _reference_quantile_f64(row: np.ndarray, q: float) -> float:
    """The code's interpolation rule in float64: sorted v, pos = q (n - 1),
    tau = v[lo] + (pos - lo) (v[hi] - v[lo]), and exactly v[lo] when v[lo] == v[hi]."""
    v = np.sort(row.astype(np.float64))
    pos = q * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    if v[lo] == v[hi]:
        return float(v[lo])
    return float(v[lo] + (pos - lo) * (v[hi] - v[lo]))


@pytest.mark.parametrize(("rows", "length"), [(8, 37), (8, 6)])
@pytest.mark.parametrize("rho", [0.8, 0.5])
def test_float64_entropy_is_split_in_float64(rows, length, rho):
    # A float64 entropy is compared with its float64 threshold: computing the threshold in
    # float32 moved it off the value at the quantile position (rho (n - 1) an integer, e.g.
    # 0.8 * 5 = 4 at length 6) and classed tokens at ties differently from float64.
    g = torch.Generator().manual_seed(rows * length)
    for _ in range(40):
        ent = torch.rand(rows, length, generator=g, dtype=torch.float64) * 3
        mask = torch.ones(rows, length, dtype=torch.bool)
        mask[0, length // 2:] = False  # a shorter response
        s = split_by_entropy(ent, mask, rho=rho)
        assert s.threshold.dtype == torch.float64
        for i in range(rows):
            valid = ent[i][mask[i]].numpy()
            tau = _reference_quantile_f64(valid, rho)
            assert s.threshold[i].item() == tau
            want = (ent[i] > tau) & mask[i]
            assert torch.equal(s.high_entropy_mask[i], want), (i, tau)
        group = torch.arange(rows) // 2
        sg = split_by_entropy(ent, mask, rho=rho, scope="group", group_index=group)
        for gi in range(rows // 2):
            rows_g = group == gi
            tau = _reference_quantile_f64(ent[rows_g][mask[rows_g]].numpy(), rho)
            assert torch.equal(sg.high_entropy_mask[rows_g], (ent[rows_g] > tau) & mask[rows_g])


def test_masked_quantile_keeps_low_precision_inputs_exact_in_float32():
    # bf16/f16 values are computed in float32 (exact upcast; numpy has no bfloat16 sort).
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]], dtype=torch.bfloat16)
    q = masked_quantile(values, torch.ones(1, 5, dtype=torch.bool), 0.8)
    assert q.dtype == torch.float32 and q.item() == pytest.approx(4.2, abs=1e-6)
