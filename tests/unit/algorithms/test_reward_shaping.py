import pytest
import torch

from nemo_prorl.algorithms import RewardShapingConfig, overlong_penalty, shape_rewards, stop_properly_penalty


def test_stop_properly_penalty():
    r = torch.tensor([1.0, 0.5, 1.0, 0.0])
    trunc = torch.tensor([True, True, False, True])
    torch.testing.assert_close(stop_properly_penalty(r, trunc, 0.0), torch.tensor([0.0, 0.0, 1.0, 0.0]))
    torch.testing.assert_close(stop_properly_penalty(r, trunc, 0.5), torch.tensor([0.5, 0.25, 1.0, 0.0]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stop_properly_penalty(r, trunc, 1.5)
    with pytest.raises(ValueError, match="shape"):
        stop_properly_penalty(r, trunc[:2], 0.0)


def test_overlong_penalty_ramp():
    pen = overlong_penalty(torch.tensor([5, 6, 7, 8, 10]), max_len=10, buffer_len=4, penalty_factor=1.0)
    torch.testing.assert_close(pen, torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0]))
    pen2 = overlong_penalty(torch.tensor([8]), max_len=10, buffer_len=4, penalty_factor=0.5)
    torch.testing.assert_close(pen2, torch.tensor([-0.25]))
    with pytest.raises(ValueError, match="buffer_len"):
        overlong_penalty(torch.tensor([1]), max_len=4, buffer_len=4)


def test_shape_rewards_combined():
    cfg = RewardShapingConfig(
        stop_properly_penalty_coef=0.0, overlong_enable=True, overlong_buffer_len=4, max_response_len=10
    )
    r = torch.tensor([1.0, 1.0, 1.0])
    out = shape_rewards(
        r, cfg, truncated=torch.tensor([False, False, True]), lengths=torch.tensor([4, 8, 10])
    )
    torch.testing.assert_close(out, torch.tensor([1.0, 0.5, -1.0]))
    assert r.tolist() == [1.0, 1.0, 1.0]
    # defaults: shaping off
    torch.testing.assert_close(shape_rewards(r, RewardShapingConfig()), r)
    with pytest.raises(ValueError, match="truncated flags are required"):
        shape_rewards(r, cfg, lengths=torch.tensor([4, 8, 10]))
    with pytest.raises(ValueError, match="lengths are required"):
        shape_rewards(r, cfg, truncated=torch.tensor([False, False, True]))
