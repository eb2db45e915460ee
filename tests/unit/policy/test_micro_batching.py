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
        # sorted 9, 8, 4, 3, 2: 9+8 -> 2x9 = 18 > 16; 8+4 -> 2x8 = 16; +3 -> 3x8 = 24 > 16; 3+2 -> 2x3 = 6
        ([3, 9, 4, 2, 8], 16, [[1], [4, 2], [0, 3]]),
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
        # fewest micro-batches: no bin could have absorbed the first row of the next one
        for cur in bins[:-1]:
            assert (len(cur) + 1) * lengths[cur[0]] > budget


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
