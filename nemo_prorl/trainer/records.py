"""The typed records one training step passes from stage to stage.

One step of :meth:`ProRLTrainer.fit <nemo_prorl.trainer.trainer.ProRLTrainer.fit>`::

    PhaseSettings (phases.py, from the config and the step)
      -> collect (collect.py, rank 0)        -> RolloutBatch   groups of n scored, shaped samples
      -> build (update.py)                   -> TokenBatch     [B, L] tokens, mask, advantages, rollout lp
      -> attach log-probs (update.py)        -> TokenBatch     + ref_logprobs, old_logprobs
      -> update (update.py)                  -> UpdateStats    the optimizer updates' metrics, counters
      -> metrics, validation, resets, checkpoint, weight sync (trainer.py)

``TokenBatch`` is the policy's own batch type (:class:`nemo_prorl.policy.interface.TokenBatch`). The
records here are frozen: a stage returns a new value instead of changing its input (the lists inside a
:class:`Group` are the exception; no stage writes to them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nemo_prorl.algorithms.config import RewardShapingConfig


@dataclass(frozen=True)
class PhaseSettings:
    """The rollout and reward settings in force for a step (a run phase's, or the run's own).

    Attributes:
        index: the phase's index in ``phases`` (``-1``: the run has no phases).
        name: the phase's name (``None`` without phases).
        n: rollouts per prompt.
        temperature: sampling temperature (``rollout.temperature`` or the phase's; may be ``None`` /
            ``0`` as configured, see :attr:`policy_temperature`).
        max_response_tokens: the response cap the rollouts sample with.
        shaping: the reward shaping of the phase (``algorithm.reward_shaping`` with its overrides).
        mixture: the data-domain weights the sampler draws with (``None``: the data config's own).
        reset_at_start: the phase starts with a hard reset (``phases[i].reset``).

    """

    index: int
    name: str | None
    n: int
    temperature: float | None
    max_response_tokens: int
    shaping: RewardShapingConfig
    mixture: dict[str, float] | None = None
    reset_at_start: bool = False

    @property
    def policy_temperature(self) -> float:
        """The temperature the policy's log-probs use: the sampling one (``1.0`` when unset or 0)."""
        return float(self.temperature or 1.0)


@dataclass
class Group:
    """One prompt's rollouts.

    Attributes:
        row: the data row.
        prompt_ids: ``[P]`` prompt tokens.
        samples: the ``n`` samples (``nemo_prorl.rollout.base.Sample``).
        rewards: ``[n]`` task rewards (as scored).
        shaped: ``[n]`` rewards after shaping (used for advantages).
        statuses: ``[n]`` reward statuses.

    """

    row: dict
    prompt_ids: list[int]
    samples: list[Any]
    rewards: list[float]
    shaped: list[float]
    statuses: list[str]


@dataclass(frozen=True)
class RolloutBatch:
    """What the collect stage hands to training: the kept groups and the rollout metrics.

    Attributes:
        groups: ``G`` groups of ``n`` samples each (``B = G * n`` sequences), in dynamic-sampling order.
        metrics: rollout metrics as logged (``time/generate``, ``reward/error_rate``,
            ``dynamic_sampling/*``, ...).
        failing: with a grader-fault rate above ``rewards.max_error_rate``: up to 5 failing rows
            ``[(row id, status, info), ...]`` as JSON (at most 2,000 characters); else ``None``.

    """

    groups: list[Group]
    metrics: dict[str, float]
    failing: str | None = None


@dataclass(frozen=True)
class Abandoned:
    """The collect stage stopped at a preemption signal between dynamic-sampling rounds.

    Attributes:
        rounds: generation rounds done before the stop.

    """

    rounds: int


@dataclass(frozen=True)
class NonfiniteCount:
    """Non-finite (skipped) optimizer updates: in a row (across steps) and over the run."""

    in_row: int = 0
    total: int = 0

    def after(self, skipped: bool) -> NonfiniteCount:
        """The count after one more update (``skipped``: the engine skipped it as non-finite)."""
        if skipped:
            return NonfiniteCount(self.in_row + 1, self.total + 1)
        return NonfiniteCount(0, self.total)


@dataclass(frozen=True)
class UpdatePlan:
    """How a step batch of ``B`` sequences is cut into optimizer updates.

    Attributes:
        seqs_per_update: sequences per mini-batch (``mini_batch_prompts * n``); the last may be shorter.
        epochs: passes over the batch (``trainer.ppo_epochs``).
        num_updates: optimizer updates in all (``epochs * ceil(B / seqs_per_update)``).
        reuse_old_logprobs: the old log-probs come from the train step (one update per batch, see
            :func:`~nemo_prorl.trainer.update.skip_old_logprobs`), so no separate forward runs.

    """

    seqs_per_update: int
    epochs: int
    num_updates: int
    reuse_old_logprobs: bool


@dataclass(frozen=True)
class UpdateStats:
    """The result of a step's optimizer updates.

    Attributes:
        updates: each update's metrics as ``PolicyInterface.train_step`` returned them.
        nonfinite: the non-finite counters after the step.
        seconds: wall time of the updates.

    """

    updates: list[dict[str, float]] = field(default_factory=list)
    nonfinite: NonfiniteCount = field(default_factory=NonfiniteCount)
    seconds: float = 0.0
