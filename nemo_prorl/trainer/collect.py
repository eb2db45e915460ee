"""The collect stage: prompts -> generated, scored, shaped groups -> a full batch (:class:`RolloutBatch`).

Rank-0 code. One generation *round*::

    next_batch(prompts_per_round) rows -> tokenize -> generate n each (seed: sampling_seed(step, round))
    -> group the samples by prompt -> score (reward pool) -> raw reward r = score if status ok else
    rewards.failure_score -> shape (phase's shaping, length-penalty schedule at the global step)
    -> DynamicSamplingBuffer.add (keeps groups with reward variance)

Rounds repeat until the buffer holds ``trainer.prompts_per_step`` informative groups (at most
``algorithm.dynamic_sampling.max_rounds``). A short batch (``on_exhausted: partial``) is cut so that its
last mini-batch still splits over the data-parallel ranks (:func:`dp_divisible_groups`).

Error policy: grader faults (:func:`nemo_prorl.rewards.pool.is_grader_fault`) above
``rewards.max_error_rate`` in a step mark the batch as failing (:attr:`RolloutBatch.failing`); the trainer
aborts after ``rewards.error_window_steps`` such steps in a row (:func:`reward_error_streak`). When
dynamic sampling runs out of rounds and the error/timeout rate is above the limit, the failing rows are
named at once (rewards that all fail have no variance, so the exhaustion would hide the cause).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from nemo_prorl.algorithms.dynamic_sampling import (
    DynamicSamplingBuffer,
    DynamicSamplingExhausted,
    prompts_per_round,
)
from nemo_prorl.algorithms.reward_shaping import length_penalty_weight, phase_position, shape_rewards
from nemo_prorl.eval.sampling import scoring_row
from nemo_prorl.rewards.pool import error_rate, is_grader_fault
from nemo_prorl.trainer.errors import TrainingError
from nemo_prorl.trainer.records import Abandoned, Group, PhaseSettings, RolloutBatch

#: rows named in a failing-rewards message, and the message's length cap
_FAILING_ROWS, _FAILING_CHARS = 5, 2000


def sampling_seed(base: int, step: int, round_idx: int) -> int:
    """The rollout seed of generation round ``round_idx`` of 0-based ``step`` (``base``: the run's seed)."""
    return (base * 1_000_003 + step * 1009 + round_idx) % (2**31 - 1)


def round_sampling(cfg: Any, settings: PhaseSettings, step: int, round_idx: int) -> Any:
    """The ``SamplingParams`` of generation round ``round_idx`` of 0-based ``step``.

    The phase's temperature and response cap; the round's seed is :func:`sampling_seed` of
    ``rollout.seed`` (the run's ``seed`` when unset).
    """
    base = cfg.rollout.seed if cfg.rollout.seed is not None else cfg.seed
    return cfg.rollout.sampling_params(temperature=float(settings.temperature),
                                       max_tokens=int(settings.max_response_tokens),
                                       seed=sampling_seed(base, step, round_idx))


def dp_divisible_groups(num_groups: int, n: int, mini_batch_prompts: int, dp_size: int) -> int:
    """Groups a short batch keeps so that its last, partial mini-batch splits over the DP ranks.

    ``num_groups`` groups of ``n`` samples, mini-batches of ``mini_batch_prompts`` groups. Drops groups
    from the end, never below one (a single group that cannot split is left for the trainer's DP check
    to name). Full mini-batches split by the config's own divisibility rule.
    """
    seqs_per_mb = mini_batch_prompts * n
    while num_groups > 1 and (num_groups * n % seqs_per_mb) % dp_size:
        num_groups -= 1
    return num_groups


def group_by_prompt(num_prompts: int, samples: Sequence[Any]) -> list[list[Any]]:
    """``samples`` (each with a ``prompt_index``) as one list per prompt, in their order."""
    by_prompt: list[list[Any]] = [[] for _ in range(num_prompts)]
    for s in samples:
        by_prompt[s.prompt_index].append(s)
    return by_prompt


def score_groups(
    rows: Sequence[dict],
    prompts: Sequence[list[int]],
    by_prompt: Sequence[Sequence[Any]],
    results: Sequence[Any],
    settings: PhaseSettings,
    *,
    failure_score: float,
    position: tuple[int, int],
) -> list[Group]:
    """One :class:`Group` per prompt: raw rewards of the scored samples and their shaped rewards.

    Args:
        rows: the round's data rows.
        prompts: their prompt tokens.
        by_prompt: the samples of each prompt (:func:`group_by_prompt`).
        results: one reward result per sample, prompt-major (``len == sum of group sizes``).
        settings: the step's phase settings (its ``shaping``).
        failure_score: the reward of a sample whose status is not ``ok`` (``rewards.failure_score``).
        position: ``(step_in_phase, phase_steps)`` of the length-penalty schedule.

    Returns:
        ``len(rows)`` groups.

    """
    groups = []
    k = 0
    for i, row in enumerate(rows):
        samples = list(by_prompt[i])
        res = results[k:k + len(samples)]
        k += len(samples)
        raw = torch.tensor([float(r.score) if r.status == "ok" else failure_score for r in res])
        shaped = shape_rewards(
            raw, settings.shaping,
            truncated=torch.tensor([s.finish_reason == "length" for s in samples]),
            lengths=torch.tensor([len(s.token_ids) for s in samples]),
            step_in_phase=position[0], phase_steps=position[1],
        )
        groups.append(Group(row, prompts[i], samples, raw.tolist(), shaped.tolist(), [r.status for r in res]))
    return groups


def status_rate(results: Sequence[Any], status: str) -> float:
    """Fraction of reward results with ``status`` (0.0 for none)."""
    return sum(r.status == status for r in results) / max(1, len(results))


def failing_rows(ids: Sequence[Any], results: Sequence[Any], is_failure: Callable[[Any], bool]) -> str:
    """The first failing rows ``[(row id, status, info), ...]`` as JSON (for an error message)."""
    bad = [(i, r.status, r.info) for i, r in zip(ids, results) if is_failure(r)][:_FAILING_ROWS]
    return json.dumps(bad, default=str)[:_FAILING_CHARS]


def rollout_metrics(
    results: Sequence[Any],
    stats: Any,
    settings: PhaseSettings,
    position: tuple[int, int],
    *,
    generate_s: float,
    score_s: float,
) -> dict[str, float]:
    """The step's rollout metrics over every generated sample (all rounds).

    ``reward/generated_mean`` is the mean task score of every generated sample, before dynamic sampling
    keeps the informative groups (``reward/mean``, over the kept groups, drifts toward 0.5 by design).
    """
    generated = [float(r.score) for r in results]
    metrics = {"time/generate": generate_s, "time/score": score_s,
               "reward/error_rate": error_rate(list(results)),
               "reward/timeout_rate": status_rate(results, "timeout"),
               "reward/violation_rate": status_rate(results, "violation"),
               "reward/generated_mean": sum(generated) / max(1, len(generated))}
    metrics.update(stats.as_metrics())
    if settings.shaping.length_penalty_coef > 0:
        metrics["reward/length_penalty_coef"] = length_penalty_weight(settings.shaping, *position)
    return metrics


def collect_rollouts(
    cfg: Any,
    step: int,
    settings: PhaseSettings,
    *,
    next_rows: Callable[[int], Sequence[dict]],
    tokenize: Callable[[dict], list[int]],
    generate: Callable[..., Any],
    score: Callable[[list[dict]], list[Any]],
    dp_size: int,
    stop: Callable[[], bool] | None = None,
    sampling: Callable[[int], Any] | None = None,
) -> RolloutBatch | Abandoned:
    """Generate + score rounds until dynamic sampling has a full batch (rank 0).

    Args:
        cfg: the :class:`~nemo_prorl.trainer.config.ProRLConfig`.
        step: the 0-based step being collected.
        settings: the step's :class:`PhaseSettings` (``n``, temperature, response cap, shaping).
        next_rows: the data sampler's ``next_batch(k)``.
        tokenize: a row's prompt tokens.
        generate: ``generate(prompts, n, sampling) -> GenerationOutput`` (the rollout driver).
        score: the reward pool's ``score(rows) -> [RewardResult]``.
        dp_size: data-parallel ranks (a short batch is cut to split over them).
        stop: asked between rounds (rank 0's preemption flag); when true, :class:`Abandoned` is returned.
        sampling: the ``SamplingParams`` of round ``i`` (default :func:`round_sampling` of this step).

    Raises:
        TrainingError: dynamic sampling ran out of rounds while the reward error/timeout rate is above
            ``rewards.max_error_rate``.
        DynamicSamplingExhausted: it ran out of rounds otherwise.

    """
    tc, ds = cfg.trainer, cfg.algorithm.dynamic_sampling
    buf = DynamicSamplingBuffer(tc.prompts_per_step, ds.max_rounds, enable=ds.enable, tol=ds.tol,
                                partial_ok=ds.on_exhausted == "partial")
    if sampling is None:
        def sampling(round_idx: int) -> Any:
            return round_sampling(cfg, settings, step, round_idx)

    t_gen = t_score = 0.0
    # the length-penalty schedule's place: a function of the global step only (resumes exactly)
    position = phase_position([ph.steps for ph in cfg.phases], step, tc.max_steps)
    all_results: list[Any] = []
    all_ids: list[Any] = []  # the row id of each entry of all_results (named when rewards fail)
    round_idx = 0
    while not buf.ready:
        if round_idx and stop is not None and stop():  # safe point: between rounds
            return Abandoned(rounds=round_idx)
        per_round = tc.generation_prompts or prompts_per_round(tc.prompts_per_step, ds.oversample)
        rows = [dict(r) for r in next_rows(per_round)]
        prompts = [tokenize(r) for r in rows]
        t0 = time.time()
        out = generate(prompts, settings.n, sampling(round_idx))
        t_gen += time.time() - t0
        t0 = time.time()
        by_prompt = group_by_prompt(len(rows), out.samples)
        results = score([scoring_row(rows[i], s.text) for i in range(len(rows)) for s in by_prompt[i]])
        t_score += time.time() - t0
        all_results.extend(results)
        all_ids.extend(rows[i].get("id") for i in range(len(rows)) for _ in by_prompt[i])
        groups = score_groups(rows, prompts, by_prompt, results, settings,
                              failure_score=cfg.rewards.failure_score, position=position)
        try:  # filter on what the advantages are computed from: the shaped rewards
            buf.add(groups, [g.shaped for g in groups])
        except DynamicSamplingExhausted as exc:
            # failing rewards score failure_score everywhere, so no group has variance: name the cause
            def unscored(r: Any) -> bool:
                return r.status in ("error", "timeout")

            rate = sum(map(unscored, all_results)) / max(1, len(all_results))
            if rate > cfg.rewards.max_error_rate:
                failing = failing_rows(all_ids, all_results, unscored)
                raise TrainingError(
                    f"reward error/timeout rate {rate:.1%} above rewards.max_error_rate="
                    f"{cfg.rewards.max_error_rate}, and no group had reward variance ({exc}); failing "
                    f"rows: {failing}") from exc
            raise
        round_idx += 1
    groups, stats = buf.pop_batch()
    if stats.partial:  # a short batch: its last mini-batch must still split over the DP ranks
        groups = groups[:dp_divisible_groups(len(groups), settings.n, tc.mini_batch_prompts, dp_size)]
    metrics = rollout_metrics(all_results, stats, settings, position, generate_s=t_gen, score_s=t_score)
    failing = None
    if metrics["reward/error_rate"] > cfg.rewards.max_error_rate:
        failing = failing_rows(all_ids, all_results, is_grader_fault)
    return RolloutBatch(groups=list(groups), metrics=metrics, failing=failing)


def reward_error_streak(batch: RolloutBatch, streak: int, rewards_cfg: Any) -> int:
    """Steps in a row whose grader-fault rate was above the limit, after this batch's step.

    Raises:
        TrainingError: the streak reaches ``rewards.error_window_steps``.

    """
    if batch.failing is None:
        return 0
    streak += 1
    if streak >= rewards_cfg.error_window_steps:
        raise TrainingError(
            f"reward error rate {batch.metrics['reward/error_rate']:.1%} above "
            f"rewards.max_error_rate={rewards_cfg.max_error_rate} for {streak} steps; failing rows: "
            f"{batch.failing}")
    return streak
