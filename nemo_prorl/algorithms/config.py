"""Structured, validated configuration of the ProRL algorithm.

Every dataclass is a Hydra structured config (registered in the ConfigStore under the group
``algorithm``: ``algorithm/prorl`` is :class:`AlgorithmConfig` with the ProRL defaults). ``validate()``
checks values that Hydra's type checks cannot, and raises :class:`ConfigError` whose message starts
with the full dotted key of the offending field, before any model is built.

Defaults follow ProRL v1 (arXiv 2505.24864): GRPO with std normalisation, decoupled clip 0.2 / 0.4,
token-mean aggregation, k3 KL in the loss with coefficient 1e-4, no entropy bonus, dynamic sampling on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

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


class ConfigError(ValueError):
    """A configuration value is invalid.

    Attributes:
        key: full dotted key of the field, e.g. ``algorithm.loss.clip_low``.
        message: what is wrong with it.

    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def _finite(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number (got {value!r})")
    return float(value)


def _int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be an integer (got {value!r})")
    return value


def _nonneg(key: str, value: Any) -> float:
    v = _finite(key, value)
    if v < 0:
        raise ConfigError(key, f"must be >= 0 (got {value!r})")
    return v


def _choice(key: str, value: Any, choices: tuple[str, ...] | list[str]) -> str:
    if value not in choices:
        raise ConfigError(key, f"unknown value {value!r}; expected one of: {', '.join(choices)}")
    return value


def check_batch_divisible(key: str, batch: int, mini_batch: int) -> int:
    """Check that ``batch`` splits into whole mini-batches of ``mini_batch``.

    Args:
        key: dotted config key to name in the error (e.g. ``trainer.mini_batch_size``).
        batch: the larger size (e.g. prompts or samples per step).
        mini_batch: the size it is divided into.

    Returns:
        ``batch // mini_batch``, the number of mini-batches.

    Raises:
        ConfigError: when either size is not a positive integer or the division leaves a remainder.

    """
    _int(key, batch)
    _int(key, mini_batch)
    if batch < 1 or mini_batch < 1:
        raise ConfigError(key, f"sizes must be >= 1 (got batch={batch}, mini_batch={mini_batch})")
    if batch % mini_batch:
        raise ConfigError(
            key,
            f"batch size {batch} is not divisible by mini-batch size {mini_batch} "
            f"(remainder {batch % mini_batch})",
        )
    return batch // mini_batch


@dataclass
class AdvantageConfig:
    """How per-sample advantages are computed from group rewards."""

    #: registered advantage estimator: ``grpo`` (group-relative baseline, ProRL v1), ``reinforce_pp_baseline``
    #: (group-mean baseline, then whitening over all response tokens of the batch, ProRL v2) or
    #: ``reinforce_pp`` (whitening only); see ``advantages.py``.
    estimator: str = "grpo"
    #: divide the centred reward by the group's unbiased std (+ ``eps``); ProRL/verl: true.
    norm_std: bool = True
    #: use the leave-one-out mean of the other group members as baseline (NeMo-RL default true; ProRL false).
    leave_one_out: bool = False
    #: added to the std before dividing (verl: 1e-6).
    eps: float = 1e-6
    #: ``reinforce_pp*`` only: floor of the batch variance before its square root (NeMo-RL 1e-8).
    global_var_floor: float = 1e-8

    def validate(self, prefix: str = "algorithm.advantage") -> None:
        """Raise :class:`ConfigError` for invalid values."""
        from nemo_prorl.algorithms.registry import registered_advantage_estimators

        _choice(f"{prefix}.estimator", self.estimator, sorted(registered_advantage_estimators()))
        eps = _nonneg(f"{prefix}.eps", self.eps)
        if self.norm_std and eps == 0:
            raise ConfigError(f"{prefix}.eps", "must be > 0 when norm_std is true")
        if _finite(f"{prefix}.global_var_floor", self.global_var_floor) <= 0:
            raise ConfigError(f"{prefix}.global_var_floor", f"must be > 0 (got {self.global_var_floor!r})")


@dataclass
class LossConfig:
    """The clipped policy-gradient surrogate and how token losses are aggregated."""

    #: registered policy loss (``clipped``: PPO surrogate with decoupled / dual clip).
    name: str = "clipped"
    #: lower clip: the ratio is clipped at ``1 - clip_low`` (ProRL 0.2); in [0, 1).
    clip_low: float = 0.2
    #: upper clip: the ratio is clipped at ``1 + clip_high`` (ProRL 0.4, "clip-higher"); >= 0.
    clip_high: float = 0.4
    #: dual-clip constant ``c`` (> 1) bounding the loss of negative-advantage tokens;
    #: null = off (NeMo-RL default; verl uses 3.0).
    dual_clip: float | None = None
    #: aggregation: token-mean (ProRL/DAPO), seq-mean-token-sum, seq-mean-token-mean, seq-mean-token-sum-norm.
    agg: str = "token-mean"
    #: constant length that divides each sequence's token sum in ``seq-mean-token-sum-norm``;
    #: null = the padded length of the batch (set it to the max response length when micro-batching).
    norm_len: int | None = None
    #: truncated importance sampling against the rollout engine's log-probs (NeMo-RL
    #: ``truncated_importance_sampling_type``): ``none``; ``tis`` clamps each token weight
    #: exp(old_logp - rollout_logp) to [tis_min or 0, tis_max]; ``icepop`` zeroes weights outside
    #: [tis_min, tis_max] (ProRL v2 / NeMo-RL prorlv2.v2.yaml: icepop, 0.5, 5.0).
    tis: str = "none"
    #: upper bound of the importance weight (NeMo-RL ``truncated_importance_sampling_ratio``; > 0).
    tis_max: float = 5.0
    #: lower bound (NeMo-RL ``truncated_importance_sampling_ratio_min``): icepop needs it; null = 0 for tis.
    tis_min: float | None = None

    def validate(self, prefix: str = "algorithm.loss") -> None:
        """Raise :class:`ConfigError` for invalid values."""
        from nemo_prorl.algorithms.registry import registered_policy_losses

        _choice(f"{prefix}.name", self.name, sorted(registered_policy_losses()))
        low = _finite(f"{prefix}.clip_low", self.clip_low)
        if not 0 <= low < 1:
            raise ConfigError(f"{prefix}.clip_low", f"must be in [0, 1) (got {self.clip_low!r})")
        _nonneg(f"{prefix}.clip_high", self.clip_high)
        if self.dual_clip is not None:
            c = _finite(f"{prefix}.dual_clip", self.dual_clip)
            if c <= 1:
                raise ConfigError(f"{prefix}.dual_clip", f"must be > 1 or null (got {self.dual_clip!r})")
        _choice(f"{prefix}.agg", self.agg, AGG_MODES)
        if self.norm_len is not None and _int(f"{prefix}.norm_len", self.norm_len) < 1:
            raise ConfigError(f"{prefix}.norm_len", f"must be >= 1 or null (got {self.norm_len!r})")
        _choice(f"{prefix}.tis", self.tis, TIS_MODES)
        if _finite(f"{prefix}.tis_max", self.tis_max) <= 0:
            raise ConfigError(f"{prefix}.tis_max", f"must be > 0 (got {self.tis_max!r})")
        if self.tis_min is not None:
            lo = _nonneg(f"{prefix}.tis_min", self.tis_min)
            if lo > self.tis_max:
                raise ConfigError(f"{prefix}.tis_min", f"must be <= tis_max={self.tis_max} (got {lo!r})")
        elif self.tis == "icepop":
            raise ConfigError(f"{prefix}.tis_min", "must be set when tis is 'icepop' (ProRL v2 uses 0.5)")


@dataclass
class KLConfig:
    """KL penalty between the policy and the reference policy."""

    #: penalty coefficient beta (ProRL 1e-4); 0 disables the penalty and the reference forward pass.
    coef: float = 1e-4
    #: estimator of KL(pi || pi_ref) per token: k1 (log-ratio), k2 (half squared log-ratio), k3 (ProRL).
    estimator: str = "k3"
    #: where the penalty goes: ``loss`` (ProRL, verl use_kl_loss) or ``reward`` (subtracted from rewards by
    #: :func:`~nemo_prorl.algorithms.kl.kl_reward_penalty`, a library function: the trainer applies the KL
    #: in the loss only and refuses ``reward`` with a non-zero ``coef``).
    where: str = "loss"
    #: clamp of the log-ratio ``logp - ref_logp`` to [-v, v] before the estimator (NeMo-RL 20); null = off.
    input_clamp: float | None = 20.0
    #: clamp of the per-token estimate to [-v, v] (verl/NeMo-RL 10); null = off.
    output_clamp: float | None = 10.0

    def validate(self, prefix: str = "algorithm.kl") -> None:
        """Raise :class:`ConfigError` for invalid values."""
        _nonneg(f"{prefix}.coef", self.coef)
        _choice(f"{prefix}.estimator", self.estimator, KL_ESTIMATORS)
        _choice(f"{prefix}.where", self.where, KL_PLACEMENTS)
        for name in ("input_clamp", "output_clamp"):
            value = getattr(self, name)
            if value is not None and _finite(f"{prefix}.{name}", value) <= 0:
                raise ConfigError(f"{prefix}.{name}", f"must be > 0 or null (got {value!r})")


@dataclass
class EntropyConfig:
    """Entropy bonus (subtracted from the loss as ``coef * entropy``)."""

    #: bonus coefficient; 0 (default, ProRL and verl) computes entropy for metrics only.
    coef: float = 0.0

    def validate(self, prefix: str = "algorithm.entropy") -> None:
        """Raise :class:`ConfigError` for invalid values."""
        _nonneg(f"{prefix}.coef", self.coef)


@dataclass
class DynamicSamplingConfig:
    """Dropping groups whose rewards have zero variance and refilling the batch (DAPO / ProRL)."""

    #: drop zero-variance groups and regenerate until the batch is full (ProRL: true).
    enable: bool = True
    #: generation rounds per step before giving up with DynamicSamplingExhausted (verl/NeMo-RL 10).
    max_rounds: int = 10
    #: prompts generated per round: ceil(oversample * trainer.prompts_per_step) (NeMo-RL batch_multiplier;
    #: the same number in every round of a step); >= 1. Exclusive with ``trainer.generation_prompts``.
    oversample: float = 1.0
    #: a group is "zero variance" when max(reward) - min(reward) <= tol, on the shaped rewards the
    #: advantages are computed from (a kept group never has all-zero advantages).
    tol: float = 0.0
    #: after max_rounds without a full batch: "error" stops the run (verl / NeMo-RL behaviour); "partial"
    #: trains this step on the informative groups found (metric dynamic_sampling/partial = 1).
    on_exhausted: str = "error"

    def validate(self, prefix: str = "algorithm.dynamic_sampling") -> None:
        """Raise :class:`ConfigError` for invalid values."""
        if _int(f"{prefix}.max_rounds", self.max_rounds) < 1:
            raise ConfigError(f"{prefix}.max_rounds", f"must be >= 1 (got {self.max_rounds!r})")
        if _finite(f"{prefix}.oversample", self.oversample) < 1:
            raise ConfigError(f"{prefix}.oversample", f"must be >= 1 (got {self.oversample!r})")
        _nonneg(f"{prefix}.tol", self.tol)
        if self.on_exhausted not in ("error", "partial"):
            raise ConfigError(f"{prefix}.on_exhausted",
                              f"must be 'error' or 'partial' (got {self.on_exhausted!r})")


@dataclass
class RewardShapingConfig:
    """Reward shaping applied after scoring and before advantages."""

    #: multiply the reward of a response that hit the length limit by this (0 = reward 0, NeMo-RL
    #: stop_properly_penalty_coef; ProRL runs 4-5 penalise non-terminating responses); null = off.
    stop_properly_penalty_coef: float | None = None
    #: DAPO overlong shaping: linear penalty over the last ``overlong_buffer_len`` tokens before the limit.
    overlong_enable: bool = False
    #: length of the penalty ramp in tokens (DAPO 4096).
    overlong_buffer_len: int = 4096
    #: penalty at the length limit (DAPO 1.0).
    overlong_penalty_factor: float = 1.0
    #: the maximum response length the ramp ends at; null (recommended) = the ``max_response_tokens`` in
    #: force, i.e. each phase's; when set, the trainer refuses a phase whose limit differs.
    max_response_len: int | None = None
    #: ProRL v2 scheduled cosine length penalty: its weight w (0 = off). A response of L tokens gets
    #: ``-w * (1 - cos(pi * min(L, length_penalty_len) / length_penalty_len)) / 2`` added to its reward.
    length_penalty_coef: float = 0.0
    #: how w moves through the phase: ``cosine`` (from ``length_penalty_coef`` down to
    #: ``length_penalty_coef_end`` over ``length_penalty_steps``, restarting at each phase) or ``constant``.
    length_penalty_schedule: str = "cosine"
    #: w at the end of the cosine schedule (>= 0).
    length_penalty_coef_end: float = 0.0
    #: length of the cosine schedule in steps; null = the phase's steps (the run's for a phase-less run).
    length_penalty_steps: int | None = None
    #: the length at which the penalty reaches -w; null = the ``max_response_len`` in force.
    length_penalty_len: int | None = None

    def validate(self, prefix: str = "algorithm.reward_shaping") -> None:
        """Raise :class:`ConfigError` for invalid values."""
        if self.stop_properly_penalty_coef is not None:
            coef = _nonneg(f"{prefix}.stop_properly_penalty_coef", self.stop_properly_penalty_coef)
            if coef > 1:
                raise ConfigError(
                    f"{prefix}.stop_properly_penalty_coef", f"must be in [0, 1] or null (got {coef!r})"
                )
        _nonneg(f"{prefix}.overlong_penalty_factor", self.overlong_penalty_factor)
        if _int(f"{prefix}.overlong_buffer_len", self.overlong_buffer_len) < 1:
            raise ConfigError(
                f"{prefix}.overlong_buffer_len", f"must be >= 1 (got {self.overlong_buffer_len!r})"
            )
        _nonneg(f"{prefix}.length_penalty_coef", self.length_penalty_coef)
        _nonneg(f"{prefix}.length_penalty_coef_end", self.length_penalty_coef_end)
        _choice(f"{prefix}.length_penalty_schedule", self.length_penalty_schedule, LENGTH_SCHEDULES)
        for name in ("length_penalty_steps", "length_penalty_len"):
            value = getattr(self, name)
            if value is not None and _int(f"{prefix}.{name}", value) < 1:
                raise ConfigError(f"{prefix}.{name}", f"must be >= 1 or null (got {value!r})")
        if self.overlong_enable and self.max_response_len is not None:
            if _int(f"{prefix}.max_response_len", self.max_response_len) <= self.overlong_buffer_len:
                raise ConfigError(
                    f"{prefix}.max_response_len",
                    f"must exceed overlong_buffer_len={self.overlong_buffer_len} "
                    f"(got {self.max_response_len!r})",
                )


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

    def validate(self, prefix: str = "algorithm") -> AlgorithmConfig:
        """Validate every section; raises :class:`ConfigError`. Returns ``self`` for chaining."""
        for f in fields(self):
            section = getattr(self, f.name)
            if not is_dataclass(section):
                raise ConfigError(f"{prefix}.{f.name}", f"must be a mapping (got {section!r})")
            section.validate(f"{prefix}.{f.name}")
        return self


_SECTIONS: dict[str, type] = {
    "advantage": AdvantageConfig,
    "loss": LossConfig,
    "kl": KLConfig,
    "entropy": EntropyConfig,
    "dynamic_sampling": DynamicSamplingConfig,
    "reward_shaping": RewardShapingConfig,
}


def algorithm_config_from_dict(data: Any, prefix: str = "algorithm") -> AlgorithmConfig:
    """Build and validate an :class:`AlgorithmConfig` from a plain mapping (e.g. ``OmegaConf.to_container``).

    Unknown sections or keys raise :class:`ConfigError` naming the dotted key.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(prefix, f"must be a mapping (got {type(data).__name__})")
    sections: dict[str, Any] = {}
    for name, value in data.items():
        if name not in _SECTIONS:
            raise ConfigError(f"{prefix}.{name}", f"unknown section; expected one of: {', '.join(_SECTIONS)}")
        cls = _SECTIONS[name]
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{prefix}.{name}", f"must be a mapping (got {type(value).__name__})")
        known = {f.name for f in fields(cls)}
        for key in value:
            if key not in known:
                raise ConfigError(
                    f"{prefix}.{name}.{key}", f"unknown key; expected one of: {', '.join(sorted(known))}"
                )
        sections[name] = cls(**value)
    return AlgorithmConfig(**sections).validate(prefix)


def register_configs() -> None:
    """Register the structured configs with Hydra's ConfigStore (group ``algorithm``, name ``prorl``)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(group="algorithm", name="prorl", node=AlgorithmConfig)
    cs.store(group="algorithm/advantage", name="grpo", node=AdvantageConfig)
    cs.store(group="algorithm/loss", name="clipped", node=LossConfig)
    cs.store(group="algorithm/kl", name="k3", node=KLConfig)
    cs.store(group="algorithm/entropy", name="default", node=EntropyConfig)
    cs.store(group="algorithm/dynamic_sampling", name="default", node=DynamicSamplingConfig)
    cs.store(group="algorithm/reward_shaping", name="default", node=RewardShapingConfig)


try:  # Hydra is a core dependency, but the algorithms must stay usable without it.
    register_configs()
except ImportError:  # pragma: no cover
    pass
