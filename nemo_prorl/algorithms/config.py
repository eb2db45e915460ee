"""Structured configuration of the ProRL algorithm (the ``algorithm`` node of a run config).

Plain dataclasses: a type per field, its help in the ``#:`` comment above it, its value rules in the field
metadata (``ge``/``gt``/``le``/``lt`` bounds, ``choices``) and the rules that span fields in ``problems``.
They are loaded and checked by the package's one config loader, :mod:`nemo_prorl.config_schema`
(``load(AlgorithmConfig, raw, "algorithm")``; ``check(cfg, "algorithm")`` for one built in code), which
this package does not import: ``nemo_prorl.algorithms`` imports nothing else of the package but
:mod:`nemo_prorl.collectives`.

Defaults follow ProRL v1 (arXiv 2505.24864): GRPO with std normalisation, decoupled clip 0.2 / 0.4,
token-mean aggregation, k3 KL in the loss with coefficient 1e-4, no entropy bonus, dynamic sampling on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

AGG_MODES: tuple[str, ...] = (
    "token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)
KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")
KL_PLACEMENTS: tuple[str, ...] = ("loss", "reward")
LENGTH_SCHEDULES: tuple[str, ...] = ("constant", "cosine")
TIS_MODES: tuple[str, ...] = ("none", "tis", "icepop")
ON_EXHAUSTED: tuple[str, ...] = ("error", "partial")
#: appended to a message about an unknown estimator / loss name
_PLUGIN_FIX = "a package registers more through the nemo_prorl.losses entry points"


def _advantage_estimators() -> list[str]:
    from nemo_prorl.algorithms.registry import registered_advantage_estimators

    return sorted(registered_advantage_estimators())


def _policy_losses() -> list[str]:
    from nemo_prorl.algorithms.registry import registered_policy_losses

    return sorted(registered_policy_losses())


@dataclass
class AdvantageConfig:
    """How per-sample advantages are computed from group rewards."""

    #: registered advantage estimator: ``grpo`` (group-relative baseline, ProRL v1), ``reinforce_pp_baseline``
    #: (group-mean baseline, then whitening over all response tokens of the batch, ProRL v2) or
    #: ``reinforce_pp`` (whitening only); see ``advantages.py``.
    estimator: str = field(default="grpo", metadata={
        "choices": _advantage_estimators, "fix": _PLUGIN_FIX})
    #: divide the centred reward by the group's unbiased std (+ ``eps``); ProRL/verl: true.
    norm_std: bool = True
    #: use the leave-one-out mean of the other group members as baseline (NeMo-RL default true; ProRL false).
    leave_one_out: bool = False
    #: added to the std before dividing (verl: 1e-6).
    eps: float = field(default=1e-6, metadata={"ge": 0})
    #: ``reinforce_pp*`` only: floor of the batch variance before its square root (NeMo-RL 1e-8).
    global_var_floor: float = field(default=1e-8, metadata={"gt": 0})

    def problems(self, key: str) -> Iterator[tuple[str, str]]:
        """The rules across fields, as ``(dotted key, message)``."""
        if self.norm_std and self.eps == 0:
            yield f"{key}.eps", "must be > 0 when norm_std is true"


@dataclass
class LossConfig:
    """The clipped policy-gradient surrogate and how token losses are aggregated."""

    #: registered policy loss (``clipped``: PPO surrogate with decoupled / dual clip).
    name: str = field(default="clipped", metadata={
        "choices": _policy_losses, "fix": _PLUGIN_FIX})
    #: lower clip: the ratio is clipped at ``1 - clip_low`` (ProRL 0.2); in [0, 1).
    clip_low: float = field(default=0.2, metadata={"ge": 0, "lt": 1})
    #: upper clip: the ratio is clipped at ``1 + clip_high`` (ProRL 0.4, "clip-higher"); >= 0.
    clip_high: float = field(default=0.4, metadata={"ge": 0})
    #: dual-clip constant ``c`` (> 1) bounding the loss of negative-advantage tokens;
    #: null = off (NeMo-RL default; verl uses 3.0).
    dual_clip: float | None = field(default=None, metadata={"gt": 1, "fix": "or null (off)"})
    #: aggregation: token-mean (ProRL/DAPO), seq-mean-token-sum, seq-mean-token-mean, seq-mean-token-sum-norm.
    agg: str = field(default="token-mean", metadata={"choices": AGG_MODES})
    #: constant length that divides each sequence's token sum in ``seq-mean-token-sum-norm``;
    #: null = the padded length of the batch (set it to the max response length when micro-batching).
    norm_len: int | None = field(default=None, metadata={"ge": 1, "fix": "or null"})
    #: truncated importance sampling against the rollout engine's log-probs (NeMo-RL
    #: ``truncated_importance_sampling_type``): ``none``; ``tis`` clamps each token weight
    #: exp(old_logp - rollout_logp) to [tis_min or 0, tis_max]; ``icepop`` zeroes weights outside
    #: [tis_min, tis_max] (ProRL v2 / NeMo-RL prorlv2.v2.yaml: icepop, 0.5, 5.0).
    tis: str = field(default="none", metadata={"choices": TIS_MODES})
    #: upper bound of the importance weight (NeMo-RL ``truncated_importance_sampling_ratio``; > 0).
    tis_max: float = field(default=5.0, metadata={"gt": 0})
    #: lower bound (NeMo-RL ``truncated_importance_sampling_ratio_min``): icepop needs it; null = 0 for tis.
    tis_min: float | None = field(default=None, metadata={"ge": 0})

    def problems(self, key: str) -> Iterator[tuple[str, str]]:
        """The rules across fields, as ``(dotted key, message)``."""
        if self.tis_min is not None and self.tis_min > self.tis_max:
            yield f"{key}.tis_min", f"must be <= tis_max={self.tis_max} (got {self.tis_min!r})"
        elif self.tis_min is None and self.tis == "icepop":
            yield f"{key}.tis_min", "must be set when tis is 'icepop' (ProRL v2 uses 0.5)"


@dataclass
class KLConfig:
    """KL penalty between the policy and the reference policy."""

    #: penalty coefficient beta (ProRL 1e-4); 0 disables the penalty and the reference forward pass.
    coef: float = field(default=1e-4, metadata={"ge": 0})
    #: estimator of KL(pi || pi_ref) per token: k1 (log-ratio), k2 (half squared log-ratio), k3 (ProRL).
    estimator: str = field(default="k3", metadata={"choices": KL_ESTIMATORS})
    #: where the penalty goes: ``loss`` (ProRL, verl use_kl_loss) or ``reward`` (subtracted from rewards by
    #: :func:`~nemo_prorl.algorithms.kl.kl_reward_penalty`, a library function: the trainer applies the KL
    #: in the loss only and refuses ``reward`` with a non-zero ``coef``).
    where: str = field(default="loss", metadata={"choices": KL_PLACEMENTS})
    #: clamp of the log-ratio ``logp - ref_logp`` to [-v, v] before the estimator (NeMo-RL 20); null = off.
    input_clamp: float | None = field(default=20.0, metadata={"gt": 0, "fix": "or null (off)"})
    #: clamp of the per-token estimate to [-v, v] (verl/NeMo-RL 10); null = off.
    output_clamp: float | None = field(default=10.0, metadata={"gt": 0, "fix": "or null (off)"})


@dataclass
class EntropyConfig:
    """Entropy bonus (subtracted from the loss as ``coef * entropy``)."""

    #: bonus coefficient; 0 (default, ProRL and verl) computes entropy for metrics only.
    coef: float = field(default=0.0, metadata={"ge": 0})


@dataclass
class DynamicSamplingConfig:
    """Dropping groups whose rewards have zero variance and refilling the batch (DAPO / ProRL)."""

    #: drop zero-variance groups and regenerate until the batch is full (ProRL: true).
    enable: bool = True
    #: generation rounds per step before giving up with DynamicSamplingExhausted (verl/NeMo-RL 10).
    max_rounds: int = field(default=10, metadata={"ge": 1})
    #: prompts generated per round: ceil(oversample * trainer.prompts_per_step) (NeMo-RL batch_multiplier;
    #: the same number in every round of a step); >= 1. Exclusive with ``trainer.generation_prompts``.
    oversample: float = field(default=1.0, metadata={"ge": 1})
    #: a group is "zero variance" when max(reward) - min(reward) <= tol, on the shaped rewards the
    #: advantages are computed from (a kept group never has all-zero advantages).
    tol: float = field(default=0.0, metadata={"ge": 0})
    #: after max_rounds without a full batch: "error" stops the run (verl / NeMo-RL behaviour); "partial"
    #: trains this step on the informative groups found (metric dynamic_sampling/partial = 1).
    on_exhausted: str = field(default="error", metadata={"choices": ON_EXHAUSTED})


@dataclass
class RewardShapingConfig:
    """Reward shaping applied after scoring and before advantages."""

    #: multiply the reward of a response that hit the length limit by this (0 = reward 0, NeMo-RL
    #: stop_properly_penalty_coef; ProRL runs 4-5 penalise non-terminating responses); null = off.
    stop_properly_penalty_coef: float | None = field(default=None, metadata={"ge": 0, "le": 1})
    #: DAPO overlong shaping: linear penalty over the last ``overlong_buffer_len`` tokens before the limit.
    overlong_enable: bool = False
    #: length of the penalty ramp in tokens (DAPO 4096).
    overlong_buffer_len: int = field(default=4096, metadata={"ge": 1})
    #: penalty at the length limit (DAPO 1.0).
    overlong_penalty_factor: float = field(default=1.0, metadata={"ge": 0})
    #: the maximum response length the ramp ends at; null (recommended) = the ``max_response_tokens`` in
    #: force, i.e. each phase's; when set, the trainer refuses a phase whose limit differs.
    max_response_len: int | None = None
    #: ProRL v2 scheduled cosine length penalty: its weight w (0 = off). A response of L tokens gets
    #: ``-w * (1 - cos(pi * min(L, length_penalty_len) / length_penalty_len)) / 2`` added to its reward.
    length_penalty_coef: float = field(default=0.0, metadata={"ge": 0})
    #: how w moves through the phase: ``cosine`` (from ``length_penalty_coef`` down to
    #: ``length_penalty_coef_end`` over ``length_penalty_steps``, restarting at each phase) or ``constant``.
    length_penalty_schedule: str = field(default="cosine", metadata={"choices": LENGTH_SCHEDULES})
    #: w at the end of the cosine schedule (>= 0).
    length_penalty_coef_end: float = field(default=0.0, metadata={"ge": 0})
    #: length of the cosine schedule in steps; null = the phase's steps (the run's for a phase-less run).
    length_penalty_steps: int | None = field(default=None, metadata={"ge": 1, "fix": "or null"})
    #: the length at which the penalty reaches -w; null = the ``max_response_len`` in force.
    length_penalty_len: int | None = field(default=None, metadata={"ge": 1, "fix": "or null"})

    def problems(self, key: str) -> Iterator[tuple[str, str]]:
        """The rules across fields, as ``(dotted key, message)``."""
        if self.overlong_enable and self.max_response_len is not None \
                and self.max_response_len <= self.overlong_buffer_len:
            yield (f"{key}.max_response_len", f"must exceed overlong_buffer_len={self.overlong_buffer_len} "
                   f"(got {self.max_response_len!r})")


@dataclass
class AlgorithmConfig:
    """All algorithm settings of a ProRL run (the ``algorithm`` node of the training config)."""

    #: group advantage settings.
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    #: policy loss settings.
    loss: LossConfig = field(default_factory=LossConfig)
    #: KL-to-reference settings.
    kl: KLConfig = field(default_factory=KLConfig)
    #: entropy bonus settings.
    entropy: EntropyConfig = field(default_factory=EntropyConfig)
    #: dynamic sampling settings.
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)
    #: reward shaping settings.
    reward_shaping: RewardShapingConfig = field(default_factory=RewardShapingConfig)
