"""Memory formulas of the dry run against hand-computed values (nemo_prorl.trainer.memory_plan)."""

from __future__ import annotations

import pytest

from nemo_prorl.trainer import memory_plan as mp
from nemo_prorl.trainer.preflight import KNOWN_ARCHS, ModelArch, arch_from_hf_config

R15 = arch_from_hf_config(KNOWN_ARCHS["deepseek-r1-distill-qwen-1.5b"])
N15 = 1_777_088_000


def _gpt(h: int = 1024, a: int = 16, layers: int = 24) -> ModelArch:
    """A Korthikanti GPT layer: multi-head attention, a 4h two-matrix MLP."""
    return ModelArch(hidden_size=h, num_layers=layers, num_heads=a, num_kv_heads=a, ffn_hidden_size=4 * h,
                     vocab_size=50304, max_position_embeddings=2048, head_dim=h // a, qkv_bias=True,
                     gated_mlp=False)


def test_static_state_of_the_15b_model_on_32_ranks():
    # docs/scaling.md section 2: bf16 weights 2 B, fp32 grads 4 B, fp32 m + v + master 12 B / DP
    assert mp.weight_bytes(N15) == 2 * N15 == 3_554_176_000
    assert mp.gradient_bytes(N15) == 4 * N15
    assert mp.optimizer_bytes(N15, dp=32) == 12 * N15 / 32 == 666_408_000
    assert mp.optimizer_bytes(N15, dp=32, distributed=False) == 12 * N15
    assert mp.optimizer_bytes(N15, master_weights=False) == 8 * N15  # fp32 params: no separate master
    assert mp.weight_bytes(N15, tp=2, pp=2) == N15 / 2  # 2 B x N / (2 x 2)
    st = mp.static_memory(R15, mp.Layout(dp=32))
    assert st.total == 2 * N15 + 4 * N15 + 12 * N15 / 32 + 2 * N15  # 14.88 GB, the docs' 14.9
    assert round(st.total / mp.GB, 2) == 14.88
    assert mp.static_memory(R15, mp.Layout(dp=32, reference_on_gpu=False)).reference == 0


def test_korthikanti_gpt_layer_sbh_34_plus_5as_over_h():
    """Without recompute (with dropout, unfused attention): s b h (34 + 5 a s / h) bytes per layer."""
    arch, s, b = _gpt(), 2048, 2
    h, a = arch.hidden_size, arch.num_heads
    kw = dict(dropout=True, unfused_attention=True)
    none = mp.activation_bytes_per_layer(arch, s, b, recompute="none", **kw)
    assert none == s * b * h * (34 + 5 * a * s / h)
    # Korthikanti's selective recompute (the core attention) drops the 5as/h term; full keeps 2sbh
    assert mp.activation_bytes_per_layer(arch, s, b, recompute="selective", recompute_modules=("core_attn",),
                                         **kw) == 34 * s * b * h
    assert mp.activation_bytes_per_layer(arch, s, b, recompute="full", **kw) == 2 * s * b * h
    # fused attention (TE) stores no scores: none costs 34 sbh
    assert mp.activation_bytes_per_layer(arch, s, b, recompute="none", dropout=True) == 34 * s * b * h
    # tensor parallelism without sequence parallelism: s b h (10 + 24 / t + 5 a s / (h t))
    t = 4
    assert mp.activation_bytes_per_layer(arch, s, b, recompute="none", tp=t, **kw) == pytest.approx(
        s * b * h * (10 + 24 / t + 5 * a * s / (h * t)))


def test_qwen2_15b_per_token_matches_docs_scaling():
    """docs/scaling.md section 3: (6h + 2 kv_dim + 4I) elements x 2 B = 91,136 B per token per layer."""
    per_token = mp.activation_bytes_per_layer(R15, 1, 1, recompute="none")
    assert per_token == 2 * (6 * 1536 + 2 * 256 + 4 * 8960) == 91_136
    # selective recompute of the MLP keeps 6h + 2 kv_dim elements: docs/scaling.md's 19,456 B
    sel = mp.activation_bytes_per_layer(R15, 1, 1, recompute="selective")
    assert sel == 2 * (6 * 1536 + 2 * 256) == 19_456
    # unfused attention adds the softmax output 2 a s^2 b (no dropout in RL fine-tuning)
    s = 8192
    assert mp.activation_bytes_per_layer(R15, s, 1, recompute="none", unfused_attention=True) == (
        91_136 * s + 2 * 12 * s * s)
    # the old micro-batch: 4 sequences of 1024 + 8192 tokens, 28 layers -> 94.07 GB (research: ~94 GB)
    none = mp.activation_bytes(R15, 9216, 4, recompute="none")
    assert none == 28 * 91_136 * 9216 * 4
    assert round(none / mp.GB, 2) == 94.07
    # full recompute: 28 layer inputs (2 s b h) + one layer's working set
    full = mp.activation_bytes(R15, 9216, 4, recompute="full")
    assert full == 28 * 2 * 9216 * 4 * 1536 + 91_136 * 9216 * 4


def test_pipeline_layers_in_flight():
    assert mp.layers_in_flight(28, 1, 8) == 28
    assert mp.layers_in_flight(28, 2, 8) == 28    # 14 layers x 2 micro-batches in flight (1F1B)
    assert mp.layers_in_flight(28, 4, 2) == 14    # only 2 micro-batches exist: 7 x 2
    with pytest.raises(ValueError, match="recompute must be one of"):
        mp.activation_bytes_per_layer(R15, 1, 1, recompute="some")


def test_logprob_head_and_kv_cache():
    # a 2,048-token chunk of fp32 logits over 151,936 entries and its gradient: 2 x 1.24 GB
    assert mp.logprob_head_bytes(151936, 2048) == 2048 * 151936 * 4 * 2
    assert mp.logprob_head_bytes(151936, 2048, tp=2) == 2048 * 151936 * 4
    # docs/scaling.md section 5: 2 x 28 layers x 2 KV heads x 128 x 2 B = 28 KiB per token
    assert mp.kv_cache_bytes_per_token(R15) == 2 * 28 * 2 * 128 * 2 == 28 * 1024
    assert mp.kv_cache_bytes(R15, 16384) == 16384 * 28 * 1024  # one 16k sample: 0.47 GB
    assert mp.kv_cache_bytes_per_token(R15, rollout_tp=2) == 14 * 1024  # the two KV heads split


def test_phase_memory_peaks():
    layout = mp.Layout(dp=32, micro_batch=4, logprob_chunk=512, gpu_memory_utilization=0.5)
    st = mp.static_memory(R15, layout)
    ph = mp.phase_memory(R15, layout, st, seq=9216, seqs_per_update=32, seqs_per_round=192, gpu_bytes=80e9)
    assert ph.micro_batch == 4
    assert ph.head == 512 * 151936 * 8
    assert ph.train_peak["selective"] == st.total + ph.activations["selective"] + ph.head
    assert ph.vllm_weights == 2 * N15
    assert ph.kv_needed == 192 * 9216 * 28 * 1024
    assert ph.kv_available == 40e9 - 2 * N15
    assert ph.generation_peak == st.total + 40e9
    # a rank with fewer sequences than the micro-batch trains them in one smaller micro-batch
    small = mp.phase_memory(R15, layout, st, seq=100, seqs_per_update=2, seqs_per_round=1, gpu_bytes=80e9)
    assert small.micro_batch == 2
    # a token budget sets the rows: 18,432 // 9,216 = 2; a sequence over the budget trains alone
    budget = mp.Layout(dp=32, micro_batch=4, micro_batch_tokens=18_432)
    assert mp.phase_memory(R15, budget, st, seq=9216, seqs_per_update=32, seqs_per_round=1,
                           gpu_bytes=80e9).micro_batch == 2
    assert mp.phase_memory(R15, budget, st, seq=20_000, seqs_per_update=32, seqs_per_round=1,
                           gpu_bytes=80e9).micro_batch == 1
    # packed: one row of max(budget, seq) tokens; 17,408-token sequences -> 18,432 tokens, not 17,408
    packed = mp.Layout(dp=32, micro_batch=4, micro_batch_tokens=18_432, packed=True)
    ph_packed = mp.phase_memory(R15, packed, st, seq=17_408, seqs_per_update=32, seqs_per_round=1,
                                gpu_bytes=80e9)
    ph_binned = mp.phase_memory(R15, budget, st, seq=17_408, seqs_per_update=32, seqs_per_round=1,
                                gpu_bytes=80e9)
    assert ph_packed.micro_batch == 1 and ph_packed.seq == 17_408
    for mode in mp.RECOMPUTE_MODES:
        assert ph_packed.activations[mode] == mp.activation_bytes(
            R15, 18_432, 1, recompute=mode, num_micro_batches=31, recompute_modules=("mlp",))
    assert ph_packed.activations["none"] / ph_binned.activations["none"] == 18_432 / 17_408
    assert ph_packed.kv_needed == ph_binned.kv_needed  # generation does not pack
    # a budget larger than the rank's whole update packs only what there is
    small = mp.phase_memory(R15, packed, st, seq=100, seqs_per_update=2, seqs_per_round=1, gpu_bytes=80e9)
    assert small.activations["none"] == mp.activation_bytes(R15, 200, 1, recompute="none")
