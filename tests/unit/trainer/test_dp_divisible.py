"""dp_divisible_groups: how a short (partial) dynamic-sampling batch is trimmed for data parallelism."""

from nemo_prorl.trainer.trainer import dp_divisible_groups


def test_dp1_keeps_every_group():
    assert dp_divisible_groups(7, n=3, mini_batch_prompts=4, dp_size=1) == 7


def test_even_n_always_splits_over_two_ranks():
    # last mini-batch of 3 groups x 8 samples = 24 sequences, 12 per rank
    assert dp_divisible_groups(11, n=8, mini_batch_prompts=8, dp_size=2) == 11


def test_odd_remainder_is_trimmed_to_the_nearest_split():
    # n=3, 4 groups per mini-batch (12 seqs): 7 groups leave 3 groups = 9 seqs (odd) -> 6 groups
    # leave 2 groups = 6 seqs, 3 per rank
    assert dp_divisible_groups(7, n=3, mini_batch_prompts=4, dp_size=2) == 6
    # dp 4: 6 groups -> 6 seqs (no), 5 -> 3 (no), 4 -> a full mini-batch, 12 seqs, 3 per rank
    assert dp_divisible_groups(7, n=3, mini_batch_prompts=4, dp_size=4) == 4


def test_never_below_one_group():
    assert dp_divisible_groups(1, n=3, mini_batch_prompts=4, dp_size=2) == 1
