"""Truncated importance sampling (TIS / ICE-POP) against the rollout engine's log-probs.

Formulas follow NeMo-RL ``ClippedPGLossFn.__call__`` (``nemo_rl/algorithms/loss/loss_functions.py``):
weights ``exp(prev_logprobs - generation_logprobs)``; ``tis`` clamps them to ``[min or 0, max]``,
``icepop`` zeroes them outside ``[min, max]``; ``is_oob_ratio`` is the fraction of valid tokens outside
the bounds; ``gen_kl_error`` is ``calculate_kl(generation_logprobs, prev_logprobs)`` without clamps.
"""

import math

import pytest
import torch

from nemo_prorl.algorithms import AlgorithmConfig, LossConfig, prorl_loss
from nemo_prorl.algorithms.policy_loss import truncated_importance_weights
from nemo_prorl.config_schema import ConfigError, check

# old policy p = 0.5 on every token; the engine's p: raw weights w = [1, 10, 5/9, 2, 1] (last token masked)
OLD = torch.log(torch.full((1, 5), 0.5, dtype=torch.float64))
ROLL = torch.log(torch.tensor([[0.5, 0.05, 0.9, 0.25, 0.5]], dtype=torch.float64))
MASK = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.float64)
W59 = 5 / 9


def test_tis_clamps_at_the_maximum_and_the_optional_minimum():
    w, oob = truncated_importance_weights(OLD, ROLL, MASK, "tis", max_ratio=5.0)
    torch.testing.assert_close(w, torch.tensor([[1.0, 5.0, W59, 2.0, 0.0]], dtype=torch.float64))
    assert oob.tolist() == [[False, True, False, False, False]]
    w, oob = truncated_importance_weights(OLD, ROLL, MASK, "tis", max_ratio=5.0, min_ratio=0.6)
    torch.testing.assert_close(w, torch.tensor([[1.0, 5.0, 0.6, 2.0, 0.0]], dtype=torch.float64))
    assert oob.tolist() == [[False, True, True, False, False]]


def test_icepop_zeroes_weights_outside_the_bounds():
    w, oob = truncated_importance_weights(OLD, ROLL, MASK, "icepop", max_ratio=5.0, min_ratio=0.6)
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.0, 0.0, 2.0, 0.0]], dtype=torch.float64))
    assert oob.tolist() == [[False, True, True, False, False]]
    # the bounds are inclusive
    w, _ = truncated_importance_weights(OLD, ROLL, MASK, "icepop", max_ratio=10.0, min_ratio=W59)
    torch.testing.assert_close(w, torch.tensor([[1.0, 10.0, W59, 2.0, 0.0]], dtype=torch.float64))


def test_masked_and_non_finite_tokens():
    roll = ROLL.clone()
    roll[0, 4] = float("-inf")  # masked: ignored
    roll[0, 0] = float("nan")  # valid but broken: out of bounds
    w, oob = truncated_importance_weights(OLD, roll, MASK, "icepop", max_ratio=5.0, min_ratio=0.5)
    assert w[0, 0] == 0 and w[0, 4] == 0 and oob[0, 0] and not oob[0, 4]
    w, _ = truncated_importance_weights(OLD, roll, MASK, "tis", max_ratio=5.0)
    assert w[0, 0] == 5.0
    w, oob = truncated_importance_weights(OLD, roll, MASK, "none", max_ratio=5.0)
    assert w.tolist() == MASK.tolist() and not oob.any()


def _cfg(mode, lo=None, hi=5.0):
    cfg = AlgorithmConfig()
    cfg.loss.tis, cfg.loss.tis_min, cfg.loss.tis_max = mode, lo, hi
    cfg.kl.coef = 0.0
    check(cfg, "algorithm")
    return cfg


def test_loss_and_metrics_hand_computed():
    lp = OLD.clone().requires_grad_(True)  # ratio 1: the clipped surrogate is -A per token
    adv = torch.ones(1, 5, dtype=torch.float64)
    out = prorl_loss(lp, OLD, adv, MASK, _cfg("tis"), rollout_logprobs=ROLL)
    torch.testing.assert_close(out.loss, torch.tensor(-(1 + 5 + W59 + 2) / 4, dtype=torch.float64))
    assert out.metrics["is_oob_ratio"].item() == pytest.approx(0.25)
    assert out.metrics["sampling_importance_ratio"].item() == pytest.approx((1 + 5 + W59 + 2) / 4)
    # k3 of KL(gen || old) per token is w - log w - 1
    k3 = sum(w - math.log(w) - 1 for w in (1.0, 10.0, W59, 2.0)) / 4
    assert out.metrics["gen_kl_error"].item() == pytest.approx(k3)
    out.loss.backward()
    # d loss / d lp_t = -A_t * w_t / N on unclipped tokens
    expected = torch.tensor([[-1.0, -5.0, -W59, -2.0, 0.0]], dtype=torch.float64) / 4
    torch.testing.assert_close(lp.grad, expected)

    out = prorl_loss(OLD.clone(), OLD, adv, MASK, _cfg("icepop", 0.6), rollout_logprobs=ROLL)
    torch.testing.assert_close(out.loss, torch.tensor(-0.75, dtype=torch.float64))
    assert out.metrics["is_oob_ratio"].item() == pytest.approx(0.5)
    # without truncation the weights are only measured; k2 for the gen-KL when the KL estimator is k2
    cfg = _cfg("none")
    cfg.kl.estimator = "k2"
    out = prorl_loss(OLD.clone(), OLD, adv, MASK, cfg, rollout_logprobs=ROLL)
    torch.testing.assert_close(out.loss, torch.tensor(-1.0, dtype=torch.float64))
    k2 = sum(math.log(w) ** 2 / 2 for w in (1.0, 10.0, W59, 2.0)) / 4
    assert out.metrics["gen_kl_error"].item() == pytest.approx(k2)
    assert "is_oob_ratio" not in out.metrics


def test_gradcheck_weights_float64():
    g = torch.Generator().manual_seed(2)
    roll = -torch.rand(3, 4, generator=g, dtype=torch.float64) - 0.5
    # raw weights exp(d), d in [-1.2, 1.2]: some inside [0.5, 2], some outside, none at an edge
    d = torch.tensor([[0.0, 1.2, -1.2, 0.3], [-0.3, 0.1, 1.0, -1.0], [0.2, -0.2, 0.4, 0.9]],
                     dtype=torch.float64)
    old = (roll + d).requires_grad_(True)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.float64)
    for mode in ("tis", "icepop"):
        assert torch.autograd.gradcheck(
            lambda o, m=mode: truncated_importance_weights(o, roll, mask, m, max_ratio=2.0, min_ratio=0.5)[0],
            (old,))
    w, _ = truncated_importance_weights(old, roll, mask, "tis", max_ratio=2.0, min_ratio=0.5)
    w.sum().backward()
    inside = (d.exp() >= 0.5) & (d.exp() <= 2.0) & mask.bool()
    torch.testing.assert_close(old.grad, torch.where(inside, d.exp(), torch.zeros_like(d)))


def test_gradcheck_weighted_loss_float64():
    g = torch.Generator().manual_seed(7)
    old = -torch.rand(3, 4, generator=g, dtype=torch.float64) - 0.5
    lp = (old + torch.empty(3, 4, dtype=torch.float64).uniform_(-0.15, 0.2, generator=g)).requires_grad_(True)
    roll = old + torch.tensor([[0.0, 1.5, -1.5, 0.3], [-0.3, 0.1, 1.0, -1.0], [0.2, -0.2, 0.4, 0.9]],
                              dtype=torch.float64)
    ref = old + 0.2 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.float64)
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    for mode, lo in (("tis", None), ("icepop", 0.5)):
        cfg = _cfg(mode, lo, 2.0)
        cfg.kl.coef = 0.3
        assert torch.autograd.gradcheck(
            lambda a, c=cfg: prorl_loss(a, old, adv, mask, c, ref_logprobs=ref, rollout_logprobs=roll).loss,
            (lp,))


def test_config_and_missing_rollout_logprobs():
    with pytest.raises(ConfigError, match="algorithm.loss.tis_min"):
        check(LossConfig(tis="icepop"), "algorithm.loss")
    with pytest.raises(ConfigError, match="algorithm.loss.tis_min"):
        check(LossConfig(tis="tis", tis_min=6.0, tis_max=5.0), "algorithm.loss")
    with pytest.raises(ConfigError, match="algorithm.loss.tis"):
        check(LossConfig(tis="seq-mask-tis"), "algorithm.loss")
    with pytest.raises(ConfigError, match="algorithm.loss.tis_max"):
        check(LossConfig(tis="tis", tis_max=0.0), "algorithm.loss")
    with pytest.raises(ValueError, match="algorithm.loss.tis=tis needs"):
        prorl_loss(OLD.clone(), OLD, torch.ones(1), MASK, _cfg("tis"))
