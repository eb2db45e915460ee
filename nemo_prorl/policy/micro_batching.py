"""Micro-batches cut by a token budget: rows binned by length, each bin padded only to its own longest.

The cost of a micro-batch is what the model actually computes on it: ``rows x padded_len`` tokens,
padding included (a right-padded ``[b, L]`` block runs every position through every layer). Cutting a
step's batch into a fixed number of rows padded to the step's longest sequence wastes
``1 - sum(len) / (B x L_max)`` of that compute and sizes activation memory by the worst row; with
RL response lengths spread from a few hundred tokens to the 8k/16k cap most of it is padding.

:func:`token_budget_bins` sorts rows by length (longest first) and cuts them into runs of
consecutive rows: the fewest micro-batches any partition can have under the budget, and among those
the one that computes the fewest padded tokens (a dynamic programme over the cut points). Filling
greedily instead (each micro-batch takes rows while ``rows x longest <= budget``) gives the same count
but pads short rows up to long ones (the measured padding fractions of both are in
``benchmarks/RESULTS.md``, long-tailed GRPO step).

A row longer than the budget cannot be split (a sequence is one forward), so it gets a micro-batch of
its own, padded to nothing. That micro-batch exceeds the budget; size the budget at least
``max_prompt_tokens + max_response_tokens`` so it never happens (the engine logs a warning when it
does rather than failing a step of a long run).

A row's length is the number of positions its forward needs: up to and including its last response
token. Positions after it (right padding, or tokens that are not trained) cannot influence any
earlier position under causal attention, so dropping them changes no log-prob.

Pure functions of plain lists / tensors; the engine that uses them is
:class:`nemo_prorl.policy.megatron.engine.MegatronPolicy`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["sequence_lengths", "token_budget_bins", "padded_tokens", "padding_fraction"]


def sequence_lengths(response_mask: torch.Tensor) -> list[int]:
    """Positions each row's forward needs: index of its last response token + 1, at least 2.

    Args:
        response_mask: ``[B, L]`` (bool/int/float), 1 on response tokens.

    Returns:
        ``B`` lengths in ``[2, L]`` (``min(2, L)`` for a row without response tokens: its loss
        contribution is 0, it still needs a well-formed forward).

    """
    if response_mask.dim() != 2:
        raise ValueError(f"response_mask must be [B, L], got shape {tuple(response_mask.shape)}")
    size, length = response_mask.shape
    if size == 0:
        return []
    present = response_mask.bool()
    positions = torch.arange(1, length + 1, device=present.device).expand(size, length)
    last = torch.where(present, positions, torch.zeros_like(positions)).amax(dim=1)
    return [int(v) for v in last.clamp(min=min(2, length)).tolist()]


def token_budget_bins(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Partition rows into micro-batches of at most ``budget`` padded tokens each.

    Objective, in order: the fewest micro-batches, then the fewest padded tokens
    ``sum(len(bin) x max(lengths[bin]))`` among partitions with that many. Rows are sorted longest
    first and cut into consecutive runs (some optimal partition is of that form: swapping a longer row
    of a micro-batch with a shorter row of one whose longest row is at least as long changes no row
    count and no longest row of the second, and can only shorten the first's), and the cuts come from
    a dynamic programme over the sorted rows: ``best[j]`` = the best (micro-batches, tokens) for the
    ``j`` longest rows, ``best[j] = min over i of best[i] + (1, (j - i) x l_i)`` with
    ``(j - i) x l_i <= budget``: ``n`` vectorised steps of at most ``k`` candidates each for ``n`` rows and
    at most ``k`` rows per micro-batch.

    Args:
        lengths: per-row lengths (positive integers), e.g. from :func:`sequence_lengths`.
        budget: the most ``rows x padded_len`` tokens a micro-batch may compute (``>= 1``).

    Returns:
        Lists of row indices; every row appears in exactly one. Micro-batches come longest first;
        inside one, rows are in decreasing length, ties in increasing index. A micro-batch's padded
        length is ``lengths[bin[0]]``. A row longer than ``budget`` is alone in its micro-batch. Among
        equally good partitions the one whose last micro-batch is shortest is taken (recursively).

    Example:
        ``token_budget_bins([3, 9, 4, 2, 8], 16)`` -> ``[[1], [4], [2, 0, 3]]``: 9 and 8 cannot share
        (2 x 9 > 16), so three micro-batches are the fewest; ``[9] [8] [4, 3, 2]`` computes
        9 + 8 + 3 x 4 = 29 tokens where filling greedily, ``[9] [8, 4] [3, 2]``, computes 31.

    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"token budget must be a positive integer, got {budget!r}")
    for i, n in enumerate(lengths):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"lengths[{i}] must be a positive integer, got {n!r}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    n = len(order)
    if n == 0:
        return []
    longest = np.array([lengths[i] for i in order], dtype=np.int64)  # non-increasing
    # best[j] as one integer: micro-batches * scale + tokens (tokens < scale), so min() is lexicographic
    scale = int(longest[0]) * n + 1
    best = np.zeros(n + 1, dtype=np.int64)
    cut = np.zeros(n + 1, dtype=np.int64)
    idx = np.arange(n + 1, dtype=np.int64)
    lo = 0  # first i whose run i .. j-1 fits: non-decreasing in j (more rows, rows no shorter)
    for j in range(1, n + 1):
        while lo < j - 1 and (j - lo) * int(longest[lo]) > budget:
            lo += 1
        # candidates i = lo .. j-1, walked from j-1 down so that ties keep the shortest last micro-batch
        cand = (best[lo:j] + scale + (j - idx[lo:j]) * longest[lo:j])[::-1]
        k = int(np.argmin(cand))
        best[j], cut[j] = cand[k], j - 1 - k
    bins: list[list[int]] = []
    j = n
    while j > 0:
        i = int(cut[j])
        bins.append(order[i:j])
        j = i
    return bins[::-1]


def padded_tokens(bins: Sequence[Sequence[int]], lengths: Sequence[int], rows: int | None = None) -> int:
    """Tokens computed for ``bins``: ``sum(len(bin) x max(lengths[bin]))``.

    Args:
        bins: row indices per micro-batch.
        lengths: per-row lengths.
        rows: pad every micro-batch to this many rows (pipeline-parallel fixed shapes); ``None``: no.

    """
    total = 0
    for b in bins:
        if b:
            total += max(len(b), rows or 0) * max(lengths[i] for i in b)
    return total


def padding_fraction(real_tokens: float, computed_tokens: float) -> float:
    """``1 - real / computed``: the share of computed positions that were padding (0 when nothing ran)."""
    if computed_tokens <= 0:
        return 0.0
    if real_tokens < 0 or real_tokens > computed_tokens:
        raise ValueError(f"real tokens {real_tokens} must be in [0, computed tokens {computed_tokens}]")
    return 1.0 - real_tokens / computed_tokens
