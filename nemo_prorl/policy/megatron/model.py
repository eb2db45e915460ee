"""Build a megatron-core ``GPTModel`` from a Hugging Face Qwen2 / Llama config.

Supported: ``model_type`` in :data:`SUPPORTED_MODEL_TYPES` -- grouped-query attention, QKV bias
(Qwen2), RoPE with any ``rope_theta`` (plus Llama-3 frequency scaling with megatron's built-in
constants), RMSNorm, SwiGLU MLP, tied or untied embeddings. Anything else is rejected up front by
:func:`check_supported` with an error naming the config field.

The vocabulary is padded to a multiple of ``make_vocab_size_divisible_by * tp`` (megatron's
convention, so the embedding splits evenly over TP). Logits therefore have
``padded_vocab_size(hf_config, tp)`` columns; the first ``hf_config.vocab_size`` are the real
tokens and the rest must be ignored (the model carries ``model.hf_vocab_size`` for that).

Usage::

    parallel.init_parallel(tp=2)
    model = build_gpt_model(AutoConfig.from_pretrained(path))
    logits = model(input_ids, position_ids, attention_mask=None)  # [b, s, padded_vocab / tp]
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from nemo_prorl.policy.megatron.compat import apply_cpu_compat

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "UnsupportedModelError",
    "check_supported",
    "padded_vocab_size",
    "rope_settings",
    "transformer_config_from_hf",
    "build_gpt_model",
    "cast_params_to_dtype",
    "te_available",
]

SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("qwen2", "llama")

# megatron-core's Llama-3 RoPE scaling (``RotaryEmbedding._apply_scaling``) hard-codes these.
_MCORE_LLAMA3_ROPE = {
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


class UnsupportedModelError(ValueError):
    """The HF config describes an architecture or option the builder does not implement."""


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def te_available() -> bool:
    """Whether Transformer Engine layers can be used: TE importable *and* CUDA available."""
    if not torch.cuda.is_available() or importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # the empty PyPI meta package raises RuntimeError on import
        return False
    return True


def rope_settings(hf_config: Any) -> tuple[float, str, float]:
    """Return ``(rope_theta, rope_type, scaling_factor)`` from either config layout.

    transformers >= 5 stores RoPE in ``rope_parameters``; older configs use ``rope_theta`` and
    ``rope_scaling``. ``rope_type`` is ``"default"`` or ``"llama3"`` (anything else is rejected by
    :func:`check_supported`).
    """
    params = _get(hf_config, "rope_parameters") or {}
    scaling = _get(hf_config, "rope_scaling") or {}
    merged: dict[str, Any] = {**dict(scaling), **dict(params)}
    theta = merged.get("rope_theta", _get(hf_config, "rope_theta", 10000.0))
    rope_type = merged.get("rope_type", merged.get("type", "default")) or "default"
    factor = float(merged.get("factor", 1.0) or 1.0)
    return float(theta), str(rope_type), factor


def check_supported(hf_config: Any) -> None:
    """Raise :class:`UnsupportedModelError` naming the field if the config cannot be built exactly.

    Args:
        hf_config: a ``transformers.PretrainedConfig`` (or a ``config.json`` dict).

    """
    model_type = _get(hf_config, "model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"model_type={model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    act = _get(hf_config, "hidden_act", "silu")
    if act != "silu":
        raise UnsupportedModelError(f"hidden_act={act!r} is not supported (only 'silu' / SwiGLU)")
    if model_type == "qwen2" and _get(hf_config, "use_sliding_window", False):
        raise UnsupportedModelError("use_sliding_window=True is not supported (sliding-window attention)")
    if model_type == "llama":
        for field in ("attention_bias", "mlp_bias"):
            if _get(hf_config, field, False):
                raise UnsupportedModelError(f"{field}=True is not supported for llama")
    if int(_get(hf_config, "pretraining_tp", 1) or 1) != 1:
        raise UnsupportedModelError("pretraining_tp != 1 is not supported")
    _, rope_type, _ = rope_settings(hf_config)
    if rope_type not in ("default", "llama3"):
        raise UnsupportedModelError(
            f"rope_scaling / rope_parameters rope_type={rope_type!r} is not supported "
            "(supported: 'default', 'llama3')"
        )
    if rope_type == "llama3":
        merged = {
            **dict(_get(hf_config, "rope_scaling") or {}),
            **dict(_get(hf_config, "rope_parameters") or {}),
        }
        for key, expected in _MCORE_LLAMA3_ROPE.items():
            if float(merged.get(key, expected)) != expected:
                raise UnsupportedModelError(
                    f"rope_parameters.{key}={merged.get(key)!r} is not supported for rope_type='llama3' "
                    f"(megatron-core implements only {key}={expected})"
                )
    heads = int(_get(hf_config, "num_attention_heads"))
    kv_heads = int(_get(hf_config, "num_key_value_heads", heads) or heads)
    if heads % kv_heads != 0:
        raise UnsupportedModelError(
            f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}"
        )


def padded_vocab_size(vocab_size: int, tp: int = 1, make_vocab_size_divisible_by: int = 128) -> int:
    """Smallest multiple of ``make_vocab_size_divisible_by * tp`` that is ``>= vocab_size``."""
    multiple = make_vocab_size_divisible_by * tp
    return int(math.ceil(vocab_size / multiple) * multiple)


def _parallel_sizes() -> tuple[int, int]:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        return (
            int(parallel_state.get_tensor_model_parallel_world_size()),
            int(parallel_state.get_pipeline_model_parallel_world_size()),
        )
    return 1, 1


def transformer_config_from_hf(
    hf_config: Any, *, params_dtype: torch.dtype = torch.float32, **overrides: Any
):
    """Translate an HF Qwen2/Llama config into a megatron ``TransformerConfig``.

    TP/PP sizes are read from megatron's ``parallel_state`` when it is initialised (else 1).
    Dropout follows the HF config (``attention_dropout``; hidden dropout 0, as in HF).

    Args:
        hf_config: ``transformers.PretrainedConfig`` or a ``config.json`` dict.
        params_dtype: dtype of the parameters (fp32, bf16 or fp16); sets ``bf16``/``fp16`` and
            ``pipeline_dtype`` accordingly.
        **overrides: any ``TransformerConfig`` field, applied last (e.g. ``recompute_granularity``).

    Returns:
        megatron.core.transformer.TransformerConfig

    Raises:
        UnsupportedModelError: see :func:`check_supported`; also when ``num_hidden_layers`` is not
            divisible by the pipeline size or heads by the tensor-parallel size.

    """
    from megatron.core.transformer import TransformerConfig

    check_supported(hf_config)
    tp, pp = _parallel_sizes()
    heads = int(_get(hf_config, "num_attention_heads"))
    kv_heads = int(_get(hf_config, "num_key_value_heads", heads) or heads)
    hidden = int(_get(hf_config, "hidden_size"))
    layers = int(_get(hf_config, "num_hidden_layers"))
    head_dim = _get(hf_config, "head_dim") or hidden // heads
    if layers % pp != 0:
        raise UnsupportedModelError(
            f"num_hidden_layers={layers} is not divisible by the pipeline-parallel size {pp}"
        )
    if heads % tp != 0 or kv_heads % tp != 0:
        raise UnsupportedModelError(
            f"num_attention_heads={heads} and num_key_value_heads={kv_heads} must both be divisible "
            f"by the tensor-parallel size {tp}"
        )
    cuda = torch.cuda.is_available()
    kwargs: dict[str, Any] = dict(
        num_layers=layers,
        hidden_size=hidden,
        ffn_hidden_size=int(_get(hf_config, "intermediate_size")),
        num_attention_heads=heads,
        num_query_groups=kv_heads,
        kv_channels=int(head_dim),
        normalization="RMSNorm",
        layernorm_epsilon=float(_get(hf_config, "rms_norm_eps", 1e-6)),
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=_get(hf_config, "model_type") == "qwen2",
        hidden_dropout=0.0,
        attention_dropout=float(_get(hf_config, "attention_dropout", 0.0) or 0.0),
        init_method_std=float(_get(hf_config, "initializer_range", 0.02)),
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        sequence_parallel=False,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        use_cpu_initialization=True,
        # Fused kernels need CUDA (and TE/apex); the unfused paths are numerically the reference.
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
    )
    kwargs.update(overrides)
    if not cuda and kwargs.get("sequence_parallel"):
        raise UnsupportedModelError("sequence_parallel=True needs Transformer Engine or apex (CUDA)")
    return TransformerConfig(**kwargs)


def cast_params_to_dtype(model: torch.nn.Module, params_dtype: torch.dtype) -> list[str]:
    """Give every floating-point parameter ``params_dtype``, as megatron's ``Float16Module`` does.

    Megatron-core builds its linear layers in ``config.params_dtype`` but leaves the local spec's norms
    (``WrappedTorchNorm`` -> ``torch.nn.RMSNorm``, or Apex ``FusedLayerNorm``) in fp32: megatron's own
    training loop (``megatron/training/training.py``, ``get_model``) wraps every bf16/fp16 model in
    ``Float16Module`` (``megatron/core/transformer/module.py``), whose constructor casts the whole
    module with ``module.bfloat16()`` / ``.half()``. With Transformer Engine every layer, norms
    included, takes ``params_dtype`` at construction (``megatron/core/extensions/transformer_engine.py``:
    ``TENorm`` and the fused layer-norm linears get it from ``_get_extra_te_kwargs``). This engine does
    not wrap the model in ``Float16Module`` (it takes the final hidden states itself), so the cast is
    done here. Without it a bf16 model keeps fp32 norm weights, which
    ``Float16OptimizerWithFloat16Params`` puts in its fp32 groups, and its ``sharded_state_dict`` (which
    maps optimizer state over the float16 groups only) misaligns state and weights on save.

    Forward numerics do not change: torch's RMSNorm with matching input and weight dtypes computes in
    fp32 and rounds once, as TE's RMSNorm does. Buffers are left alone (the GPT stack has none). No-op
    for fp32 models and for TE-spec models.

    Returns:
        The names of the parameters that were cast.

    """
    cast = []
    for name, param in model.named_parameters():
        if param.is_floating_point() and param.dtype != params_dtype:
            param.data = param.data.to(params_dtype)
            cast.append(name)
    return cast


def build_gpt_model(
    hf_config: Any,
    *,
    params_dtype: torch.dtype = torch.float32,
    use_te: bool | None = None,
    parallel_output: bool = True,
    make_vocab_size_divisible_by: int = 128,
    **config_overrides: Any,
):
    """Build this rank's ``GPTModel`` stage for an HF Qwen2/Llama config (random weights).

    Call after :func:`nemo_prorl.policy.megatron.parallel.init_parallel`. Load weights with
    :func:`nemo_prorl.policy.megatron.convert.load_hf_weights`.

    Args:
        hf_config: ``transformers.PretrainedConfig`` or a ``config.json`` dict.
        params_dtype: parameter dtype of every parameter (norms included, see :func:`cast_params_to_dtype`).
        use_te: Transformer Engine layer spec; ``None`` = TE when importable and CUDA is available,
            else megatron's local spec. ``True`` without TE raises.
        parallel_output: keep logits split over TP (``[b, s, padded_vocab / tp]``); ``False``
            gathers them to the full padded vocabulary.
        make_vocab_size_divisible_by: the vocabulary is padded to a multiple of this times TP.
        **config_overrides: extra ``TransformerConfig`` fields.

    Returns:
        ``megatron.core.models.gpt.GPTModel`` with extra attributes ``hf_vocab_size`` (real vocab),
        ``padded_vocab_size`` and ``hf_model_type``. ``pre_process``/``post_process`` follow the
        pipeline stage.

    Raises:
        UnsupportedModelError: unsupported config field (named in the message).
        RuntimeError: ``use_te=True`` but Transformer Engine is not usable here.

    """
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    if not torch.cuda.is_available():
        apply_cpu_compat()
    config = transformer_config_from_hf(hf_config, params_dtype=params_dtype, **config_overrides)
    if use_te is None:
        use_te = te_available()
    elif use_te and not te_available():
        raise RuntimeError("build_gpt_model(use_te=True): Transformer Engine with CUDA is not available")
    if use_te:
        layer_spec = get_gpt_layer_with_transformer_engine_spec()
    else:
        layer_spec = get_gpt_layer_local_spec(normalization="RMSNorm")

    tp = config.tensor_model_parallel_size
    vocab = int(_get(hf_config, "vocab_size"))
    padded = padded_vocab_size(vocab, tp, make_vocab_size_divisible_by)
    theta, rope_type, factor = rope_settings(hf_config)
    if parallel_state.model_parallel_is_initialized():
        pre_process = parallel_state.is_pipeline_first_stage(ignore_virtual=True)
        post_process = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
    else:
        pre_process = post_process = True
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec,
        vocab_size=padded,
        max_sequence_length=int(_get(hf_config, "max_position_embeddings", 4096)),
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=parallel_output,
        share_embeddings_and_output_weights=bool(_get(hf_config, "tie_word_embeddings", False)),
        position_embedding_type="rope",
        rotary_percent=1.0,
        rotary_base=theta,
        rope_scaling=rope_type == "llama3",
        rope_scaling_factor=factor if rope_type == "llama3" else 8.0,
    )
    cast_params_to_dtype(model, params_dtype)
    model.hf_vocab_size = vocab
    model.padded_vocab_size = padded
    model.hf_model_type = str(_get(hf_config, "model_type"))
    if not torch.cuda.is_available():
        apply_cpu_compat()  # megatron modules first imported while building
    else:
        model.cuda(torch.cuda.current_device())
    return model
