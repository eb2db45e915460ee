import math

import pytest
import torch

from nemo_prorl.algorithms import (
    AdvantageConfig,
    broadcast_to_tokens,
    compute_advantages,
    group_advantages,
    group_ids_from_size,
)

S3 = math.sqrt(1.0 / 3.0)  # unbiased std of [1, 0, 0]


def test_grpo_hand_computed_with_single_and_constant_groups():
    rewards = torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0, 5.0])
    gid = torch.tensor([0, 0, 0, 1, 1, 2])
    adv = group_advantages(rewards, gid)
    expected = torch.tensor([(2 / 3) / S3, -(1 / 3) / S3, -(1 / 3) / S3, 0.0, 0.0, 0.0])
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)
    assert adv.dtype == rewards.dtype


def test_eps_is_added_to_std():
    rewards = torch.tensor([1.0, 0.0], dtype=torch.float64)
    adv = group_advantages(rewards, group_size=2, eps=0.5)
    std = math.sqrt(0.5)
    torch.testing.assert_close(
        adv, torch.tensor([0.5 / (std + 0.5), -0.5 / (std + 0.5)], dtype=torch.float64)
    )


def test_no_std_normalisation():
    rewards = torch.tensor([1.0, 0.0, 0.0, 3.0, 1.0])
    adv = group_advantages(rewards, torch.tensor([4, 4, 4, 9, 9]), norm_std=False)
    torch.testing.assert_close(adv, torch.tensor([2 / 3, -1 / 3, -1 / 3, 1.0, -1.0]))


def test_leave_one_out_baseline():
    rewards = torch.tensor([1.0, 0.0, 0.0])
    loo = group_advantages(rewards, group_size=3, norm_std=False, leave_one_out=True)
    torch.testing.assert_close(loo, torch.tensor([1.0, -0.5, -0.5]))
    loo_std = group_advantages(rewards, group_size=3, norm_std=True, leave_one_out=True)
    torch.testing.assert_close(loo_std, torch.tensor([1.0 / S3, -0.5 / S3, -0.5 / S3]), atol=1e-5, rtol=0)
    single = group_advantages(torch.tensor([3.0]), group_size=1, leave_one_out=True)
    assert single.tolist() == [0.0]


def test_non_contiguous_group_ids_match_contiguous():
    rewards = torch.tensor([1.0, 4.0, 0.0, 2.0])
    a = group_advantages(rewards, torch.tensor([7, 3, 7, 3]))
    b = group_advantages(rewards[[0, 2, 1, 3]], group_size=2)
    torch.testing.assert_close(a[[0, 2, 1, 3]], b)


def test_all_equal_and_all_single_give_zero():
    assert group_advantages(torch.full((6,), 0.7), group_size=3).abs().max() == 0
    assert group_advantages(torch.arange(4.0), group_size=1).abs().max() == 0


def test_errors():
    with pytest.raises(ValueError, match="exactly one"):
        group_advantages(torch.zeros(4))
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.zeros(4), group_size=3)
    with pytest.raises(ValueError, match="shape"):
        group_advantages(torch.zeros(4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="finite"):
        group_advantages(torch.tensor([1.0, float("nan")]), group_size=2)
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 2), group_size=2)


def test_registry_dispatch_and_broadcast():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    gid = group_ids_from_size(4, 2)
    assert gid.tolist() == [0, 0, 1, 1]
    adv = compute_advantages(rewards, gid, AdvantageConfig())
    torch.testing.assert_close(adv, group_advantages(rewards, gid))
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]])
    tok = broadcast_to_tokens(adv, mask)
    assert tok.shape == (4, 3)
    torch.testing.assert_close(tok[0], torch.tensor([adv[0], adv[0], 0.0]))
    assert tok[3].abs().sum() == 0
    with pytest.raises(ValueError, match="mask"):
        broadcast_to_tokens(adv, mask[:2])
