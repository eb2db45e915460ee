"""The megatron-core engine's configuration, re-exported.

:class:`MegatronPolicyConfig` is defined in :mod:`nemo_prorl.policy.config` (a plain dataclass the
trainer's config names without importing an engine module).
"""

from nemo_prorl.policy.config import (
    DEFAULT_RECOMPUTE_MODULES,
    DTYPES,
    LM_HEADS,
    RECOMPUTE,
    RECOMPUTE_MODULES,
    SEQUENCE_PACKING,
    MegatronPolicyConfig,
)

__all__ = ["MegatronPolicyConfig", "DTYPES", "RECOMPUTE", "RECOMPUTE_MODULES", "LM_HEADS", "SEQUENCE_PACKING",
           "DEFAULT_RECOMPUTE_MODULES"]
