"""The rollout contract: what every generation engine (vLLM on GPU, transformers on CPU) provides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch


@dataclass
class SamplingParams:
    """How to sample.

    Attributes:
        temperature: softmax temperature (ProRL training: 1.2; eval: 0.6). 0 means greedy.
        top_p: nucleus sampling mass (1.0 = off).
        top_k: keep the k most likely tokens (-1 = off).
        max_tokens: maximum number of generated tokens per sample.
        stop: stop strings; the text is cut before the first one and ``finish_reason`` is ``stop``.
        seed: base seed; sample ``j`` of prompt ``i`` is reproducible from (seed, i, j) on CPU.
        logprobs: return the sampling log-prob of each generated token.

    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: bool = True


@dataclass
class Sample:
    """One generated response.

    Attributes:
        prompt_index: index of its prompt in the ``generate`` call.
        prompt_token_ids: the prompt's tokens, ``[P]``.
        token_ids: the generated tokens, ``[R]`` (EOS included when generated; stop strings excluded).
        text: the decoded response.
        logprobs: sampling log-prob of each generated token, ``[R]`` float32 (None if not requested).
        finish_reason: ``"stop"`` (EOS or a stop string) or ``"length"`` (hit ``max_tokens``).

    """

    prompt_index: int
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    logprobs: torch.Tensor | None
    finish_reason: str


@dataclass
class GenerationOutput:
    """All samples of one ``generate`` call, grouped by prompt (``n`` consecutive per prompt).

    Attributes:
        samples: ``n`` samples per generated prompt, in prompt order.
        timings: seconds and throughput of the call (e.g. ``generate_s``, ``tokens_per_s``).
        skipped_prompts: indices of prompts left out because they were too long (only with
            ``overlong_prompt=skip``; by default an overlong prompt raises instead).

    """

    samples: list[Sample]
    timings: dict[str, float] = field(default_factory=dict)
    skipped_prompts: list[int] = field(default_factory=list)


@runtime_checkable
class RolloutEngine(Protocol):
    """A generation engine the trainer and the evaluator drive."""

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> GenerationOutput:
        """Sample ``n`` responses for each tokenized prompt."""

    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load new weights, given as a Hugging Face-named state dict (full, unsharded tensors)."""

    def sleep(self) -> None:
        """Release memory (KV cache, weights where possible) while the trainer runs."""

    def wake(self) -> None:
        """Re-acquire what ``sleep`` released; the next ``generate`` uses the latest weights."""
