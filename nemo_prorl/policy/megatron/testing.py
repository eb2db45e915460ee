"""Tiny random Hugging Face Qwen2 / Llama models (weights + config + tokenizer) for tests and demos.

Nothing is downloaded: the tokenizer is a byte-level BPE trained in-process with the ``tokenizers``
library on a small built-in corpus, so any text round-trips, and the weights are random.

Usage::

    from nemo_prorl.policy.megatron.testing import make_tiny_hf_model
    path = make_tiny_hf_model(tmp_path / "tiny", arch="qwen2", tied=False, seed=0)
    AutoModelForCausalLM.from_pretrained(path); AutoTokenizer.from_pretrained(path)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["make_tiny_tokenizer", "make_tiny_hf_model", "SPECIAL_TOKENS", "CHAT_TEMPLATE"]

SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# ChatML, the template family Qwen2 uses.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The answer is \\boxed{42}. Let x = 3 and y = 4, then x + y = 7 and x * y = 12.",
    "Question: what is 12 + 7? Answer: 19. Think step by step, then give the final answer.",
    "def solve(n):\n    return sum(i * i for i in range(n))\nprint(solve(10))",
    "<think> First compute the square, then add one. </think> The result is 26.",
    "A) red B) green C) blue D) yellow. The correct option is C.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 = + - * / ^ ( ) [ ] { } < > , . ; : ! ? ' \"",
    "the of and to in is that for it with as was on be by this are from at or an",
]


def make_tiny_tokenizer(vocab_size: int = 320):
    """Train a byte-level BPE tokenizer in-process and wrap it as a ``PreTrainedTokenizerFast``.

    Args:
        vocab_size: target vocabulary size including the 256 byte symbols and
            :data:`SPECIAL_TOKENS` (must be >= 259); the trainer stops early if the corpus has
            fewer merges.

    Returns:
        ``transformers.PreTrainedTokenizerFast`` with ``eos_token = pad_token = "<|endoftext|>"``
        and a ChatML chat template.

    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"make_tiny_tokenizer: vocab_size={vocab_size} must be >= {256 + len(SPECIAL_TOKENS)}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def make_tiny_hf_model(
    out_dir: str | Path,
    arch: str = "qwen2",
    *,
    tied: bool = False,
    seed: int = 0,
    vocab_size: int | None = None,
    tokenizer_vocab_size: int = 320,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    rope_theta: float = 10000.0,
    rms_norm_eps: float = 1e-6,
    init_std: float = 0.02,
    **config_extra: Any,
) -> Path:
    """Write a random tiny causal LM (``model.safetensors``, ``config.json``, tokenizer files).

    Args:
        out_dir: directory to create/overwrite.
        arch: ``"qwen2"`` (QKV bias) or ``"llama"``.
        tied: tie input embedding and output layer.
        seed: seeds both the weights and nothing else (the tokenizer is deterministic).
        vocab_size: model vocabulary; default = tokenizer size. May exceed the tokenizer (as real
            Qwen2 checkpoints do) but not be smaller.
        tokenizer_vocab_size: target BPE vocabulary size.
        hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size,
        max_position_embeddings, rope_theta, rms_norm_eps: the architecture.
        init_std: std of the normal init of every weight matrix. Norm weights are drawn around 1
            and biases around 0 so that a conversion bug in any tensor changes the logits.
        **config_extra: more config fields (e.g. ``rope_scaling``).

    Returns:
        The output directory as a ``Path``.

    """
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_tokenizer(tokenizer_vocab_size)
    n_tok = len(tokenizer)
    vocab = n_tok if vocab_size is None else int(vocab_size)
    if vocab < n_tok:
        raise ValueError(f"make_tiny_hf_model: vocab_size={vocab} is smaller than the tokenizer ({n_tok})")
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=rms_norm_eps,
        tie_word_embeddings=tied,
        initializer_range=init_std,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_theta=rope_theta,
    )
    common.update(config_extra)
    if arch == "qwen2":
        config = Qwen2Config(use_sliding_window=False, **common)
    elif arch == "llama":
        config = LlamaConfig(**common)
    else:
        raise ValueError(f"make_tiny_hf_model: arch={arch!r} must be 'qwen2' or 'llama'")
    config.architectures = [type(config).__name__.replace("Config", "ForCausalLM")]

    generator = torch.Generator().manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                values = 1.0 + 0.1 * torch.randn(param.shape, generator=generator)
            elif name.endswith(".bias"):
                values = 0.1 * torch.randn(param.shape, generator=generator)
            else:
                values = init_std * torch.randn(param.shape, generator=generator)
            param.copy_(values.to(param.dtype))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
