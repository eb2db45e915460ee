"""REINFORCE++-baseline / REINFORCE++ advantages (ProRL v2) against hand-computed values.

The formulas follow NeMo-RL ``ReinforcePlusPlusAdvantageEstimator.compute_advantage``
(``nemo_rl/algorithms/advantage_estimator.py``): group-mean baseline, then ``(A - mean) * rsqrt(max(var,
1e-8))`` over the masked ``[B, T]`` token tensor. ``test_matches_the_masked_token_tensor_form`` rebuilds
that token tensor to check the per-sample, token-weighted form used here.
"""

import math

import pytest
import torch

from nemo_prorl.algorithms import AdvantageConfig, compute_advantages
from nemo_prorl.algorithms.advantages import global_token_normalise, group_mean_baseline
from nemo_prorl.algorithms.registry import registered_advantage_estimators
from nemo_prorl.config_schema import ConfigError, check

CFG = AdvantageConfig(estimator="reinforce_pp_baseline")


def test_registered_and_selectable_by_name():
    names = registered_advantage_estimators()
    assert {"grpo", "reinforce_pp_baseline", "reinforce_pp"} <= set(names)
    check(AdvantageConfig(estimator="reinforce_pp_baseline"), "algorithm.advantage")


def test_hand_computed_token_weighted():
    # groups {1, 0} and {0, 1}: group means 0.5 -> a = [0.5, -0.5, -0.5, 0.5]; tokens [1, 3, 2, 2], N = 8
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    gid = torch.tensor([0, 0, 1, 1])
    ntok = torch.tensor([1, 3, 2, 2])
    # mu = (0.5 - 1.5 - 1.0 + 1.0) / 8 = -0.125
    # var = (1 * 0.625^2 + 3 * 0.375^2 + 2 * 0.375^2 + 2 * 0.625^2) / 8 = 1.875 / 8 = 0.234375
    std = math.sqrt(0.234375)
    expected = torch.tensor([0.625, -0.375, -0.375, 0.625]) / std
    adv = compute_advantages(rewards, gid, CFG, num_tokens=ntok)
    torch.testing.assert_close(adv, expected, atol=1e-6, rtol=0)
    assert adv.dtype == rewards.dtype


def test_hand_computed_sample_weighted_when_no_token_counts():
    # groups {3, 1} and {2}: a = [1, -1, 0]; mu = 0; var = 2/3
    adv = compute_advantages(torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64), torch.tensor([7, 7, 9]), CFG)
    s = math.sqrt(2 / 3)
    torch.testing.assert_close(adv, torch.tensor([1 / s, -1 / s, 0.0], dtype=torch.float64))


def test_single_sample_group_is_not_special_cased():
    # a = [0.5, -0.5, 0] (the lone sample's baseline is its own reward); tokens [1, 1, 2]:
    # mu = 0, var = (0.25 + 0.25 + 0) / 4 = 0.125 -> the lone sample gets exactly 0 here...
    adv = compute_advantages(torch.tensor([1.0, 0.0, 4.0]), torch.tensor([0, 0, 1]), CFG,
                             num_tokens=torch.tensor([1, 1, 2]))
    s = math.sqrt(0.125)
    torch.testing.assert_close(adv, torch.tensor([0.5 / s, -0.5 / s, 0.0]), atol=1e-6, rtol=0)
    # ...but with unequal tokens in the pair the mean moves and the lone sample gets -mu / std (NeMo-RL)
    adv = compute_advantages(torch.tensor([1.0, 0.0, 4.0]), torch.tensor([0, 0, 1]), CFG,
                             num_tokens=torch.tensor([3, 1, 4]))
    # a = [0.5, -0.5, 0]; N = 8; mu = (1.5 - 0.5) / 8 = 0.125
    # var = (3 * 0.375^2 + 1 * 0.625^2 + 4 * 0.125^2) / 8 = (0.421875 + 0.390625 + 0.0625) / 8 = 0.109375
    s = math.sqrt(0.109375)
    torch.testing.assert_close(adv, torch.tensor([0.375 / s, -0.625 / s, -0.125 / s]), atol=1e-6, rtol=0)


def test_plain_reinforce_pp_has_no_group_baseline():
    cfg = AdvantageConfig(estimator="reinforce_pp")
    # rewards [1, 0, 1], tokens [2, 1, 1]: mu = 3/4; var = (2 * 1/16 + 9/16 + 1/16) / 4 = 0.1875
    adv = compute_advantages(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 1]), cfg,
                             num_tokens=torch.tensor([2, 1, 1]))
    s = math.sqrt(0.1875)
    torch.testing.assert_close(adv, torch.tensor([0.25 / s, -0.75 / s, 0.25 / s]), atol=1e-6, rtol=0)


def test_constant_batch_uses_the_variance_floor():
    adv = compute_advantages(torch.full((4,), 0.7), torch.tensor([0, 0, 1, 1]), CFG)
    torch.testing.assert_close(adv, torch.zeros(4))
    cfg = AdvantageConfig(estimator="reinforce_pp", global_var_floor=0.25)
    # rewards [1, 0]: mu = 0.5, var = 0.25 -> floor 0.25 is not binding; floor 1.0 is: (v - mu) / 1
    torch.testing.assert_close(compute_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 1]), cfg),
                               torch.tensor([1.0, -1.0]))
    cfg = AdvantageConfig(estimator="reinforce_pp", global_var_floor=1.0)
    torch.testing.assert_close(compute_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 1]), cfg),
                               torch.tensor([0.5, -0.5]))


def test_matches_the_masked_token_tensor_form():
    g = torch.Generator().manual_seed(3)
    rewards = torch.rand(12, generator=g, dtype=torch.float64)
    gid = torch.arange(12) // 4
    ntok = torch.randint(0, 9, (12,), generator=g)
    ntok[0] = 5
    adv = compute_advantages(rewards, gid, CFG, num_tokens=ntok)
    # NeMo-RL form: a [B, T] tensor, statistics over the mask
    mask = (torch.arange(10)[None, :] < ntok[:, None]).to(torch.float64)
    means = torch.stack([rewards[gid == k].mean() for k in range(3)])
    a = (rewards - means[gid])[:, None].expand(mask.shape)
    mu = (a * mask).sum() / mask.sum()
    var = ((a - mu) ** 2 * mask).sum() / mask.sum()
    ref = (a - mu) * var.clamp(min=1e-8).rsqrt()
    torch.testing.assert_close(adv[:, None].expand(mask.shape) * mask, ref * mask)


def test_group_mean_baseline_and_errors():
    torch.testing.assert_close(group_mean_baseline(torch.tensor([2.0, 4.0, 1.0]), torch.tensor([1, 1, 0])),
                               torch.tensor([-1.0, 1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="at least one valid response token"):
        global_token_normalise(torch.tensor([1.0, 2.0]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="num_tokens"):
        global_token_normalise(torch.tensor([1.0, 2.0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="finite"):
        compute_advantages(torch.tensor([1.0, float("nan")]), torch.tensor([0, 0]), CFG)
    with pytest.raises(ConfigError, match="algorithm.advantage.global_var_floor"):
        check(AdvantageConfig(estimator="reinforce_pp_baseline", global_var_floor=0.0), "algorithm.advantage")


def test_three_argument_plugin_estimators_still_work():
    from nemo_prorl.algorithms.registry import _ADVANTAGE_ESTIMATORS, register_advantage_estimator

    @register_advantage_estimator("test_plain_three_args")
    def plain(rewards, group_ids, cfg):
        return rewards * 2

    try:
        cfg = AdvantageConfig(estimator="test_plain_three_args")
        out = compute_advantages(torch.tensor([1.0, 2.0]), torch.tensor([0, 0]), cfg,
                                 num_tokens=torch.tensor([3, 4]))
        torch.testing.assert_close(out, torch.tensor([2.0, 4.0]))
        with pytest.raises(ValueError, match="takes no dp_group"):
            compute_advantages(torch.tensor([1.0]), torch.tensor([0]), cfg, dp_group=object())
    finally:
        del _ADVANTAGE_ESTIMATORS["test_plain_three_args"]
