"""Per-rank GPU memory of a recipe, from the model's architecture numbers alone (the dry run's plan).

All sizes are bytes; ``GB`` is 1e9 bytes (as in docs/scaling.md). Notation: ``N`` parameters, ``l`` layers,
``h`` hidden, ``a`` attention heads, ``kvd = kv_heads * head_dim``, ``I`` MLP intermediate size, ``s``
sequence length, ``b`` micro-batch (sequences), ``t`` tensor-, ``p`` pipeline-, ``d`` data-parallel size.

**Static training state** (Megatron mixed precision, docs/scaling.md section 2)::

    weights     N / (t p) * param_bytes            (2 for bf16)
    gradients   N / (t p) * grad_bytes             (4: fp32 gradient buffers, grad_reduce_in_fp32)
    optimizer   N / (t p) * (8 + 4 master) / d     (fp32 Adam m, v and, for 16-bit params, fp32 master
                                                    weights; / d with the distributed optimizer only)
    reference   N / (t p) * param_bytes            (0 when offloaded to host memory)

**Activations per layer** (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
Transformer Models", Sec. 4.1; 16-bit activations). For a GPT layer (MHA, a 4h GELU MLP, dropout)::

    s b h (34 + 5 a s / h)      = norms 4sbh + attention 11sbh + 5as^2b + MLP 19sbh

:func:`activation_bytes_per_layer` counts the same tensors for the architecture at hand, so that it
reproduces the formula above for a GPT layer and gives docs/scaling.md's SwiGLU/GQA numbers for Qwen2:

    norm inputs                       4 s b h
    attention: QKV input, Q, K, V,    2sbh + 2sbh + 4 s b kvd + 2sbh   (+ sbh dropout mask)
      output-projection input
    attention scores (unfused)        5 a s^2 b with dropout (softmax 2, mask 1, its output 2), else 2 a s^2 b
    MLP, gated (SwiGLU)               2sbh + 8 s b I  (input; gate, up, silu(gate), silu(gate)*up)
    MLP, plain                        2sbh + 4 s b I  (input; activation input, fc2 input) (+ sbh mask)

Recompute modes are the engine's ``policy.recompute``: ``none`` keeps everything; ``selective``
recomputes the submodules named in ``policy.recompute_modules`` in backward (``mlp`` drops the MLP's
``8 s b I`` internals, ``core_attn`` drops the ``s x s`` scores); ``full`` keeps each layer's input ``2sbh``
and recomputes one layer at a time in backward, holding that layer's activations. The ``s x s`` scores
exist only with unfused attention (megatron's local layer spec, ``unfused_attention=True``); Transformer
Engine's fused attention, the engine's spec on GPU, stores none (the default here). Korthikanti's own
"selective" is ``recompute_modules=("core_attn",)`` on unfused attention. Tensor parallelism without
sequence parallelism (how nemo_prorl builds the model) splits everything but the norm inputs, the QKV/MLP
inputs and the dropout masks (``10 sbh`` of Korthikanti's 34) over ``t``. A 1F1B pipeline keeps
``min(p, micro-batches)`` micro-batches in flight on its first stage, each of ``l / p`` layers.

**Micro-batch rows**: with a token budget ``T`` (``policy.micro_batch_tokens``) a micro-batch of sequences
padded to ``s`` holds ``max(1, T // s)`` rows; without one, ``policy.micro_batch_size`` rows. With sequence
packing (``policy.sequence_packing``; on with TE by default) a micro-batch is one packed row of up to
``max(T, s)`` tokens of any mix of lengths: planned as one sequence of that length (``b = 1``), which is
exact for the linear terms and, with the local spec's block-diagonal mask, for the ``s x s`` scores too.

**Log-prob head**: chunked over tokens, ``chunk * V / t`` fp32 logits and their gradient (8 bytes each).

**vLLM** (colocated): weights ``N * bytes / rollout_tp``; KV cache ``2 * l * kv_heads * head_dim * bytes``
per token (K and V of every layer; heads split over the rollout TP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nemo_prorl.trainer.preflight import ModelArch

GB = 1e9
RECOMPUTE_MODES = ("none", "selective", "full")


# --------------------------------------------------------------------------------- static state
def weight_bytes(num_params: int, tp: int = 1, pp: int = 1, param_bytes: int = 2) -> float:
    """``N / (t p) * param_bytes``: this rank's model weights."""
    return num_params / (tp * pp) * param_bytes


def gradient_bytes(num_params: int, tp: int = 1, pp: int = 1, grad_bytes: int = 4) -> float:
    """``N / (t p) * grad_bytes``: Megatron's contiguous gradient buffers (fp32 with grad_reduce_in_fp32)."""
    return num_params / (tp * pp) * grad_bytes


def optimizer_bytes(num_params: int, tp: int = 1, pp: int = 1, dp: int = 1, *, master_weights: bool = True,
                    distributed: bool = True) -> float:
    """Adam's fp32 ``m`` and ``v`` (8 B/param) + fp32 master weights (4 B/param, 16-bit params only).

    Sharded over the ``dp`` data-parallel ranks by the distributed optimizer (ZeRO-1), replicated without it.
    """
    per_param = 8 + (4 if master_weights else 0)
    return num_params / (tp * pp) * per_param / (dp if distributed else 1)


# ---------------------------------------------------------------------------------- activations
def activation_bytes_per_layer(arch: ModelArch, seq: int, micro_batch: int, *, recompute: str = "none",
                               tp: int = 1, dropout: bool = False, act_bytes: int = 2,
                               unfused_attention: bool = False,
                               recompute_modules: tuple[str, ...] = ("mlp",)) -> float:
    """Activation memory one transformer layer keeps for backward, for ``micro_batch`` sequences of ``seq``.

    See the module docstring for the terms. ``act_bytes`` scales the 16-bit formula (2) to other widths.

    Args:
        arch: the model.
        seq: tokens per sequence ``s`` (padded length of the micro-batch).
        micro_batch: sequences ``b``.
        recompute: ``none``, ``selective`` or ``full`` (``policy.recompute``).
        tp: tensor-parallel size (no sequence parallelism).
        dropout: count dropout masks (Korthikanti's GPT; Qwen2 fine-tuning has none).
        act_bytes: bytes per activation element (2 for bf16).
        unfused_attention: the attention stores its ``s x s`` scores (megatron's local spec).
        recompute_modules: what ``selective`` recomputes (``policy.recompute_modules``).

    """
    if recompute not in RECOMPUTE_MODES:
        raise ValueError(f"recompute must be one of {RECOMPUTE_MODES}, got {recompute!r}")
    s, b, h, a = seq, micro_batch, arch.hidden_size, arch.num_heads
    kvd, ffn = arch.kv_dim, arch.ffn_hidden_size
    scale = act_bytes / 2
    if recompute == "full":
        return 2 * s * b * h * scale  # the layer's input only (sequence parallelism would split it)
    selective = set(recompute_modules) if recompute == "selective" else set()
    replicated = 4 * s * b * h + 2 * s * b * h + 2 * s * b * h  # norm inputs, QKV input, MLP input
    split = 2 * s * b * h + 4 * s * b * kvd + 2 * s * b * h  # Q, K and V, output-projection input
    if "mlp" not in selective:
        split += (8 if arch.gated_mlp else 4) * s * b * ffn
    if dropout:
        replicated += 2 * s * b * h  # attention and MLP output dropout masks
    if unfused_attention and "core_attn" not in selective:
        split += (5 if dropout else 2) * a * s * s * b
    return (replicated + split / tp) * scale


def layers_in_flight(num_layers: int, pp: int, num_micro_batches: int) -> float:
    """Layers' worth of activations the busiest (first) pipeline stage holds under 1F1B."""
    if pp == 1:
        return float(num_layers)
    return num_layers / pp * min(pp, num_micro_batches)


def activation_bytes(arch: ModelArch, seq: int, micro_batch: int, *, recompute: str = "none", tp: int = 1,
                     pp: int = 1, num_micro_batches: int = 1, dropout: bool = False,
                     unfused_attention: bool = False, recompute_modules: tuple[str, ...] = ("mlp",)) -> float:
    """Activations of a rank's backward: layers in flight x per layer; ``full`` adds one layer's working set.

    Returns:
        Bytes.

    """
    kw = dict(tp=tp, dropout=dropout, unfused_attention=unfused_attention,
              recompute_modules=recompute_modules)
    layers = layers_in_flight(arch.num_layers, pp, num_micro_batches)
    total = layers * activation_bytes_per_layer(arch, seq, micro_batch, recompute=recompute, **kw)
    if recompute == "full":  # the layer being recomputed holds all its activations during its backward
        total += activation_bytes_per_layer(arch, seq, micro_batch, recompute="none", **kw)
    return total


def logprob_head_bytes(vocab_size: int, chunk_tokens: int, tp: int = 1) -> float:
    """The chunked log-prob head: one ``[chunk, V / t]`` fp32 logits tile and its gradient."""
    return chunk_tokens * vocab_size / tp * 4 * 2


# ----------------------------------------------------------------------------------------- vLLM
def kv_cache_bytes_per_token(arch: ModelArch, kv_bytes: int = 2, rollout_tp: int = 1) -> float:
    """``2 * l * kv_heads * head_dim * bytes`` (K and V of every layer), split over the rollout TP."""
    heads = arch.num_kv_heads / min(rollout_tp, arch.num_kv_heads)
    return 2 * arch.num_layers * heads * arch.head_dim * kv_bytes


def kv_cache_bytes(arch: ModelArch, tokens: int, kv_bytes: int = 2, rollout_tp: int = 1) -> float:
    """KV cache for ``tokens`` resident tokens."""
    return tokens * kv_cache_bytes_per_token(arch, kv_bytes, rollout_tp)


# ----------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class Layout:
    """How the job is split and stored.

    Attributes:
        tp, pp, dp: parallel sizes of training.
        param_bytes: bytes per weight (2 for bf16, 4 for fp32).
        grad_bytes: bytes per gradient element (4 with grad_reduce_in_fp32).
        distributed_optimizer: optimizer state sharded over ``dp``.
        reference_on_gpu: the reference policy stays on the GPU.
        micro_batch: sequences per training micro-batch (``policy.micro_batch_size``).
        micro_batch_tokens: the token budget of a micro-batch (``policy.micro_batch_tokens``) or None.
        packed: micro-batches are packed rows (``policy.sequence_packing``); matters only with a budget.
        unfused_attention: attention stores its ``s x s`` scores (local spec; False with TE).
        recompute_modules: what selective recompute recomputes.
        logprob_chunk: tokens per chunk of the log-prob head.
        rollout_tp: vLLM tensor-parallel size.
        rollout_bytes: bytes per vLLM weight / KV element.
        gpu_memory_utilization: the GPU fraction vLLM reserves.

    """

    tp: int = 1
    pp: int = 1
    dp: int = 1
    param_bytes: int = 2
    grad_bytes: int = 4
    distributed_optimizer: bool = True
    reference_on_gpu: bool = True
    micro_batch: int = 1
    micro_batch_tokens: int | None = None
    packed: bool = False
    unfused_attention: bool = False
    recompute_modules: tuple[str, ...] = ("mlp",)
    logprob_chunk: int = 1024
    rollout_tp: int = 1
    rollout_bytes: int = 2
    gpu_memory_utilization: float = 0.5


@dataclass(frozen=True)
class StaticMemory:
    """Per-rank bytes of the training state that stays resident."""

    weights: float
    gradients: float
    optimizer: float
    reference: float

    @property
    def total(self) -> float:
        """Sum of the four."""
        return self.weights + self.gradients + self.optimizer + self.reference


def static_memory(arch: ModelArch, layout: Layout) -> StaticMemory:
    """Weights, gradients, optimizer and reference of one rank."""
    n, t, p = arch.num_params, layout.tp, layout.pp
    return StaticMemory(
        weights=weight_bytes(n, t, p, layout.param_bytes),
        gradients=gradient_bytes(n, t, p, layout.grad_bytes),
        optimizer=optimizer_bytes(n, t, p, layout.dp, master_weights=layout.param_bytes < 4,
                                  distributed=layout.distributed_optimizer),
        reference=weight_bytes(n, t, p, layout.param_bytes) if layout.reference_on_gpu else 0.0,
    )


@dataclass(frozen=True)
class PhaseMemory:
    """Per-rank peaks of one phase.

    Attributes:
        seq: tokens per training sequence (prompt + response limit: micro-batches are padded to it).
        micro_batch: sequences in the largest micro-batch (1 with packing: one packed row).
        activations: recompute mode -> activation bytes.
        head: log-prob head bytes.
        train_peak: recompute mode -> static + activations + head.
        vllm_weights: vLLM weight bytes.
        kv_needed: KV cache for all the rank's sequences of a round at full length.
        kv_one_sequence: KV cache of one sequence at full length (vLLM's minimum).
        kv_available: ``gpu_memory_utilization * GPU - vLLM weights``.
        generation_peak: static + the vLLM reservation.

    """

    seq: int
    micro_batch: int
    activations: dict[str, float]
    head: float
    train_peak: dict[str, float]
    vllm_weights: float
    kv_needed: float
    kv_one_sequence: float
    kv_available: float
    generation_peak: float


def phase_memory(arch: ModelArch, layout: Layout, static: StaticMemory, *, seq: int, seqs_per_update: int,
                 seqs_per_round: int, gpu_bytes: float) -> PhaseMemory:
    """The peaks of one phase.

    Args:
        arch: the model.
        layout: the job's layout.
        static: from :func:`static_memory`.
        seq: prompt + response limit of the phase.
        seqs_per_update: sequences one rank trains per optimizer update (mini-batch / dp).
        seqs_per_round: sequences one vLLM replica generates per dynamic-sampling round.
        gpu_bytes: the GPU's memory.

    """
    rows = max(1, layout.micro_batch_tokens // seq) if layout.micro_batch_tokens else layout.micro_batch
    mb = max(1, min(rows, seqs_per_update))
    n_micro = math.ceil(seqs_per_update / mb)
    act_seq = seq
    if layout.packed and layout.micro_batch_tokens:  # one packed row of up to max(T, seq) tokens
        act_seq = min(max(layout.micro_batch_tokens, seq), seqs_per_update * seq)
        n_micro, mb = math.ceil(seqs_per_update * seq / act_seq), 1
    acts = {mode: activation_bytes(arch, act_seq, mb, recompute=mode, tp=layout.tp, pp=layout.pp,
                                   num_micro_batches=n_micro, unfused_attention=layout.unfused_attention,
                                   recompute_modules=layout.recompute_modules)
            for mode in RECOMPUTE_MODES}
    head = logprob_head_bytes(arch.vocab_size, min(layout.logprob_chunk, act_seq * mb), layout.tp)
    vllm_w = weight_bytes(arch.num_params, layout.rollout_tp, 1, layout.rollout_bytes)
    reserve = layout.gpu_memory_utilization * gpu_bytes
    return PhaseMemory(
        seq=seq, micro_batch=mb, activations=acts, head=head,
        train_peak={m: static.total + a + head for m, a in acts.items()},
        vllm_weights=vllm_w,
        kv_needed=kv_cache_bytes(arch, seqs_per_round * seq, layout.rollout_bytes, layout.rollout_tp),
        kv_one_sequence=kv_cache_bytes(arch, seq, layout.rollout_bytes, layout.rollout_tp),
        kv_available=reserve - vllm_w,
        generation_peak=static.total + reserve,
    )
