"""Configuration of the megatron-core training engine (:class:`MegatronPolicyConfig`).

Validated when constructed (``__post_init__``), i.e. before any process group or model exists, so a bad
value fails in milliseconds with the field's name rather than deep inside megatron.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from nemo_prorl.policy.registry import POLICY_BACKENDS

__all__ = ["MegatronPolicyConfig", "DTYPES", "RECOMPUTE", "RECOMPUTE_MODULES"]

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}

#: ``policy.recompute`` choices (``"none"`` = megatron's ``recompute_granularity=None``).
RECOMPUTE: tuple[str, ...] = ("none", "selective", "full")
#: ``policy.recompute_modules`` choices for a dense model (megatron's MoE / MLA modules do not apply).
RECOMPUTE_MODULES: tuple[str, ...] = ("mlp", "core_attn")
#: ``policy.lm_head`` values (see :class:`MegatronPolicyConfig`)
LM_HEADS: tuple[str, ...] = ("fused", "chunked")
#: ``policy.sequence_packing`` values (see :class:`MegatronPolicyConfig`)
SEQUENCE_PACKING: tuple[str, ...] = ("auto", "on", "off")
DEFAULT_RECOMPUTE_MODULES: tuple[str, ...] = ("mlp",)


@dataclass
class MegatronPolicyConfig:
    """Settings of :class:`nemo_prorl.policy.megatron.engine.MegatronPolicy`.

    Attributes:
        backend: the policy engine that trains with these settings, by registered name
            (:mod:`nemo_prorl.policy.registry`); ``"megatron"`` is this package's megatron-core engine.
        tensor_model_parallel_size: TP size; must divide the number of attention heads, KV heads and
            the FFN size of the model. ``world_size`` must be a multiple of ``TP * PP``; the rest is DP.
        pipeline_model_parallel_size: PP size (number of pipeline stages); must divide the number of
            layers. Micro-batches flow through the 1F1B schedule of megatron-core.
        micro_batch_size: sequences per micro-batch (forward/backward unit). A step batch of ``B``
            sequences on one DP rank runs ``ceil(B / micro_batch_size)`` micro-batches; the last one may
            be smaller unless PP > 1, where ``B`` must be a multiple of it (the pipeline exchanges
            fixed-shape activations).
        params_dtype: ``"fp32"`` or ``"bf16"``. fp32 on CPU (CPU bf16 matmuls are slow and inexact);
            bf16 on GPU, where gradients are accumulated and the optimizer keeps master weights in fp32.
        lr: learning rate (constant after the warm-up; ProRL uses 2e-6 for a 1.5B model).
        lr_warmup_steps: linear warm-up over this many optimizer steps (step ``i`` uses
            ``lr * i / lr_warmup_steps``), restarted by every :meth:`reset_optimizer` (ProRL's hard reset):
            Adam's first steps on zeroed moments move every weight by about ``lr`` in a direction set by
            one noisy batch, which a small policy does not survive at a large ``lr``. 0 = off (the paper).
        weight_decay: AdamW decoupled weight decay (ProRL/verl default 0.01).
        adam_beta1: Adam first-moment decay.
        adam_beta2: Adam second-moment decay.
        adam_eps: Adam epsilon.
        clip_grad: global gradient-norm clip (L2 over all parameters, all ranks); 0 disables clipping.
        use_distributed_optimizer: shard optimizer state and fp32 master weights over DP ranks
            (megatron's ZeRO-1 ``DistributedOptimizer``).
        logprob_chunk_size: tokens per chunk in the vocab-parallel log-prob kernel; bounds the
            ``[chunk, V/TP]`` logits buffer.
        reference_offload_to_cpu: keep the frozen reference weights in CPU memory and move them to the
            device only for a reference forward (saves one model copy of device memory; costs two
            host<->device copies of the weights per reference pass).
        seed: base seed for megatron's RNG streams (weight init, dropout).
        grad_reduce_in_fp32: accumulate and all-reduce gradients in fp32 (only matters for bf16).
        logprob_micro_batch_size: sequences per forward-only micro-batch in :meth:`logprobs`; ``None``
            means ``micro_batch_size``.
        temperature: log-probs are of ``softmax(logits / temperature)``; set it to the rollout sampling
            temperature (ProRL samples at 1.2) so importance ratios compare like with like.
        micro_batch_tokens: token budget of a training micro-batch, padding included
            (``rows x padded_len <= micro_batch_tokens``); ``None`` = fixed ``micro_batch_size`` rows
            padded to the batch's longest sequence. When set, ``micro_batch_size`` is not used: rows are
            sorted by length and binned (:func:`nemo_prorl.policy.micro_batching.token_budget_bins`), each
            micro-batch padded only to its own longest row. The loss and gradient do not change (the
            ``loss_fn`` still sees ``[b, L]`` rows and the global normalisers). A row longer than the
            budget runs alone; size it ``>= max_prompt_tokens + max_response_tokens``. Under PP the
            micro-batch shapes vary, which megatron's schedule supports with
            ``variable_seq_lengths`` (one extra shape exchange per send).
        logprob_micro_batch_tokens: token budget of a forward-only micro-batch in :meth:`logprobs`
            (no activations are kept there, so it can be larger); ``None`` = ``micro_batch_tokens``.
        recompute: activation recomputation in training (megatron's ``recompute_granularity``):
            ``"none"`` keeps every activation (1.5B: ~2.55 MB per token, docs/scaling.md);
            ``"selective"`` recomputes the submodules in ``recompute_modules`` in backward;
            ``"full"`` keeps only each chunk of ``recompute_num_layers`` layers' input and reruns the
            chunk in backward (``recompute_method="uniform"``), about one extra forward.
        recompute_num_layers: ``recompute="full"`` only: layers per recomputed chunk; must divide the
            layers per pipeline stage. ``None`` = 1 (least memory).
        recompute_modules: ``recompute="selective"`` only: any of ``"mlp"`` (the SwiGLU MLP, ~80% of a
            Qwen2 layer's stored activations: ``4 x ffn`` of ``6 x hidden + 2 x kv + 4 x ffn`` elements
            per token) and ``"core_attn"`` (the attention's softmax core; worth it only on the local,
            non-Transformer-Engine spec, which stores the ``s x s`` scores: TE's fused attention stores
            none and recomputing it costs a flash-attention forward). ``None`` = ``["mlp"]``.
            ``"layernorm"`` is refused: megatron-core 0.16 runs it through Transformer Engine's FP8
            state even without FP8 (``tensor_parallel.random.CheckpointWithoutOutput``), and with
            TE's spec the norms are fused into the linear layers, where there is nothing to recompute.
        lm_head: how :meth:`train_step` runs the output layer and the loss: ``"fused"`` (default) takes
            the ``loss_fn`` gradient inside the chunked vocab-parallel head's forward
            (:func:`nemo_prorl.algorithms.logprobs.vocab_parallel_fused_loss`: three GEMMs per chunk,
            bf16 GEMMs with fp32 softmax for bf16 weights); ``"chunked"`` computes the log-probs with
            :func:`~nemo_prorl.algorithms.logprobs.vocab_parallel_logprobs` and recomputes the logits in
            backward (four GEMMs). Same loss and gradients; the log-prob passes always use the latter.
        sequence_packing: ``"auto"`` (default), ``"on"`` or ``"off"``: run each micro-batch as one packed
            row (its sequences concatenated, no padding between them; :mod:`nemo_prorl.policy.packing`)
            instead of ``[b, longest]`` padded rows. With Transformer Engine's layer spec packing is
            megatron's ``thd`` format (``PackedSeqParams`` with ``cu_seqlens``: TE's attention keeps each
            sequence causal within itself, RoPE restarts per sequence); micro-batches are then cut by
            ``micro_batch_tokens`` counting real tokens (first-fit decreasing), so they hold more rows
            (without a budget, ``micro_batch_size`` consecutive rows per pack).
            On megatron's local spec (CPU) ``"on"`` expresses the same attention as a block-diagonal
            causal mask over the pack, which computes ``pack_len^2`` scores: correct, measured slower
            than binned padding on CPU (docs/scaling.md), for tests. ``"auto"`` = on with TE, off
            (binned padding) otherwise. Same loss and gradients either way.

    """

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    micro_batch_size: int = 4
    params_dtype: str = "fp32"
    lr: float = 1e-6
    lr_warmup_steps: int = 0
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    use_distributed_optimizer: bool = False
    logprob_chunk_size: int = 1024
    reference_offload_to_cpu: bool = False
    seed: int = 1234
    grad_reduce_in_fp32: bool = True
    logprob_micro_batch_size: int | None = None
    temperature: float = 1.0
    micro_batch_tokens: int | None = None
    logprob_micro_batch_tokens: int | None = None
    recompute: str = "none"
    recompute_num_layers: int | None = None
    recompute_modules: list[str] | None = None
    lm_head: str = "fused"
    sequence_packing: str = "auto"
    backend: str = "megatron"

    def __post_init__(self) -> None:
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MegatronPolicyConfig.{name} must be a positive integer, got {value!r}")

        POLICY_BACKENDS.check(self.backend, "policy.backend")
        for name in (
            "tensor_model_parallel_size",
            "pipeline_model_parallel_size",
            "micro_batch_size",
            "logprob_chunk_size",
        ):
            positive_int(name)
        if isinstance(self.lr_warmup_steps, bool) or not isinstance(self.lr_warmup_steps, int) \
                or self.lr_warmup_steps < 0:
            raise ValueError(f"MegatronPolicyConfig.lr_warmup_steps must be an integer >= 0, "
                             f"got {self.lr_warmup_steps!r}")
        if self.logprob_micro_batch_size is not None:
            positive_int("logprob_micro_batch_size")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"MegatronPolicyConfig.seed must be a non-negative integer, got {self.seed!r}")
        if str(self.params_dtype).lower() not in DTYPES:
            raise ValueError(
                f"MegatronPolicyConfig.params_dtype must be one of {sorted(DTYPES)}, "
                f"got {self.params_dtype!r}"
            )

        def finite(name: str, low: float, high: float, low_open: bool = False) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"MegatronPolicyConfig.{name} must be a finite number, got {value!r}")
            if value < low or value > high or (low_open and value == low):
                bracket = "(" if low_open else "["
                raise ValueError(
                    f"MegatronPolicyConfig.{name} must be in {bracket}{low}, {high}], got {value!r}"
                )

        finite("lr", 0.0, 1.0, low_open=True)
        finite("weight_decay", 0.0, 10.0)
        finite("adam_beta1", 0.0, 1.0)
        finite("adam_beta2", 0.0, 1.0)
        finite("adam_eps", 0.0, 1.0, low_open=True)
        finite("clip_grad", 0.0, 1e9)
        finite("temperature", 0.0, 100.0, low_open=True)
        for name in ("use_distributed_optimizer", "reference_offload_to_cpu", "grad_reduce_in_fp32"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"MegatronPolicyConfig.{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("micro_batch_tokens", "logprob_micro_batch_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 2):
                raise ValueError(
                    f"policy.{name} must be null (fixed micro_batch_size rows) or a token count >= 2, "
                    f"got {value!r}; size it >= max_prompt_tokens + max_response_tokens"
                )
        if self.lm_head not in LM_HEADS:
            raise ValueError(f"policy.lm_head must be one of {list(LM_HEADS)}, got {self.lm_head!r}: 'fused' "
                             "takes the loss gradient inside the chunked head (3 GEMMs), 'chunked' computes "
                             "log-probs first and recomputes the logits in backward (4 GEMMs)")
        if self.sequence_packing not in SEQUENCE_PACKING:
            raise ValueError(f"policy.sequence_packing must be one of {list(SEQUENCE_PACKING)}, got "
                             f"{self.sequence_packing!r}: 'auto' packs with Transformer Engine and pads "
                             "(binned) otherwise, 'on' always packs, 'off' never does")
        self._check_recompute()

    def _check_recompute(self) -> None:
        """Validate ``recompute*`` (megatron's own checks, made before the model exists)."""
        if self.recompute not in RECOMPUTE:
            raise ValueError(
                f"policy.recompute must be one of {', '.join(RECOMPUTE)}, got {self.recompute!r}"
            )
        if self.recompute_num_layers is not None:
            value = self.recompute_num_layers
            if self.recompute != "full":
                raise ValueError(
                    f"policy.recompute_num_layers={value!r} applies to policy.recompute=full only "
                    f"(recompute is {self.recompute!r}); remove it or set policy.recompute=full"
                )
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"policy.recompute_num_layers must be a positive integer, got {value!r}")
        if self.recompute_modules is not None:
            if self.recompute != "selective":
                raise ValueError(
                    f"policy.recompute_modules applies to policy.recompute=selective only "
                    f"(recompute is {self.recompute!r}); remove it or set policy.recompute=selective"
                )
            modules = self.recompute_modules
            if isinstance(modules, str) or not all(isinstance(m, str) for m in modules) or not modules:
                raise ValueError(
                    f"policy.recompute_modules must be a non-empty list of names, got {modules!r}"
                )
            self.recompute_modules = list(modules)
            for name in self.recompute_modules:
                if name == "layernorm":
                    raise ValueError(
                        "policy.recompute_modules: 'layernorm' is not supported (megatron-core 0.16 runs it "
                        "through Transformer Engine's FP8 state, and TE fuses the norms into the linear "
                        f"layers); use {list(RECOMPUTE_MODULES)}"
                    )
                if name not in RECOMPUTE_MODULES:
                    raise ValueError(
                        f"policy.recompute_modules: {name!r} is not a dense-model module; "
                        f"choose from {list(RECOMPUTE_MODULES)}"
                    )

    def transformer_overrides(self) -> dict[str, Any]:
        """The megatron ``TransformerConfig`` fields that ``recompute*`` sets (empty for ``"none"``)."""
        if self.recompute == "full":
            return {
                "recompute_granularity": "full",
                "recompute_method": "uniform",
                "recompute_num_layers": self.recompute_num_layers or 1,
            }
        if self.recompute == "selective":
            return {
                "recompute_granularity": "selective",
                "recompute_modules": list(self.recompute_modules or DEFAULT_RECOMPUTE_MODULES),
            }
        return {}

    @property
    def torch_dtype(self) -> torch.dtype:
        """``params_dtype`` as a ``torch.dtype``."""
        return DTYPES[str(self.params_dtype).lower()]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of all fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MegatronPolicyConfig:
        """Build from a mapping (e.g. a Hydra/omegaconf node); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"MegatronPolicyConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(values))
