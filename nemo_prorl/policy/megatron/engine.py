"""The ProRL training engine on megatron-core: :class:`MegatronPolicy`.

One object per process; every method is collective (all ranks of the job call it together). It owns

* the policy: a megatron ``GPTModel`` stage (TP/PP-sharded) wrapped in megatron's
  ``DistributedDataParallel`` (contiguous grad buffers, DP all-reduce or reduce-scatter),
* the optimizer: ``get_megatron_optimizer`` (AdamW; optionally the ZeRO-1 ``DistributedOptimizer``),
* the reference policy: a second, frozen ``GPTModel`` instance with the same sharding and no grads
  (see :meth:`MegatronPolicy.reset_reference` for why a second instance and what it costs).

Log-probs never build the full ``[tokens, vocab]`` logits: the decoder's final hidden states are taken
before the output layer and fed, for response positions only, to
:func:`nemo_prorl.algorithms.logprobs.vocab_parallel_logprobs` together with this TP rank's shard of the
output weight.

Loss normalisation (see :mod:`nemo_prorl.policy.interface` for the ``loss_fn`` contract): megatron's
schedule normally divides each micro-batch loss by the number of micro-batches and DDP pre-scales grads
by ``1 / dp_size``. Both are switched off by setting ``TransformerConfig.calculate_per_token_loss`` and
returning a 3-tuple from the schedule's loss function, and our ``finalize_model_grads_func`` passes
``num_tokens=None`` so megatron does not divide by its own token count either. The gradient is then
exactly the gradient of the sum of the ``loss_fn`` contributions over micro-batches and DP ranks, and
the ``loss_fn`` divides by the global normalisers the engine hands it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from nemo_prorl import collectives
from nemo_prorl.algorithms.metric_reduction import engine_op
from nemo_prorl.policy import packing
from nemo_prorl.policy.interface import LossFn, TokenBatch
from nemo_prorl.policy.megatron.config import MegatronPolicyConfig
from nemo_prorl.policy.micro_batching import padding_fraction, sequence_lengths, token_budget_bins
from nemo_prorl.policy.registry import register_policy_backend

__all__ = ["MegatronPolicy"]

_log = logging.getLogger(__name__)


class _Micro(NamedTuple):
    """One micro-batch of a step.

    Attributes:
        data: the rows' tensors, ``[b, L]`` / ``[b]`` on the device, at the batch's full length ``L``
            (the ``micro`` the ``loss_fn`` sees; PP fixed-count padding rows included).
        rows: ``[b_real]`` indices of the rows in the batch (padding rows excluded), CPU int64.
        length: positions the forward runs (``<= L``): the longest row of a token-budget micro-batch,
            ``L`` for fixed-count micro-batches.
        pack: with sequence packing, where the rows sit in the one packed row the forward runs
            (:class:`~nemo_prorl.policy.packing.PackLayout`); the head sees them unpacked to
            ``[length, b, H]``. None: the forward runs ``[b, length]``.

    """

    data: dict[str, torch.Tensor]
    rows: torch.Tensor
    length: int
    pack: packing.PackLayout | None = None


def _computed_positions(micro: _Micro) -> int:
    """Positions the forward computes for ``micro``: the packed row, or ``rows x length``."""
    if micro.pack is not None:
        return micro.pack.total
    return int(micro.data["input_ids"].shape[0]) * micro.length


def _packing_mode(gpt: torch.nn.Module, setting: str) -> str:
    """``"thd"`` (TE's packed attention), ``"mask"`` (block-diagonal mask, local spec) or ``"off"``.

    ``policy.sequence_packing``: ``auto`` packs only where megatron supports it natively, i.e. when the
    layers' core attention is not the local spec's ``DotProductAttention`` (which asserts
    ``packed_seq_params is None``).
    """
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    if setting == "off":
        return "off"
    layers = getattr(gpt.decoder, "layers", None) or []
    local = any(isinstance(getattr(layer.self_attention, "core_attention", None), DotProductAttention)
                for layer in layers)
    if not local:
        return "thd"
    return "mask" if setting == "on" else "off"


def _forward_view(micro: _Micro) -> dict[str, torch.Tensor]:
    """``input_ids`` / ``response_mask`` cut to the positions the forward ran."""
    keep = micro.length
    return {k: micro.data[k][:, :keep] for k in ("input_ids", "response_mask")}


def _pad_positions(values: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """Right-pad ``[b, l]`` per-token values with zeros to ``[b, length]`` (no copy when ``l == length``)."""
    if values is None or values.shape[1] == length:
        return values
    return torch.nn.functional.pad(values, (0, length - values.shape[1]))


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The ``GPTModel`` inside megatron's DDP (or the model itself)."""
    while hasattr(model, "module") and not hasattr(model, "decoder"):
        model = model.module
    return model


def _torch_optimizers(optimizer: Any) -> list[torch.optim.Optimizer]:
    """The torch optimizers inside a megatron optimizer (chained or not)."""
    inner = getattr(optimizer, "chained_optimizers", None)
    chain = list(inner) if inner is not None else [optimizer]
    result = []
    for opt in chain:
        torch_opt = getattr(opt, "optimizer", None)
        if torch_opt is None:
            raise TypeError(f"unexpected megatron optimizer without a torch optimizer: {type(opt).__name__}")
        result.append(torch_opt)
    return result


@register_policy_backend("megatron")
class MegatronPolicy:
    """A policy trained with megatron-core; implements :class:`nemo_prorl.policy.interface.PolicyInterface`.

    Args:
        hf_model_dir: local directory of a Hugging Face causal LM (``config.json`` + weights); the
            initial policy and reference weights. Nothing is downloaded.
        config: engine settings.
        hf_config: an already-loaded ``transformers`` config (skips reading ``config.json``).

    Construction initialises torch.distributed and megatron's model-parallel groups if they do not
    exist yet (single-process when not under ``torchrun``).

    """

    def __init__(
        self,
        hf_model_dir: str | Path,
        config: MegatronPolicyConfig,
        *,
        hf_config: Any | None = None,
    ) -> None:
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        from nemo_prorl.policy.megatron import convert, parallel
        from nemo_prorl.policy.megatron.model import build_gpt_model

        if not isinstance(config, MegatronPolicyConfig):
            raise TypeError(
                f"MegatronPolicy: config must be a MegatronPolicyConfig, got {type(config).__name__}"
            )
        self.config = config
        self.hf_model_dir = Path(hf_model_dir)
        if hf_config is None:
            if not (self.hf_model_dir / "config.json").is_file():
                raise FileNotFoundError(f"MegatronPolicy: no config.json in HF model dir {self.hf_model_dir}")
            from transformers import AutoConfig

            hf_config = AutoConfig.from_pretrained(str(self.hf_model_dir), local_files_only=True)
        self.hf_config = hf_config
        self._check_divisibility()

        parallel.init_parallel(
            config.tensor_model_parallel_size, config.pipeline_model_parallel_size, seed=config.seed
        )
        self._parallel = parallel
        self.device = parallel.device()
        dtype = config.torch_dtype

        gpt = build_gpt_model(hf_config, params_dtype=dtype, **config.transformer_overrides())
        convert.load_hf_weights(gpt, str(self.hf_model_dir), hf_config)
        gpt.to(self.device)
        if getattr(gpt.config, "mtp_num_layers", None):
            raise ValueError("MegatronPolicy: multi-token-prediction models are not supported")
        # The engine's loss normalisation relies on these two (module docstring).
        gpt.config.calculate_per_token_loss = True
        self.model = gpt
        self.ddp = DistributedDataParallel(
            config=gpt.config,
            ddp_config=DistributedDataParallelConfig(
                grad_reduce_in_fp32=config.grad_reduce_in_fp32,
                overlap_grad_reduce=False,
                use_distributed_optimizer=config.use_distributed_optimizer,
                # train_step checks loss and gradients itself and skips the update (see there)
                check_for_nan_in_grad=False,
                average_in_collective=False,
            ),
            module=gpt,
        )
        self.ddp.broadcast_params()
        self._optimizer_config = OptimizerConfig(
            optimizer="adam",
            lr=config.lr,
            min_lr=config.lr,
            weight_decay=config.weight_decay,
            adam_beta1=config.adam_beta1,
            adam_beta2=config.adam_beta2,
            adam_eps=config.adam_eps,
            clip_grad=config.clip_grad,
            bf16=dtype == torch.bfloat16,
            fp16=False,
            params_dtype=dtype,
            use_distributed_optimizer=config.use_distributed_optimizer,
        )
        self._get_megatron_optimizer = get_megatron_optimizer
        self.optimizer = self._build_optimizer()
        gpt.config.no_sync_func = self.ddp.no_sync
        gpt.config.finalize_model_grads_func = self._finalize_grads

        self.ref_model = self._build_reference(build_gpt_model, dtype)
        self.reset_reference()
        #: how micro-batches run: "off" (binned padding), "thd" or "mask" packing (policy.sequence_packing)
        self.packing = _packing_mode(gpt, config.sequence_packing)
        _log.info("policy.sequence_packing=%s -> %s", config.sequence_packing, self.packing)
        self.steps_taken = 0
        #: optimizer steps since the optimizer was built or last reset (drives the lr warm-up)
        self.steps_since_optimizer_reset = 0

    # ------------------------------------------------------------------ construction helpers

    def _check_divisibility(self) -> None:
        cfg, hf = self.config, self.hf_config
        tp, pp = cfg.tensor_model_parallel_size, cfg.pipeline_model_parallel_size
        heads = getattr(hf, "num_attention_heads", None)
        kv_heads = getattr(hf, "num_key_value_heads", None) or heads
        layers = getattr(hf, "num_hidden_layers", None)
        for name, value, div in (
            ("num_attention_heads", heads, tp),
            ("num_key_value_heads", kv_heads, tp),
            ("num_hidden_layers", layers, pp),
        ):
            if value is not None and value % div != 0:
                which = (
                    "tensor_model_parallel_size"
                    if div == tp and name != "num_hidden_layers"
                    else ("pipeline_model_parallel_size")
                )
                raise ValueError(
                    f"MegatronPolicyConfig.{which}={div} does not divide the model's {name}={value} "
                    f"({self.hf_model_dir / 'config.json'})"
                )
        chunk = cfg.recompute_num_layers
        if layers is not None and chunk is not None and (layers // pp) % chunk != 0:
            raise ValueError(
                f"policy.recompute_num_layers={chunk} must divide the {layers // pp} layers per pipeline "
                f"stage (num_hidden_layers={layers} / pipeline_model_parallel_size={pp}): megatron's "
                "uniform recompute runs chunks of that many layers"
            )

    def _build_optimizer(self) -> Any:
        optimizer = self._get_megatron_optimizer(self._optimizer_config, [self.ddp])
        self.model.config.grad_scale_func = optimizer.scale_loss
        return optimizer

    def _build_reference(
        self, build_gpt_model: Callable[..., torch.nn.Module], dtype: torch.dtype
    ) -> torch.nn.Module:
        """A second GPTModel instance with the policy's sharding, frozen; weights set by reset_reference."""
        from megatron.core.tensor_parallel import get_cuda_rng_tracker

        # Building initialises random weights; keep the RNG streams as they were so the reference
        # does not perturb anything seeded after the policy was built.
        tracker = get_cuda_rng_tracker()
        cpu_state = torch.get_rng_state()
        cuda_state = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
        tracker_states = tracker.get_states()
        ref = build_gpt_model(self.hf_config, params_dtype=dtype)
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state)
        tracker.set_states(tracker_states)
        ref.config.calculate_per_token_loss = True
        for param in ref.parameters():
            param.requires_grad_(False)
        ref.eval()
        ref.to("cpu" if self.config.reference_offload_to_cpu else self.device)
        return ref

    def _finalize_grads(
        self, model: list[torch.nn.Module], num_tokens: torch.Tensor | None = None, **kwargs: Any
    ) -> None:
        """Megatron's finalize_model_grads without its per-token division (the loss_fn normalises)."""
        from megatron.core.distributed import finalize_model_grads

        finalize_model_grads(model, None, **kwargs)

    @property
    def train_forward_matches_logprobs(self) -> bool:
        """Whether :meth:`train_step`'s forward computes the same log-probs as :meth:`logprobs`.

        True when the model has no dropout (hidden and attention dropout 0), the only difference
        between megatron's training and evaluation forward here. The trainer then may take the old
        log-probs of a single-update step from the update itself
        (:func:`nemo_prorl.trainer.trainer.skip_old_logprobs`).
        """
        cfg = self.model.config
        return float(cfg.hidden_dropout) == 0.0 and float(cfg.attention_dropout) == 0.0

    # ------------------------------------------------------------------ parallel helpers

    @property
    def is_last_stage(self) -> bool:
        """Whether this rank holds the last pipeline stage (computes log-probs and the loss)."""
        return self._parallel.is_pipeline_last_stage()

    def _broadcast_from_last_stage(self, tensor: torch.Tensor) -> torch.Tensor:
        from megatron.core import parallel_state

        if self._parallel.pp_size() > 1:
            collectives.broadcast(
                tensor,
                src=parallel_state.get_pipeline_model_parallel_last_rank(),
                group=self._parallel.pp_group(),
            )
        return tensor

    def _broadcast_object_from_last_stage(self, obj: Any) -> Any:
        from megatron.core import parallel_state

        if self._parallel.pp_size() == 1:
            return obj
        return collectives.broadcast_object(
            obj, src=parallel_state.get_pipeline_model_parallel_last_rank(), group=self._parallel.pp_group()
        )

    def _dp_sum(self, values: list[float]) -> list[float]:
        if self._parallel.dp_size() == 1:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        collectives.all_reduce(t, group=self._parallel.dp_group())
        return [float(v) for v in t.tolist()]

    # ------------------------------------------------------------------ forward pieces

    def _micro_batches(
        self, batch: TokenBatch, mbs: int, *, pad: bool, tokens: int | None = None
    ) -> tuple[list[_Micro], int]:
        """Split into micro-batches on the device.

        ``tokens`` None: ``mbs`` consecutive rows each, run at the batch's length; with ``pad`` the last
        one is filled with empty rows (PP's fixed shapes). ``tokens`` set: rows binned by length under
        that budget (:func:`~nemo_prorl.policy.micro_batching.token_budget_bins`), each run at its own
        longest row; never padded with rows (PP then exchanges shapes, see :meth:`_variable_shapes`).
        """
        data = batch.as_dict()
        size = batch.batch_size
        if getattr(self, "packing", "off") != "off" and size > 0:
            return self._packed_micro_batches(batch, mbs, tokens)
        if tokens is not None and size > 0:
            lengths = sequence_lengths(batch.response_mask)
            bins = token_budget_bins(lengths, tokens)
            over = [lengths[b[0]] for b in bins if lengths[b[0]] > tokens]
            if over and not getattr(self, "_warned_over_budget", False):
                self._warned_over_budget = True
                _log.warning(
                    "%d sequence(s) of up to %d tokens exceed the micro-batch token budget %d and run alone; "
                    "raise policy.micro_batch_tokens to at least max_prompt_tokens + max_response_tokens "
                    "(warned once)", len(over), max(over), tokens,
                )
            micros = []
            for b in bins:
                rows = torch.tensor(b, dtype=torch.long)
                micro = {k: v[rows].to(self.device, non_blocking=True) for k, v in data.items()}
                micros.append(_Micro(micro, rows, lengths[b[0]]))
            return micros, len(micros)
        n = max(1, math.ceil(size / mbs))
        micros = []
        for i in range(n):
            start, stop = i * mbs, min((i + 1) * mbs, size)
            micro = {k: v[start:stop].to(self.device, non_blocking=True) for k, v in data.items()}
            rows = stop - start
            if pad and rows < mbs:
                micro = {
                    k: torch.cat([v, v.new_zeros((mbs - rows, *v.shape[1:]))], dim=0)
                    for k, v in micro.items()
                }
            micros.append(_Micro(micro, torch.arange(start, stop), batch.seq_len))
        return micros, n

    def _packed_micro_batches(
        self, batch: TokenBatch, mbs: int, tokens: int | None
    ) -> tuple[list[_Micro], int]:
        """Micro-batches for sequence packing: each one runs as a single packed row.

        ``tokens`` set: rows packed first-fit decreasing under that many positions per pack
        (:func:`~nemo_prorl.policy.packing.pack_bins`); else ``mbs`` consecutive rows per pack. The pack
        length is a multiple of the TP size under sequence parallelism (megatron splits it over TP).
        """
        data = batch.as_dict()
        lengths = sequence_lengths(batch.response_mask)
        cfg = self.model.config
        multiple = cfg.tensor_model_parallel_size if cfg.sequence_parallel else 1
        if tokens is not None:
            bins = packing.pack_bins(lengths, tokens, multiple)
            over = [lengths[b[0]] for b in bins if lengths[b[0]] > tokens]
            if over and not getattr(self, "_warned_over_budget", False):
                self._warned_over_budget = True
                _log.warning("%d sequence(s) of up to %d tokens exceed the micro-batch token budget %d and "
                             "run alone; raise policy.micro_batch_tokens to at least max_prompt_tokens + "
                             "max_response_tokens (warned once)", len(over), max(over), tokens)
        else:
            bins = [list(range(i, min(i + mbs, batch.batch_size))) for i in range(0, batch.batch_size, mbs)]
        micros = []
        for b in bins:
            rows = torch.tensor(b, dtype=torch.long)
            micro = {k: v[rows].to(self.device, non_blocking=True) for k, v in data.items()}
            layout = packing.pack_layout([lengths[i] for i in b], multiple)
            micros.append(_Micro(micro, rows, max(layout.lengths), layout))
        return micros, len(micros)

    def _variable_shapes(self, model: torch.nn.Module, micros: list[_Micro]) -> tuple[int, int]:
        """``(seq_length, micro_batch_size)`` for megatron's schedule; turns on shape exchange if they vary.

        Megatron's pipeline schedules receive activations into buffers of one fixed
        ``[seq_length, micro_batch_size, hidden]`` shape unless ``config.variable_seq_lengths`` is set,
        in which case each send is preceded by its shape (``p2p_communication.P2PCommunicator.
        _communicate_shapes``); token-budget micro-batches need that under PP.
        """
        lengths = {m.pack.total if m.pack else m.length for m in micros} or {0}
        rows = {1 if m.pack else int(m.data["input_ids"].shape[0]) for m in micros} or {0}
        varying = len(lengths) > 1 or len(rows) > 1
        _unwrap(model).config.variable_seq_lengths = varying and self._parallel.pp_size() > 1
        return max(lengths), max(rows)

    def _micro_hidden(self, model: torch.nn.Module, micro: _Micro) -> torch.Tensor:
        """Hidden states of ``micro`` on this stage: ``[length, b, H]``, or ``[pack.total, 1, H]`` packed."""
        ids = micro.data["input_ids"][:, : micro.length]
        if micro.pack is None:
            return self._hidden_states(model, ids)
        return self._hidden_states(model, packing.pack_rows(ids, micro.pack).unsqueeze(0), pack=micro.pack)

    @staticmethod
    def _head_hidden(hidden: torch.Tensor, micro: _Micro) -> torch.Tensor:
        """Last-stage hidden states in the head's ``[length, b, H]`` layout (packed rows unpacked)."""
        if micro.pack is None:
            return hidden
        return packing.unpack_rows(hidden[:, 0], micro.pack, micro.length).transpose(0, 1)

    def _hidden_states(
        self, model: torch.nn.Module, input_ids: torch.Tensor, pack: packing.PackLayout | None = None
    ) -> torch.Tensor:
        """Run this pipeline stage's part of the decoder (with the final norm on the last stage).

        Args:
            model: the GPTModel (or its DDP wrapper).
            input_ids: ``[b, L]`` token ids (used on the first stage; the others read the received
                activation that the schedule set with ``set_input_tensor``); ``[1, total]`` packed.
            pack: the packed row's layout. ``self.packing == "thd"``: megatron's ``PackedSeqParams``
                go to the rotary embedding and TE's attention. ``"mask"`` (local spec, which refuses
                them): RoPE indexed by the per-sequence positions (what ``_apply_rotary_pos_emb_thd``
                assembles) and a block-diagonal causal attention mask.

        Returns:
            ``[L, b, H]`` hidden states (megatron's sequence-first layout).

        """
        gpt = _unwrap(model)
        b, seq = input_ids.shape
        position_ids = torch.arange(seq, device=input_ids.device).unsqueeze(0).expand(b, seq)
        params, mask = None, None
        if pack is not None:
            position_ids = packing.position_ids(pack, input_ids.device).unsqueeze(0)
            if self.packing == "thd":
                params = packing.packed_seq_params(pack, input_ids.device)
            else:
                mask = packing.block_causal_mask(pack, input_ids.device)
        pre = gpt._preprocess(input_ids=input_ids, position_ids=position_ids, packed_seq_params=params)
        decoder_input, rotary_pos_emb, rotary_pos_cos, rotary_pos_sin, sequence_len_offset = pre[:5]
        if mask is not None and rotary_pos_emb is not None:
            rotary_pos_emb = rotary_pos_emb[position_ids[0]]  # [total, 1, 1, d]: restarts per sequence
        kwargs: dict[str, Any] = {}
        if len(pre) == 7 and pre[6] is not None:
            kwargs["rotary_pos_cos_sin"] = pre[6]
        if params is not None:
            kwargs["packed_seq_params"] = params
        return gpt.decoder(
            hidden_states=decoder_input,
            attention_mask=mask,  # None: causal; right padding never influences earlier positions
            rotary_pos_emb=rotary_pos_emb,
            rotary_pos_cos=rotary_pos_cos,
            rotary_pos_sin=rotary_pos_sin,
            sequence_len_offset=sequence_len_offset,
            **kwargs,
        )

    def _output_weight(self, gpt: torch.nn.Module) -> tuple[torch.Tensor, int]:
        """Return this TP rank's ``[V_local, H]`` output weight (padding rows dropped) and first vocab id."""
        if gpt.share_embeddings_and_output_weights:
            weight = gpt.shared_embedding_or_output_weight()
        else:
            weight = gpt.output_layer.weight
        rows = weight.shape[0]
        vocab_start = self._parallel.tp_rank() * rows
        true_vocab = int(getattr(self.hf_config, "vocab_size", rows * self._parallel.tp_size()))
        valid = max(0, min(rows, true_vocab - vocab_start))
        if valid < rows:
            weight = weight[:valid]
        return weight, vocab_start

    def _token_logprobs(
        self,
        gpt: torch.nn.Module,
        hidden: torch.Tensor,
        micro: Mapping[str, torch.Tensor],
        with_entropy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs ``[b, L]`` (and entropy) at response positions from last-stage hidden ``[L, b, H]``."""
        from nemo_prorl.algorithms.logprobs import vocab_parallel_logprobs

        input_ids = micro["input_ids"]
        mask = micro["response_mask"][:, 1:].bool()
        h = hidden.transpose(0, 1)[:, :-1]  # [b, L-1, H]; position t-1 predicts token t
        h_sel = h[mask]  # [T, H]
        labels = input_ids[:, 1:][mask].long()  # [T]
        weight, vocab_start = self._output_weight(gpt)
        lp, ent = vocab_parallel_logprobs(
            h_sel,
            weight,
            labels,
            vocab_start=vocab_start,
            group=self._parallel.tp_group() if self._parallel.tp_size() > 1 else None,
            chunk_size=self.config.logprob_chunk_size,
            temperature=self.config.temperature,
            with_entropy=with_entropy,
        )
        zeros = torch.zeros(mask.shape[0], 1, dtype=torch.float32, device=h.device)
        full = torch.cat(
            [zeros, h.new_zeros(mask.shape, dtype=torch.float32).masked_scatter(mask, lp.float())], 1
        )
        full_ent = None
        if with_entropy and ent is not None:
            full_ent = torch.cat(
                [zeros, h.new_zeros(mask.shape, dtype=torch.float32).masked_scatter(mask, ent.float())], 1
            )
        return full, full_ent

    def _fused_head_loss(
        self,
        gpt: torch.nn.Module,
        hidden: torch.Tensor,
        micro: _Micro,
        loss_fn: LossFn,
        norm: Mapping[str, float],
        with_entropy: bool,
        seq_len: int,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``loss_fn`` of one micro-batch through the fused LM head (``policy.lm_head: fused``).

        The head walks chunks of whole rows; ``loss_fn`` is called on each chunk's rows (its ``micro``
        sliced to them, log-probs ``[r, seq_len]`` laid out as in the chunked path) and its gradient is
        taken inside the head's forward (:func:`~nemo_prorl.algorithms.logprobs.vocab_parallel_fused_loss`).
        Equal to the chunked path because the ``loss_fn`` contract makes the loss (and the summed
        metrics) a sum over row slices; metrics ``loss_fn.metric_reductions`` declares ``max`` / ``min``
        are reduced with max / min.

        Returns:
            ``(loss, metrics)`` of the micro-batch.

        """
        from nemo_prorl.algorithms.logprobs import vocab_parallel_fused_loss

        view = _forward_view(micro)
        mask = view["response_mask"][:, 1:].bool()
        labels = view["input_ids"][:, 1:]
        h = hidden.transpose(0, 1)[:, :-1]  # [b, l-1, H]; position t-1 predicts token t
        weight, vocab_start = self._output_weight(gpt)
        rows = int(mask.shape[0])
        chunk_metrics: list[dict[str, Any]] = []

        def row_loss(r0: int, r1: int, lp: torch.Tensor, ent: torch.Tensor | None) -> torch.Tensor:
            def lay_out(v: torch.Tensor | None) -> torch.Tensor | None:
                if v is None:
                    return None
                return _pad_positions(torch.nn.functional.pad(v, (1, 0)), seq_len)

            part = {k: (v[r0:r1] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == rows else v)
                    for k, v in micro.data.items()}
            loss, metrics = loss_fn(lay_out(lp), lay_out(ent), part, norm)
            chunk_metrics.append(dict(metrics or {}))
            return loss

        loss, _, _ = vocab_parallel_fused_loss(
            h, weight, labels, mask, row_loss,
            vocab_start=vocab_start,
            group=self._parallel.tp_group() if self._parallel.tp_size() > 1 else None,
            chunk_size=self.config.logprob_chunk_size,
            temperature=self.config.temperature,
            with_entropy=with_entropy,
        )
        merged: dict[str, torch.Tensor] = {}
        for key in (chunk_metrics[0] if chunk_metrics else {}):
            vals = torch.stack([torch.as_tensor(m[key]).detach().double().reshape(()) for m in chunk_metrics])
            op = engine_op(getattr(loss_fn, "metric_reductions", {}), key)
            reduce = torch.amax if op == "max" else torch.amin if op == "min" else torch.sum
            merged[key] = reduce(vals)
        return loss, merged

    # ------------------------------------------------------------------ log-probs

    @contextlib.contextmanager
    def _reference_on_device(self) -> Iterator[torch.nn.Module]:
        ref = self.ref_model
        moved = self.config.reference_offload_to_cpu and self.device.type != "cpu"
        if moved:
            ref.to(self.device)
        try:
            yield ref
        finally:
            if moved:
                ref.to("cpu")

    @torch.no_grad()
    def logprobs(
        self, batch: TokenBatch, *, reference: bool = False, with_entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs (and entropies) of the policy or the reference policy.

        Args:
            batch: ``input_ids [B, L]``, ``response_mask [B, L]``; identical on all TP/PP ranks of
                one data-parallel replica.
            reference: use the frozen reference weights.
            with_entropy: also compute the per-token entropy.

        Returns:
            ``(logprobs [B, L], entropy [B, L] | None)`` float32 CPU tensors on every rank, zero
            outside ``response_mask``.

        """
        from megatron.core.pipeline_parallel import get_forward_backward_func

        if not isinstance(batch, TokenBatch):
            raise TypeError(
                f"MegatronPolicy.logprobs: batch must be a TokenBatch, got {type(batch).__name__}"
            )
        self._check_token_ids(batch)
        mbs = self.config.logprob_micro_batch_size or self.config.micro_batch_size
        tokens = self.config.logprob_micro_batch_tokens or self.config.micro_batch_tokens
        pipelined = self._parallel.pp_size() > 1
        micros, n = self._micro_batches(batch, mbs, pad=pipelined, tokens=tokens)

        def loss_func(gpt: torch.nn.Module, micro: _Micro, hidden: torch.Tensor) -> Any:
            hidden = self._head_hidden(hidden, micro)
            lp, ent = self._token_logprobs(gpt, hidden, _forward_view(micro), with_entropy)
            out = {"logprobs": lp}
            if ent is not None:
                out["entropy"] = ent
            return hidden.new_zeros((), dtype=torch.float32), torch.tensor(1, dtype=torch.int), out

        def forward_step(data_iterator: Iterator[_Micro], model: torch.nn.Module) -> Any:
            micro = next(data_iterator)
            hidden = self._micro_hidden(model, micro)
            return hidden, functools.partial(loss_func, _unwrap(model), micro)

        ctx = self._reference_on_device() if reference else contextlib.nullcontext(self.ddp)
        with ctx as model:
            was_training = _unwrap(model).training
            _unwrap(model).eval()
            seq_length, rows = self._variable_shapes(model, micros)
            try:
                outputs = get_forward_backward_func()(
                    forward_step_func=forward_step,
                    data_iterator=iter(micros),
                    model=[model],
                    num_microbatches=n,
                    seq_length=seq_length,
                    micro_batch_size=rows,
                    forward_only=True,
                )
            finally:
                _unwrap(model).train(was_training)

        size, seq = batch.batch_size, batch.seq_len
        lp = torch.zeros(size, seq, dtype=torch.float32, device=self.device)
        ent = torch.zeros(size, seq, dtype=torch.float32, device=self.device) if with_entropy else None
        if self.is_last_stage:  # back into the batch's row order (token-budget micro-batches are sorted)
            for micro, out in zip(micros, outputs):
                rows = micro.rows.to(self.device)
                lp[rows, : micro.length] = out["logprobs"][: rows.numel()]
                if ent is not None:
                    ent[rows, : micro.length] = out["entropy"][: rows.numel()]
        self._broadcast_from_last_stage(lp)
        if ent is not None:
            self._broadcast_from_last_stage(ent)
        return lp.cpu(), (ent.cpu() if ent is not None else None)

    def _check_token_ids(self, batch: TokenBatch) -> None:
        vocab = int(getattr(self.hf_config, "vocab_size", 0) or 0)
        if vocab and batch.input_ids.numel() and int(batch.input_ids.max()) >= vocab:
            row = int((batch.input_ids >= vocab).any(dim=1).nonzero()[0, 0])
            raise ValueError(
                f"TokenBatch.input_ids row {row} has a token id >= the model's vocab_size {vocab}"
            )

    # ------------------------------------------------------------------ training

    def train_step(
        self, batch: TokenBatch, loss_fn: LossFn, *, with_entropy: bool = False
    ) -> dict[str, float]:
        """One optimizer step over ``batch`` (this DP rank's shard).

        Splits ``batch`` into micro-batches of ``micro_batch_size`` sequences (or, with
        ``micro_batch_tokens``, rows binned by length under that token budget, each run only up to its
        longest row), runs them through megatron's forward/backward schedule (1F1B under PP), reduces
        grads over DP, clips, and steps the optimizer. See :mod:`nemo_prorl.policy.interface` for the
        ``loss_fn`` contract; the cut does not change the loss or the gradient.

        Returns:
            ``loss`` and the ``loss_fn`` metrics (summed over micro-batches and DP ranks; those
            ``loss_fn.metric_reductions`` declares ``max`` / ``min`` reduced with max / min),
            ``grad_norm`` (before clipping), ``lr``, ``num_tokens``, ``num_seqs``,
            ``perf/padding_fraction`` (share of the positions the forward computed, over all
            micro-batches and DP ranks, that lie past their row's last response token; with sequence
            packing only the pack's alignment positions, usually 0); identical on every rank.

        """
        from megatron.core.pipeline_parallel import get_forward_backward_func

        if not isinstance(batch, TokenBatch):
            raise TypeError(
                f"MegatronPolicy.train_step: batch must be a TokenBatch, got {type(batch).__name__}"
            )
        if not callable(loss_fn):
            raise TypeError("MegatronPolicy.train_step: loss_fn must be callable")
        self._check_token_ids(batch)
        mbs = self.config.micro_batch_size
        pipelined = self._parallel.pp_size() > 1
        micros, n = self._micro_batches(batch, mbs, pad=pipelined, tokens=self.config.micro_batch_tokens)
        real = float(sum(sequence_lengths(batch.response_mask)))
        computed = float(sum(_computed_positions(m) for m in micros))
        num_tokens, num_seqs, real, computed = self._dp_sum(
            [float(batch.response_mask.bool().sum()), float(batch.batch_size), real, computed]
        )
        if num_tokens <= 0:
            raise ValueError(
                "MegatronPolicy.train_step: the step batch has no response tokens on any DP rank"
            )
        norm = {"num_tokens": num_tokens, "num_seqs": num_seqs}

        def loss_func(gpt: torch.nn.Module, micro: _Micro, hidden: torch.Tensor) -> Any:
            hidden = self._head_hidden(hidden, micro)
            if self.config.lm_head == "fused":
                loss, metrics = self._fused_head_loss(gpt, hidden, micro, loss_fn, norm, with_entropy,
                                                      batch.seq_len)
            else:
                lp, ent = self._token_logprobs(gpt, hidden, _forward_view(micro), with_entropy)
                length = batch.seq_len  # the loss_fn sees [b, L] rows whatever length the forward ran
                lp, ent = _pad_positions(lp, length), _pad_positions(ent, length)
                loss, metrics = loss_fn(lp, ent, micro.data, norm)
            if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                raise TypeError(
                    f"loss_fn must return a scalar tensor as its first value, got {type(loss).__name__}"
                    + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else "")
                )
            reduced = {"loss": loss.detach().float()}
            for key, value in (metrics or {}).items():
                if key == "loss":
                    raise ValueError("loss_fn metrics may not be named 'loss' (the engine reports it)")
                reduced[key] = torch.as_tensor(value).detach().float().reshape(())
            return loss, torch.tensor(1, dtype=torch.int), reduced

        def forward_step(data_iterator: Iterator[_Micro], model: torch.nn.Module) -> Any:
            micro = next(data_iterator)
            hidden = self._micro_hidden(model, micro)
            return hidden, functools.partial(loss_func, _unwrap(model), micro)

        self.model.train()
        self.ddp.zero_grad_buffer()
        self.optimizer.zero_grad()
        seq_length, rows = self._variable_shapes(self.ddp, micros)
        outputs = get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter(micros),
            model=[self.ddp],
            num_microbatches=n,
            seq_length=seq_length,
            micro_batch_size=rows,
            forward_only=False,
        )
        metrics: dict[str, float] = {}
        if self.is_last_stage:
            metrics = self._reduce_metrics(outputs, getattr(loss_fn, "metric_reductions", {}))
        metrics = self._broadcast_object_from_last_stage(metrics)
        metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
        metrics["num_tokens"] = num_tokens
        metrics["num_seqs"] = num_seqs
        metrics["perf/padding_fraction"] = padding_fraction(real, computed)
        # A non-finite loss or gradient on any rank skips the update everywhere: the weights and the
        # optimizer state stay as they were, so no NaN ever reaches a checkpoint.
        if not self._all_finite(metrics["loss"]):
            self.ddp.zero_grad_buffer()
            self.optimizer.zero_grad()
            metrics.update(grad_norm=float("nan"), skipped_nonfinite=1.0)
            return metrics
        self._set_lr(self.current_lr(self.steps_since_optimizer_reset + 1))
        update_ok, grad_norm, _ = self.optimizer.step()
        if not update_ok:
            raise FloatingPointError(
                f"MegatronPolicy.train_step: optimizer step {self.steps_taken + 1} skipped"
            )
        self.steps_taken += 1
        self.steps_since_optimizer_reset += 1
        metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
        metrics["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        metrics["skipped_nonfinite"] = 0.0
        return metrics

    def _all_finite(self, loss: float) -> bool:
        """Whether the loss and every local gradient are finite on every rank (collective)."""
        import torch.distributed as dist

        bad = 0.0 if math.isfinite(loss) else 1.0
        if not bad:
            for param in self.ddp.module.parameters():
                grad = getattr(param, "main_grad", None)
                grad = param.grad if grad is None else grad
                if grad is not None and not bool(torch.isfinite(grad).all()):
                    bad = 1.0
                    break
        flag = torch.tensor([bad], dtype=torch.float32, device=self.device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            collectives.all_reduce(flag, op=collectives.ReduceOp.MAX)
        return float(flag.item()) == 0.0

    def _reduce_metrics(
        self, outputs: list[dict[str, torch.Tensor]], declared: Mapping[str, str]
    ) -> dict[str, float]:
        """Sum / max / min each metric over micro-batches and DP ranks as ``declared`` (default: sum)."""
        keys = sorted(outputs[0]) if outputs else ["loss"]
        sums = [k for k in keys if engine_op(declared, k) == "sum"]
        local = {k: torch.stack([o[k] for o in outputs]) for k in keys}
        result: dict[str, float] = {}
        summed = self._dp_sum([float(local[k].double().sum()) for k in sums])
        result.update(zip(sums, summed))
        for k in keys:
            if k in result:
                continue
            is_max = engine_op(declared, k) == "max"
            value = torch.tensor(
                float(local[k].max() if is_max else local[k].min()), dtype=torch.float64, device=self.device
            )
            if self._parallel.dp_size() > 1:
                op = collectives.ReduceOp.MAX if is_max else collectives.ReduceOp.MIN
                collectives.all_reduce(value, op=op, group=self._parallel.dp_group())
            result[k] = float(value)
        return result

    # ------------------------------------------------------------------ ProRL resets

    @torch.no_grad()
    def reset_reference(self) -> None:
        """Reference := current policy weights.

        The reference is a second ``GPTModel`` instance (not a parameter swap inside the DDP model):
        DDP's parameters are views into its contiguous buffers, and the distributed optimizer keeps its
        own fp32 master copies, so swapping tensors in and out of the policy would have to respect both;
        a separate frozen module does not touch either and can simply be moved to CPU. Memory cost: one
        extra copy of this rank's weights in ``params_dtype`` (no grads, no optimizer state), on the
        device, or in host memory with ``reference_offload_to_cpu``.
        """
        policy_params = dict(self.model.named_parameters())
        ref_params = dict(self.ref_model.named_parameters())
        if policy_params.keys() != ref_params.keys():
            missing = sorted(set(policy_params) ^ set(ref_params))[:5]
            raise RuntimeError(f"reference and policy models differ in parameters: {missing}")
        for name, param in policy_params.items():
            ref_params[name].copy_(param.detach())

    def current_lr(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (1-based, counted from the last optimizer reset)."""
        warm = self.config.lr_warmup_steps
        if warm and step < warm:
            return self.config.lr * max(step, 1) / warm
        return self.config.lr

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def reset_optimizer(self) -> None:
        """Restart Adam in place (ProRL's hard optimizer reset): the next update equals a fresh optimizer's.

        For every torch optimizer inside megatron's (chained, float16, distributed) optimizer,
        :func:`nemo_prorl.policy.megatron.optim_reset.restart_adam` zeroes the moments and restarts the
        step counters that drive Adam's bias corrections, per parameter (torch Adam/AdamW) and per
        param group (Transformer Engine's ``FusedAdam``, what megatron-core builds on GPU), in place, so
        tensor shapes, DP shards and checkpoints are unaffected. Master weights are not state to reset:
        megatron's fp32 copies and TE's ``master_param`` (the precision-aware optimizer) are kept. The
        lr warm-up starts again.
        """
        from nemo_prorl.policy.megatron.optim_reset import restart_adam

        done = [restart_adam(torch_opt) for torch_opt in _torch_optimizers(self.optimizer)]
        _log.info(
            "reset_optimizer: %d moment tensors zeroed, %d step counters restarted, %d master weights kept",
            *(sum(getattr(d, f) for d in done) for f in ("moments", "step_counters", "master_weights_kept")),
        )
        self.steps_since_optimizer_reset = 0  # the lr warm-up starts again

    # ------------------------------------------------------------------ weights and checkpoints

    def export_hf_state_dict(self) -> dict[str, torch.Tensor]:
        """Full HF-named weights of the current policy, gathered over TP and PP, on every rank."""
        from nemo_prorl.policy.megatron import convert

        return convert.export_hf_state_dict(self.model, self.hf_config)

    def iter_hf_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The same weights as a lazy stream for the rollout sync (collective: every rank exhausts it).

        See :func:`nemo_prorl.policy.megatron.convert.iter_hf_weights`: gathered tensor by tensor on the
        device, never a full host copy of the model.
        """
        from nemo_prorl.policy.megatron import convert

        return convert.iter_hf_weights(self.model, self.hf_config)

    def export_hf_checkpoint(self, directory: str | Path, *, tokenizer_dir: str | Path | None = None) -> Path:
        """Write the current policy as an HF checkpoint into ``directory`` (collective; global rank 0 writes).

        The weights are gathered on every rank; rank 0 writes them (safetensors + config, and the tokenizer
        files of ``tokenizer_dir``) into ``<directory>.tmp`` and renames it over ``directory``.
        """
        import os
        import shutil

        from nemo_prorl.policy.megatron import convert

        state = self.export_hf_state_dict()  # collective
        out = Path(directory)
        if not collectives.is_active() or torch.distributed.get_rank() == 0:
            tmp = out.with_name(out.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            convert.save_hf_checkpoint(state, self.hf_config, tmp, tokenizer_dir=tokenizer_dir)
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
        return out

    @property
    def dp_rank(self) -> int:
        """The data-parallel rank of this process (megatron's DP group)."""
        return self._parallel.dp_rank()

    @property
    def dp_size(self) -> int:
        """The number of data-parallel ranks."""
        return self._parallel.dp_size()

    def gather_data_parallel(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every DP rank's ``[b, ...]`` rows concatenated in rank order (collective over the DP group)."""
        # the policy's tensors are on the CPU: the helper stages them on the group's device (NCCL: the GPU)
        return collectives.all_gather_cat(tensor, 0, group=self._parallel.dp_group())

    def set_temperature(self, temperature: float) -> None:
        """Log-probs and training use the distribution at ``temperature`` (the trainer's rollout one)."""
        self.config.temperature = float(temperature)

    def save_checkpoint(self, directory: str | Path, extra_state: Mapping[str, Any]) -> Path:
        """Write a checkpoint atomically (:func:`nemo_prorl.policy.megatron.checkpoint.save_checkpoint`)."""
        from nemo_prorl.policy.megatron import checkpoint

        return checkpoint.save_checkpoint(self, directory, extra_state)

    def load_checkpoint(self, directory: str | Path, *, load_optimizer: bool = True) -> dict[str, Any]:
        """Restore a checkpoint; see :func:`nemo_prorl.policy.megatron.checkpoint.load_checkpoint`."""
        from nemo_prorl.policy.megatron import checkpoint

        return checkpoint.load_checkpoint(self, directory, load_optimizer=load_optimizer)

    def load_policy_weights(self, directory: str | Path, *, into_policy: bool = False) -> None:
        """Reference (and the policy) := a checkpoint's policy weights (the reset to the best policy).

        See :func:`nemo_prorl.policy.megatron.checkpoint.load_policy_weights`.
        """
        from nemo_prorl.policy.megatron import checkpoint

        checkpoint.load_policy_weights(self, directory, into_policy=into_policy)
