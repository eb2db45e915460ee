"""PPO clipped surrogate with decoupled / dual clip, loss aggregation and the full ProRL loss.

Per token, with ratio r = exp(logp - old_logp) and advantage A:

    l_t = max(-A * r, -A * clip(r, 1 - clip_low, 1 + clip_high))
    if dual_clip c is set and A < 0:   l_t = min(l_t, -A * c)

Aggregation over the valid tokens (mask 1) of a mini-batch:

* ``token-mean``:               sum_{i,t} l / N_tok                       (ProRL, DAPO, verl default)
* ``seq-mean-token-sum``:       sum_i (sum_t l_i) / N_seq
* ``seq-mean-token-mean``:      sum_i (sum_t l_i / n_i) / N_seq           (GRPO paper)
* ``seq-mean-token-sum-norm``:  sum_i (sum_t l_i / L) / N_seq             (Dr. GRPO; L a constant length)

where n_i is the number of valid tokens of sequence i and N_seq counts sequences with at least one
valid token. N_tok and N_seq default to the local counts; passing the *global* counts of the whole
mini-batch (all micro-batches, all data-parallel ranks) makes the partial losses sum exactly to the
full-batch loss.

The ProRL loss is ``pg + kl_coef * agg(kl) - entropy_coef * agg(entropy)``, each aggregated the same way.

Truncated importance sampling (ProRL v2; NeMo-RL ``ClippedPGLossFn.__call__`` in
``nemo_rl/algorithms/loss/loss_functions.py``, ``docs/guides/prorlv2.md``): the rollout engine samples
from pi_gen, whose log-probs differ from the trainer's pi_old by numerics (kernels, precision). Each token's
policy-gradient loss is multiplied by the weight ``w_t = exp(old_logp_t - rollout_logp_t)``, truncated:

* ``tis``:    ``w_t <- clamp(w_t, tis_min or 0, tis_max)``;
* ``icepop``: ``w_t <- w_t if tis_min <= w_t <= tis_max else 0`` (the token is dropped).

The weights are constants of the objective (no gradient flows through them), the KL and entropy terms
are not weighted (NeMo-RL's default ``use_on_policy_kl_approximation: false``), and ``is_oob_ratio`` is
the fraction of valid tokens whose raw weight was outside the bounds (clamped for tis, dropped for
icepop). With rollout log-probs the mismatch metric ``gen_kl_error`` (NeMo-RL: the KL estimator of
``algorithm.kl.estimator`` applied to KL(pi_gen || pi_old), i.e. ``kl_penalty(rollout, old)`` without
clamps) and ``sampling_importance_ratio`` (mean truncated weight) are reported too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from nemo_prorl.algorithms.config import AGG_MODES, TIS_MODES, AlgorithmConfig, LossConfig
from nemo_prorl.algorithms.kl import kl_penalty
from nemo_prorl.algorithms.metric_reduction import MAX, MEAN, MIN, SUM
from nemo_prorl.algorithms.registry import (
    get_policy_loss,
    policy_loss_metric_reductions,
    register_policy_loss,
)

#: the log-ratio is clamped to [-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP] before exp (as verl) so extreme
#: ratios stay finite; the clipped objective has zero gradient there anyway unless A has the other sign.
LOG_RATIO_CLAMP = 20.0


def _check_2d(name: str, t: torch.Tensor, shape: torch.Size | None = None) -> None:
    if t.dim() != 2:
        raise ValueError(f"{name} must be [B, T] (got shape {tuple(t.shape)})")
    if shape is not None and t.shape != shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")


def loss_normalisers(mask: torch.Tensor) -> dict[str, int]:
    """Local counts used as normalisers; sum them over micro-batches / ranks for global ones.

    Args:
        mask: ``[B, T]`` response mask.

    Returns:
        ``{"num_tokens": valid tokens, "num_seqs": sequences with at least one valid token}``.

    """
    _check_2d("mask", mask)
    m = mask.bool()
    return {"num_tokens": int(m.sum()), "num_seqs": int(m.any(dim=-1).sum())}


def aggregate_loss(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    *,
    num_tokens: float | int | torch.Tensor | None = None,
    num_seqs: float | int | torch.Tensor | None = None,
    norm_len: int | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss to a scalar.

    Args:
        loss_mat: ``[B, T]`` per-token loss; values at masked positions are ignored (may be inf/NaN).
        mask: ``[B, T]`` 1 for valid tokens.
        mode: one of :data:`~nemo_prorl.algorithms.config.AGG_MODES`.
        num_tokens: global number of valid tokens (``token-mean``); default: this batch's count.
        num_seqs: global number of non-empty sequences (``seq-mean-*``); default: this batch's count.
        norm_len: constant length for ``seq-mean-token-sum-norm``; default ``T``.

    Returns:
        Scalar loss; 0 (with zero gradient) when there is no valid token.

    """
    _check_2d("loss_mat", loss_mat)
    _check_2d("mask", mask, loss_mat.shape)
    if mode not in AGG_MODES:
        raise ValueError(f"unknown loss aggregation {mode!r}; expected one of: {', '.join(AGG_MODES)}")
    keep = mask.bool()
    zero = torch.zeros((), dtype=loss_mat.dtype, device=loss_mat.device)
    masked = torch.where(keep, loss_mat, zero)
    if mode == "token-mean":
        denom = keep.sum() if num_tokens is None else num_tokens
        return masked.sum() / _clamp_denominator(denom, loss_mat)
    seq_sum = masked.sum(dim=-1)
    if mode == "seq-mean-token-sum":
        per_seq = seq_sum
    elif mode == "seq-mean-token-mean":
        per_seq = seq_sum / keep.sum(dim=-1).clamp_min(1).to(loss_mat.dtype)
    else:
        length = loss_mat.shape[-1] if norm_len is None else norm_len
        if length < 1:
            raise ValueError(f"norm_len must be >= 1 (got {length})")
        per_seq = seq_sum / float(length)
    denom = keep.any(dim=-1).sum() if num_seqs is None else num_seqs
    return per_seq.sum() / _clamp_denominator(denom, loss_mat)


def _clamp_denominator(denom: float | int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    d = torch.as_tensor(denom, dtype=like.dtype, device=like.device)
    if bool((d < 0).any()):
        raise ValueError(f"loss normaliser must be >= 0 (got {float(d)})")
    return d.clamp_min(1.0)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over positions where ``mask`` is 1 (0 when there are none); NaN-safe."""
    keep = mask.bool()
    v = torch.where(keep, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return v.sum() / keep.sum().clamp_min(1).to(values.dtype)


#: how the clipped loss's metrics reduce over micro-batches and ranks (token means, except the extremes)
CLIPPED_METRICS: dict[str, str] = {
    "clip_frac_low": MEAN, "clip_frac_high": MEAN, "dual_clip_frac": MEAN, "approx_kl": MEAN,
    "ratio_mean": MEAN, "ratio_min": MIN, "ratio_max": MAX,
}

#: the metrics :func:`prorl_loss` adds: the aggregated terms are already normalised by the global counts
PRORL_METRICS: dict[str, str] = {
    "pg_loss": SUM, "kl_loss": SUM, "entropy": SUM,
    "sampling_importance_ratio": MEAN, "gen_kl_error": MEAN, "is_oob_ratio": MEAN,
}


@register_policy_loss("clipped", metric_reductions=CLIPPED_METRICS)
def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: LossConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token PPO clipped surrogate with decoupled clip and optional dual clip.

    Args:
        logprobs: ``[B, T]`` current policy log-probs (differentiable); may be -inf where masked.
        old_logprobs: ``[B, T]`` log-probs of the policy that sampled the tokens; may be -inf where masked.
        advantages: ``[B, T]`` per-token advantages, or ``[B]`` (broadcast over tokens).
        mask: ``[B, T]`` 1 for valid response tokens.
        cfg: clip settings (``clip_low``, ``clip_high``, ``dual_clip``).

    Returns:
        ``(loss_mat [B, T], metrics)``: ``loss_mat`` is 0 at masked positions; metrics (detached scalars,
        means over valid tokens) are ``clip_frac_low``, ``clip_frac_high``, ``dual_clip_frac``,
        ``approx_kl`` (k3 estimate of KL(old || current)), ``ratio_mean``, ``ratio_min``, ``ratio_max``
        (ratio metrics are 1.0 when there is no valid token).

    """
    _check_2d("logprobs", logprobs)
    _check_2d("old_logprobs", old_logprobs, logprobs.shape)
    _check_2d("mask", mask, logprobs.shape)
    if advantages.dim() == 1:
        if advantages.shape[0] != logprobs.shape[0]:
            raise ValueError(
                f"advantages [B] has B={advantages.shape[0]}, logprobs has B={logprobs.shape[0]}"
            )
        advantages = advantages[:, None].expand_as(logprobs)
    else:
        _check_2d("advantages", advantages, logprobs.shape)
    keep = mask.bool()
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    lp = torch.where(keep, logprobs, zero)
    old = torch.where(keep, old_logprobs.to(logprobs.dtype), zero)
    adv = torch.where(keep, advantages.to(logprobs.dtype), zero)

    log_ratio = (lp - old).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    lo, hi = 1.0 - cfg.clip_low, 1.0 + cfg.clip_high
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(lo, hi)
    loss = torch.maximum(unclipped, clipped)
    neg = adv < 0
    dual_active = torch.zeros_like(keep)
    if cfg.dual_clip is not None:
        bound = -adv * cfg.dual_clip
        dual_active = neg & (loss > bound) & keep
        loss = torch.where(neg, torch.minimum(loss, bound), loss)
    loss = torch.where(keep, loss, zero)

    with torch.no_grad():
        r = ratio.detach()
        n_valid = keep.sum()
        fkeep = keep.to(r.dtype)
        metrics = {
            "clip_frac_low": masked_mean(((r < lo) & neg).to(r.dtype), fkeep),
            "clip_frac_high": masked_mean(((r > hi) & (adv > 0)).to(r.dtype), fkeep),
            "dual_clip_frac": masked_mean(dual_active.to(r.dtype), fkeep),
            "approx_kl": masked_mean(r - 1.0 - log_ratio.detach(), fkeep),
            "ratio_mean": masked_mean(r, fkeep) if n_valid > 0 else torch.ones((), dtype=r.dtype),
            "ratio_min": r[keep].min() if n_valid > 0 else torch.ones((), dtype=r.dtype),
            "ratio_max": r[keep].max() if n_valid > 0 else torch.ones((), dtype=r.dtype),
        }
    return loss, metrics


def truncated_importance_weights(
    old_logprobs: torch.Tensor,
    rollout_logprobs: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    max_ratio: float,
    min_ratio: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token truncated importance weights of the trainer's old policy against the rollout engine.

    Args:
        old_logprobs: ``[B, T]`` log-probs of the sampled tokens under the trainer's old policy.
        rollout_logprobs: ``[B, T]`` the rollout engine's log-probs of the same tokens (same temperature).
        mask: ``[B, T]`` 1 for valid response tokens.
        mode: ``none`` (weights 1), ``tis`` (clamp) or ``icepop`` (zero outside the bounds).
        max_ratio: upper bound (> 0).
        min_ratio: lower bound; None = 0 for tis, required for icepop.

    Returns:
        ``(weights [B, T], out_of_bounds [B, T] bool)``: weights are 0 at masked positions (differentiable
        in ``old_logprobs``: ``d w / d old = w`` inside the bounds, 0 where clamped or dropped; a
        non-finite raw weight counts as out of bounds and gets the clamp value (tis) or 0 (icepop));
        ``out_of_bounds`` is True on valid tokens whose raw weight lies outside ``[min, max]``.

    """
    _check_2d("old_logprobs", old_logprobs)
    _check_2d("rollout_logprobs", rollout_logprobs, old_logprobs.shape)
    _check_2d("mask", mask, old_logprobs.shape)
    if mode not in TIS_MODES:
        raise ValueError(f"unknown truncated importance sampling mode {mode!r}; expected one of: "
                         f"{', '.join(TIS_MODES)}")
    keep = mask.bool()
    zero = torch.zeros((), dtype=old_logprobs.dtype, device=old_logprobs.device)
    if mode == "none":
        return keep.to(old_logprobs.dtype), torch.zeros_like(keep)
    lo = 0.0 if min_ratio is None else float(min_ratio)
    if mode == "icepop" and min_ratio is None:
        raise ValueError("icepop needs a lower bound (algorithm.loss.tis_min)")
    if not 0 <= lo <= max_ratio:
        raise ValueError(f"need 0 <= min_ratio <= max_ratio (got {lo}, {max_ratio})")
    old = torch.where(keep, old_logprobs, zero)
    roll = torch.where(keep, rollout_logprobs.to(old_logprobs.dtype), zero)
    log_w = old - roll
    # a NaN log-ratio (an engine that returned NaN) is out of bounds: +inf sends it to the upper side
    log_w = torch.nan_to_num(log_w, nan=float("inf"))
    raw = torch.exp(log_w.clamp(max=LOG_RATIO_CLAMP * 4))
    inside = (raw >= lo) & (raw <= max_ratio) & torch.isfinite(log_w)
    oob = keep & ~inside
    if mode == "tis":
        w = raw.clamp(lo, max_ratio)
    else:
        w = torch.where(inside, raw, zero)
    return torch.where(keep, w, zero), oob


@dataclass
class LossOutput:
    """Result of :func:`prorl_loss`.

    Attributes:
        loss: scalar to back-propagate (already divided by the global normaliser if one was given).
        metrics: detached scalars: ``pg_loss``, ``kl_loss``, ``entropy`` plus the policy loss metrics.
        reductions: ``{metric: "sum" | "mean" | "max" | "min"}`` for every metric, how it combines over
            micro-batches and ranks (:mod:`~nemo_prorl.algorithms.metric_reduction`).

    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    reductions: dict[str, str] = field(default_factory=dict)


def prorl_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: AlgorithmConfig,
    *,
    ref_logprobs: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    num_tokens: float | int | torch.Tensor | None = None,
    num_seqs: float | int | torch.Tensor | None = None,
    rollout_logprobs: torch.Tensor | None = None,
) -> LossOutput:
    """The full ProRL objective for one (micro-)batch.

    ``loss = agg(pg) + kl.coef * agg(kl) - entropy.coef * agg(entropy)`` where the KL term is used only
    when ``cfg.kl.where == "loss"`` and ``cfg.kl.coef > 0``.

    Args:
        logprobs: ``[B, T]`` current policy log-probs (differentiable).
        old_logprobs: ``[B, T]`` sampling-policy log-probs.
        advantages: ``[B, T]`` or ``[B]`` advantages.
        mask: ``[B, T]`` response mask.
        cfg: the algorithm config.
        ref_logprobs: ``[B, T]`` reference log-probs; required when the KL term is active.
        entropy: ``[B, T]`` per-token entropy (differentiable when ``entropy.coef > 0``); optional.
        num_tokens: global valid-token count of the mini-batch (see :func:`aggregate_loss`).
        num_seqs: global non-empty sequence count of the mini-batch.
        rollout_logprobs: ``[B, T]`` the rollout engine's log-probs of the sampled tokens; required when
            ``cfg.loss.tis`` is not ``none`` (the pg loss is then weighted, see the module docstring);
            when given, the mismatch metrics ``gen_kl_error``, ``sampling_importance_ratio`` and (with
            truncation) ``is_oob_ratio`` are reported.

    Returns:
        :class:`LossOutput`; its ``reductions`` are :data:`PRORL_METRICS` and the policy loss's
        declaration (a metric the policy loss does not declare is a token mean).

    """
    agg = cfg.loss.agg
    kw = {"num_tokens": num_tokens, "num_seqs": num_seqs, "norm_len": cfg.loss.norm_len}
    loss_mat, metrics = get_policy_loss(cfg.loss.name)(logprobs, old_logprobs, advantages, mask, cfg.loss)
    metrics = dict(metrics)
    if cfg.loss.tis != "none" and rollout_logprobs is None:
        raise ValueError(f"algorithm.loss.tis={cfg.loss.tis} needs the rollout engine's log-probs "
                         "(rollout_logprobs); set algorithm.loss.tis=none to train without them")
    if rollout_logprobs is not None:
        with torch.no_grad():  # the weights are constants of the objective
            old_d = old_logprobs.detach().to(logprobs.dtype)
            w, oob = truncated_importance_weights(old_d, rollout_logprobs, mask, cfg.loss.tis,
                                                  max_ratio=cfg.loss.tis_max, min_ratio=cfg.loss.tis_min)
            fkeep = mask.to(w.dtype)
            metrics["sampling_importance_ratio"] = masked_mean(w, fkeep)
            # in float64: k3 of a float32 log-ratio near 0 rounds to tiny negative values
            metrics["gen_kl_error"] = masked_mean(
                kl_penalty(rollout_logprobs.double(), old_d.double(), cfg.kl.estimator, mask=mask,
                           input_clamp=None, output_clamp=None), fkeep).to(w.dtype)
            if cfg.loss.tis != "none":
                metrics["is_oob_ratio"] = masked_mean(oob.to(w.dtype), fkeep)
        if cfg.loss.tis != "none":
            loss_mat = loss_mat * w
    pg = aggregate_loss(loss_mat, mask, agg, **kw)
    total = pg
    metrics["pg_loss"] = pg.detach()
    use_kl = cfg.kl.where == "loss" and cfg.kl.coef > 0
    if use_kl:
        if ref_logprobs is None:
            raise ValueError(
                "ref_logprobs are required when algorithm.kl.coef > 0 and algorithm.kl.where=loss"
            )
        kl = kl_penalty(
            logprobs,
            ref_logprobs,
            cfg.kl.estimator,
            mask=mask,
            input_clamp=cfg.kl.input_clamp,
            output_clamp=cfg.kl.output_clamp,
        )
        kl_loss = aggregate_loss(kl, mask, agg, **kw)
        total = total + cfg.kl.coef * kl_loss
        metrics["kl_loss"] = kl_loss.detach()
    elif ref_logprobs is not None:
        with torch.no_grad():
            kl = kl_penalty(
                logprobs.detach(),
                ref_logprobs,
                cfg.kl.estimator,
                mask=mask,
                input_clamp=cfg.kl.input_clamp,
                output_clamp=cfg.kl.output_clamp,
            )
            metrics["kl_loss"] = aggregate_loss(kl, mask, agg, **kw)
    if entropy is not None:
        ent = aggregate_loss(entropy, mask, agg, **kw)
        if cfg.entropy.coef > 0:
            total = total - cfg.entropy.coef * ent
        metrics["entropy"] = ent.detach()
    declared = policy_loss_metric_reductions(cfg.loss.name)
    reductions = {k: PRORL_METRICS.get(k, declared.get(k, MEAN)) for k in metrics}
    return LossOutput(loss=total, metrics=metrics, reductions=reductions)
