import math

import pytest
import torch

from nemo_prorl.algorithms import entropy_from_logits, kl_penalty, kl_reward_penalty

LN2 = math.log(2.0)


def test_estimators_hand_computed():
    lp = torch.tensor([math.log(0.5), math.log(0.25), -1.0])
    ref = torch.tensor([math.log(0.25), math.log(0.5), -1.0])
    # x = lp - ref = [ln 2, -ln 2, 0]
    torch.testing.assert_close(kl_penalty(lp, ref, "k1"), torch.tensor([LN2, -LN2, 0.0]))
    torch.testing.assert_close(kl_penalty(lp, ref, "k2"), torch.tensor([LN2**2 / 2, LN2**2 / 2, 0.0]))
    # k3 = exp(ref - lp) - (ref - lp) - 1
    torch.testing.assert_close(kl_penalty(lp, ref, "k3"), torch.tensor([0.5 + LN2 - 1, 2 - LN2 - 1, 0.0]))


def test_k3_is_nonnegative_and_unbiased_for_kl():
    # samples from p; E_p[k3] = KL(p || q)
    p = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    q = torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64)
    est = kl_penalty(p.log(), q.log(), "k3", input_clamp=None, output_clamp=None)
    assert (est >= 0).all()
    torch.testing.assert_close((p * est).sum(), (p * (p / q).log()).sum())
    torch.testing.assert_close((p * kl_penalty(p.log(), q.log(), "k1")).sum(), (p * (p / q).log()).sum())


def test_clamps():
    lp = torch.tensor([0.0, 0.0, 0.0, 0.0])
    ref = torch.tensor([-30.0, 30.0, 3.0, 3.0])
    # x = [30, -30, -3, -3]
    k1 = kl_penalty(lp, ref, "k1", input_clamp=20.0, output_clamp=None)
    torch.testing.assert_close(k1, torch.tensor([20.0, -20.0, -3.0, -3.0]))
    k1c = kl_penalty(lp, ref, "k1", input_clamp=20.0, output_clamp=10.0)
    torch.testing.assert_close(k1c, torch.tensor([10.0, -10.0, -3.0, -3.0]))
    k3 = kl_penalty(lp, ref, "k3", input_clamp=None, output_clamp=None)
    torch.testing.assert_close(k3[2], torch.tensor(math.exp(3) - 3 - 1))
    k3c = kl_penalty(lp, ref, "k3")
    torch.testing.assert_close(k3c, torch.tensor([10.0, 10.0, 10.0, 10.0]))


def test_gradient_and_masked_minus_inf():
    lp = torch.tensor([[math.log(0.5), -float("inf")]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25), -float("inf")]])
    mask = torch.tensor([[1, 0]])
    kl = kl_penalty(lp, ref, "k3", mask=mask)
    assert kl[0, 1] == 0
    kl.sum().backward()
    # d/dx (exp(-x) + x - 1) = 1 - exp(-x) = 1 - 0.5
    torch.testing.assert_close(lp.grad, torch.tensor([[0.5, 0.0]]))


def test_gradcheck_all_estimators():
    lp = (torch.randn(6, dtype=torch.float64) * 0.5).requires_grad_(True)
    ref = torch.randn(6, dtype=torch.float64) * 0.5
    for est in ("k1", "k2", "k3"):
        assert torch.autograd.gradcheck(lambda x, e=est: kl_penalty(x, ref, e), (lp,))


def test_kl_in_reward():
    lp = torch.tensor([[math.log(0.5), math.log(0.5)], [0.0, -5.0]])
    ref = torch.tensor([[math.log(0.25), math.log(0.5)], [-1.0, -float("inf")]])
    mask = torch.tensor([[1, 1], [1, 0]])
    rewards = torch.tensor([1.0, 0.0])
    shaped, pen = kl_reward_penalty(rewards, lp, ref, mask, coef=0.1, estimator="k1")
    torch.testing.assert_close(pen, torch.tensor([[0.1 * LN2, 0.0], [0.1, 0.0]]))
    torch.testing.assert_close(shaped, torch.tensor([1.0 - 0.1 * LN2, -0.1]))
    with pytest.raises(ValueError, match=">= 0"):
        kl_reward_penalty(rewards, lp, ref, mask, coef=-1.0)


def test_errors_and_entropy():
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_penalty(torch.zeros(2), torch.zeros(2), "k4")
    with pytest.raises(ValueError, match="shape"):
        kl_penalty(torch.zeros(2), torch.zeros(3))
    ent = entropy_from_logits(torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(ent, torch.tensor([math.log(4), 0.0]), atol=1e-6, rtol=0)
