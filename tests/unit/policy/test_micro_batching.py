"""Token-budget micro-batching (pure): row lengths, binning, padded-token accounting."""

from __future__ import annotations

import random

import pytest
import torch

from nemo_prorl.policy.micro_batching import (
    padded_tokens,
    padding_fraction,
    sequence_lengths,
    token_budget_bins,
)


def test_sequence_lengths_end_at_the_last_response_token():
    mask = torch.tensor(
        [
            [0, 0, 1, 1, 0, 0],  # response at 2..3: the forward needs positions 0..3
            [0, 1, 1, 1, 1, 1],  # fills the row
            [0, 0, 0, 0, 0, 0],  # no response: minimum length 2
            [0, 1, 0, 1, 0, 0],  # a gap in the mask does not end the row
        ]
    )
    assert sequence_lengths(mask) == [4, 6, 2, 4]
    assert sequence_lengths(mask.bool()) == [4, 6, 2, 4]
    assert sequence_lengths(mask.float()) == [4, 6, 2, 4]
    assert sequence_lengths(torch.zeros(0, 5)) == []
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        sequence_lengths(torch.zeros(5))


@pytest.mark.parametrize(
    "lengths,budget,bins",
    [
        # sorted 9, 8, 4, 3, 2: 9+8 -> 2x9 = 18 > 16, so 3 micro-batches at least; [9][8][4,3,2] = 29
        # tokens beats the greedy fill [9][8,4][3,2] = 31
        ([3, 9, 4, 2, 8], 16, [[1], [4], [2, 0, 3]]),
        # sorted 10, 9, 5, 5, 5, 2 under 20: [10,9] = 20, [5,5,5,2] = 20 -> 2 micro-batches, 40 tokens
        ([5, 10, 2, 9, 5, 5], 20, [[1, 3], [0, 4, 5, 2]]),
        # sorted 6, 5, 5, 2, 2, 2 under 12: two cannot hold them ([6,5] leaves 4 rows of up to 5 = 20);
        # the greedy fill [6,5][5,2][2,2] = 12 + 10 + 4 = 26, the optimum [6][5,5][2,2,2] = 6 + 10 + 6 = 22
        ([6, 5, 5, 2, 2, 2], 12, [[0], [1, 2], [3, 4, 5]]),
        # everything fits in one: 5 x 4 = 20 <= 20
        ([4, 4, 1, 2, 3], 20, [[0, 1, 4, 3, 2]]),
        # ties keep index order; 3 rows of 5 = 15 <= 15, the 4th opens a new micro-batch
        ([5, 5, 5, 5], 15, [[0, 1, 2], [3]]),
        # budget 1 row each at the longest length
        ([7, 2, 7], 7, [[0], [2], [1]]),
        # a row longer than the budget runs alone; the rest are binned as usual
        ([30, 4, 4, 4], 10, [[0], [1, 2], [3]]),
        ([], 8, []),
    ],
)
def test_token_budget_bins_hand_computed(lengths, budget, bins):
    assert token_budget_bins(lengths, budget) == bins


def test_token_budget_bins_properties_on_random_batches():
    """Every row exactly once; each bin within budget unless a single over-long row; longest first."""
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 64) for _ in range(rng.randint(1, 40))]
        budget = rng.randint(1, 200)
        bins = token_budget_bins(lengths, budget)
        flat = sorted(i for b in bins for i in b)
        assert flat == list(range(len(lengths)))
        for b in bins:
            longest = lengths[b[0]]
            assert longest == max(lengths[i] for i in b)
            assert len(b) * longest <= budget or (len(b) == 1 and longest > budget)
        heads = [lengths[b[0]] for b in bins]
        assert heads == sorted(heads, reverse=True)
        # the fewest micro-batches (the greedy fill's count) and no more padded tokens than that fill
        greedy = _greedy_fill(lengths, budget)
        assert len(bins) == len(greedy)
        assert padded_tokens(bins, lengths) <= padded_tokens(greedy, lengths)


def _greedy_fill(lengths, budget):
    """The reference fill: longest first, each micro-batch takes rows while ``rows x longest <= budget``."""
    bins = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if bins and (len(bins[-1]) + 1) * lengths[bins[-1][0]] <= budget:
            bins[-1].append(i)
        else:
            bins.append([i])
    return bins


def _set_partitions(items):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _set_partitions(rest):
        yield [[first], *part]
        for k in range(len(part)):
            yield [*part[:k], [first, *part[k]], *part[k + 1 :]]


def test_token_budget_bins_is_optimal_over_every_partition():
    """Exhaustive check on small batches: no partition (consecutive or not) within the budget has fewer
    micro-batches, or as many and fewer padded tokens; this also checks the consecutive-runs argument."""
    rng = random.Random(3)
    for _ in range(150):
        lengths = [rng.randint(1, 12) for _ in range(rng.randint(1, 7))]
        budget = rng.randint(max(lengths), 40)
        bins = token_budget_bins(lengths, budget)
        got = (len(bins), padded_tokens(bins, lengths))
        feasible = [
            (len(p), padded_tokens(p, lengths))
            for p in _set_partitions(list(range(len(lengths))))
            if all(len(b) * max(lengths[i] for i in b) <= budget for b in p)
        ]
        assert got == min(feasible), (lengths, budget, bins)


def test_token_budget_bins_rejects_bad_input():
    with pytest.raises(ValueError, match="budget"):
        token_budget_bins([3], 0)
    with pytest.raises(ValueError, match="budget"):
        token_budget_bins([3], True)
    with pytest.raises(ValueError, match=r"lengths\[1\]"):
        token_budget_bins([3, 0], 8)
    with pytest.raises(ValueError, match=r"lengths\[0\]"):
        token_budget_bins([2.5], 8)


def test_padded_tokens_and_fraction_hand_computed():
    lengths = [3, 9, 4, 2, 8]
    bins = [[1], [4, 2], [0, 3]]
    assert padded_tokens(bins, lengths) == 9 + 2 * 8 + 2 * 3  # 31
    assert padded_tokens(bins, lengths, rows=2) == 2 * 9 + 2 * 8 + 2 * 3  # PP pads rows: 40
    # consecutive pairs, each padded to its own longest and the last to 2 rows: 2x9 + 2x4 + 2x8
    assert padded_tokens([[0, 1], [2, 3], [4]], lengths, rows=2) == 42
    assert padding_fraction(26, 31) == pytest.approx(5 / 31)
    assert padding_fraction(0, 0) == 0.0
    assert padding_fraction(10, 10) == 0.0
    with pytest.raises(ValueError, match="computed"):
        padding_fraction(11, 10)
