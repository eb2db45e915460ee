"""Token log-probs and entropy from hidden states and the output layer, in token chunks.

``log_softmax(h @ W.T / temperature).gather(labels)`` materialises ``[T, V]`` logits and, in backward,
their gradient: gigabytes for a 150k vocabulary. Here a custom autograd Function walks the tokens in
chunks of ``chunk_size``; forward keeps only per-token statistics (logsumexp, and the entropy), and
backward recomputes each ``[chunk, V]`` tile once, so peak extra memory is about two tiles plus the
weight gradient.

The vocab-parallel variant takes one shard of the vocabulary per rank (Megatron's
``VocabParallelEmbedding`` / ``ColumnParallelLinear`` output layer). Each rank computes per-token
statistics of its shard; one ``all_gather`` of ``[3, T]`` statistics per call combines them:

    lse     = logsumexp_r(lse_r)
    target  = sum_r target_r                 (only the rank owning the label contributes)
    entropy = sum_r w_r * (H_r - log w_r),   w_r = exp(lse_r - lse)

where H_r is the entropy of the shard's own softmax, computed as ``-sum q log q`` (no cancellation
between lse and the mean logit, so it is as accurate as the naive fp32 entropy).

Backward of logprob_t and entropy_t with respect to the logits z_t (p = softmax(z_t), y = label):

    d logprob / d z = onehot(y) - p
    d entropy / d z = -p * (log p + entropy)

The hidden-state gradient is all-reduced over the group (the full gradient, as if the weight were not
sharded), the weight gradient is the local shard's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from nemo_prorl.algorithms import collectives


def _compute_dtype(*ts: torch.Tensor) -> torch.dtype:
    dt = torch.float32
    for t in ts:
        dt = torch.promote_types(dt, t.dtype)
    return dt


def _check_inputs(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_size: int, temperature: float
) -> None:
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be [T, H] (got shape {tuple(hidden.shape)})")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"weight must be [V, H] with H={hidden.shape[1]} (got shape {tuple(weight.shape)})")
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"labels must be [T] with T={hidden.shape[0]} (got shape {tuple(labels.shape)})")
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be an integer tensor (got {labels.dtype})")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer (got {chunk_size!r})")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (got {temperature!r})")


class _ChunkedLogprobs(torch.autograd.Function):
    """Autograd Function behind :func:`chunked_logprobs` and :func:`vocab_parallel_logprobs`."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor,
        vocab_start: int,
        group: dist.ProcessGroup | None,
        chunk_size: int,
        temperature: float,
        with_entropy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = _compute_dtype(hidden, weight)
        w = weight.to(dtype)
        num_tokens, vocab_local = hidden.shape[0], weight.shape[0]
        inv_t = 1.0 / temperature
        local_labels = labels.long() - vocab_start
        in_shard = (local_labels >= 0) & (local_labels < vocab_local)
        safe_labels = torch.where(in_shard, local_labels, torch.zeros_like(local_labels))
        lse_r = torch.empty(num_tokens, dtype=dtype, device=hidden.device)
        target_r = torch.zeros(num_tokens, dtype=dtype, device=hidden.device)
        ent_r = torch.zeros(num_tokens, dtype=dtype, device=hidden.device)
        for s in range(0, num_tokens, chunk_size):
            e = min(s + chunk_size, num_tokens)
            z = (hidden[s:e].to(dtype) * inv_t) @ w.T  # [c, V_local]
            tgt = z.gather(1, safe_labels[s:e, None]).squeeze(1)
            target_r[s:e] = torch.where(in_shard[s:e], tgt, torch.zeros_like(tgt))
            zmax = z.amax(dim=-1)
            z.sub_(zmax[:, None])  # z' = z - max <= 0, in place
            ez = torch.exp(z)  # the only exp of the tile
            sum_ez = ez.sum(dim=-1)
            log_sum = sum_ez.log()
            lse_r[s:e] = zmax + log_sum
            if with_entropy:
                # H = log sum - E_q[z'], both terms >= 0: no cancellation
                ent_r[s:e] = log_sum - torch.linalg.vecdot(ez, z) / sum_ez
            del z, ez
        if group is not None and dist.get_world_size(group) > 1:
            stats = torch.stack([lse_r, target_r, ent_r, in_shard.to(dtype)])  # [4, T]
            allst = torch.stack(collectives.all_gather(stats, group=group))  # [R, 4, T]
            owners = allst[:, 3].sum(dim=0)
            if bool((owners != 1).any()):
                bad = torch.nonzero(owners != 1).flatten()[:5].tolist()
                raise ValueError(
                    f"labels at token indices {bad} are not owned by exactly one vocabulary shard "
                    "(label outside [0, V) or overlapping vocab_start ranges)"
                )
            lse_tot = torch.logsumexp(allst[:, 0], dim=0)
            target = allst[:, 1].sum(dim=0)
            shift = allst[:, 0] - lse_tot  # log of each shard's share of the probability mass, <= 0
            ent = (shift.exp() * (allst[:, 2] - shift)).sum(dim=0)
        else:
            if not bool(in_shard.all()):
                bad = torch.nonzero(~in_shard).flatten()[:5].tolist()
                raise ValueError(
                    f"labels at token indices {bad} are outside the vocabulary "
                    f"[{vocab_start}, {vocab_start + vocab_local}) and no process group was given"
                )
            lse_tot, target, ent = lse_r, target_r, ent_r
        logprobs = target - lse_tot
        entropy = ent if with_entropy else torch.zeros_like(lse_tot)
        ctx.save_for_backward(hidden, weight, safe_labels, in_shard, lse_tot, entropy)
        ctx.group = group
        ctx.chunk_size = chunk_size
        ctx.inv_t = inv_t
        ctx.with_entropy = with_entropy
        ctx.dtype = dtype
        out_lp, out_ent = logprobs.to(hidden.dtype), entropy.to(hidden.dtype)
        if not with_entropy:
            ctx.mark_non_differentiable(out_ent)
        ctx.set_materialize_grads(False)
        return out_lp, out_ent

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        grad_logprobs: torch.Tensor | None,
        grad_entropy: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, safe_labels, in_shard, lse, entropy = ctx.saved_tensors
        dtype, inv_t, chunk_size = ctx.dtype, ctx.inv_t, ctx.chunk_size
        if not ctx.with_entropy:
            grad_entropy = None
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if (grad_logprobs is None and grad_entropy is None) or not (need_h or need_w):
            return None, None, None, None, None, None, None, None
        w = weight.to(dtype)
        num_tokens = hidden.shape[0]
        g_lp = grad_logprobs.to(dtype) if grad_logprobs is not None else None
        g_ent = grad_entropy.to(dtype) if grad_entropy is not None else None
        grad_h = torch.empty(hidden.shape, dtype=dtype, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if need_w else None
        for s in range(0, num_tokens, chunk_size):
            e = min(s + chunk_size, num_tokens)
            hs = hidden[s:e].to(dtype) * inv_t
            logp = (hs @ w.T).sub_(lse[s:e, None])  # [c, V_local] log-softmax of the full vocab
            p = logp.exp()
            if g_ent is not None:
                # -g_ent * p * (log p + H), built in the logp buffer
                grad_z = logp.add_(entropy[s:e, None]).mul_(p).mul_(-g_ent[s:e, None])
                if g_lp is not None:
                    grad_z.addcmul_(p, g_lp[s:e, None], value=-1.0)
            else:
                del logp
                grad_z = p.mul_(-g_lp[s:e, None])
            del p
            if g_lp is not None:
                rows = torch.nonzero(in_shard[s:e]).squeeze(1)
                grad_z[rows, safe_labels[s:e][rows]] += g_lp[s:e][rows]
            if need_h:
                grad_h[s:e] = (grad_z @ w) * inv_t
            if need_w:
                grad_w.addmm_(grad_z.T, hs)
            del grad_z
        group = ctx.group
        if need_h and group is not None and dist.get_world_size(group) > 1:
            collectives.all_reduce(grad_h, op=collectives.ReduceOp.SUM, group=group)
        return (
            grad_h.to(hidden.dtype) if need_h else None,
            grad_w.to(weight.dtype) if need_w else None,
            None,
            None,
            None,
            None,
            None,
            None,
        )


def vocab_parallel_logprobs(
    hidden: torch.Tensor,
    weight_shard: torch.Tensor,
    labels: torch.Tensor,
    *,
    vocab_start: int,
    group: dist.ProcessGroup | None = None,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropy) with the vocabulary sharded over a process group.

    Every rank passes the same ``hidden`` and ``labels`` and its own contiguous vocabulary shard
    ``weight_shard`` = rows ``[vocab_start, vocab_start + V_local)`` of the full output weight. The
    result equals the non-parallel function of ``(hidden, concatenated weight)`` on every rank.

    Backward returns the FULL gradient for ``hidden`` (all-reduced over ``group``) and the local
    shard's gradient for ``weight_shard``. So do not wrap ``hidden`` in another all-reduce-in-backward
    region (e.g. Megatron's ``copy_to_tensor_model_parallel_region``): it would be summed twice.

    Args:
        hidden: ``[T, H]`` final hidden states (any float dtype; math runs in at least fp32).
        weight_shard: ``[V_local, H]`` this rank's rows of the output-layer weight.
        labels: ``[T]`` global token ids in ``[0, V)``.
        vocab_start: first global id of this rank's shard.
        group: process group of the vocabulary shards; None = not parallel.
        chunk_size: tokens per tile; memory is about ``2 * chunk_size * V_local`` floats.
        temperature: logits are divided by it (sampling temperature of the rollout).
        with_entropy: also return the per-token entropy of the full distribution.

    Returns:
        ``(logprobs [T], entropy [T] or None)`` in ``hidden``'s dtype; both differentiable.

    Raises:
        ValueError: on bad shapes, non-integer labels, ``chunk_size < 1`` or ``temperature <= 0``.

    """
    _check_inputs(hidden, weight_shard, labels, chunk_size, temperature)
    if vocab_start < 0:
        raise ValueError(f"vocab_start must be >= 0 (got {vocab_start})")
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"labels must be >= 0 (got min {int(labels.min())})")
    lp, ent = _ChunkedLogprobs.apply(
        hidden,
        weight_shard,
        labels,
        int(vocab_start),
        group,
        chunk_size,
        float(temperature),
        bool(with_entropy),
    )
    return lp, (ent if with_entropy else None)


def chunked_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log_softmax(hidden @ weight.T / temperature)[t, labels[t]]`` without ``[T, V]`` logits.

    Args:
        hidden: ``[T, H]`` final hidden states.
        weight: ``[V, H]`` output-layer weight.
        labels: ``[T]`` token ids in ``[0, V)``.
        chunk_size: tokens per tile.
        temperature: logits are divided by it.
        with_entropy: also return the per-token entropy.

    Returns:
        ``(logprobs [T], entropy [T] or None)``, differentiable w.r.t. ``hidden`` and ``weight``.

    Raises:
        ValueError: on bad shapes or labels outside ``[0, V)``.

    """
    _check_inputs(hidden, weight, labels, chunk_size, temperature)
    if labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= weight.shape[0]:
            raise ValueError(f"labels must be in [0, {weight.shape[0]}) (got min {lo}, max {hi})")
    return vocab_parallel_logprobs(
        hidden,
        weight,
        labels,
        vocab_start=0,
        group=None,
        chunk_size=chunk_size,
        temperature=temperature,
        with_entropy=with_entropy,
    )


def naive_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference implementation materialising ``[T, V]`` logits (for tests and small inputs).

    Returns:
        ``(logprobs [T], entropy [T])`` computed in at least fp32.

    """
    dtype = _compute_dtype(hidden, weight)
    logp = torch.log_softmax((hidden.to(dtype) @ weight.to(dtype).T) / temperature, dim=-1)
    return logp.gather(1, labels.long()[:, None]).squeeze(1), -(logp.exp() * logp).sum(-1)


# ----------------------------------------------------------------------------------------------------
# Fused log-prob + loss: the loss gradient is taken inside the chunked forward (no recompute GEMM).
# ----------------------------------------------------------------------------------------------------

#: ``chunk_loss(r0, r1, logprobs, entropy, chunk_mask) -> scalar``: the loss contribution of the tokens
#: of one chunk. ``logprobs`` / ``entropy`` are ``[r1 - r0, L]`` (zero outside ``chunk_mask``) and
#: differentiable; summing the contributions over all chunks must give the full loss.
ChunkLoss = Callable[[int, int, torch.Tensor, "torch.Tensor | None", torch.Tensor], torch.Tensor]



def _token_chunks(
    mask: torch.Tensor, chunk_size: int, split_rows: bool
) -> list[tuple[int, int, torch.Tensor]]:
    """Split the valid tokens of ``mask [B, L]`` into chunks of about ``chunk_size`` tokens.

    Returns:
        ``(r0, r1, chunk_mask [r1 - r0, L] bool)`` per chunk, in row-major token order. Without
        ``split_rows`` a chunk holds whole rows (it may exceed ``chunk_size`` when one row does).

    """
    counts = mask.sum(dim=1).tolist()
    chunks: list[tuple[int, int, torch.Tensor]] = []
    if not split_rows:
        r0, acc = 0, 0
        for r, c in enumerate(counts):
            if acc and acc + c > chunk_size:
                chunks.append((r0, r, mask[r0:r]))
                r0, acc = r, 0
            acc += c
        if acc:
            chunks.append((r0, len(counts), mask[r0:]))
        return chunks
    # token-level chunks: flat positions of the valid tokens, cut every chunk_size of them
    flat = torch.nonzero(mask.reshape(-1)).squeeze(1)
    width = mask.shape[1]
    for s in range(0, flat.numel(), chunk_size):
        idx = flat[s : s + chunk_size]
        r0, r1 = int(idx[0]) // width, int(idx[-1]) // width + 1
        cm = torch.zeros((r1 - r0) * width, dtype=torch.bool, device=mask.device)
        cm[idx - r0 * width] = True
        chunks.append((r0, r1, cm.view(r1 - r0, width)))
    return chunks


#: elements of the ``[c, block]`` scratch buffers of the gradient walk over a tile
#: (:func:`_tile_logsoftmax_grad_`): two fp32 buffers of 128k elements (1 MiB together) stay in a core's
#: cache, so each tile element is read from memory once per walk however many operations touch it
_BLOCK_ELEMS = 1 << 17
#: fewest columns per block (bounds the number of blocks, i.e. of Python-level operations, on tall tiles)
_MIN_BLOCK_COLUMNS = 128
#: columns per block on a GPU, where a walk is bound by kernel launches (each block is a handful of
#: kernels), not by a cache: 19 blocks for V = 151,936 instead of ~1,200 cache-sized ones
_GPU_BLOCK_COLUMNS = 8192
#: elements of a ``[c, block]`` block of the logits GEMM in the first walk (:func:`_tile_logits_stats`):
#: 2 MiB in fp32, large enough for the GEMM to run at the rate of the whole-tile GEMM (measured on a
#: 2-core AVX-512 CPU at c = 512, H = 896: 1,024-column blocks 173 GFLOP/s, the whole tile 166), small
#: enough that the block is still in cache when its statistics read it back
_GEMM_BLOCK_ELEMS = 1 << 19


def _block_columns(rows: int, width: int, device: torch.device, elems: int | None = None) -> int:
    """Vocabulary columns per block of a ``[rows, width]`` tile walk on ``device``.

    CPU: about ``elems / rows`` (default ``_BLOCK_ELEMS``: the two scratch blocks stay in a core's
    cache). CUDA and other accelerators: ``_GPU_BLOCK_COLUMNS`` (the tile's element-wise passes run at
    memory bandwidth anyway; what costs is a launch per kernel, so few wide blocks).
    """
    if torch.device(device).type != "cpu":
        return max(1, min(width, _GPU_BLOCK_COLUMNS))
    elems = _BLOCK_ELEMS if elems is None else elems
    return max(1, min(width, max(_MIN_BLOCK_COLUMNS, elems // max(rows, 1))))


def _walk_buffers(
    rows: int, width: int, dtype: torch.dtype, device: torch.device
) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Scratch blocks of the two tile walks, sharing memory: ``((z, e) of the first walk, z, e)``.

    The first walk (:func:`_tile_logits_stats`) uses blocks of about ``_GEMM_BLOCK_ELEMS`` elements, the
    gradient walk (:func:`_tile_logsoftmax_grad_`) cache-sized ones (:func:`_block_columns`); each pair
    is a ``[rows, cols]`` view of the same two buffers.
    """
    wide = _block_columns(rows, max(width, 1), device, _GEMM_BLOCK_ELEMS)
    narrow = _block_columns(rows, max(width, 1), device)
    store = torch.empty((2, rows * max(wide, narrow)), dtype=dtype, device=device)
    first = tuple(store[i, : rows * wide].view(rows, wide) for i in range(2))
    return first, store[0, : rows * narrow].view(rows, narrow), store[1, : rows * narrow].view(rows, narrow)


def _tile_logits_stats(
    gemm: tuple[torch.Tensor, torch.Tensor] | None,
    tile: torch.Tensor,
    post_scale: float,
    with_dot: bool,
    buf_z: torch.Tensor,
    buf_e: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-row statistics of the logits in ``tile [c, V]``, in one walk that can also write them.

    Returns ``(m, sum_v e^(z - m), sum_v e^(z - m) (z - m))`` per row (``[c]`` each, the last only with
    ``with_dot``), ``m`` the row's max over the ``V`` columns. The walk goes over blocks of
    ``buf_z.shape[1]`` columns; each block's statistics are taken while it is in cache and merged into
    the running ones (online log-sum-exp): with ``m' = max(m, m_b)``, ``a = e^(m - m')``,
    ``S' = a S + S_b`` and ``D' = a (D + (m - m') S) + D_b``.

    ``gemm = (hs [c, H], w [V, H])`` in the tile's dtype: each block is first written by its own GEMM
    ``hs @ w[block].T`` straight into the tile, so the tile is never read back from memory for its max
    and sums. ``gemm = None``: the tile already holds the logits (a lower-precision GEMM with an fp32
    result made it whole, see :func:`_mm_to`). ``post_scale`` multiplies each block first (1/T when it
    could not be folded into ``hs``). A zero-width tile gives ``m = -inf``, ``S = D = 0``.
    """
    c, width = tile.shape
    if gemm is not None and gemm[0].dtype != tile.dtype:
        raise TypeError(f"_tile_logits_stats: GEMM inputs in {gemm[0].dtype} cannot write a {tile.dtype} "
                        "tile (make the tile with one GEMM and pass gemm=None)")
    m = torch.full((c,), -torch.inf, dtype=tile.dtype, device=tile.device)
    sum_e = torch.zeros(c, dtype=tile.dtype, device=tile.device)
    dot = torch.zeros_like(sum_e) if with_dot else None
    cols = buf_z.shape[1]
    ones = torch.ones(cols, dtype=tile.dtype, device=tile.device)
    for v0 in range(0, width, cols):
        blk = tile[:, v0 : v0 + cols]
        n = blk.shape[1]
        if gemm is not None:
            torch.mm(gemm[0], gemm[1][v0 : v0 + n].T, out=blk)
        if post_scale != 1.0:
            blk.mul_(post_scale)
        m_new = torch.maximum(m, blk.amax(dim=1))
        zs = torch.sub(blk, m_new[:, None], out=buf_z[:c, :n])
        e = torch.exp(zs, out=buf_e[:c, :n])
        if v0 > 0:  # rebase the running sums on the new max (before the first block they are 0)
            shift = m - m_new  # <= 0
            decay = shift.exp()
            if dot is not None:  # uses the running sum before it is rescaled
                dot.add_(shift * sum_e).mul_(decay)
            sum_e.mul_(decay)
        sum_e.addmv_(e, ones[:n])  # row sums accumulated in place (no temporary per block)
        if dot is not None:
            dot.addmv_(e.mul_(zs), ones[:n])
        m = m_new
    return m, sum_e, dot


def _rebase_stats(
    m_local: torch.Tensor, sum_e: torch.Tensor, dot: torch.Tensor | None, m: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Statistics of :func:`_tile_logits_stats` taken relative to ``m_local``, re-expressed relative to ``m``.

    ``m >= m_local`` (the max over every vocabulary shard): ``S = e^(m_local - m) S_local`` and
    ``D = e^(m_local - m) (D_local + (m_local - m) S_local)``. A shard without columns (``S_local = 0``,
    ``m_local = -inf``) contributes 0 to both.
    """
    has = sum_e > 0
    shift = torch.where(has, m_local - m, torch.zeros_like(m))
    decay = torch.where(has, shift.exp(), torch.zeros_like(m))
    new_dot = decay * (dot + shift * sum_e) if dot is not None else None
    return decay * sum_e, new_dot


def _tile_logsoftmax_grad_(
    z: torch.Tensor,
    shift: torch.Tensor,
    ent: torch.Tensor | None,
    g_lp: torch.Tensor | None,
    g_ent: torch.Tensor | None,
    buf_z: torch.Tensor,
    buf_e: torch.Tensor,
) -> torch.Tensor:
    """Overwrite the logits tile ``z [c, V]`` with ``-p * (g_lp + g_ent * (log p + H))``; return it.

    ``log p = z - shift[:, None]`` (``shift`` = max + log-sum-exp over the full vocabulary). This is the
    gradient of ``g_lp . logprob + g_ent . entropy`` with respect to the logits without the one-hot term
    of the log-prob (the caller adds ``g_lp`` at the labels); at least one of ``g_lp``, ``g_ent`` is set.
    One read and one write of the tile; the element-wise work runs in blocks of ``buf_z`` / ``buf_e``
    (cache-sized on a CPU, see :func:`_block_columns`).
    """
    c, width = z.shape
    cols = buf_z.shape[1]
    neg_lp = -g_lp[:, None] if g_lp is not None else None
    neg_ent = -g_ent[:, None] if g_ent is not None else None
    for v0 in range(0, width, cols):
        blk = z[:, v0 : v0 + cols]
        logp = torch.sub(blk, shift[:, None], out=buf_z[:c, : blk.shape[1]])
        p = torch.exp(logp, out=buf_e[:c, : blk.shape[1]])
        if neg_ent is not None:
            coef = logp.add_(ent[:, None]).mul_(neg_ent)  # -g_ent (log p + H)
            if neg_lp is not None:
                coef.add_(neg_lp)
            torch.mul(p, coef, out=blk)
        else:
            torch.mul(p, neg_lp, out=blk)
    return z


def _chunk_loss_grads(
    loss_of_rows: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    lp: torch.Tensor,
    ent: torch.Tensor | None,
    cmask: torch.Tensor,
    name: str,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """A chunk's loss and its gradient with respect to the chunk's per-token statistics.

    ``lp`` / ``ent`` (``[c]``, the chunk's valid tokens in row-major order) are laid out as ``[r, L]`` rows
    (zeros outside ``cmask``) on fresh leaves, ``loss_of_rows(lp_rows, ent_rows)`` is evaluated with
    autograd on, and ``(loss detached, d loss / d lp [c] | None, d loss / d ent [c] | None)`` comes back
    (``None``: the loss does not depend on it). ``name`` is the public function, for the error.
    """
    lp_leaf = lp.detach().requires_grad_(True)
    ent_leaf = ent.detach().requires_grad_(True) if ent is not None else None
    with torch.enable_grad():
        lp_rows = lp.new_zeros(cmask.shape).masked_scatter(cmask, lp_leaf)
        ent_rows = (ent.new_zeros(cmask.shape).masked_scatter(cmask, ent_leaf)
                    if ent_leaf is not None else None)
        loss = loss_of_rows(lp_rows, ent_rows)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise TypeError(f"{name}: the chunk loss must return a scalar tensor")
        leaves = [lp_leaf] + ([ent_leaf] if ent_leaf is not None else [])
        grads = (list(torch.autograd.grad(loss, leaves, allow_unused=True)) if loss.requires_grad
                 else [None] * len(leaves))
    return loss.detach(), grads[0], (grads[1] if len(grads) > 1 else None)


def _hand_over_grads(
    ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor, name: str
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Backward of the fused heads: the gradients computed in forward, scaled by ``grad_out``, uncopied.

    They were kept on ``ctx.grads`` (attributes, not saved tensors: a saved tensor keeps a reference and
    autograd would then clone the ``[V, H]`` weight gradient) and belong to this backward alone, so they
    are scaled in place and converted to the inputs' dtypes.
    """
    if ctx.grads is None:
        raise RuntimeError(f"{name}: backward called twice on the same loss")
    grad_h, grad_w = ctx.grads
    ctx.grads = None
    h_dtype, w_dtype = ctx.in_dtypes
    if not bool(grad_out == 1):
        for g in (grad_h, grad_w):
            if g is not None:
                g.mul_(grad_out.to(g.dtype))
    gh = grad_h.to(h_dtype) if grad_h is not None else None
    gw = grad_w.to(w_dtype) if grad_w is not None else None
    return gh, gw


class _FusedLogprobLoss(torch.autograd.Function):
    """Autograd Function behind :func:`fused_logprob_loss` (grads computed in forward, scaled in backward)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor,
        chunk_loss: object,
        chunk_size: int,
        temperature: float,
        with_entropy: bool,
        split_rows: bool,
        out: dict,
    ) -> torch.Tensor:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dtype = _compute_dtype(hidden, weight)
        w = weight.to(dtype)
        inv_t = 1.0 / temperature
        rows, width = mask.shape
        lp_all = torch.zeros(rows, width, dtype=dtype, device=hidden.device)
        ent_all = torch.zeros(rows, width, dtype=dtype, device=hidden.device) if with_entropy else None
        grad_h = torch.zeros(hidden.shape, dtype=dtype, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if need_w else None
        total = torch.zeros((), dtype=dtype, device=hidden.device)
        chunks = _token_chunks(mask, chunk_size, split_rows)
        most = max((int(cm.sum()) for _, _, cm in chunks), default=0)
        # the [c, V] logits tile (then its gradient, in place), allocated once and reused by every chunk (no
        # page faults of a fresh tile per chunk, no heap growth), and two [c, block] scratch buffers
        tile = torch.empty((most, weight.shape[0]), dtype=dtype, device=hidden.device)
        first, buf_z, buf_e = _walk_buffers(most, weight.shape[0], dtype, hidden.device)
        for r0, r1, cmask in chunks:
            hs = hidden[r0:r1][cmask].to(dtype) * inv_t  # [c, H]
            lab = labels[r0:r1][cmask].long()  # [c]
            c = hs.shape[0]
            zmax, sum_e, dot = _tile_logits_stats((hs, w), tile[:c], 1.0, with_entropy, first[0][:c],
                                                  first[1][:c])
            z = tile[:c]  # [c, V] logits; the only [c, V] buffer
            tgt = z.gather(1, lab[:, None]).squeeze(1) - zmax
            # H = log sum - E_q[z'] (both terms >= 0: no cancellation)
            log_sum = sum_e.log()
            ent = log_sum - dot / sum_e if dot is not None else None
            lp = tgt - log_sum
            # the loss of this chunk, and its gradient with respect to the chunk's per-token statistics
            loss_c, g_lp, g_ent = _chunk_loss_grads(
                lambda lp_rows, ent_rows: chunk_loss(r0, r1, lp_rows, ent_rows, cmask),  # noqa: B023
                lp, ent, cmask, "fused_logprob_loss")
            total += loss_c.to(dtype)
            lp_all[r0:r1][cmask] = lp
            if ent_all is not None:
                ent_all[r0:r1][cmask] = ent
            if (g_lp is not None or g_ent is not None) and (need_h or need_w):
                # d lp / dz = onehot - p;  d ent / dz = -p * (log p + ent): written over the logits
                grad_z = _tile_logsoftmax_grad_(z, zmax + log_sum, ent, g_lp, g_ent, buf_z, buf_e)
                if g_lp is not None:
                    grad_z[torch.arange(lab.numel(), device=lab.device), lab] += g_lp
                if need_h:
                    grad_h[r0:r1][cmask] = (grad_z @ w).mul_(inv_t)
                if need_w:
                    grad_w.addmm_(grad_z.T, hs)
                del grad_z
            del z  # a view of the shared tile
        del tile, first, buf_z, buf_e
        out["logprobs"] = lp_all.to(hidden.dtype)
        out["entropy"] = ent_all.to(hidden.dtype) if ent_all is not None else None
        # kept as attributes (not saved tensors) so backward can hand them over without a copy: a saved
        # tensor keeps a reference, and autograd would then clone the [V, H] weight gradient
        ctx.grads = [grad_h, grad_w]
        ctx.in_dtypes = (hidden.dtype, weight.dtype)
        return total.to(hidden.dtype)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        gh, gw = _hand_over_grads(ctx, grad_out, "fused_logprob_loss")
        return gh, gw, None, None, None, None, None, None, None, None


def fused_logprob_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    chunk_loss: ChunkLoss,
    *,
    chunk_size: int = 512,
    temperature: float = 1.0,
    with_entropy: bool = False,
    split_rows: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A loss of per-token log-probs, with its gradient computed inside the chunked forward.

    For each chunk of valid tokens the ``[c, V]`` logits tile is built once: the chunk's log-probs (and
    entropies) are computed from it, ``chunk_loss`` is evaluated on them, its per-token gradient is
    pushed through the softmax in the same tile, and the tile's contributions to ``d hidden`` and
    ``d weight`` are accumulated. So the LM head costs three ``[c, H] x [H, V]`` GEMMs per chunk, like
    the naive full-logit path, instead of the four of :func:`chunked_logprobs` (which recomputes the tile
    in backward). Memory: one ``[c, V]`` tile, allocated once and reused by every chunk (logits, then
    their gradient, in place), two ``[c, block]`` scratch buffers (4 MiB together) for the
    element-wise walks over it, and the ``[V, H]`` weight gradient -- instead of ``[T, V]`` logits. For
    ``c = 512``, ``V = 151,936``, ``H = 896`` in fp32 that is 311 + 4 + 545 MB. Backward only scales the
    stored gradients by the incoming gradient.

    This needs the loss to be a SUM of per-chunk terms: each term may depend only on the log-probs of
    its own chunk. That holds for per-token losses with fixed normalisers (the PPO/GRPO clipped loss,
    KL and entropy terms with global ``num_tokens``/``num_seqs``); with ``split_rows=False`` (default) a
    chunk holds whole rows, so per-sequence terms are allowed too.

    Args:
        hidden: ``[B, L, H]`` final hidden states (``hidden[b, t]`` predicts ``labels[b, t]``).
        weight: ``[V, H]`` output-layer weight.
        labels: ``[B, L]`` token ids in ``[0, V)`` (any value where ``mask`` is 0).
        mask: ``[B, L]`` 1 for tokens that enter the loss; only those are computed.
        chunk_loss: ``chunk_loss(r0, r1, logprobs [b, L], entropy [b, L] | None, chunk_mask [b, L]) ->
            scalar`` for rows ``r0:r1`` (``b = r1 - r0``); ``logprobs``/``entropy`` are zero outside
            ``chunk_mask`` and differentiable. Called once per chunk, in order.
        chunk_size: about this many tokens per tile (with ``split_rows=False`` a row is never split).
        temperature: logits are divided by it.
        with_entropy: also compute per-token entropies (and pass them to ``chunk_loss``).
        split_rows: allow chunks to cut through rows (only for losses that are sums over tokens).

    Returns:
        ``(loss, logprobs [B, L], entropy [B, L] | None)``: ``loss`` is the scalar sum of the chunk terms,
        differentiable w.r.t. ``hidden`` and ``weight``; the per-token values are detached, zero outside
        ``mask``.

    Raises:
        ValueError: on bad shapes, non-integer or out-of-range labels, ``chunk_size < 1``, or
            ``temperature <= 0``.

    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, L, H] (got shape {tuple(hidden.shape)})")
    if labels.shape != hidden.shape[:2] or mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"labels and mask must be [B, L] = {tuple(hidden.shape[:2])} "
            f"(got {tuple(labels.shape)} and {tuple(mask.shape)})"
        )
    _check_inputs(hidden.reshape(-1, hidden.shape[-1]), weight, labels.reshape(-1), chunk_size, temperature)
    if not callable(chunk_loss):
        raise ValueError("chunk_loss must be callable")
    keep = mask.bool()
    if keep.any():
        sel = labels[keep]
        lo, hi = int(sel.min()), int(sel.max())
        if lo < 0 or hi >= weight.shape[0]:
            raise ValueError(f"labels under mask must be in [0, {weight.shape[0]}) (got min {lo}, max {hi})")
    out: dict = {}
    loss = _FusedLogprobLoss.apply(
        hidden, weight, labels, keep, chunk_loss, int(chunk_size), float(temperature), bool(with_entropy),
        bool(split_rows), out,
    )
    return loss, out["logprobs"], out["entropy"]


def fused_prorl_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: object,
    *,
    ref_logprobs: torch.Tensor | None = None,
    num_tokens: float | int | torch.Tensor | None = None,
    num_seqs: float | int | torch.Tensor | None = None,
    chunk_size: int = 512,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[object, torch.Tensor, torch.Tensor | None]:
    """:func:`~nemo_prorl.algorithms.policy_loss.prorl_loss` of the LM head's log-probs, fused.

    Equal (to float rounding) to ``prorl_loss(chunked_logprobs(...))`` on the same inputs, loss, metrics
    and gradients, but without the recompute GEMM (see :func:`fused_logprob_loss`). Chunks cut through
    rows only when that is exact: the built-in ``clipped`` loss with an aggregation other than
    ``seq-mean-token-mean``; otherwise a chunk holds whole rows.

    Args:
        hidden: ``[B, L, H]`` final hidden states.
        weight: ``[V, H]`` output-layer weight.
        labels: ``[B, L]`` token ids.
        old_logprobs: ``[B, L]`` sampling-policy log-probs.
        advantages: ``[B, L]`` or ``[B]``.
        mask: ``[B, L]`` response mask.
        cfg: :class:`~nemo_prorl.algorithms.config.AlgorithmConfig`.
        ref_logprobs: ``[B, L]`` reference log-probs (required when the KL term is in the loss).
        num_tokens: global valid-token count (default: this batch's).
        num_seqs: global non-empty sequence count (default: this batch's).
        chunk_size: tokens per tile.
        temperature: logits are divided by it.
        with_entropy: compute entropies (needed for an entropy bonus; reported as a metric).

    Returns:
        ``(LossOutput, logprobs [B, L], entropy [B, L] | None)``; ``LossOutput.loss`` is differentiable
        w.r.t. ``hidden`` and ``weight``, its metrics are those of ``prorl_loss``.

    """
    from nemo_prorl.algorithms.policy_loss import LossOutput, loss_normalisers, prorl_loss

    if mask.shape != hidden.shape[:2]:
        raise ValueError(f"mask must be [B, L] = {tuple(hidden.shape[:2])} (got {tuple(mask.shape)})")
    norm = loss_normalisers(mask)
    n_tok = norm["num_tokens"] if num_tokens is None else num_tokens
    n_seq = norm["num_seqs"] if num_seqs is None else num_seqs
    if cfg.entropy.coef > 0 and not with_entropy:
        raise ValueError("fused_prorl_loss: algorithm.entropy.coef > 0 needs with_entropy=True")
    split = cfg.loss.name == "clipped" and cfg.loss.agg != "seq-mean-token-mean"

    def chunk_loss(
        r0: int, r1: int, lp: torch.Tensor, ent: torch.Tensor | None, cmask: torch.Tensor
    ) -> torch.Tensor:
        ref = ref_logprobs[r0:r1] if ref_logprobs is not None else None
        return prorl_loss(lp, old_logprobs[r0:r1], advantages[r0:r1], cmask, cfg, ref_logprobs=ref,
                          entropy=ent, num_tokens=n_tok, num_seqs=n_seq).loss

    loss, lp, ent = fused_logprob_loss(
        hidden, weight, labels, mask, chunk_loss, chunk_size=chunk_size, temperature=temperature,
        with_entropy=with_entropy, split_rows=split,
    )
    with torch.no_grad():
        report = prorl_loss(lp, old_logprobs, advantages, mask, cfg, ref_logprobs=ref_logprobs, entropy=ent,
                            num_tokens=n_tok, num_seqs=n_seq)
    return LossOutput(loss=loss, metrics=report.metrics, reductions=report.reductions), lp, ent


# ----------------------------------------------------------------------------------------------------
# The fused head of the training path: vocab-parallel, mixed precision, any row-decomposable loss.
# ----------------------------------------------------------------------------------------------------

#: ``row_loss(r0, r1, logprobs, entropy) -> scalar``: the loss of rows ``r0:r1``; ``logprobs`` /
#: ``entropy`` are ``[r1 - r0, L]`` (zero outside the mask), differentiable. The loss of a batch must be
#: the sum of the losses of its row slices (the ``loss_fn`` contract of ``PolicyInterface.train_step``).
RowLoss = Callable[[int, int, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def head_dtypes(hidden: torch.Tensor, weight: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    """``(matmul dtype, statistics dtype)`` of the fused head.

    The GEMMs run in the inputs' common dtype (bf16 weights and hidden states: bf16 matmuls, which
    accumulate in fp32 on tensor cores and in PyTorch's CPU kernels), so no fp32 copy of the weight is
    made; the logits tile, log-sum-exp and softmax run in at least fp32.
    """
    mm = torch.promote_types(hidden.dtype, weight.dtype)
    return mm, torch.promote_types(mm, torch.float32)


def _mm_to(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``a @ b`` in the inputs' dtype with the result in ``dtype``.

    For bf16/fp16 CUDA inputs and an fp32 result this is one cuBLAS GEMM that accumulates in fp32 and
    writes fp32 (``torch.mm(..., out_dtype=torch.float32)``, ``aten::mm.dtype``, CUDA-only in PyTorch's
    ``native_functions.yaml``): the logits are not rounded to bf16, so they match the fp32-promoted head
    of :func:`vocab_parallel_logprobs` on the same bf16 values up to summation order. Elsewhere (CPU, or
    a torch without the overload) the product is computed in the inputs' dtype and converted.
    """
    if a.is_cuda and a.dtype in (torch.bfloat16, torch.float16) and dtype == torch.float32:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError, NotImplementedError):
            pass
    out = a @ b
    return out if out.dtype == dtype else out.to(dtype)


class _VocabParallelFusedLoss(torch.autograd.Function):
    """Autograd Function behind :func:`vocab_parallel_fused_loss` (grads in forward, scaled in backward)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor,
        keep: torch.Tensor,
        row_loss: object,
        vocab_start: int,
        group: dist.ProcessGroup | None,
        chunk_size: int,
        temperature: float,
        with_entropy: bool,
        out: dict,
    ) -> torch.Tensor:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        mm_dtype, st = head_dtypes(hidden, weight)
        w = weight if weight.dtype == mm_dtype else weight.to(mm_dtype)
        parallel = group is not None and dist.get_world_size(group) > 1
        inv_t = 1.0 / temperature
        rows, width = keep.shape
        dev = hidden.device
        lp_all = torch.zeros(rows, width, dtype=st, device=dev)
        ent_all = torch.zeros(rows, width, dtype=st, device=dev) if with_entropy else None
        grad_h = torch.zeros(hidden.shape, dtype=mm_dtype, device=dev) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=st, device=dev) if need_w else None
        total = torch.zeros((), dtype=st, device=dev)
        chunks = _token_chunks(keep, chunk_size, False) or [(0, rows, keep)]
        most = max((int(cm.sum()) for _, _, cm in chunks), default=0)
        # one [c, V_local] tile for the whole call (the logits, then their gradient, in place; bf16 GEMMs
        # make theirs per chunk) and two [c, block] scratch buffers for the walks over it: no second tile
        tile = torch.empty((most, w.shape[0]), dtype=st, device=dev) if mm_dtype == st else None
        first, buf_z, buf_e = _walk_buffers(most, w.shape[0], st, dev)
        for r0, r1, cmask in chunks:
            hs = hidden[r0:r1][cmask]  # [c, H]
            hs = hs if hs.dtype == mm_dtype else hs.to(mm_dtype)
            c = hs.shape[0]
            local = labels[r0:r1][cmask].long() - vocab_start
            in_shard = (local >= 0) & (local < w.shape[0])
            safe = torch.where(in_shard, local, torch.zeros_like(local))
            # [c, V_local] logits / T in fp32 (or fp64) and their shard-local statistics. fp32 GEMM: in
            # column blocks straight into the tile, 1/T folded into the [c, H] input; bf16 GEMM: one GEMM
            # with an fp32 result (cuBLAS writes it directly; in blocks each would need a temporary and a
            # copy), 1/T applied to the fp32 logits in the walk, not to rounded bf16 inputs
            if tile is not None:
                z = tile[:c]
                zmax, sum_e, dot = _tile_logits_stats((hs if inv_t == 1.0 else hs * inv_t, w), z, 1.0,
                                                      with_entropy, first[0][:c], first[1][:c])
            else:
                z = _mm_to(hs, w.T, st)
                zmax, sum_e, dot = _tile_logits_stats(None, z, inv_t, with_entropy, first[0][:c],
                                                      first[1][:c])
            if parallel:  # the max over the full vocabulary, and the sums rebased on it
                local_max, zmax = zmax, zmax.clone()
                collectives.all_reduce(zmax, op=collectives.ReduceOp.MAX, group=group)
                sum_e, dot = _rebase_stats(local_max, sum_e, dot, zmax)
            # z stays raw; z' = z - max over the full vocabulary is formed block by block
            tgt = torch.where(in_shard, z.gather(1, safe[:, None]).squeeze(1) - zmax,
                              torch.zeros((), dtype=st))
            dot = dot if dot is not None else torch.zeros_like(tgt)
            stats = torch.stack([sum_e, tgt, dot, in_shard.to(st)])  # [4, c]
            if parallel:
                collectives.all_reduce(stats, op=collectives.ReduceOp.SUM, group=group)
            if bool((stats[3] != 1).any()):
                bad = torch.nonzero(stats[3] != 1).flatten()[:5].tolist()
                raise ValueError(f"labels of chunk tokens {bad} (rows {r0}:{r1}) are not owned by exactly "
                                 "one vocabulary shard (label outside [0, V) or overlapping shards)")
            log_sum = stats[0].log()
            lp = stats[1] - log_sum
            ent = log_sum - stats[2] / stats[0] if with_entropy else None  # H = log sum - E_q[z']
            loss_c, g_lp, g_ent = _chunk_loss_grads(
                lambda lp_rows, ent_rows: row_loss(r0, r1, lp_rows, ent_rows),  # noqa: B023
                lp, ent, cmask, "vocab_parallel_fused_loss")
            total += loss_c.to(st)
            lp_all[r0:r1][cmask] = lp
            if ent_all is not None:
                ent_all[r0:r1][cmask] = ent
            if (g_lp is None and g_ent is None) or not (need_h or need_w) or c == 0:
                del z
                continue
            # d/d(h W^T) = 1/T d/dz': the 1/T goes into the [c] coefficients, not over the tile
            g_lp = g_lp * inv_t if g_lp is not None else None
            g_ent = g_ent * inv_t if g_ent is not None else None
            # dL/dz' = -g_lp * p - g_ent * p * (log p + H) + g_lp * onehot(y), written over the logits
            grad_z = _tile_logsoftmax_grad_(z, zmax + log_sum, ent, g_lp, g_ent, buf_z, buf_e)
            del z
            if g_lp is not None:
                own = torch.nonzero(in_shard).squeeze(1)
                grad_z[own, safe[own]] += g_lp[own]
            gz = grad_z if grad_z.dtype == mm_dtype else grad_z.to(mm_dtype)
            del grad_z
            if need_h:
                grad_h[r0:r1][cmask] = gz @ w  # this shard's part; summed over the group below
            if need_w:
                if gz.dtype == st:
                    grad_w.addmm_(gz.T, hs)
                else:  # bf16 GEMM (fp32 accumulation inside), accumulated over chunks in fp32
                    grad_w += _mm_to(gz.T, hs, st)
            del gz
        del tile, first, buf_z, buf_e
        if need_h and parallel:
            collectives.all_reduce(grad_h, op=collectives.ReduceOp.SUM, group=group)
        out["logprobs"], out["entropy"] = lp_all, ent_all
        ctx.grads = [grad_h, grad_w]  # attributes, not saved tensors: backward hands them over uncopied
        ctx.in_dtypes = (hidden.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        gh, gw = _hand_over_grads(ctx, grad_out, "vocab_parallel_fused_loss")
        return (gh, gw) + (None,) * 9


def vocab_parallel_fused_loss(
    hidden: torch.Tensor,
    weight_shard: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    row_loss: RowLoss,
    *,
    vocab_start: int = 0,
    group: dist.ProcessGroup | None = None,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A loss of the LM head's log-probs with its gradient taken inside the chunked, vocab-parallel forward.

    Per chunk of whole rows (about ``chunk_size`` valid tokens) the ``[c, V_local]`` logits tile is built
    once: its max and then ``(sum e^z', target logit, sum e^z' z', owner count)`` are all-reduced over
    ``group`` (two collectives per chunk), giving the full-vocabulary log-probs and entropies;
    ``row_loss`` is evaluated on them and its per-token gradient is pushed through the softmax in the same
    tile into ``d hidden`` (this shard's part, all-reduced once at the end) and ``d weight_shard``. Three
    GEMMs per chunk, as a naive head; :func:`vocab_parallel_logprobs` + a loss needs four.

    Precision: GEMMs in the inputs' common dtype (bf16 in, bf16 matmul with fp32 accumulation, no fp32
    copy of the weight; on CUDA the logits come out of the GEMM in fp32, see :func:`_mm_to`); logits,
    log-sum-exp and softmax in at least fp32; the logits' gradient enters the two backward GEMMs in bf16
    (as autograd's bf16 backward would); the weight gradient is accumulated over chunks in fp32 and
    returned in the weight's dtype.

    Args:
        hidden: ``[B, L, H]`` hidden states (``hidden[b, t]`` predicts ``labels[b, t]``); the same on
            every rank of ``group``.
        weight_shard: ``[V_local, H]`` rows ``[vocab_start, vocab_start + V_local)`` of the output weight.
        labels: ``[B, L]`` global token ids (any value outside ``mask``).
        mask: ``[B, L]`` tokens that enter the loss; only those are computed.
        row_loss: see :data:`RowLoss`; called once per chunk, in row order.
        vocab_start: first global id of this rank's shard.
        group: the vocabulary shards' process group; None = not parallel.
        chunk_size: about this many tokens per tile (a row is never split).
        temperature: logits are divided by it.
        with_entropy: also compute entropies (passed to ``row_loss``).

    Returns:
        ``(loss, logprobs [B, L], entropy [B, L] | None)``: ``loss`` is the sum of the chunk losses,
        differentiable w.r.t. ``hidden`` and ``weight_shard``; per-token values detached, in the
        statistics dtype, zero outside ``mask``.

    Raises:
        ValueError: on bad shapes, non-integer or negative labels, ``chunk_size < 1``, ``temperature <=
            0``, or a label under ``mask`` that no shard owns.

    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, L, H] (got shape {tuple(hidden.shape)})")
    if labels.shape != hidden.shape[:2] or mask.shape != hidden.shape[:2]:
        raise ValueError(f"labels and mask must be [B, L] = {tuple(hidden.shape[:2])} "
                         f"(got {tuple(labels.shape)} and {tuple(mask.shape)})")
    _check_inputs(hidden.reshape(-1, hidden.shape[-1]), weight_shard, labels.reshape(-1), chunk_size,
                  temperature)
    if not callable(row_loss):
        raise ValueError("row_loss must be callable")
    if vocab_start < 0:
        raise ValueError(f"vocab_start must be >= 0 (got {vocab_start})")
    keep = mask.bool()
    out: dict = {}
    loss = _VocabParallelFusedLoss.apply(
        hidden, weight_shard, labels, keep, row_loss, int(vocab_start), group, int(chunk_size),
        float(temperature), bool(with_entropy), out,
    )
    return loss, out["logprobs"], out["entropy"]
