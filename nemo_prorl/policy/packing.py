"""Sequence packing: the rows of a micro-batch concatenated into one row, no padding between them.

A binned micro-batch of rows ``l_1 >= ... >= l_b`` still computes ``b x l_1`` positions; packed, it
computes ``sum(l_i)`` (plus at most ``multiple - 1`` alignment positions). The packed row is megatron's
``thd`` layout (``megatron/core/packed_seq_params.py``, ``PackedSeqParams``): tokens ``[t]``, sequence
``i`` at ``[cu_seqlens[i], cu_seqlens[i+1])``, every sequence attending causally within itself only and
its rotary positions restarting at 0.

Layout of a pack of lengths ``l_1 .. l_n`` (:class:`PackLayout`)::

    cu_seqlens = [0, l_1, l_1 + l_2, ..., S]          S = sum(l_i)
    total      = ceil(S / multiple) * multiple          (alignment: TP sequence parallel splits the pack)
    if total > S: one more segment [S, total) of padding, so cu_seqlens[-1] == total and every position
                  belongs to a segment (the padding attends among itself; nothing real attends to it)
    position_ids[p] = p - cu_seqlens[segment(p)]        (0, 1, ..., l_1-1, 0, 1, ..., l_2-1, ...)
    max_seqlen = max segment length

How megatron-core 0.16 consumes it (read in ``megatron/core``):

* ``models/gpt/gpt_model.py`` ``GPTModel._preprocess``: with ``packed_seq_params`` the rotary table is
  built for ``max(max_seqlen_q, max_seqlen_kv)`` positions
  (``models/common/embeddings/rotary_pos_embedding.py``, ``RotaryEmbedding.get_rotary_seq_len``);
  ``position_ids`` only feed learned absolute embeddings (none for RoPE models).
* ``transformer/attention.py`` ``Attention.forward``: for ``qkv_format == 'thd'`` it squeezes the batch
  dimension (the pack is ``[t, 1, ...]``) and applies RoPE per segment
  (``models/common/embeddings/rope_utils.py``, ``_apply_rotary_pos_emb_thd``: the table's first
  ``l_i`` rows for segment ``i``, i.e. the table indexed by :func:`position_ids`).
* ``extensions/transformer_engine.py`` ``TEDotProductAttention.forward``: passes ``cu_seqlens_*`` and
  ``max_seqlen_*`` to TE and turns the ``causal`` mask into ``padding_causal`` (TE's THD kernels need
  the padding variant; causal within each segment). The local spec's ``DotProductAttention`` refuses
  ``packed_seq_params`` ("Packed sequence is not supported by DotProductAttention"): there the same
  attention is expressed with :func:`block_causal_mask` over the pack (``s^2`` scores, see
  docs/scaling.md for when that pays off).

The padding rule matches what megatron needs without context parallelism: with
``sequence_parallel`` the sequence dimension is split over TP ranks
(``tensor_parallel.scatter_to_sequence_parallel_region``), so ``total`` must be a multiple of the TP size.

Pure functions of lists / tensors; the engine that uses them is
:class:`nemo_prorl.policy.megatron.engine.MegatronPolicy`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "PackLayout",
    "pack_layout",
    "pack_bins",
    "packed_tokens",
    "position_ids",
    "pack_rows",
    "unpack_index",
    "unpack_rows",
    "block_causal_mask",
    "packed_seq_params",
]


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class PackLayout:
    """Where each row of a micro-batch sits in its packed row.

    Attributes:
        lengths: the ``n`` real rows' lengths, in micro-batch row order.
        cu_seqlens: ``n + 1`` (``n + 2`` with an alignment segment) segment boundaries, from 0 to ``total``.
        total: positions of the packed row, alignment included.
        max_seqlen: the longest segment.

    """

    lengths: tuple[int, ...]
    cu_seqlens: tuple[int, ...]
    total: int
    max_seqlen: int

    @property
    def real(self) -> int:
        """Positions that belong to a row (``sum(lengths)``)."""
        return self.cu_seqlens[len(self.lengths)]


def pack_layout(lengths: Sequence[int], multiple: int = 1) -> PackLayout:
    """The :class:`PackLayout` of rows of ``lengths`` packed in order, padded to a multiple of ``multiple``.

    Example:
        ``pack_layout([5, 3, 2], multiple=4)``: ``S = 10``, ``total = 12``,
        ``cu_seqlens = (0, 5, 8, 10, 12)``, ``max_seqlen = 5``.

    """
    _positive("multiple", multiple)
    if not lengths:
        raise ValueError("pack_layout: a pack needs at least one row")
    cu = [0]
    for i, n in enumerate(lengths):
        cu.append(cu[-1] + _positive(f"lengths[{i}]", n))
    total = -(-cu[-1] // multiple) * multiple
    if total > cu[-1]:
        cu.append(total)
    longest = max(b - a for a, b in zip(cu, cu[1:]))
    return PackLayout(tuple(int(n) for n in lengths), tuple(cu), total, longest)


def pack_bins(lengths: Sequence[int], budget: int, multiple: int = 1) -> list[list[int]]:
    """Partition rows into packs of at most ``budget`` positions each (first-fit decreasing).

    A pack costs ``ceil(sum(lengths) / multiple) * multiple`` positions, not ``rows x longest``: rows are
    taken longest first, each into the first pack it still fits in, else into a new pack. First-fit
    decreasing uses at most ``11/9 OPT + 6/9`` packs (Dosa 2007); a row longer than ``budget`` gets a pack
    of its own (as in :func:`nemo_prorl.policy.micro_batching.token_budget_bins`).

    Args:
        lengths: per-row lengths (positive integers).
        budget: the most positions a pack may hold (``>= 1``).
        multiple: the pack's length is rounded up to a multiple of this (:func:`pack_layout`).

    Returns:
        Lists of row indices, every row in exactly one; packs in order of creation (the first holds the
        longest row); inside a pack rows are in decreasing length, ties in increasing index.

    Example:
        ``pack_bins([3, 9, 4, 2, 8], 12)`` -> ``[[1, 0], [4, 2], [3]]``: 9 opens pack 0, 8 opens pack 1
        (17 > 12), 4 does not fit pack 0 (13) but fits pack 1 (12), 3 fits pack 0 (12), 2 fits neither.
        Binned padding under the same budget (``token_budget_bins``) gives ``[[1], [4], [2, 0, 3]]`` and
        computes 9 + 8 + 3 x 4 = 29 positions; the packs compute 12 + 12 + 2 = 26 (all real).

    """
    _positive("budget", budget)
    _positive("multiple", multiple)
    for i, n in enumerate(lengths):
        _positive(f"lengths[{i}]", n)
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    used: list[int] = []
    for i in order:
        for k, filled in enumerate(used):
            if -(-(filled + lengths[i]) // multiple) * multiple <= budget:
                bins[k].append(i)
                used[k] += lengths[i]
                break
        else:
            bins.append([i])
            used.append(lengths[i])
    return bins


def packed_tokens(bins: Sequence[Sequence[int]], lengths: Sequence[int], multiple: int = 1) -> int:
    """Positions computed for packs ``bins``: ``sum(ceil(sum(lengths[bin]) / multiple) * multiple)``."""
    total = 0
    for b in bins:
        if b:
            total += pack_layout([lengths[i] for i in b], multiple).total
    return total


def position_ids(layout: PackLayout, device: torch.device | str | None = None) -> torch.Tensor:
    """``[total]`` int64 positions restarting at 0 in every segment (the alignment segment included)."""
    cu = torch.tensor(layout.cu_seqlens, dtype=torch.long, device=device)
    sizes = cu[1:] - cu[:-1]
    starts = torch.repeat_interleave(cu[:-1], sizes)
    return torch.arange(layout.total, dtype=torch.long, device=device) - starts


def unpack_index(layout: PackLayout, length: int, device: torch.device | str | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, valid)``, both ``[n, length]``: row ``i``'s position ``j`` is the pack's ``index[i, j]``.

    ``valid[i, j] = j < lengths[i]``; where it is False the index is 0 (a safe gather address).
    """
    if length < max(layout.lengths):
        raise ValueError(f"unpack length {length} is shorter than the longest row {max(layout.lengths)}")
    starts = torch.tensor(layout.cu_seqlens[: len(layout.lengths)], dtype=torch.long, device=device)
    lens = torch.tensor(layout.lengths, dtype=torch.long, device=device)
    cols = torch.arange(length, dtype=torch.long, device=device)
    valid = cols.unsqueeze(0) < lens.unsqueeze(1)
    index = torch.where(valid, starts.unsqueeze(1) + cols.unsqueeze(0), torch.zeros((), dtype=torch.long,
                                                                                 device=valid.device))
    return index, valid


def pack_rows(values: torch.Tensor, layout: PackLayout, fill: int | float = 0) -> torch.Tensor:
    """Concatenate row ``i``'s first ``lengths[i]`` entries: ``[n, L, ...]`` -> ``[total, ...]``.

    Alignment positions hold ``fill``.
    """
    n = len(layout.lengths)
    if values.shape[0] != n:
        raise ValueError(f"pack_rows: {values.shape[0]} rows for a layout of {n}")
    index, valid = unpack_index(layout, values.shape[1], values.device)
    out = values.new_full((layout.total, *values.shape[2:]), fill)
    out[index[valid]] = values[valid]
    return out


def unpack_rows(packed: torch.Tensor, layout: PackLayout, length: int) -> torch.Tensor:
    """Inverse of :func:`pack_rows`: ``[total, ...]`` -> ``[n, length, ...]``, zeros past each row's end.

    Differentiable (a gather and a zero fill): the gradient reaches exactly the packed positions read.
    """
    if packed.shape[0] != layout.total:
        raise ValueError(f"unpack_rows: {packed.shape[0]} packed positions for a layout of {layout.total}")
    index, valid = unpack_index(layout, length, packed.device)
    rows = packed[index.reshape(-1)].reshape(*index.shape, *packed.shape[1:])
    keep = valid.reshape(*valid.shape, *([1] * (packed.dim() - 1)))
    return torch.where(keep, rows, torch.zeros((), dtype=rows.dtype, device=rows.device))


def block_causal_mask(layout: PackLayout, device: torch.device | str | None = None) -> torch.Tensor:
    """``[1, 1, total, total]`` bool, True where attention is forbidden (megatron's mask convention).

    Position ``q`` may attend to ``k`` iff both lie in the same segment and ``k <= q``: the attention
    pattern of Transformer Engine's THD kernels with ``padding_causal`` and ``cu_seqlens``.
    """
    cu = torch.tensor(layout.cu_seqlens, dtype=torch.long, device=device)
    segment = torch.repeat_interleave(torch.arange(len(cu) - 1, device=device), cu[1:] - cu[:-1])
    pos = torch.arange(layout.total, device=device)
    allowed = (segment.unsqueeze(1) == segment.unsqueeze(0)) & (pos.unsqueeze(0) <= pos.unsqueeze(1))
    return (~allowed).reshape(1, 1, layout.total, layout.total)


def packed_seq_params(layout: PackLayout, device: torch.device | str | None = None):
    """Megatron's ``PackedSeqParams`` for ``layout``: ``qkv_format='thd'``, int32 ``cu_seqlens``.

    ``cu_seqlens_*_padded`` stay None: alignment is a segment of its own, so the real and padded
    boundaries coincide (TE then uses ``cu_seqlens`` for both).
    """
    from megatron.core.packed_seq_params import PackedSeqParams

    cu = torch.tensor(layout.cu_seqlens, dtype=torch.int32, device=device)
    return PackedSeqParams(
        qkv_format="thd",
        cu_seqlens_q=cu,
        cu_seqlens_kv=cu,
        max_seqlen_q=layout.max_seqlen,
        max_seqlen_kv=layout.max_seqlen,
    )
