"""Configuration of the training engine's ``policy:`` block (:class:`MegatronPolicyConfig`).

A plain dataclass that imports no megatron-core, so the trainer's config can name it without naming an
engine module (``nemo_prorl.policy.megatron.config`` re-exports it for the engine and older imports).

Validated when constructed (``__post_init__``), i.e. before any process group or model exists, so a bad
value fails in milliseconds with the field's name rather than deep inside megatron.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from nemo_prorl.config_schema import check, load
from nemo_prorl.policy.registry import POLICY_BACKENDS

__all__ = ["MegatronPolicyConfig", "DTYPES", "RECOMPUTE", "RECOMPUTE_MODULES", "LM_HEADS", "SEQUENCE_PACKING",
           "DEFAULT_RECOMPUTE_MODULES"]

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
_POS = {"ge": 1}
#: ``policy.micro_batch_tokens`` / ``logprob_micro_batch_tokens`` rules
_TOKENS = {"ge": 2, "fix": "null (fixed micro_batch_size rows) or a token count; size it >= "
           "max_prompt_tokens + max_response_tokens"}


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

    tensor_model_parallel_size: int = field(default=1, metadata=_POS)
    pipeline_model_parallel_size: int = field(default=1, metadata=_POS)
    micro_batch_size: int = field(default=4, metadata=_POS)
    params_dtype: str = "fp32"
    lr: float = field(default=1e-6, metadata={"gt": 0.0, "le": 1.0})
    lr_warmup_steps: int = field(default=0, metadata={"ge": 0})
    weight_decay: float = field(default=0.01, metadata={"ge": 0.0, "le": 10.0})
    adam_beta1: float = field(default=0.9, metadata={"ge": 0.0, "le": 1.0})
    adam_beta2: float = field(default=0.999, metadata={"ge": 0.0, "le": 1.0})
    adam_eps: float = field(default=1e-8, metadata={"gt": 0.0, "le": 1.0})
    clip_grad: float = field(default=1.0, metadata={"ge": 0.0, "le": 1e9})
    use_distributed_optimizer: bool = False
    logprob_chunk_size: int = field(default=1024, metadata=_POS)
    reference_offload_to_cpu: bool = False
    seed: int = field(default=1234, metadata={"ge": 0})
    grad_reduce_in_fp32: bool = True
    logprob_micro_batch_size: int | None = field(default=None, metadata=_POS)
    temperature: float = field(default=1.0, metadata={"gt": 0.0, "le": 100.0})
    micro_batch_tokens: int | None = field(default=None, metadata=_TOKENS)
    logprob_micro_batch_tokens: int | None = field(default=None, metadata=_TOKENS)
    recompute: str = field(default="none", metadata={"choices": RECOMPUTE})
    recompute_num_layers: int | None = field(default=None, metadata=_POS)
    recompute_modules: list[str] | None = None
    lm_head: str = field(default="fused", metadata={
        "choices": LM_HEADS, "fix": "'fused' takes the loss gradient inside the chunked head (3 GEMMs), "
        "'chunked' computes log-probs first and recomputes the logits in backward (4 GEMMs)"})
    sequence_packing: str = field(default="auto", metadata={
        "choices": SEQUENCE_PACKING,
        "fix": "'auto' packs with Transformer Engine and pads (binned) otherwise, 'on' always packs, "
               "'off' never does"})
    backend: str = "megatron"

    def __post_init__(self) -> None:
        """Check every field (:func:`nemo_prorl.config_schema.check` at key ``policy``)."""
        check(self, "policy")
        if self.recompute_modules is not None:
            self.recompute_modules = list(self.recompute_modules)

    def problems(self, key: str) -> Iterator[tuple[str, str]]:
        """The dtype name and megatron's own ``recompute*`` checks, made before the model exists.

        An unknown ``backend`` raises at once (the registry's message lists the registered names).
        """
        POLICY_BACKENDS.check(self.backend, f"{key}.backend")
        if str(self.params_dtype).lower() not in DTYPES:
            yield f"{key}.params_dtype", f"must be one of {sorted(DTYPES)}, got {self.params_dtype!r}"
        if self.recompute_num_layers is not None and self.recompute != "full":
            yield (f"{key}.recompute_num_layers", f"={self.recompute_num_layers!r} applies to "
                   f"{key}.recompute=full only (recompute is {self.recompute!r}); remove it or set "
                   f"{key}.recompute=full")
        modules = self.recompute_modules
        if modules is None:
            return
        if self.recompute != "selective":
            yield (f"{key}.recompute_modules", f"applies to {key}.recompute=selective only (recompute is "
                   f"{self.recompute!r}); remove it or set {key}.recompute=selective")
        if not modules:
            yield f"{key}.recompute_modules", f"must be a non-empty list of names or null, got {modules!r}"
        for i, name in enumerate(modules):
            if name == "layernorm":
                yield (f"{key}.recompute_modules[{i}]", "'layernorm' is not supported (megatron-core 0.16 "
                       "runs it through Transformer Engine's FP8 state, and TE fuses the norms into the "
                       f"linear layers); use {list(RECOMPUTE_MODULES)}")
            elif name not in RECOMPUTE_MODULES:
                yield (f"{key}.recompute_modules[{i}]", f"{name!r} is not a dense-model module; "
                       f"choose from {list(RECOMPUTE_MODULES)}")

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
        """Build from a mapping (e.g. a Hydra/omegaconf node), checked: :func:`config_schema.load`."""
        return load(cls, values, "policy")
