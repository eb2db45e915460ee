"""Random-weight HF model directories of the Qwen2 architectures the GPU benchmarks use."""

from __future__ import annotations

from pathlib import Path

#: Qwen2.5 / R1-Distill-Qwen sizes (public configs): hidden, intermediate, layers, heads, kv heads, tied
ARCHS = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, tie_word_embeddings=False),
}


def make_random_model_dir(out: str | Path, arch: str = "1.5b", max_positions: int = 32768):
    """Write ``config.json`` + bf16 random safetensors + a byte-level tokenizer; return ``(path, config)``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from nemo_prorl.rollout.tiny import build_tiny_tokenizer

    out = Path(out)
    cfg = Qwen2Config(vocab_size=151936, max_position_embeddings=max_positions, rope_theta=1e6,
                      rms_norm_eps=1e-6, torch_dtype="bfloat16", **ARCHS[arch])
    if not (out / "config.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
        model.save_pretrained(str(out), safe_serialization=True)
        build_tiny_tokenizer().save_pretrained(str(out))  # token-id prompts: the tokenizer is only a stub
        del model
    return out, cfg


def count_params(cfg) -> dict[str, int]:
    """Parameter counts: the transformer layers (``dense``) and the output layer (``head``)."""
    h, f, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    per_layer = h * h + 2 * h * kv + h * h + (h + 2 * kv) + 3 * h * f + 2 * h  # qkv(+bias), o, mlp, norms
    return {"dense": n * per_layer, "head": cfg.vocab_size * h}
