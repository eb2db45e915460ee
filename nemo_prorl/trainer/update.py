"""The build, log-prob and update stages: groups -> TokenBatch -> + log-probs -> optimizer updates.

Every rank runs these with the whole (broadcast) rollout batch. Shapes: ``G`` groups of ``n`` samples,
``B = G * n`` sequences (group-major), ``L`` the longest prompt + response; ``D`` data-parallel ranks.

* :func:`build_token_batch`: ``input_ids [B, L]`` (right-padded), ``response_mask [B, L]``, extras
  ``advantages [B]`` (group-normalised shaped rewards, ``algorithm.advantage``) and
  ``rollout_logprobs [B, L]`` (the engine's sampling log-probs, 0 where it gave none).
* :func:`attach_logprobs`: each DP rank computes the log-probs of its ``B / D`` rows, the policy gathers
  them: ``ref_logprobs [B, L]`` always (the KL to the reference is reported even with ``kl.coef = 0``),
  ``old_logprobs [B, L]`` unless the plan reuses the train step's (:func:`skip_old_logprobs`).
* :func:`run_updates`: ``ppo_epochs`` passes over mini-batches of ``mini_batch_prompts * n`` rows, each
  split over the DP ranks (:func:`dp_slice`), one ``PolicyInterface.train_step`` each with the loss of
  :func:`make_loss_fn`.
* :func:`train_metrics`: the step's training metrics from the updates.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from nemo_prorl.algorithms.advantages import compute_advantages
from nemo_prorl.algorithms.metric_reduction import SUM, contribution
from nemo_prorl.algorithms.policy_loss import PRORL_METRICS, prorl_loss
from nemo_prorl.algorithms.registry import policy_loss_metric_reductions
from nemo_prorl.policy.interface import TokenBatch
from nemo_prorl.rollout.metrics import token_mult_prob_error
from nemo_prorl.trainer.config import OLD_LOGPROB_MODES
from nemo_prorl.trainer.errors import TrainingError
from nemo_prorl.trainer.records import Group, NonfiniteCount, UpdatePlan, UpdateStats


# ------------------------------------------------------------------------------------------- build
def build_token_batch(
    groups: Sequence[Group], pad_id: int, advantage_cfg: Any, tis: str = "none"
) -> TokenBatch:
    """The step batch of all samples, group-major, with advantages and the engine's log-probs.

    Args:
        groups: the rollout batch's groups.
        pad_id: the tokenizer's pad id (right padding; the mask excludes it).
        advantage_cfg: ``algorithm.advantage``.
        tis: ``algorithm.loss.tis``; other than ``none`` every sample must carry one engine log-prob per
            response token.

    Returns:
        ``TokenBatch(input_ids [B, L], response_mask [B, L] float32, extras={"advantages" [B],
        "rollout_logprobs" [B, L]})``.

    Raises:
        TrainingError: ``tis`` is on and a sample lacks engine log-probs.

    """
    seqs, spans, roll_lp, shaped, group_ids = [], [], [], [], []
    for g_i, g in enumerate(groups):
        for s, r in zip(g.samples, g.shaped):
            seq = list(g.prompt_ids) + list(s.token_ids)
            seqs.append(seq)
            spans.append((len(g.prompt_ids), len(seq)))
            roll_lp.append(s.logprobs)
            shaped.append(r)
            group_ids.append(g_i)
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.float32)
    rollout_lp = torch.zeros((len(seqs), length), dtype=torch.float32)
    for b, (seq, (start, end)) in enumerate(zip(seqs, spans)):
        ids[b, : len(seq)] = torch.tensor(seq)
        mask[b, start:end] = 1.0
        if roll_lp[b] is not None and end > start:
            rollout_lp[b, start:end] = torch.as_tensor(roll_lp[b], dtype=torch.float32)[: end - start]
        if tis != "none" and (roll_lp[b] is None or len(roll_lp[b]) < end - start):
            raise TrainingError(f"algorithm.loss.tis={tis} needs the rollout engine's log-prob of every "
                                f"response token; sample {b} has none or too few (keep rollout "
                                "sampling logprobs on, or set algorithm.loss.tis=none)")
    # every rank holds the whole batch here, so batch-level estimators need no DP reduction (dp_group)
    adv = compute_advantages(torch.tensor(shaped, dtype=torch.float32), torch.tensor(group_ids),
                             advantage_cfg, num_tokens=mask.sum(dim=1))
    return TokenBatch(ids, mask, {"advantages": adv.float(), "rollout_logprobs": rollout_lp})


# -------------------------------------------------------------------------------------------- plan
def skip_old_logprobs(mode: str, updates_per_batch: int, policy: Any) -> bool:
    """Whether the separate old-log-prob forward of a step is redundant and can be skipped.

    The PPO ratio's "old" log-probs are those of the weights the rollout batch's first update starts
    from. With exactly one optimizer update per rollout batch (``ppo_epochs == 1`` and a single
    mini-batch) that is the weights the update's own forward runs with, so the old log-probs are the
    train step's log-probs, detached (what TRL does with ``num_iterations=1``), provided the training
    forward is the same function as the no-grad forward (``policy.train_forward_matches_logprobs``:
    no dropout). The loss and its gradient are then those of the recompute path up to float rounding
    (the ratio is exactly 1 instead of ``1 +- 1e-7``).

    Args:
        mode: ``trainer.old_logprobs``: ``"auto"`` (skip when redundant) or ``"recompute"`` (never skip).
        updates_per_batch: optimizer updates this rollout batch gets (``ppo_epochs`` x mini-batches).
        policy: the training engine; policies without ``train_forward_matches_logprobs`` never skip.

    Returns:
        True when the trainer should take the old log-probs from the train step.

    """
    if mode not in OLD_LOGPROB_MODES:
        raise ValueError(f"trainer.old_logprobs must be one of {OLD_LOGPROB_MODES}, got {mode!r}")
    return (mode == "auto" and updates_per_batch == 1
            and bool(getattr(policy, "train_forward_matches_logprobs", False)))


def plan_updates(batch_size: int, n: int, trainer_cfg: Any, policy: Any) -> UpdatePlan:
    """The step's :class:`UpdatePlan`: ``ppo_epochs`` x ``ceil(B / (mini_batch_prompts * n))`` updates."""
    seqs = trainer_cfg.mini_batch_prompts * n
    num_updates = trainer_cfg.ppo_epochs * -(-batch_size // seqs)
    return UpdatePlan(seqs_per_update=seqs, epochs=trainer_cfg.ppo_epochs, num_updates=num_updates,
                      reuse_old_logprobs=skip_old_logprobs(trainer_cfg.old_logprobs, num_updates, policy))


def dp_slice(batch: TokenBatch, start: int, stop: int, dp_rank: int, dp_size: int) -> TokenBatch:
    """The DP rank's equal share of rows ``start:stop`` (rank ``r`` gets the ``r``-th contiguous part).

    Raises:
        TrainingError: ``stop - start`` does not split evenly over ``dp_size`` ranks.

    """
    n = stop - start
    per = n // dp_size
    if per * dp_size != n:
        raise TrainingError(f"mini-batch of {n} sequences does not split over {dp_size} data-parallel "
                            "ranks; make trainer.mini_batch_prompts * rollout.n divisible by the DP size")
    lo = start + dp_rank * per
    return batch.slice(lo, lo + per)


# --------------------------------------------------------------------------------------- log-probs
def batch_logprobs(policy: Any, batch: TokenBatch, *, reference: bool = False) -> torch.Tensor:
    """``[B, L]`` log-probs of the whole batch: each DP rank computes ``B / D`` rows, the policy gathers."""
    rank, size = policy.dp_rank, policy.dp_size
    per = batch.batch_size // size
    mine = batch.slice(rank * per, (rank + 1) * per) if size > 1 else batch
    lp = policy.logprobs(TokenBatch(mine.input_ids, mine.response_mask), reference=reference)[0]
    return policy.gather_data_parallel(lp) if size > 1 else lp


def attach_logprobs(policy: Any, batch: TokenBatch, plan: UpdatePlan) -> tuple[TokenBatch, float | None]:
    """The batch with ``ref_logprobs`` (and ``old_logprobs`` unless reused) and the mismatch metric.

    Returns:
        ``(batch with the log-probs in extras, token_mult_prob_error)``: the metric (rollout engine vs
        the trainer's old log-probs, :func:`~nemo_prorl.rollout.metrics.token_mult_prob_error`) when the
        old log-probs were computed here; ``None`` when they are reused (the loss measures it then).

    """
    extras = dict(batch.extras)
    extras["ref_logprobs"] = batch_logprobs(policy, batch, reference=True).float()
    token_mult = None
    if not plan.reuse_old_logprobs:
        old = batch_logprobs(policy, batch)
        extras["old_logprobs"] = old.float()
        token_mult = token_mult_prob_error(extras["rollout_logprobs"], old, batch.response_mask)
    return TokenBatch(batch.input_ids, batch.response_mask, extras), token_mult


# ------------------------------------------------------------------------------------------- loss
class ProRLLossFn:
    """The trainer's ``loss_fn`` for ``PolicyInterface.train_step``: :func:`prorl_loss` with metrics.

    Micro-batch extras it reads: ``advantages``, ``old_logprobs`` (optional: when absent, the current
    log-probs detached are used, see :func:`skip_old_logprobs`), ``ref_logprobs`` (optional) and
    ``rollout_logprobs`` (optional: the rollout engine's per-token log-probs; when given, the metric
    ``token_mult_prob_error`` -- mean over response tokens of ``exp(|rollout - old|)`` -- is reported).

    Metrics follow the loss's declaration (``LossOutput.reductions``): a ``mean`` metric is turned into
    the micro-batch's token-weighted contribution, the others pass as they are, and
    :attr:`metric_reductions` tells the engine which to max / min-reduce.

    Args:
        alg: the :class:`~nemo_prorl.algorithms.config.AlgorithmConfig`.

    """

    def __init__(self, alg: Any) -> None:
        self.alg = alg
        #: how each metric reduces over micro-batches and ranks (the ``loss_fn`` contract's declaration)
        self.metric_reductions: dict[str, str] = {
            **policy_loss_metric_reductions(alg.loss.name), **PRORL_METRICS, "token_mult_prob_error": SUM}

    def __call__(self, logprobs: torch.Tensor, entropy: torch.Tensor | None, micro: Any,
                 norm: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss contribution, metric contributions)`` of one micro-batch."""
        old = micro.get("old_logprobs")
        if old is None:  # one update per rollout batch: the old policy is the current one
            old = logprobs.detach()
        out = prorl_loss(logprobs, old, micro["advantages"], micro["response_mask"],
                         self.alg, ref_logprobs=micro.get("ref_logprobs"), entropy=entropy,
                         num_tokens=norm["num_tokens"], num_seqs=norm["num_seqs"],
                         rollout_logprobs=micro.get("rollout_logprobs"))
        mask = micro["response_mask"]
        share = mask.float().sum() / max(float(norm["num_tokens"]), 1.0)
        metrics = {k: contribution(v, out.reductions[k], share) for k, v in out.metrics.items()}
        if "rollout_logprobs" in micro:
            with torch.no_grad():
                value = 0.0  # PP padding rows and row chunks without response tokens contribute 0
                if bool(mask.bool().any()):
                    value = token_mult_prob_error(micro["rollout_logprobs"], old.detach(), mask)
                metrics["token_mult_prob_error"] = share * value
        return out.loss, metrics


def make_loss_fn(alg: Any) -> ProRLLossFn:
    """The trainer's ``loss_fn`` (:class:`ProRLLossFn`) for ``alg``."""
    return ProRLLossFn(alg)


# ---------------------------------------------------------------------------------------- updates
def run_updates(
    policy: Any,
    batch: TokenBatch,
    loss_fn: Any,
    plan: UpdatePlan,
    nonfinite: NonfiniteCount,
    *,
    max_nonfinite_in_row: int,
    step: int,
) -> UpdateStats:
    """``plan.epochs`` passes of mini-batch updates over ``batch`` (every rank; each trains its DP share).

    Args:
        policy: the policy (``PolicyInterface``).
        batch: the step batch with its log-probs (:func:`attach_logprobs`).
        loss_fn: the loss (:func:`make_loss_fn`).
        plan: the step's :class:`UpdatePlan`.
        nonfinite: the non-finite counters before the step.
        max_nonfinite_in_row: ``trainer.max_nonfinite_in_row``.
        step: the 1-based step number (for the error message).

    Raises:
        TrainingError: ``max_nonfinite_in_row`` non-finite (skipped) updates in a row.

    """
    t0 = time.time()
    updates: list[dict[str, float]] = []
    for _ in range(plan.epochs):
        for start in range(0, batch.batch_size, plan.seqs_per_update):
            mb = dp_slice(batch, start, min(start + plan.seqs_per_update, batch.batch_size),
                          policy.dp_rank, policy.dp_size)
            m = policy.train_step(mb, loss_fn, with_entropy=True)
            nonfinite = nonfinite.after(bool(m.get("skipped_nonfinite")))  # skipped: weights unchanged
            updates.append(m)
            if nonfinite.in_row >= max_nonfinite_in_row:
                raise TrainingError(f"{nonfinite.in_row} non-finite updates in a row at step {step} "
                                    f"(trainer.max_nonfinite_in_row={max_nonfinite_in_row}); no checkpoint "
                                    "of the non-finite state was written")
    return UpdateStats(updates=updates, nonfinite=nonfinite, seconds=time.time() - t0)


def train_metrics(stats: UpdateStats, plan: UpdatePlan, token_mult: float | None,
                  logprobs_s: float) -> dict[str, float]:
    """The step's training metrics: each update metric averaged over the step's updates.

    ``kl`` and ``entropy`` are the loss's ``kl_loss`` / ``entropy``; ``token_mult_prob_error`` is the
    log-prob stage's value when it computed the old log-probs, else the loss's.
    """
    updates = stats.updates
    metrics: dict[str, float] = {}
    for key in updates[0]:
        vals = [u[key] for u in updates if key in u]
        metrics[key] = sum(vals) / len(vals)
    out = {
        "loss": metrics.pop("loss", float("nan")),
        "kl": metrics.get("kl_loss", float("nan")),
        "entropy": metrics.get("entropy", float("nan")),
        "grad_norm": metrics.pop("grad_norm", float("nan")),
        "token_mult_prob_error": (metrics.pop("token_mult_prob_error", float("nan")) if token_mult is None
                                  else token_mult),
        "old_logprobs_reused": float(plan.reuse_old_logprobs),
        "time/logprobs": logprobs_s,
        "time/train": stats.seconds,
        "num_updates": len(updates),
        "nonfinite_total": stats.nonfinite.total,
    }
    for k, v in metrics.items():
        out.setdefault(k, v)
    return out


def reward_metrics(groups: Sequence[Group]) -> dict[str, float]:
    """Reward and response statistics of the kept groups (``reward/mean``, per domain, lengths)."""
    out: dict[str, float] = {}
    rewards = [r for g in groups for r in g.rewards]
    out["reward/mean"] = sum(rewards) / len(rewards)
    out["reward/shaped_mean"] = sum(x for g in groups for x in g.shaped) / len(rewards)
    by_dom: dict[str, list[float]] = {}
    for g in groups:
        by_dom.setdefault(g.row["domain"], []).extend(g.rewards)
    for d, v in by_dom.items():
        out[f"reward/{d}"] = sum(v) / len(v)
    lengths = [len(s.token_ids) for g in groups for s in g.samples]
    out["response_length/mean"] = sum(lengths) / len(lengths)
    out["response_length/max"] = max(lengths)
    truncated = sum(s.finish_reason == "length" for g in groups for s in g.samples)
    out["response/truncated_frac"] = truncated / len(lengths)
    return out
