"""The ProRL algorithm core: pure torch functions behind small registries.

Advantages (GRPO, REINFORCE++-baseline), the clipped policy loss with decoupled / dual clip and its
aggregation modes, truncated importance sampling, KL estimators, chunked and vocab-parallel log-probs,
dynamic sampling and reward shaping (with the scheduled cosine length penalty), plus their
configs (plain dataclasses, loaded and checked by :mod:`nemo_prorl.config_schema`). Nothing here imports
other ``nemo_prorl`` packages except the torch-only leaf :mod:`nemo_prorl.collectives` (the
vocab-parallel log-probs and the global advantage statistics).
"""

from nemo_prorl.algorithms.advantages import (
    broadcast_to_tokens,
    compute_advantages,
    group_advantages,
    group_ids_from_size,
    grpo_advantage,
    reinforce_pp_advantage,
    reinforce_pp_baseline_advantage,
)
from nemo_prorl.algorithms.config import (
    AGG_MODES,
    KL_ESTIMATORS,
    AdvantageConfig,
    AlgorithmConfig,
    DynamicSamplingConfig,
    EntropyConfig,
    KLConfig,
    LossConfig,
    RewardShapingConfig,
)
from nemo_prorl.algorithms.dynamic_sampling import (
    DynamicSamplingBuffer,
    DynamicSamplingExhausted,
    DynamicSamplingStats,
    filter_groups,
    has_reward_variance,
)
from nemo_prorl.algorithms.kl import entropy_from_logits, kl_penalty, kl_reward_penalty
from nemo_prorl.algorithms.logprobs import chunked_logprobs, naive_logprobs, vocab_parallel_logprobs
from nemo_prorl.algorithms.policy_loss import (
    LossOutput,
    aggregate_loss,
    clipped_policy_loss,
    loss_normalisers,
    masked_mean,
    prorl_loss,
    truncated_importance_weights,
)
from nemo_prorl.algorithms.registry import (
    get_advantage_estimator,
    get_policy_loss,
    register_advantage_estimator,
    register_policy_loss,
    registered_advantage_estimators,
    registered_policy_losses,
)
from nemo_prorl.algorithms.reward_shaping import (
    cosine_length_penalty,
    length_penalty_weight,
    overlong_penalty,
    shape_rewards,
    stop_properly_penalty,
)

__all__ = [
    "AGG_MODES",
    "KL_ESTIMATORS",
    "AdvantageConfig",
    "AlgorithmConfig",
    "DynamicSamplingBuffer",
    "DynamicSamplingConfig",
    "DynamicSamplingExhausted",
    "DynamicSamplingStats",
    "EntropyConfig",
    "KLConfig",
    "LossConfig",
    "LossOutput",
    "RewardShapingConfig",
    "aggregate_loss",
    "broadcast_to_tokens",
    "chunked_logprobs",
    "clipped_policy_loss",
    "compute_advantages",
    "cosine_length_penalty",
    "entropy_from_logits",
    "filter_groups",
    "get_advantage_estimator",
    "get_policy_loss",
    "group_advantages",
    "group_ids_from_size",
    "grpo_advantage",
    "has_reward_variance",
    "kl_penalty",
    "kl_reward_penalty",
    "length_penalty_weight",
    "loss_normalisers",
    "masked_mean",
    "naive_logprobs",
    "overlong_penalty",
    "prorl_loss",
    "register_advantage_estimator",
    "register_policy_loss",
    "registered_advantage_estimators",
    "registered_policy_losses",
    "reinforce_pp_advantage",
    "reinforce_pp_baseline_advantage",
    "shape_rewards",
    "stop_properly_penalty",
    "truncated_importance_weights",
    "vocab_parallel_logprobs",
]
