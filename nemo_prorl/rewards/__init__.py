"""Verifiable rewards: the registry, one module per domain, and the killable worker pool.

Importing this package registers the built-in rewards (``math``, ``mcq``, ``reasoning_gym``,
``ifeval``, ``code``, ``reward_model``). Heavy dependencies (math-verify, reasoning-gym, langdetect,
torch and transformers for the reward model) are imported only when a reward first needs them.
"""

from nemo_prorl.rewards import code as _code  # noqa: F401  (registers "code")
from nemo_prorl.rewards import ifeval as _ifeval  # noqa: F401  (registers "ifeval")
from nemo_prorl.rewards import math as _math  # noqa: F401  (registers "math")
from nemo_prorl.rewards import mcq as _mcq  # noqa: F401  (registers "mcq")
from nemo_prorl.rewards import reward_model as _reward_model  # noqa: F401  (registers "reward_model")
from nemo_prorl.rewards import rgym as _rgym  # noqa: F401  (registers "reasoning_gym")
from nemo_prorl.rewards.base import (
    STATUSES,
    Reward,
    RewardResult,
    get_reward_class,
    register_reward,
    registered_rewards,
)
from nemo_prorl.rewards.config import RewardsConfig
from nemo_prorl.rewards.pool import RewardPool, error_rate

__all__ = [
    "STATUSES",
    "Reward",
    "RewardPool",
    "RewardResult",
    "RewardsConfig",
    "error_rate",
    "get_reward_class",
    "register_reward",
    "registered_rewards",
]
