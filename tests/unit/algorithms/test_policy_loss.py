import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_prorl.algorithms import (
    AGG_MODES,
    AlgorithmConfig,
    LossConfig,
    aggregate_loss,
    clipped_policy_loss,
    kl_penalty,
    loss_normalisers,
    prorl_loss,
)

RATIOS = [1.0, 1.5, 0.5, 0.5, 1.5, 4.0]
ADVS = [1.0, 1.0, 1.0, -1.0, -1.0, -2.0]


def _case(dtype=torch.float64):
    old = torch.full((1, 6), math.log(0.25), dtype=dtype)
    lp = (old + torch.log(torch.tensor([RATIOS], dtype=dtype))).requires_grad_(True)
    adv = torch.tensor([ADVS], dtype=dtype)
    return lp, old, adv, torch.ones(1, 6, dtype=dtype)


def test_clipped_loss_hand_computed_no_dual_clip():
    lp, old, adv, mask = _case()
    loss_mat, m = clipped_policy_loss(lp, old, adv, mask, LossConfig(clip_low=0.2, clip_high=0.4))
    torch.testing.assert_close(
        loss_mat, torch.tensor([[-1.0, -1.4, -0.5, 0.8, 1.5, 8.0]], dtype=torch.float64)
    )
    loss = aggregate_loss(loss_mat, mask)
    torch.testing.assert_close(loss, torch.tensor(7.4 / 6, dtype=torch.float64))
    loss.backward()
    # unclipped tokens: d/dlp (-A r) = -A r; clipped tokens: 0; then / 6 tokens
    expected = torch.tensor([[-1.0, 0.0, -0.5, 0.0, 1.5, 8.0]], dtype=torch.float64) / 6
    torch.testing.assert_close(lp.grad, expected)
    assert m["clip_frac_high"].item() == pytest.approx(1 / 6)
    assert m["clip_frac_low"].item() == pytest.approx(1 / 6)
    assert m["dual_clip_frac"].item() == 0.0
    assert m["ratio_mean"].item() == pytest.approx(1.5)
    assert m["ratio_min"].item() == pytest.approx(0.5)
    assert m["ratio_max"].item() == pytest.approx(4.0)
    kl = sum(r - 1 - math.log(r) for r in RATIOS) / 6
    assert m["approx_kl"].item() == pytest.approx(kl)


def test_dual_clip_bounds_negative_advantages():
    lp, old, adv, mask = _case()
    loss_mat, m = clipped_policy_loss(lp, old, adv, mask, LossConfig(dual_clip=3.0))
    torch.testing.assert_close(
        loss_mat, torch.tensor([[-1.0, -1.4, -0.5, 0.8, 1.5, 6.0]], dtype=torch.float64)
    )
    aggregate_loss(loss_mat, mask).backward()
    expected = torch.tensor([[-1.0, 0.0, -0.5, 0.0, 1.5, 0.0]], dtype=torch.float64) / 6
    torch.testing.assert_close(lp.grad, expected)
    assert m["dual_clip_frac"].item() == pytest.approx(1 / 6)


def test_decoupled_clip_values():
    # clip_high 0.1: ratio 1.5 with A = 1 is clipped at 1.1; clip_low 0.6: ratio 0.5 with A = -1 at 0.4
    lp, old, adv, mask = _case()
    loss_mat, _ = clipped_policy_loss(lp, old, adv, mask, LossConfig(clip_low=0.6, clip_high=0.1))
    torch.testing.assert_close(loss_mat[0, :4], torch.tensor([-1.0, -1.1, -0.5, 0.5], dtype=torch.float64))


def test_one_dim_advantages_broadcast():
    lp, old, adv, mask = _case()
    a, _ = clipped_policy_loss(lp, old, torch.tensor([2.0], dtype=torch.float64), mask, LossConfig())
    b, _ = clipped_policy_loss(lp, old, torch.full((1, 6), 2.0, dtype=torch.float64), mask, LossConfig())
    torch.testing.assert_close(a, b)


def test_masked_minus_inf_and_extreme_ratios_are_finite():
    lp = torch.tensor([[-1.0, -float("inf"), 0.0], [-60.0, -float("inf"), -float("inf")]], requires_grad=True)
    old = torch.tensor([[-1.0, -float("inf"), -70.0], [-1.0, -float("inf"), 0.0]])
    mask = torch.tensor([[1, 0, 1], [1, 0, 0]])
    adv = torch.tensor([[1.0, 1.0, -1.0], [1.0, 5.0, 5.0]])
    loss_mat, m = clipped_policy_loss(lp, old, adv, mask, LossConfig(dual_clip=3.0))
    loss = aggregate_loss(loss_mat, mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp.grad).all()
    assert lp.grad[0, 1] == 0 and lp.grad[1, 1:].abs().sum() == 0
    # ratio exp(70) is clamped to exp(20); A < 0 with dual clip 3 -> loss 3
    assert loss_mat[0, 2].item() == pytest.approx(3.0)
    assert all(torch.isfinite(v) for v in m.values())


def test_fully_masked_batch_gives_zero_loss_and_grad():
    lp = torch.full((2, 3), -float("inf"), requires_grad=True)
    mask = torch.zeros(2, 3)
    loss_mat, m = clipped_policy_loss(lp, lp.detach(), torch.ones(2), mask, LossConfig())
    for mode in AGG_MODES:
        loss = aggregate_loss(loss_mat, mask, mode)
        assert loss.item() == 0.0
    aggregate_loss(loss_mat, mask).backward()
    assert lp.grad.abs().sum() == 0
    assert m["ratio_min"].item() == 1.0 and m["clip_frac_low"].item() == 0.0


def test_aggregation_modes_hand_computed():
    loss_mat = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, float("nan")], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert aggregate_loss(loss_mat, mask, "token-mean").item() == pytest.approx(7 / 3)
    assert aggregate_loss(loss_mat, mask, "seq-mean-token-sum").item() == pytest.approx(3.5)
    assert aggregate_loss(loss_mat, mask, "seq-mean-token-mean").item() == pytest.approx(2.75)
    assert aggregate_loss(loss_mat, mask, "seq-mean-token-sum-norm").item() == pytest.approx(7 / 6)
    assert aggregate_loss(loss_mat, mask, "seq-mean-token-sum-norm", norm_len=4).item() == pytest.approx(
        0.875
    )
    assert aggregate_loss(loss_mat, mask, "token-mean", num_tokens=10).item() == pytest.approx(0.7)
    assert aggregate_loss(loss_mat, mask, "seq-mean-token-sum", num_seqs=7).item() == pytest.approx(1.0)
    assert loss_normalisers(mask) == {"num_tokens": 3, "num_seqs": 2}
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate_loss(loss_mat, mask, "mean")
    with pytest.raises(ValueError, match="shape"):
        aggregate_loss(loss_mat, mask[:2])


def _random_batch(seed: int, b: int = 8, t: int = 7):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3
    lp = old + 0.5 * torch.randn(b, t, generator=g, dtype=torch.float64)
    ref = old + 0.3 * torch.randn(b, t, generator=g, dtype=torch.float64)
    lengths = torch.randint(0, t + 1, (b,), generator=g)
    lengths[2] = 0  # one fully masked sequence
    mask = (torch.arange(t)[None, :] < lengths[:, None]).to(torch.float64)
    lp = torch.where(mask.bool(), lp, torch.tensor(-float("inf"), dtype=torch.float64))
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    ent = torch.rand(b, t, generator=g, dtype=torch.float64)
    return lp, old, ref, adv, mask, ent


@pytest.mark.parametrize("mode", AGG_MODES)
def test_micro_batches_with_global_normalisers_sum_to_full_batch(mode):
    lp, old, ref, adv, mask, ent = _random_batch(0)
    cfg = AlgorithmConfig()
    cfg.loss.agg = mode
    cfg.loss.norm_len = 7
    cfg.loss.dual_clip = 3.0
    cfg.kl.coef = 0.1
    cfg.entropy.coef = 0.01
    full_lp = lp.clone().requires_grad_(True)
    full_ent = ent.clone().requires_grad_(True)
    full = prorl_loss(full_lp, old, adv, mask, cfg, ref_logprobs=ref, entropy=full_ent)
    full.loss.backward()

    norms = loss_normalisers(mask)
    micro_lp = lp.clone().requires_grad_(True)
    micro_ent = ent.clone().requires_grad_(True)
    total = torch.zeros((), dtype=torch.float64)
    for idx in (slice(0, 3), slice(3, 4), slice(4, 8)):
        part = prorl_loss(
            micro_lp[idx],
            old[idx],
            adv[idx],
            mask[idx],
            cfg,
            ref_logprobs=ref[idx],
            entropy=micro_ent[idx],
            num_tokens=norms["num_tokens"],
            num_seqs=norms["num_seqs"],
        )
        part.loss.backward()
        total = total + part.loss.detach()
    torch.testing.assert_close(total, full.loss.detach(), atol=1e-12, rtol=1e-12)
    grad_full = torch.where(mask.bool(), full_lp.grad, torch.zeros(()))
    torch.testing.assert_close(micro_lp.grad, grad_full)
    torch.testing.assert_close(micro_ent.grad, full_ent.grad)
    assert torch.isfinite(full_lp.grad).all()


def test_prorl_loss_composition_hand_checked():
    lp, old, ref, adv, mask, ent = _random_batch(1)
    cfg = AlgorithmConfig()
    cfg.kl.coef = 0.5
    cfg.entropy.coef = 0.2
    out = prorl_loss(lp, old, adv, mask, cfg, ref_logprobs=ref, entropy=ent)
    pg_mat, _ = clipped_policy_loss(lp, old, adv, mask, cfg.loss)
    pg = aggregate_loss(pg_mat, mask)
    kl = aggregate_loss(kl_penalty(lp, ref, "k3", mask=mask), mask)
    e = aggregate_loss(ent, mask)
    torch.testing.assert_close(out.loss, pg + 0.5 * kl - 0.2 * e)
    torch.testing.assert_close(out.metrics["kl_loss"], kl)
    torch.testing.assert_close(out.metrics["entropy"], e)
    torch.testing.assert_close(out.metrics["pg_loss"], pg)

    # KL in the reward: the loss has no KL term but the metric is still reported
    cfg.kl.where = "reward"
    out2 = prorl_loss(lp, old, adv, mask, cfg, ref_logprobs=ref, entropy=ent)
    torch.testing.assert_close(out2.loss, pg - 0.2 * e)
    torch.testing.assert_close(out2.metrics["kl_loss"], kl)


def test_prorl_loss_requires_reference_when_kl_on():
    lp, old, _, adv, mask, _ = _random_batch(2)
    with pytest.raises(ValueError, match="ref_logprobs"):
        prorl_loss(lp, old, adv, mask, AlgorithmConfig())
    cfg = AlgorithmConfig()
    cfg.kl.coef = 0.0
    assert torch.isfinite(prorl_loss(lp, old, adv, mask, cfg).loss)


def test_gradcheck_prorl_loss_float64():
    g = torch.Generator().manual_seed(5)
    old = -torch.rand(3, 4, generator=g, dtype=torch.float64) - 0.5
    # ratios between 0.85 and 1.25 stay away from the clip edges (0.8, 1.4)
    lp = (old + torch.empty(3, 4, dtype=torch.float64).uniform_(-0.15, 0.2, generator=g)).requires_grad_(True)
    ref = old + 0.2 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    ent = torch.rand(3, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.float64)
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    for mode in AGG_MODES:
        cfg = AlgorithmConfig()
        cfg.loss.agg = mode
        cfg.kl.coef = 0.3
        cfg.entropy.coef = 0.1
        assert torch.autograd.gradcheck(
            lambda a, e, c=cfg: prorl_loss(a, old, adv, mask, c, ref_logprobs=ref, entropy=e).loss, (lp, ent)
        )


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(1, 9),
    t=st.integers(1, 6),
    cuts=st.lists(st.integers(0, 9), max_size=4),
    mode=st.sampled_from(AGG_MODES),
    seed=st.integers(0, 1000),
)
def test_micro_batch_equivalence_property(b, t, cuts, mode, seed):
    g = torch.Generator().manual_seed(seed)
    loss_mat = torch.randn(b, t, generator=g, dtype=torch.float64)
    mask = (torch.rand(b, t, generator=g) > 0.4).to(torch.float64)
    full = aggregate_loss(loss_mat, mask, mode, norm_len=t)
    bounds = sorted({0, b, *[c for c in cuts if c < b]})
    norms = loss_normalisers(mask)
    total = sum(
        aggregate_loss(loss_mat[s:e], mask[s:e], mode, norm_len=t, **norms)
        for s, e in zip(bounds, bounds[1:])
    )
    torch.testing.assert_close(total, full, atol=1e-12, rtol=1e-12)
