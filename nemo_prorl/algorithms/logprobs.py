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

import torch
import torch.distributed as dist


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
            gathered = [torch.empty_like(stats) for _ in range(dist.get_world_size(group))]
            dist.all_gather(gathered, stats, group=group)
            allst = torch.stack(gathered)  # [R, 4, T]
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
            dist.all_reduce(grad_h, op=dist.ReduceOp.SUM, group=group)
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
