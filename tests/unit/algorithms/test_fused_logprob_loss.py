"""``fused_prorl_loss`` / ``fused_logprob_loss`` against ``prorl_loss(chunked_logprobs(...))`` (float64)."""

from __future__ import annotations

import itertools

import pytest
import torch

from nemo_prorl.algorithms import AlgorithmConfig, chunked_logprobs, prorl_loss
from nemo_prorl.algorithms import logprobs as lp_mod
from nemo_prorl.algorithms.logprobs import fused_logprob_loss, fused_prorl_loss

B, L, H, V = 3, 7, 5, 11


def _inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, L, H, dtype=torch.float64, generator=g).requires_grad_(True)
    w = torch.randn(V, H, dtype=torch.float64, generator=g).requires_grad_(True)
    labels = torch.randint(0, V, (B, L), generator=g)
    mask = (torch.rand(B, L, generator=g) > 0.3).float()
    mask[1] = 0.0  # an empty row
    adv = torch.randn(B, dtype=torch.float64, generator=g)
    return h, w, labels, mask, adv, g


def _reference(h, w, labels, mask, old, adv, ref, cfg, with_entropy, temperature):
    keep = mask.bool()
    lp, ent = chunked_logprobs(h[keep], w, labels[keep], chunk_size=4, with_entropy=with_entropy,
                               temperature=temperature)
    full_lp = torch.zeros(B, L, dtype=h.dtype).masked_scatter(keep, lp)
    full_ent = torch.zeros(B, L, dtype=h.dtype).masked_scatter(keep, ent) if with_entropy else None
    return prorl_loss(full_lp, old, adv, mask, cfg, ref_logprobs=ref, entropy=full_ent), full_lp


@pytest.mark.parametrize(
    "agg,ent_coef,kl_coef,with_entropy",
    [(a, e, k, w) for a, e, k, w in itertools.product(
        ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"], [0.0, 0.01], [0.0, 0.1],
        [False, True]) if not (e > 0 and not w)],
)
def test_matches_unfused_loss_grads_metrics(agg, ent_coef, kl_coef, with_entropy, monkeypatch):
    monkeypatch.setattr(lp_mod, "_BLOCK_ELEMS", 8)  # exercise the blocked tile walks (V=11: blocks of 2-4)
    monkeypatch.setattr(lp_mod, "_MIN_BLOCK_COLUMNS", 2)
    monkeypatch.setattr(lp_mod, "_GEMM_BLOCK_ELEMS", 12)  # and the online statistics of the GEMM walk
    cfg = AlgorithmConfig()
    cfg.loss.agg, cfg.entropy.coef, cfg.kl.coef = agg, ent_coef, kl_coef
    h, w, labels, mask, adv, g = _inputs(0)
    keep = mask.bool()
    with torch.no_grad():  # old log-probs near the current ones so that some ratios clip on each side
        cur_lp, _ = chunked_logprobs(h[keep], w, labels[keep], temperature=0.7)
    cur = torch.zeros(B, L, dtype=h.dtype).masked_scatter(keep, cur_lp)
    old = cur + 0.3 * torch.randn(B, L, dtype=h.dtype, generator=g)
    ref = cur + 0.1
    want, want_lp = _reference(h, w, labels, mask, old, adv, ref, cfg, with_entropy, 0.7)
    gh, gw = torch.autograd.grad(want.loss, [h, w])
    for chunk in (1, 3, 100):
        got, got_lp, got_ent = fused_prorl_loss(h, w, labels, old, adv, mask, cfg, ref_logprobs=ref,
                                                chunk_size=chunk, temperature=0.7, with_entropy=with_entropy)
        gh2, gw2 = torch.autograd.grad(got.loss * 2.0, [h, w])  # backward scales the stored grads
        torch.testing.assert_close(got.loss, want.loss)
        torch.testing.assert_close(gh2, 2 * gh)
        torch.testing.assert_close(gw2, 2 * gw)
        torch.testing.assert_close(got_lp, want_lp.detach())
        assert (got_ent is not None) == with_entropy
        assert set(got.metrics) == set(want.metrics)
        for key in want.metrics:
            torch.testing.assert_close(got.metrics[key].double(), want.metrics[key].double())
    assert 0.0 < float(want.metrics["clip_frac_low"] + want.metrics["clip_frac_high"]) < 1.0


def test_chunks_hold_whole_rows_unless_split():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]).bool()
    whole = lp_mod._token_chunks(mask, 4, split_rows=False)
    assert [(r0, r1) for r0, r1, _ in whole] == [(0, 1), (1, 2), (2, 3)]
    split = lp_mod._token_chunks(mask, 4, split_rows=True)
    assert [int(cm.sum()) for _, _, cm in split] == [4, 4, 1]
    assert [(r0, r1) for r0, r1, _ in split] == [(0, 2), (1, 3), (2, 3)]
    assert split[1][2].tolist() == [[False, True, False, False], [True, True, True, False]]


def test_custom_chunk_loss_and_no_weight_grad():
    h, w, labels, mask, _, _ = _inputs(1)
    w = w.detach()  # frozen output layer: only d hidden

    def chunk_loss(r0, r1, lp, ent, cmask):
        return -(lp * cmask).sum() / 10.0

    loss, lp, ent = fused_logprob_loss(h, w, labels, mask, chunk_loss, chunk_size=2)
    assert ent is None
    (gh,) = torch.autograd.grad(loss, [h])
    keep = mask.bool()
    ref_lp = torch.log_softmax(h[keep] @ w.T, -1).gather(1, labels[keep][:, None]).squeeze(1)
    ref_loss = -ref_lp.sum() / 10.0
    (gh_ref,) = torch.autograd.grad(ref_loss, [h])
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(gh, gh_ref)
    torch.testing.assert_close(lp[keep], ref_lp.detach())


def test_bad_inputs_are_named():
    h, w, labels, mask, adv, _ = _inputs(2)
    with pytest.raises(ValueError, match="hidden must be"):
        fused_logprob_loss(h[0], w, labels, mask, lambda *a: a[2].sum())
    with pytest.raises(ValueError, match="labels and mask"):
        fused_logprob_loss(h, w, labels[:, :-1], mask, lambda *a: a[2].sum())
    bad = labels.clone()
    bad[0, 0] = V
    with pytest.raises(ValueError, match="labels under mask"):
        fused_logprob_loss(h, w, bad, torch.ones(B, L), lambda *a: a[2].sum())
    cfg = AlgorithmConfig()
    cfg.entropy.coef = 0.1
    with pytest.raises(ValueError, match="with_entropy"):
        fused_prorl_loss(h, w, labels, torch.zeros(B, L), adv, mask, cfg)
