import math

import pytest
import torch

from nemo_prorl.rollout.metrics import logprob_mismatch_metrics, pad_logprobs, token_mult_prob_error


def test_token_mult_prob_error_hand_computed():
    rollout = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -3.0, -1.0]])
    train = torch.tensor([[-1.5, -2.0, 5.0], [-0.5, -2.0, -9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    expected = (math.exp(0.5) + 1.0 + 1.0 + math.exp(1.0)) / 4
    assert token_mult_prob_error(rollout, train, mask) == pytest.approx(expected, rel=1e-12)


def test_identical_logprobs_give_one():
    x = torch.randn(3, 5)
    assert token_mult_prob_error(x, x.clone(), torch.ones(3, 5)) == 1.0


def test_nan_propagates_and_empty_mask_raises():
    a = torch.tensor([[0.0, float("nan")]])
    assert math.isnan(token_mult_prob_error(a, torch.zeros(1, 2), torch.ones(1, 2)))
    assert token_mult_prob_error(a, torch.zeros(1, 2), torch.tensor([[1, 0]])) == 1.0
    with pytest.raises(ValueError, match="no response token"):
        token_mult_prob_error(a, a, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="shapes differ"):
        token_mult_prob_error(a, torch.zeros(2, 2), torch.ones(1, 2))


def test_mismatch_report():
    rollout = torch.tensor([[-1.0, -2.0, float("-inf")]])
    train = torch.tensor([[-1.1, -2.0, -3.0]])
    out = logprob_mismatch_metrics(rollout, train, torch.ones(1, 3), prefix="x/")
    assert out["x/tokens"] == 3.0
    assert out["x/nonfinite_tokens"] == 1.0
    assert out["x/token_mult_prob_error"] == pytest.approx((math.exp(0.1) + 1) / 2, rel=1e-6)
    assert out["x/logprob_abs_diff_max"] == pytest.approx(0.1, rel=1e-6)
    assert out["x/mismatch_frac_above_1.05"] == 0.5  # exp(0.1) = 1.105 > 1.05


def test_pad_logprobs():
    values, mask = pad_logprobs([torch.tensor([1.0, 2.0]), torch.tensor([3.0]), torch.zeros(0)])
    assert values.tolist() == [[1.0, 2.0], [3.0, 0.0], [0.0, 0.0]]
    assert mask.tolist() == [[True, True], [True, False], [False, False]]
