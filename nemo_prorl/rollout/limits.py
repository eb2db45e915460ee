"""Checks every engine runs on its inputs BEFORE the model sees them.

Overlong or malformed prompts crash vLLM mid-run in other frameworks (verl #1015, Trinity-RFT #287);
here they are rejected (or reported and skipped) up front with the prompt's index, and bad weight
syncs are rejected naming the tensor.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import torch

from nemo_prorl.rollout.base import SamplingParams


class PromptTooLongError(ValueError):
    """A prompt has more tokens than ``max_prompt_tokens``."""

    def __init__(self, index: int, length: int, limit: int) -> None:
        self.index = index
        self.length = length
        self.limit = limit
        super().__init__(
            f"prompt {index} has {length} tokens, more than max_prompt_tokens={limit}; filter overlong "
            "prompts in the data (or set rollout overlong_prompt=skip to report and skip them)"
        )


def check_prompts(
    prompts: Sequence[Sequence[int]],
    vocab_size: int,
    max_prompt_tokens: int,
    overlong_prompt: str = "error",
) -> list[int]:
    """Validate tokenized prompts.

    Args:
        prompts: one list of token ids per prompt.
        vocab_size: ids must lie in ``[0, vocab_size)``.
        max_prompt_tokens: longest allowed prompt.
        overlong_prompt: ``"error"`` raises :class:`PromptTooLongError`; ``"skip"`` returns the indices.

    Returns:
        Indices of prompts that are too long (only with ``overlong_prompt="skip"``).

    Raises:
        PromptTooLongError: a prompt is longer than the limit and ``overlong_prompt == "error"``.
        ValueError: a prompt is empty, not a list of ints, or holds an id outside the vocabulary.

    """
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise ValueError(f"prompts must be a list of token-id lists, got {type(prompts).__name__}")
    if overlong_prompt not in ("error", "skip"):
        raise ValueError(f"overlong_prompt must be 'error' or 'skip', got {overlong_prompt!r}")
    skipped: list[int] = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, (str, bytes)) or not isinstance(prompt, Sequence):
            raise ValueError(f"prompt {i}: expected a list of token ids, got {type(prompt).__name__}")
        if len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty (0 tokens)")
        for pos, tok in enumerate(prompt):
            if isinstance(tok, bool) or not isinstance(tok, numbers.Integral):
                raise ValueError(f"prompt {i}, position {pos}: token id {tok!r} is not an int")
            if not 0 <= tok < vocab_size:
                raise ValueError(
                    f"prompt {i}, position {pos}: token id {tok} is outside the vocabulary [0, {vocab_size})"
                )
        if len(prompt) > max_prompt_tokens:
            if overlong_prompt == "error":
                raise PromptTooLongError(i, len(prompt), max_prompt_tokens)
            skipped.append(i)
    return skipped


def check_sampling(sampling: SamplingParams, n: int, max_response_tokens: int) -> None:
    """Validate sampling parameters against the engine's limits.

    Raises:
        ValueError: naming the offending field.

    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    t = sampling.temperature
    if not isinstance(t, (int, float)) or t < 0 or t != t:
        raise ValueError(f"sampling.temperature must be >= 0, got {t!r}")
    if not 0.0 < sampling.top_p <= 1.0:
        raise ValueError(f"sampling.top_p must be in (0, 1], got {sampling.top_p!r}")
    if not isinstance(sampling.top_k, int) or (sampling.top_k < 1 and sampling.top_k not in (-1, 0)):
        raise ValueError(f"sampling.top_k must be -1 (off) or >= 1, got {sampling.top_k!r}")
    if not isinstance(sampling.max_tokens, int) or sampling.max_tokens < 1:
        raise ValueError(f"sampling.max_tokens must be a positive int, got {sampling.max_tokens!r}")
    if sampling.max_tokens > max_response_tokens:
        raise ValueError(
            f"sampling.max_tokens={sampling.max_tokens} exceeds the engine's max_response_tokens="
            f"{max_response_tokens}"
        )
    if isinstance(sampling.stop, str) or not all(isinstance(s, str) and s for s in sampling.stop):
        raise ValueError(f"sampling.stop must be a list of non-empty strings, got {sampling.stop!r}")
    if sampling.seed is not None and (isinstance(sampling.seed, bool) or not isinstance(sampling.seed, int)):
        raise ValueError(f"sampling.seed must be an int or None, got {sampling.seed!r}")


def check_state_dict(
    new: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Size],
    optional: frozenset[str] = frozenset(),
) -> None:
    """Strict check of a Hugging Face-named state dict against the engine's parameters.

    Args:
        new: the incoming tensors.
        expected: name -> shape of every parameter the engine holds.
        optional: names that may be absent (e.g. ``lm_head.weight`` of a tied-embedding model).

    Raises:
        KeyError: an unknown name or a missing name (all of them are listed).
        ValueError: a shape mismatch, a non-tensor, or a non-finite value, naming the key.

    """
    unknown = sorted(set(new) - set(expected))
    missing = sorted(set(expected) - set(new) - set(optional))
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown parameter names {unknown[:10]}{' ...' if len(unknown) > 10 else ''}")
        if missing:
            parts.append(f"missing parameter names {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        raise KeyError("update_weights: " + "; ".join(parts))
    for name, tensor in new.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"update_weights: {name} is a {type(tensor).__name__}, not a tensor")
        if tuple(tensor.shape) != tuple(expected[name]):
            raise ValueError(
                f"update_weights: shape mismatch for {name}: got {tuple(tensor.shape)}, "
                f"the engine holds {tuple(expected[name])}"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"update_weights: {name} contains NaN or inf")
