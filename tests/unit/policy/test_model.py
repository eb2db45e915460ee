"""GPTModel builder: HF config -> TransformerConfig mapping, rejections, shapes."""

from __future__ import annotations

import pytest
import torch

from nemo_prorl.policy.megatron import model as M


def _cfg(**kw):
    base = {
        "model_type": "qwen2", "vocab_size": 300, "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}, "hidden_act": "silu",
    }
    base.update(kw)
    return base


@pytest.fixture(scope="module")
def mp():
    from nemo_prorl.policy.megatron import parallel

    parallel.init_parallel(tp=1, pp=1)
    yield parallel
    parallel.destroy_parallel()


def test_padded_vocab_size():
    assert M.padded_vocab_size(300, 1) == 384
    assert M.padded_vocab_size(300, 2) == 512
    assert M.padded_vocab_size(256, 2) == 256
    assert M.padded_vocab_size(151936, 1) == 151936
    assert M.padded_vocab_size(151936, 2) == 152064  # 594 * 256
    assert M.padded_vocab_size(5, 1, make_vocab_size_divisible_by=4) == 8


def test_rope_settings_both_layouts():
    assert M.rope_settings(_cfg()) == (500000.0, "default", 1.0)
    legacy = _cfg(rope_parameters=None, rope_theta=1e6, rope_scaling=None)
    assert M.rope_settings(legacy) == (1e6, "default", 1.0)
    llama3 = {"rope_type": "llama3", "factor": 32.0, "rope_theta": 5e5, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert M.rope_settings(_cfg(model_type="llama", rope_parameters=llama3)) == (5e5, "llama3", 32.0)


def test_transformer_config_mapping_qwen2(mp):
    tc = M.transformer_config_from_hf(_cfg())
    assert (tc.num_layers, tc.hidden_size, tc.ffn_hidden_size) == (2, 64, 96)
    assert (tc.num_attention_heads, tc.num_query_groups, tc.kv_channels) == (4, 2, 16)
    assert tc.normalization == "RMSNorm" and tc.layernorm_epsilon == 1e-5
    assert tc.gated_linear_unit and tc.activation_func is torch.nn.functional.silu
    assert tc.add_qkv_bias and not tc.add_bias_linear
    assert tc.hidden_dropout == 0.0 and tc.attention_dropout == 0.0
    assert tc.use_cpu_initialization and tc.pipeline_dtype == torch.float32 and not tc.sequence_parallel


def test_transformer_config_mapping_llama_and_overrides(mp):
    tc = M.transformer_config_from_hf(
        _cfg(model_type="llama", head_dim=32), params_dtype=torch.bfloat16, attention_dropout=0.1
    )
    assert not tc.add_qkv_bias and tc.kv_channels == 32
    assert tc.bf16 and tc.params_dtype == torch.bfloat16 and tc.pipeline_dtype == torch.bfloat16
    assert tc.attention_dropout == 0.1


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"model_type": "gpt2"}, "model_type"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"use_sliding_window": True}, "use_sliding_window"),
        ({"model_type": "llama", "attention_bias": True}, "attention_bias"),
        ({"model_type": "llama", "mlp_bias": True}, "mlp_bias"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "rope_type"),
        ({"model_type": "llama", "rope_parameters": {"rope_type": "llama3", "factor": 8.0,
          "low_freq_factor": 2.0, "rope_theta": 1e4}}, "low_freq_factor"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ],
)
def test_unsupported_configs_name_the_field(bad, field):
    with pytest.raises(M.UnsupportedModelError, match=field):
        M.check_supported(_cfg(**bad))


def test_layers_not_divisible_by_pp_rejected(monkeypatch):
    monkeypatch.setattr(M, "_parallel_sizes", lambda: (1, 2))
    with pytest.raises(M.UnsupportedModelError, match="num_hidden_layers"):
        M.transformer_config_from_hf(_cfg(num_hidden_layers=3))


def test_use_te_true_without_te_raises(mp):
    if M.te_available():
        pytest.skip("TE present")
    with pytest.raises(RuntimeError, match="Transformer Engine"):
        M.build_gpt_model(_cfg(), use_te=True)


@pytest.mark.parametrize("tied", [False, True])
def test_build_gpt_model_shapes(mp, tied):
    model = M.build_gpt_model(_cfg(tie_word_embeddings=tied))
    sd = model.state_dict()
    assert model.hf_vocab_size == 300 and model.padded_vocab_size == 384
    assert sd["embedding.word_embeddings.weight"].shape == (384, 64)
    # fused QKV: (heads + 2 * kv_heads) * head_dim = (4 + 4) * 16 rows
    assert sd["decoder.layers.0.self_attention.linear_qkv.weight"].shape == (128, 64)
    assert sd["decoder.layers.0.self_attention.linear_qkv.bias"].shape == (128,)
    assert sd["decoder.layers.1.mlp.linear_fc1.weight"].shape == (192, 64)  # gate + up
    assert sd["decoder.layers.1.mlp.linear_fc2.weight"].shape == (64, 96)
    assert ("output_layer.weight" in sd) != tied
    logits = model(torch.randint(0, 300, (2, 8)), torch.arange(8).expand(2, -1), attention_mask=None)
    assert logits.shape == (2, 8, 384) and torch.isfinite(logits).all()


def test_megatron_local_norm_is_built_in_fp32(mp):
    """The upstream behaviour :func:`M.cast_params_to_dtype` compensates: megatron-core 0.16's local-spec
    norm without Apex (``megatron/core/transformer/torch_norm.py``, ``WrappedTorchNorm``) ignores
    ``config.params_dtype``; megatron's training loop relies on ``Float16Module`` to cast it."""
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    tc = M.transformer_config_from_hf(_cfg(), params_dtype=torch.bfloat16)
    norm = WrappedTorchNorm(tc, tc.hidden_size, eps=tc.layernorm_epsilon)
    assert norm.weight.dtype == torch.float32


def test_bf16_model_has_every_parameter_in_bf16(mp):
    """A bf16 build has no fp32 parameter left (as with Transformer Engine, whose ``RMSNorm`` takes
    ``params_dtype``, or megatron's ``Float16Module`` cast of a local-spec model), so megatron's
    ``Float16OptimizerWithFloat16Params`` holds every weight in its float16 groups; fp32 builds keep fp32."""
    bf16 = M.build_gpt_model(_cfg(), params_dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert M.cast_params_to_dtype(bf16, torch.bfloat16) == []  # idempotent
    fp32 = M.build_gpt_model(_cfg())
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}
    assert M.cast_params_to_dtype(fp32, torch.float32) == []


def test_cast_params_to_dtype_names_what_it_cast():
    layer = torch.nn.Sequential(torch.nn.Linear(4, 4).bfloat16(), torch.nn.RMSNorm(4))
    layer.register_buffer("counts", torch.zeros(2, dtype=torch.int64))
    assert M.cast_params_to_dtype(layer, torch.bfloat16) == ["1.weight"]
    assert layer[1].weight.dtype == torch.bfloat16 and layer.counts.dtype == torch.int64


def test_bf16_rmsnorm_computes_like_transformer_engine(mp):
    """With bf16 weights, the local spec's ``torch.nn.RMSNorm`` normalises and scales in fp32 and rounds
    once, what TE's ``RMSNorm`` kernel does (``transformer_engine/pytorch/module/rmsnorm.py``: fp32
    compute type, output cast to the input dtype) -- not HF ``Qwen2RMSNorm``'s order, which rounds the
    normalised activations to bf16 before the weight multiply. Hand formula, final norm of a bf16 build."""
    if M.te_available():
        pytest.skip("the TE spec is built here: its kernel is the reference itself")
    norm = M.build_gpt_model(_cfg(), params_dtype=torch.bfloat16).decoder.final_layernorm
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(64, generator=g))
        x = (3 * torch.randn(16, 64, generator=g)).bfloat16()
        y = norm(x)
    xf, w = x.float(), norm.weight.float()
    inv_rms = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)
    te_order = (xf * inv_rms * w).bfloat16()
    hf_order = norm.weight * (xf * inv_rms).bfloat16()
    assert y.dtype == torch.bfloat16 and torch.equal(y, te_order)
    assert not torch.equal(y, hf_order)  # the two orders are distinguishable on this input
