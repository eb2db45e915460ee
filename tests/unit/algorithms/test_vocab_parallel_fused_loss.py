"""``vocab_parallel_fused_loss`` (the training path's fused LM head) against the chunked head + loss.

The reference is today's path: :func:`chunked_logprobs` (logits recomputed in backward), then
``prorl_loss`` over the whole batch with the global normalisers. The fused head calls the loss on chunks
of whole rows; the ``loss_fn`` contract (a sum over row slices) makes both equal.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from nemo_prorl.algorithms import AlgorithmConfig, chunked_logprobs, naive_logprobs, prorl_loss
from nemo_prorl.algorithms import logprobs as lp_mod
from nemo_prorl.algorithms.logprobs import head_dtypes, vocab_parallel_fused_loss
from nemo_prorl.algorithms.policy_loss import loss_normalisers

B, L, H, V = 4, 6, 5, 13


def _inputs(seed: int, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, L, H, dtype=dtype, generator=g)
    w = torch.randn(V, H, dtype=dtype, generator=g)
    labels = torch.randint(0, V, (B, L), generator=g)
    mask = (torch.rand(B, L, generator=g) > 0.3).float()
    mask[2] = 0.0  # an empty row
    adv = torch.randn(B, dtype=dtype, generator=g)
    return h, w, labels, mask, adv, g


def _loss_closure(cfg, old, adv, ref, roll, mask):
    norm = loss_normalisers(mask)

    def loss(lp, ent, r0=0, r1=B):
        return prorl_loss(lp, old[r0:r1], adv[r0:r1], mask[r0:r1], cfg,
                          ref_logprobs=ref[r0:r1] if ref is not None else None, entropy=ent,
                          num_tokens=norm["num_tokens"], num_seqs=norm["num_seqs"],
                          rollout_logprobs=roll[r0:r1] if roll is not None else None).loss
    return loss


def _chunked_reference(h, w, labels, mask, loss, temperature, with_entropy):
    keep = mask.bool()
    lp, ent = chunked_logprobs(h[keep], w, labels[keep], chunk_size=3, temperature=temperature,
                               with_entropy=with_entropy)
    full_lp = torch.zeros(B, L, dtype=lp.dtype).masked_scatter(keep, lp)
    full_ent = torch.zeros(B, L, dtype=lp.dtype).masked_scatter(keep, ent) if with_entropy else None
    return loss(full_lp, full_ent), full_lp


CASES = list(itertools.product(
    ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"],
    ["k1", "k2", "k3"],
    [None, 3.0],  # dual clip
    ["none", "tis", "icepop"],
))


@pytest.mark.parametrize("agg,estimator,dual_clip,tis", CASES)
def test_matches_chunked_head_loss_and_grads_float64(agg, estimator, dual_clip, tis, monkeypatch):
    monkeypatch.setattr(lp_mod, "_BLOCK_ELEMS", 8)  # exercise the blocked tile walks (V=13: blocks of 2-4)
    monkeypatch.setattr(lp_mod, "_MIN_BLOCK_COLUMNS", 2)
    monkeypatch.setattr(lp_mod, "_GEMM_BLOCK_ELEMS", 12)  # and the online statistics of the GEMM walk
    cfg = AlgorithmConfig()
    cfg.loss.agg, cfg.loss.dual_clip, cfg.loss.tis = agg, dual_clip, tis
    cfg.loss.tis_min = 0.8 if tis == "icepop" else None
    cfg.kl.coef, cfg.kl.estimator, cfg.entropy.coef = 0.1, estimator, 0.01
    h, w, labels, mask, adv, g = _inputs(0)
    keep = mask.bool()
    with torch.no_grad():
        cur_lp, _ = chunked_logprobs(h[keep], w, labels[keep], temperature=0.7)
    cur = torch.zeros(B, L, dtype=h.dtype).masked_scatter(keep, cur_lp)
    old = cur + 0.3 * torch.randn(B, L, dtype=h.dtype, generator=g)  # some ratios clip on each side
    ref = cur + 0.2 * torch.randn(B, L, dtype=h.dtype, generator=g)
    roll = old + 0.3 * torch.randn(B, L, dtype=h.dtype, generator=g)  # some TIS weights out of bounds
    loss = _loss_closure(cfg, old, adv, ref, roll, mask)
    hr, wr = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    want, want_lp = _chunked_reference(hr, wr, labels, mask, loss, 0.7, True)
    gh, gw = torch.autograd.grad(want, [hr, wr])
    for chunk in (1, 4, 100):
        calls = []

        def row_loss(r0, r1, lp, ent, calls=calls):
            calls.append((r0, r1))
            return loss(lp, ent, r0, r1)

        hf, wf = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
        got, got_lp, got_ent = vocab_parallel_fused_loss(hf, wf, labels, mask, row_loss, chunk_size=chunk,
                                                         temperature=0.7, with_entropy=True)
        gh2, gw2 = torch.autograd.grad(got * 2.0, [hf, wf])  # backward scales the stored gradients
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got_lp, want_lp.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gh2, 2.0 * gh, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(gw2, 2.0 * gw, rtol=1e-10, atol=1e-12)
        assert calls[0][0] == 0 and calls[-1][1] <= B  # whole rows, in order, no row twice
        assert all(a[1] == b[0] for a, b in zip(calls, calls[1:]))
        if chunk == 1:
            assert len(calls) == 3  # one chunk per non-empty row


def test_gradcheck_float64_with_temperature_entropy_kl():
    """float64 finite differences of the fused head (its gradient is computed in forward)."""
    cfg = AlgorithmConfig()
    cfg.kl.coef, cfg.entropy.coef, cfg.loss.dual_clip = 0.1, 0.05, 3.0
    h, w, labels, mask, adv, g = _inputs(1)
    old = -2.5 + 0.3 * torch.randn(B, L, dtype=h.dtype, generator=g)
    ref = -2.5 + 0.3 * torch.randn(B, L, dtype=h.dtype, generator=g)
    loss = _loss_closure(cfg, old, adv, ref, None, mask)

    def f(hh, ww):
        return vocab_parallel_fused_loss(hh, ww, labels, mask, lambda r0, r1, lp, ent: loss(lp, ent, r0, r1),
                                         chunk_size=4, temperature=1.3, with_entropy=True)[0]

    # The Function hands its stored gradients over once (no copy of [V, H]); torch.autograd.gradcheck
    # backpropagates the same output several times, so the central differences are taken here instead.
    hf, wf = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    gh, gw = torch.autograd.grad(f(hf, wf), [hf, wf])
    eps = 1e-6
    for x, analytic, other in ((h, gh, "h"), (w, gw, "w")):
        numeric = torch.zeros_like(x)
        for i in range(x.numel()):
            xp, xm = x.clone(), x.clone()
            xp.view(-1)[i] += eps
            xm.view(-1)[i] -= eps
            args_p = (xp, w) if other == "h" else (h, xp)
            args_m = (xm, w) if other == "h" else (h, xm)
            with torch.no_grad():
                numeric.view(-1)[i] = (f(*args_p) - f(*args_m)) / (2 * eps)
        torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-8)
    assert gh.abs().max() > 1e-3 and gw.abs().max() > 1e-3  # the check is not vacuous


def test_logprobs_entropy_hand_values():
    """V=3, H=1: logits (x, 2x, 0) at x=1 -> log-probs and entropy computed by hand."""
    h = torch.ones(1, 1, 1, dtype=torch.float64)
    w = torch.tensor([[1.0], [2.0], [0.0]], dtype=torch.float64)
    z = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    log_z = torch.log(torch.exp(z).sum())  # log(e + e^2 + 1) = 2.4076059644...
    _, lp, ent = vocab_parallel_fused_loss(h, w, torch.tensor([[1]]), torch.ones(1, 1),
                                           lambda r0, r1, lp, ent: lp.sum(), with_entropy=True)
    assert abs(float(log_z) - 2.4076059644443806) < 1e-12
    assert abs(float(lp) - (2.0 - 2.4076059644443806)) < 1e-12
    p = torch.exp(z - log_z)
    assert abs(float(ent) - float(-(p * p.log()).sum())) < 1e-12


def test_no_valid_token_calls_loss_once_with_zero_grads():
    h, w, labels, _, _, _ = _inputs(2)
    mask = torch.zeros(B, L)
    seen = []
    hf, wf = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    loss, lp, _ = vocab_parallel_fused_loss(hf, wf, labels, mask,
                                            lambda r0, r1, lp, ent: seen.append((r0, r1)) or lp.sum())
    loss.backward()
    assert seen == [(0, B)] and float(loss.detach()) == 0.0 and not lp.any()
    assert not hf.grad.any() and not wf.grad.any()


def test_bad_label_and_shapes_are_named():
    h, w, labels, mask, _, _ = _inputs(3)
    labels = labels.clone()
    labels[0, 0], mask[0, 0] = V + 2, 1.0
    with pytest.raises(ValueError, match="not owned by exactly one vocabulary shard"):
        vocab_parallel_fused_loss(h, w, labels, mask, lambda r0, r1, lp, ent: lp.sum())
    with pytest.raises(ValueError, match=r"hidden must be \[B, L, H\]"):
        vocab_parallel_fused_loss(h[0], w, labels, mask, lambda r0, r1, lp, ent: lp.sum())


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_bf16_head_matches_fp32_within_tolerance(temperature):
    """bf16 weights and hidden states: bf16 GEMMs (fp32 accumulation), fp32 logits/softmax, no fp32 weight.

    With a temperature the bf16 path divides the fp32 logits (not the rounded bf16 inputs) and puts 1/T into
    the per-token gradient coefficients; the fp32 path folds 1/T into its ``[c, H]`` input instead.

    Tolerance vs the fp32 head on the same (bf16-representable) inputs: the logits differ by the bf16
    rounding of the GEMM output (relative 2^-8 ~ 0.4%), so log-probs agree to 0.05 absolute at |z| ~ 3, the
    loss to 2% and the gradients to 3% of their largest entry.
    """
    Bb, Lb, Hb, Vb = 4, 16, 64, 500
    g = torch.Generator().manual_seed(4)
    h = (torch.randn(Bb, Lb, Hb, generator=g)).bfloat16()
    w = (torch.randn(Vb, Hb, generator=g) / Hb**0.5).bfloat16()
    labels = torch.randint(0, Vb, (Bb, Lb), generator=g)
    mask = (torch.rand(Bb, Lb, generator=g) > 0.2).float()
    cfg = AlgorithmConfig()
    cfg.kl.coef, cfg.entropy.coef = 0.1, 0.01
    adv = torch.randn(Bb, generator=g)
    # old / reference log-probs near the policy's own (as in training): the k3 KL term's gradient grows as
    # exp(ref - logprob), so a reference far above the sharper T=0.7 log-probs would amplify any rounding
    keep = mask.bool()
    cur, _ = naive_logprobs(h.float()[keep], w.float(), labels[keep], temperature=temperature)
    old = torch.zeros(Bb, Lb).masked_scatter(keep, cur) + 0.3 * torch.randn(Bb, Lb, generator=g)
    norm = loss_normalisers(mask)

    def row_loss(r0, r1, lp, ent):
        return prorl_loss(lp, old[r0:r1], adv[r0:r1], mask[r0:r1], cfg, ref_logprobs=old[r0:r1], entropy=ent,
                          num_tokens=norm["num_tokens"], num_seqs=norm["num_seqs"]).loss

    assert head_dtypes(h, w) == (torch.bfloat16, torch.float32)
    out = {}
    for name, (hh, ww) in {"bf16": (h, w), "fp32": (h.float(), w.float())}.items():
        hh, ww = hh.clone().requires_grad_(True), ww.clone().requires_grad_(True)
        loss, lp, ent = vocab_parallel_fused_loss(hh, ww, labels, mask, row_loss, chunk_size=16,
                                                  with_entropy=True, temperature=temperature)
        loss.backward()
        out[name] = (loss, lp, ent, hh.grad, ww.grad)
    lb, lpb, entb, ghb, gwb = out["bf16"]
    lf, lpf, entf, ghf, gwf = out["fp32"]
    assert lpb.dtype == torch.float32 and ghb.dtype == torch.bfloat16 and gwb.dtype == torch.bfloat16
    # the fp32 fused head equals the naive fp32 head
    naive_lp, _ = naive_logprobs(h.float()[keep], w.float(), labels[keep], temperature=temperature)
    torch.testing.assert_close(lpf[keep], naive_lp, rtol=1e-5, atol=1e-5)
    assert (lpb - lpf).abs().max() < 0.05 and (entb - entf).abs().max() < 0.05
    assert abs(float(lb) - float(lf)) <= 0.02 * abs(float(lf))
    assert (ghb.float() - ghf).abs().max() <= 0.03 * ghf.abs().max()
    assert (gwb.float() - gwf).abs().max() <= 0.03 * gwf.abs().max()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_head_on_cuda_has_fp32_logits_and_no_fp32_weight_copy():
    """On CUDA the logits GEMM writes fp32 (``aten::mm.dtype``), so the bf16 fused head's log-probs equal
    the fp32-promoted :func:`vocab_parallel_logprobs` on the same bf16 values to 2e-3 (summation order
    and TF32 off/on only), and the head's extra memory stays below the size of an fp32 weight copy."""
    from nemo_prorl.algorithms import vocab_parallel_logprobs

    torch.manual_seed(0)
    t, hid, vocab, chunk = 1024, 896, 151936, 256
    h = torch.randn(1, t, hid, device="cuda").bfloat16().requires_grad_(True)
    w = (torch.randn(vocab, hid, device="cuda") * 0.02).bfloat16().requires_grad_(True)
    labels = torch.randint(0, vocab, (1, t), device="cuda")
    mask = torch.ones(1, t, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss, lp, _ = vocab_parallel_fused_loss(h, w, labels, mask, lambda r0, r1, lp, ent: -lp.sum(),
                                            chunk_size=chunk)
    loss.backward()
    extra = torch.cuda.max_memory_allocated() - base
    with torch.no_grad():
        ref, _ = vocab_parallel_logprobs(h[0].float(), w, labels[0], vocab_start=0, chunk_size=chunk)
    assert float((lp[0] - ref.float()).abs().max()) < 2e-3
    # fp32 grad_w accumulator (4 B/elem) + bf16 grads + two fp32 tiles, but no second fp32 [V, H] copy
    assert extra < 4 * vocab * hid + 2 * vocab * hid + 3 * 4 * chunk * vocab


def test_tile_walk_blocks_are_few_on_gpu_and_cache_sized_on_cpu():
    """The element-wise walks over a ``[c, V]`` tile run a handful of torch ops per block of columns.

    Emulated upstream behaviour: on CUDA each of those ops is a kernel launch (several microseconds of
    launch latency each, however small the block), so the walk must use few wide blocks there; on a CPU
    an op on a cache-resident block costs what its elements cost, so blocks are sized to the cache. The
    device is only inspected (``torch.device("cuda")`` needs no GPU).
    """
    cols_gpu = lp_mod._block_columns(1024, 151936, torch.device("cuda"))
    assert cols_gpu == 8192 and -(-151936 // cols_gpu) == 19  # 19 blocks per walk
    assert lp_mod._block_columns(16, 100, torch.device("cuda")) == 100  # never wider than the tile
    cols_cpu = lp_mod._block_columns(512, 151936, torch.device("cpu"))
    assert cols_cpu * 512 == lp_mod._BLOCK_ELEMS  # 256 columns: 512 KiB per fp32 block
    assert lp_mod._block_columns(8192, 151936, torch.device("cpu")) == lp_mod._MIN_BLOCK_COLUMNS
    # the GEMM walk: 1,024-column blocks (2 MiB) on a CPU, the same 19 wide blocks on a GPU
    assert lp_mod._block_columns(512, 151936, torch.device("cpu"), lp_mod._GEMM_BLOCK_ELEMS) == 1024
    assert lp_mod._block_columns(512, 151936, torch.device("cuda"), lp_mod._GEMM_BLOCK_ELEMS) == 8192


def _stats_reference(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m = z.amax(dim=1)
    e = (z - m[:, None]).exp()
    return m, e.sum(dim=1), (e * (z - m[:, None])).sum(dim=1)


@pytest.mark.parametrize("cols", [1, 3, 7, 40])
def test_logits_walk_online_statistics_match_direct_ones(cols):
    """The GEMM walk's running max / sum-exp / sum e^z' z' equal the whole-row values (float64).

    The columns are scaled up along the vocabulary so that the row max moves to a later block several
    times: every rebase of the running sums on a new max is exercised.
    """
    g = torch.Generator().manual_seed(3)
    hs = torch.randn(6, 5, dtype=torch.float64, generator=g)
    grow = torch.linspace(0.2, 3.0, 23, dtype=torch.float64)[:, None]
    w = torch.randn(23, 5, dtype=torch.float64, generator=g) * grow
    tile = torch.empty(6, 23, dtype=torch.float64)
    buf = torch.empty(2, 6, cols, dtype=torch.float64)
    m, s, d = lp_mod._tile_logits_stats((hs, w), tile, 1.0, True, buf[0], buf[1])
    z = hs @ w.T
    torch.testing.assert_close(tile, z, rtol=1e-13, atol=1e-13)  # the tile holds the raw logits
    for got, want in zip((m, s, d), _stats_reference(z)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    m2, s2, d2 = lp_mod._tile_logits_stats((hs, w), tile, 1.0, False, buf[0], buf[1])
    assert d2 is None and torch.equal(m2, m) and torch.allclose(s2, s, rtol=1e-14)


def test_logits_walk_over_a_filled_tile_scales_each_block():
    """``gemm=None``: the tile already holds the logits (a bf16 GEMM's fp32 result); 1/T is applied to each
    block in the walk, and GEMM inputs of another dtype than the tile are refused."""
    g = torch.Generator().manual_seed(4)
    hs = torch.randn(4, 8, generator=g).bfloat16()
    w = torch.randn(30, 8, generator=g).bfloat16()
    z = (hs @ w.T).float()
    tile = z.clone()
    buf = torch.empty(2, 4, 7)
    m, s, d = lp_mod._tile_logits_stats(None, tile, 1 / 0.7, True, buf[0], buf[1])
    torch.testing.assert_close(tile, z / 0.7, rtol=1e-6, atol=1e-6)
    for got, want in zip((m, s, d), _stats_reference(z / 0.7)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="GEMM inputs in torch.bfloat16 cannot write a torch.float32 tile"):
        lp_mod._tile_logits_stats((hs, w), tile, 1.0, True, buf[0], buf[1])


def test_bf16_head_makes_each_tile_with_one_fp32_result_gemm(monkeypatch):
    """bf16 inputs: one ``[c, H] x [H, V]`` GEMM per chunk through ``_mm_to``, never column blocks.

    Emulated upstream behaviour: on CUDA ``torch.mm(a, b, out_dtype=torch.float32)`` (``aten::mm.dtype``)
    returns a fresh fp32 matrix written by cuBLAS in its epilogue; it takes no ``out`` view of a larger
    tile, so a blocked GEMM would write each block to a temporary and copy it (two extra passes of the
    tile through memory per chunk). On CPU ``_mm_to`` computes in bf16 and converts; the call pattern is
    what is checked.
    """
    calls = []
    real = lp_mod._mm_to

    def spy(a, b, dtype):
        calls.append((tuple(a.shape), tuple(b.shape), dtype))
        return real(a, b, dtype)

    monkeypatch.setattr(lp_mod, "_mm_to", spy)
    monkeypatch.setattr(lp_mod, "_GEMM_BLOCK_ELEMS", 8)  # blocks would be tiny if the GEMM were blocked
    h, w, labels, mask, adv, g = _inputs(0, torch.float32)
    keep = mask.bool()
    loss, lp, _ = vocab_parallel_fused_loss(h.bfloat16(), w.bfloat16(), labels, mask,
                                            lambda r0, r1, lp, ent: lp.sum(), chunk_size=6)
    forward = [c for c in calls if c[1] == (H, V)]
    assert forward and all(c[2] == torch.float32 for c in forward)
    assert sum(c[0][0] for c in forward) == int(keep.sum())  # every valid token in one full-width GEMM
    with torch.no_grad():
        ref, _ = chunked_logprobs(h[keep].bfloat16().float(), w.bfloat16().float(), labels[keep])
    torch.testing.assert_close(lp[keep].float(), ref, rtol=0, atol=2e-2)


def test_shard_statistics_rebased_on_the_global_max_sum_to_the_full_vocabulary():
    """What the TP all-reduce adds up: per-shard statistics rebased on the max over all shards.

    Three shards of 9, 0 and 14 columns; the empty one (``m = -inf``, sums 0) must add exactly 0, not NaN.
    """
    g = torch.Generator().manual_seed(5)
    hs = torch.randn(5, 4, dtype=torch.float64, generator=g)
    w = 2.0 * torch.randn(23, 4, dtype=torch.float64, generator=g)
    bounds = [(0, 9), (9, 9), (9, 23)]
    parts = []
    for a, b in bounds:
        tile = torch.empty(5, b - a, dtype=torch.float64)
        buf = torch.empty(2, 5, 4, dtype=torch.float64)
        parts.append(lp_mod._tile_logits_stats((hs, w[a:b]), tile, 1.0, True, buf[0], buf[1]))
    assert bool(torch.isinf(parts[1][0]).all()) and float(parts[1][1].abs().max()) == 0.0
    m = torch.stack([p[0] for p in parts]).amax(dim=0)
    total_s = torch.zeros(5, dtype=torch.float64)
    total_d = torch.zeros(5, dtype=torch.float64)
    for m_local, s_local, d_local in parts:
        s_r, d_r = lp_mod._rebase_stats(m_local, s_local, d_local, m)
        assert bool(torch.isfinite(s_r).all()) and bool(torch.isfinite(d_r).all())
        total_s += s_r
        total_d += d_r
    want_m, want_s, want_d = _stats_reference(hs @ w.T)
    torch.testing.assert_close(m, want_m)
    torch.testing.assert_close(total_s, want_s, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(total_d, want_d, rtol=1e-12, atol=1e-12)
