"""Sampling primitives shared by the rollout engines: logit processing, seeded draws, stop strings.

The semantics follow vLLM's sampler so that the CPU engine and the vLLM engine sample from the same
distribution for the same ``SamplingParams``:

* ``temperature == 0`` is greedy (argmax of the raw logits).
* Otherwise the logits are divided by the temperature, then top-k keeps every token whose scaled logit
  is at least the k-th largest (ties are kept), then top-p keeps the smallest set of most likely tokens
  whose probability mass reaches ``top_p`` (the most likely token is always kept), and the token is drawn
  from the softmax of what is left.

Log-probs ("processed" log-probs): the log-prob returned for a sampled token is taken from the very
distribution it was drawn from, i.e. ``log_softmax(process(logits / T))``. With ``top_p == 1`` and
``top_k == -1`` this is exactly ``log_softmax(logits / T)``, which is what the trainer recomputes, so the
engine/trainer comparison (``token_mult_prob_error``) measures numerics only. With truncation the trainer
should either recompute the same truncated distribution or expect the mismatch. For greedy decoding the
log-prob is ``log_softmax(logits)`` (temperature 1), because a point mass has no useful log-prob.
"""

from __future__ import annotations

import hashlib

import torch

_MASKED = float("-inf")


def process_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature-scale and truncate logits the way vLLM does.

    Args:
        logits: raw logits, ``[B, V]`` (any float dtype; computed in float32).
        temperature: > 0 (greedy is handled by the caller).
        top_k: keep the k most likely tokens; ``-1`` (or ``0``, or ``>= V``) disables it.
        top_p: nucleus mass in ``(0, 1]``; ``1.0`` disables it.

    Returns:
        Processed logits ``[B, V]`` float32, with removed tokens set to ``-inf``.

    """
    if temperature <= 0:
        raise ValueError(f"process_logits needs temperature > 0, got {temperature}")
    out = logits.float() / temperature
    vocab = out.shape[-1]
    if 0 < top_k < vocab:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]  # [B, 1]
        out = out.masked_fill(out < kth, _MASKED)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=False)  # ascending
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop_sorted = cum <= (1.0 - top_p)
        drop_sorted[..., -1] = False  # the most likely token always survives
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, _MASKED)
    return out


def sample_seed(base_seed: int, prompt_index: int, sample_index: int) -> int:
    """Derive the seed of sample ``j`` of prompt ``i`` from the call's base seed.

    A cryptographic hash (not ``hash()``, which is salted per process) so that the seed is the same in
    every process and run.

    Returns:
        A non-negative 63-bit integer.

    """
    digest = hashlib.blake2b(f"{base_seed}:{prompt_index}:{sample_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def draw_tokens(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: one token per row from ``probs`` given one uniform number per row.

    Each row's token depends only on that row's probabilities and its uniform number, never on the
    other rows, which is what makes a sample reproducible from its own seed.

    Args:
        probs: ``[B, V]`` non-negative, each row summing to ~1 (zeros for removed tokens).
        uniforms: ``[B]`` in ``[0, 1)``.

    Returns:
        ``[B]`` int64 token ids; a zero-probability token is never returned.

    """
    cdf = probs.double().cumsum(dim=-1)  # [B, V]
    target = (uniforms.double() * cdf[:, -1]).unsqueeze(-1)  # [B, 1]
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)
    # Guard the float edge (target rounding up to the total): never return a removed token.
    bad = probs.gather(-1, idx.unsqueeze(-1)).squeeze(-1) <= 0
    if bool(bad.any()):
        idx = torch.where(bad, probs.argmax(dim=-1), idx)
    return idx


def sample_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_k: int,
    top_p: float,
    uniforms: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose the next token of every row from given uniform numbers; return it and its log-prob.

    The vectorised core of :func:`select_next_tokens`: a decoding loop that draws each row's uniform
    numbers ahead of time (one per step, from the row's own generator) calls this once per step with a
    single tensor instead of one generator call per row.

    Args:
        logits: raw next-token logits ``[B, V]``.
        temperature: 0 for greedy, else > 0.
        top_k: see :func:`process_logits`.
        top_p: see :func:`process_logits`.
        uniforms: ``[B]`` numbers in ``[0, 1)`` (ignored when greedy), on any device.

    Returns:
        ``(tokens [B] int64, logprobs [B] float32)``; the log-prob is taken from the distribution the
        token was drawn from (see the module docstring).

    """
    if temperature == 0:
        logp = torch.log_softmax(logits.float(), dim=-1)
        tokens = logits.argmax(dim=-1)
    else:
        processed = process_logits(logits, temperature, top_k, top_p)
        logp = torch.log_softmax(processed, dim=-1)
        tokens = draw_tokens(logp.exp(), uniforms.to(logits.device))
    return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def select_next_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_k: int,
    top_p: float,
    generators: list[torch.Generator],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose the next token of every row and its log-prob under the distribution sampled from.

    Args:
        logits: raw next-token logits ``[B, V]``.
        temperature: 0 for greedy, else > 0.
        top_k: see :func:`process_logits`.
        top_p: see :func:`process_logits`.
        generators: one ``torch.Generator`` per row; each row consumes exactly one uniform number per
            call (also when greedy), so a row's random stream does not depend on the other rows.

    Returns:
        ``(tokens [B] int64, logprobs [B] float32)``.

    """
    uniforms = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
    return sample_tokens(logits, temperature, top_k, top_p, uniforms)


def find_stop(text: str, stops: list[str], search_from: int = 0) -> int | None:
    """Position of the earliest stop string in ``text`` (searching from ``search_from``), or None."""
    best: int | None = None
    for stop in stops:
        pos = text.find(stop, search_from)
        if pos >= 0 and (best is None or pos < best):
            best = pos
    return best


def tokens_covering(token_ids: list[int], n_chars: int, decode) -> int:
    """Smallest ``k`` such that ``decode(token_ids[:k])`` has at least ``n_chars`` characters.

    Used to cut a response before a stop string: the kept tokens cover the kept text; a token that
    straddles the start of the stop string is kept (its text is then longer than the kept text).

    Args:
        token_ids: the generated tokens.
        n_chars: length of the kept text.
        decode: ``list[int] -> str`` (special tokens skipped).

    Returns:
        The number of tokens to keep, ``0 <= k <= len(token_ids)``.

    """
    if n_chars <= 0:
        return 0
    lo, hi = 1, len(token_ids)
    while lo < hi:  # decoded length is non-decreasing in k for byte-level and sentencepiece tokenizers
        mid = (lo + hi) // 2
        if len(decode(token_ids[:mid])) >= n_chars:
            hi = mid
        else:
            lo = mid + 1
    return lo
