"""Rollout engines: the protocol, the transformers CPU engine, the colocated vLLM engine, and metrics.

``vllm`` is imported lazily inside :mod:`nemo_prorl.rollout.vllm_engine` only.
"""

from nemo_prorl.rollout.base import GenerationOutput, RolloutEngine, Sample, SamplingParams
from nemo_prorl.rollout.config import RolloutConfig
from nemo_prorl.rollout.factory import build_rollout_engine
from nemo_prorl.rollout.hf_engine import HFRolloutEngine, teacher_forced_logprobs
from nemo_prorl.rollout.limits import PromptTooLongError
from nemo_prorl.rollout.metrics import logprob_mismatch_metrics, pad_logprobs, token_mult_prob_error

__all__ = [
    "GenerationOutput",
    "HFRolloutEngine",
    "PromptTooLongError",
    "RolloutConfig",
    "RolloutEngine",
    "Sample",
    "SamplingParams",
    "build_rollout_engine",
    "logprob_mismatch_metrics",
    "pad_logprobs",
    "teacher_forced_logprobs",
    "token_mult_prob_error",
]
