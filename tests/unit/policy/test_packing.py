"""Sequence packing: the pure layout functions, and the packed engine against the padded one.

Transformer Engine's packed attention cannot run on CPU, so the engine tests run the packed forward
through megatron's local layer spec with an explicit block-diagonal causal mask. That emulates
``TEDotProductAttention.forward`` (``megatron/core/extensions/transformer_engine.py``) called with
``qkv_format='thd'``, ``cu_seqlens_q = cu_seqlens_kv`` and the ``padding_causal`` mask type it switches
to for THD: each sequence of the pack attends causally within itself only. RoPE follows
``_apply_rotary_pos_emb_thd`` (``megatron/core/models/common/embeddings/rope_utils.py``), which applies
the first ``l_i`` rows of the rotary table to segment ``i`` -- the table indexed by positions that restart
per sequence; :func:`test_rope_by_position_ids_is_megatron_thd_rope` checks that on megatron's own
function. On a CUDA machine with TE the last test runs the real THD path.

Tolerances: packing changes matmul shapes (one ``[t, H]`` pack instead of ``[b, l, H]`` rows) and the
attention's softmax runs over more (masked) columns, so fp32 round-off may differ: measured max |diff|
5e-7 on log-probs (values down to -6.2), 2e-9 on the loss, 1.5e-8 on gradients of up to 0.096 (0.0
everywhere for fixed-count micro-batches); asserted with ``atol=1e-5``.
"""

from __future__ import annotations

import math

import pytest
import torch
from engine_case import (
    ENDS,
    PolicyCache,
    make_batch,
    prorl_loss_fn,
    step_and_restore,
    with_old_and_ref,
)

from nemo_prorl.policy import packing
from nemo_prorl.policy.interface import TokenBatch
from nemo_prorl.policy.megatron.config import MegatronPolicyConfig
from nemo_prorl.policy.micro_batching import padded_tokens, sequence_lengths, token_budget_bins

# ----------------------------------------------------------------------------------------- layout


def test_pack_layout_hand_computed():
    lay = packing.pack_layout([5, 3, 2])
    assert lay.cu_seqlens == (0, 5, 8, 10) and lay.total == 10 and lay.max_seqlen == 5 and lay.real == 10
    lay = packing.pack_layout([5, 3, 2], multiple=4)  # 10 -> 12: alignment segment [10, 12)
    assert lay.cu_seqlens == (0, 5, 8, 10, 12) and lay.total == 12 and lay.max_seqlen == 5 and lay.real == 10
    lay = packing.pack_layout([1], multiple=8)  # the alignment segment is the longest one
    assert lay.cu_seqlens == (0, 1, 8) and lay.total == 8 and lay.max_seqlen == 7 and lay.real == 1
    assert packing.pack_layout([4, 4], multiple=4).cu_seqlens == (0, 4, 8)  # already aligned: no segment


def test_pack_layout_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one row"):
        packing.pack_layout([])
    with pytest.raises(ValueError, match=r"lengths\[1\] must be a positive integer"):
        packing.pack_layout([3, 0])
    with pytest.raises(ValueError, match="multiple must be a positive integer"):
        packing.pack_layout([3], multiple=0)


def test_position_ids_restart_per_sequence():
    assert packing.position_ids(packing.pack_layout([3, 2])).tolist() == [0, 1, 2, 0, 1]
    assert packing.position_ids(packing.pack_layout([3, 2], multiple=4)).tolist() == [0, 1, 2, 0, 1, 0, 1, 2]
    assert packing.position_ids(packing.pack_layout([1, 1, 1])).tolist() == [0, 0, 0]


def test_pack_and_unpack_hand_computed():
    values = torch.tensor([[1, 2, 3, 9], [4, 5, 9, 9]])
    lay = packing.pack_layout([3, 2], multiple=3)  # 5 -> 6
    packed = packing.pack_rows(values, lay, fill=-1)
    assert packed.tolist() == [1, 2, 3, 4, 5, -1]
    assert packing.unpack_rows(packed, lay, 4).tolist() == [[1, 2, 3, 0], [4, 5, 0, 0]]
    index, valid = packing.unpack_index(lay, 4)
    assert index.tolist() == [[0, 1, 2, 0], [3, 4, 0, 0]]
    assert valid.tolist() == [[True, True, True, False], [True, True, False, False]]
    with pytest.raises(ValueError, match="shorter than the longest row 3"):
        packing.unpack_index(lay, 2)
    with pytest.raises(ValueError, match="2 rows for a layout of 3"):
        packing.pack_rows(values, packing.pack_layout([1, 1, 1]))


def test_pack_unpack_round_trip_and_gradient():
    g = torch.Generator().manual_seed(0)
    lengths = [7, 1, 4, 6]
    x = torch.randn(4, 9, 3, generator=g)
    lay = packing.pack_layout(lengths, multiple=4)  # 18 -> 20
    packed = packing.pack_rows(x, lay)
    assert packed.shape == (20, 3)
    assert bool((packed[18:] == 0).all())
    valid = torch.arange(9).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    torch.testing.assert_close(packing.unpack_rows(packed, lay, 9), x * valid.unsqueeze(-1), rtol=0, atol=0)
    # the gradient of the unpacked rows lands on exactly the packed positions they came from
    leaf = packed.clone().requires_grad_(True)
    w = torch.randn(4, 9, 3, generator=g)
    (packing.unpack_rows(leaf, lay, 9) * w).sum().backward()
    torch.testing.assert_close(leaf.grad, packing.pack_rows(w, lay), rtol=0, atol=0)


def test_block_causal_mask_hand_computed():
    mask = packing.block_causal_mask(packing.pack_layout([2, 1]))
    assert mask.shape == (1, 1, 3, 3) and mask.dtype == torch.bool
    allowed = [[1, 0, 0], [1, 1, 0], [0, 0, 1]]  # q0 -> k0; q1 -> k0, k1; q2 (second sequence) -> k2
    assert (~mask[0, 0]).int().tolist() == allowed


def test_block_mask_attention_is_per_sequence_causal_attention():
    """The mask's attention == each sequence's causal attention alone, concatenated (TE's THD contract)."""
    g = torch.Generator().manual_seed(1)
    lay = packing.pack_layout([5, 2, 4], multiple=4)  # 11 -> 12
    q, k, v = (torch.randn(2, lay.total, 8, generator=g) for _ in range(3))  # [heads, t, d]
    allowed = ~packing.block_causal_mask(lay)[0]
    packed = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    for a, b in zip(lay.cu_seqlens, lay.cu_seqlens[1:]):
        alone = torch.nn.functional.scaled_dot_product_attention(
            q[:, a:b], k[:, a:b], v[:, a:b], is_causal=True
        )
        torch.testing.assert_close(packed[:, a:b], alone, rtol=0, atol=1e-6)
    # a plain causal mask over the pack lets the second sequence see the first: different
    leaky = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert float((leaky[:, 5:7] - packed[:, 5:7]).abs().max()) > 1e-2


# ------------------------------------------------------------------------------------------- bins


def test_pack_bins_hand_computed():
    lengths = [3, 9, 4, 2, 8]
    assert packing.pack_bins(lengths, 12) == [[1, 0], [4, 2], [3]]
    assert packing.packed_tokens([[1, 0], [4, 2], [3]], lengths) == 26  # = sum(lengths): no padding
    # binned padding under the same budget computes 29 positions in as many micro-batches
    assert padded_tokens(token_budget_bins(lengths, 12), lengths) == 29
    # alignment counts against the budget: 3 + 3 -> 8 > 6 positions with multiple 4
    assert packing.pack_bins([3, 3], 6, multiple=4) == [[0], [1]]
    assert packing.pack_bins([3, 3], 6) == [[0, 1]]
    assert packing.pack_bins([20, 2], 10) == [[0], [1]]  # over budget: alone
    with pytest.raises(ValueError, match="budget must be a positive integer"):
        packing.pack_bins([3], 0)
    with pytest.raises(ValueError, match=r"lengths\[0\]"):
        packing.pack_bins([True], 4)


def test_pack_bins_partition_and_budget_on_random_lengths():
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        lengths = [int(v) for v in torch.randint(1, 300, (40,), generator=g)]
        budget, multiple = 600, 8
        bins = packing.pack_bins(lengths, budget, multiple)
        assert sorted(i for b in bins for i in b) == list(range(40))
        for b in bins:
            assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
            assert packing.pack_layout([lengths[i] for i in b], multiple).total <= budget
        lower = math.ceil(sum(lengths) / budget)
        assert lower <= len(bins) <= len(token_budget_bins(lengths, budget))
        binned = padded_tokens(token_budget_bins(lengths, budget), lengths)
        assert sum(lengths) <= packing.packed_tokens(bins, lengths, multiple) <= binned + multiple * len(bins)


# ------------------------------------------------------------------------------ megatron contract


def test_packed_seq_params_fields():
    params = packing.packed_seq_params(packing.pack_layout([5, 3], multiple=4))
    assert params.qkv_format == "thd"
    assert params.cu_seqlens_q.dtype == torch.int32 and params.cu_seqlens_q.tolist() == [0, 5, 8]
    assert params.cu_seqlens_kv.tolist() == [0, 5, 8]
    assert params.max_seqlen_q == params.max_seqlen_kv == 5
    assert params.cu_seqlens_q_padded is None and params.cu_seqlens_kv_padded is None


def test_rope_by_position_ids_is_megatron_thd_rope(build):
    """What the engine's mask path does to RoPE == megatron's ``_apply_rotary_pos_emb_thd``; restarts."""
    from megatron.core import parallel_state
    from megatron.core.models.common.embeddings.rope_utils import (
        _apply_rotary_pos_emb_bshd,
        _apply_rotary_pos_emb_thd,
    )

    policy = build()  # initialises megatron's parallel state (a CP group of one)
    rope = policy.model.rotary_pos_emb
    lay = packing.pack_layout([6, 3, 5])
    g = torch.Generator().manual_seed(3)
    t = torch.randn(lay.total, 2, 16, generator=g)  # [t, heads, head_dim]
    freqs = rope(lay.max_seqlen)  # [max_seqlen, 1, 1, d]: the table GPTModel._preprocess builds for thd
    assert freqs.shape[-1] == 16
    cu = torch.tensor(lay.cu_seqlens, dtype=torch.int32)
    thd = _apply_rotary_pos_emb_thd(t, cu, freqs, cp_group=parallel_state.get_context_parallel_group())
    table = rope(lay.total)  # what _preprocess builds for the [total] pack without packed_seq_params
    ours = _apply_rotary_pos_emb_bshd(t.unsqueeze(1), table[packing.position_ids(lay)]).squeeze(1)
    torch.testing.assert_close(ours, thd, rtol=0, atol=0)
    # hand check: the second sequence is rotated as if it were alone (positions 0, 1, 2)
    alone = _apply_rotary_pos_emb_bshd(t[6:9].unsqueeze(1), rope(3)).squeeze(1)
    torch.testing.assert_close(ours[6:9], alone, rtol=0, atol=0)
    # position 0 is the identity rotation; the pack's position 6 without the restart is not
    torch.testing.assert_close(ours[6], t[6], rtol=0, atol=0)
    unrestarted = _apply_rotary_pos_emb_bshd(t.unsqueeze(1), table).squeeze(1)
    assert float((unrestarted[6] - t[6]).abs().max()) > 1e-2


# ----------------------------------------------------------------------------------------- engine

_CUDA = torch.cuda.is_available()
ATOL = 1e-4 if _CUDA else 1e-5


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from nemo_prorl.policy.megatron.testing import make_tiny_hf_model

    return make_tiny_hf_model(tmp_path_factory.mktemp("tiny_pack") / "qwen2", "qwen2", seed=0, num_layers=2)


@pytest.fixture(scope="module")
def build(hf_dir):
    """``build(**config)`` -> a MegatronPolicy (cached per config); parallel state torn down at the end."""
    cache = PolicyCache(hf_dir)
    yield cache
    cache.close()


def test_packing_mode_follows_the_layer_spec(build):
    if _CUDA:
        pytest.skip("the local spec is what CPU builds; the TE spec is checked by the gpu test below")
    assert build().packing == "off"  # auto on the local spec: binned padding
    assert build(sequence_packing="off").packing == "off"
    assert build(sequence_packing="on").packing == "mask"


def test_config_rejects_unknown_packing_value():
    expected = r"policy\.sequence_packing: unknown value 'thd'; expected one of: auto, on, off"
    with pytest.raises(ValueError, match=expected):
        MegatronPolicyConfig(sequence_packing="thd")
    from nemo_prorl.config_schema import ConfigError
    from nemo_prorl.trainer.config import build_config

    with pytest.raises(ConfigError, match=r"policy\.sequence_packing"):
        build_config({"model": "m", "policy": {"sequence_packing": True}})


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("tokens", [None, 50], ids=["fixed-count", "budget-50"])
def test_packed_step_equals_the_padded_step(build, tokens, agg):
    """Same mini-batch, binned padding vs packed: same loss, metrics and gradients."""
    base = build(micro_batch_tokens=tokens, sequence_packing="off")
    batch = with_old_and_ref(base, make_batch(2))
    loss_fn = prorl_loss_fn(agg)
    m0, g0 = step_and_restore(base, batch, loss_fn)
    packed = build(micro_batch_tokens=tokens, sequence_packing="on")
    assert packed.packing in ("mask", "thd")
    m1, g1 = step_and_restore(packed, batch, loss_fn)
    for key in ("loss", "pg_loss", "kl_loss", "entropy", "clip_fraction"):
        if key in m0:
            assert m1[key] == pytest.approx(m0[key], abs=ATOL, rel=1e-4), key
    assert m1["num_tokens"] == m0["num_tokens"] and m1["num_seqs"] == m0["num_seqs"]
    assert max(float(g.abs().max()) for g in g0.values()) > 0
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=ATOL, rtol=1e-4, msg=name)


def test_packed_padding_fraction_hand_computed(build):
    batch = with_old_and_ref(build(), make_batch(3))
    assert sequence_lengths(batch.response_mask) == ENDS  # 117 real positions
    # packs under 50 (first-fit decreasing): 24, 24 | 19, 15, 12 | 10, 7, 6 -> 48 + 46 + 23 = 117
    assert packing.pack_bins(ENDS, 50) == [[0, 4], [6, 2, 7], [3, 1, 5]]
    m, _ = step_and_restore(build(micro_batch_tokens=50, sequence_packing="on"), batch,
                            prorl_loss_fn("token-mean"))
    assert m["perf/padding_fraction"] == 0.0
    m, _ = step_and_restore(build(micro_batch_tokens=50, sequence_packing="off"), batch,
                            prorl_loss_fn("token-mean"))
    assert m["perf/padding_fraction"] == pytest.approx(17 / 134)  # binned: 48 + 38 + 48 positions


def test_packed_logprobs_in_the_original_row_order(build):
    batch = make_batch(4)
    lp0, ent0 = build(micro_batch_tokens=40, sequence_packing="off").logprobs(batch, with_entropy=True)
    policy = build(micro_batch_tokens=40, sequence_packing="on")
    lp1, ent1 = policy.logprobs(batch, with_entropy=True)
    torch.testing.assert_close(lp1, lp0, atol=ATOL, rtol=0)
    torch.testing.assert_close(ent1, ent0, atol=ATOL, rtol=0)
    assert bool((lp1[batch.response_mask == 0] == 0).all())
    perm = torch.tensor([5, 2, 7, 0, 3, 6, 1, 4])
    lp2, _ = policy.logprobs(TokenBatch(batch.input_ids[perm], batch.response_mask[perm], extras={}))
    torch.testing.assert_close(lp2, lp0[perm], atol=ATOL, rtol=0)


def test_packed_micro_batches_layout(build):
    policy = build(micro_batch_tokens=50, sequence_packing="on")
    micros, n = policy._micro_batches(make_batch(5), 2, pad=False, tokens=50)
    assert n == 3
    assert [m.rows.tolist() for m in micros] == [[0, 4], [6, 2, 7], [3, 1, 5]]
    assert [m.length for m in micros] == [24, 19, 10]
    assert [m.pack.cu_seqlens for m in micros] == [(0, 24, 48), (0, 19, 34, 46), (0, 10, 17, 23)]
    assert policy._variable_shapes(policy.ddp, micros) == (48, 1)


def test_packed_step_with_the_chunked_head(build):
    """``policy.lm_head: chunked`` reads the unpacked hidden states too."""
    base = build(micro_batch_tokens=50, sequence_packing="off", lm_head="chunked")
    batch = with_old_and_ref(base, make_batch(7))
    m0, g0 = step_and_restore(base, batch, prorl_loss_fn("token-mean"))
    m1, g1 = step_and_restore(build(micro_batch_tokens=50, sequence_packing="on", lm_head="chunked"), batch,
                   prorl_loss_fn("token-mean"))
    assert m1["loss"] == pytest.approx(m0["loss"], abs=ATOL, rel=1e-4)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=ATOL, rtol=1e-4, msg=name)


@pytest.mark.gpu
def test_thd_packing_with_transformer_engine(build):
    """On CUDA with TE (bf16, its fused THD attention): auto packs in megatron's thd format, and the
    log-probs and the step match the padded forward. Tolerances are bf16-sized and unmeasured."""
    from nemo_prorl.policy.megatron.model import te_available

    if not te_available():
        pytest.skip("Transformer Engine is not installed")
    auto = build(micro_batch_tokens=50, params_dtype="bf16")
    assert auto.packing == "thd"
    padded = build(micro_batch_tokens=50, sequence_packing="off", params_dtype="bf16")
    batch = with_old_and_ref(padded, make_batch(6))
    lp0, _ = padded.logprobs(batch)
    lp1, _ = auto.logprobs(batch)
    torch.testing.assert_close(lp1, lp0, atol=5e-2, rtol=0)
    m0, _ = step_and_restore(padded, batch, prorl_loss_fn("token-mean"))
    m1, _ = step_and_restore(auto, batch, prorl_loss_fn("token-mean"))
    assert m1["loss"] == pytest.approx(m0["loss"], abs=1e-2, rel=1e-2)
    assert m1["perf/padding_fraction"] == 0.0 < m0["perf/padding_fraction"]
