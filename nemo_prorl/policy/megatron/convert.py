"""HF <-> megatron-core weights for Qwen2 / Llama ``GPTModel`` (TP/PP aware), and Megatron checkpoints.

Name and layout map (HF ``model.layers.{i}`` -> Megatron ``decoder.layers.{i - stage offset}``):

=====================================================  ================================================
HF                                                     megatron-core (local spec / TE spec)
=====================================================  ================================================
``model.embed_tokens.weight`` [V, H]                   ``embedding.word_embeddings.weight``
                                                       [Vp/TP, H]: zero-padded to Vp, split on rows
``lm_head.weight`` [V, H] (absent when tied)           ``output_layer.weight`` [Vp/TP, H], same
``model.norm.weight``                                  ``decoder.final_layernorm.weight``
``input_layernorm.weight``                             ``input_layernorm.weight`` /
                                                       ``self_attention.linear_qkv.layer_norm_weight``
``self_attn.{q,k,v}_proj.{weight,bias}``               ``self_attention.linear_qkv.{weight,bias}``:
                                                       per query group g, rows [q heads of g; k_g; v_g];
                                                       TP ranks hold contiguous query groups
``self_attn.o_proj.weight`` [H, nh*hd]                 ``self_attention.linear_proj.weight``, cols split
``post_attention_layernorm.weight``                    ``pre_mlp_layernorm.weight`` /
                                                       ``mlp.linear_fc1.layer_norm_weight``
``mlp.gate_proj.weight``, ``mlp.up_proj.weight``       ``mlp.linear_fc1.weight``: rank r holds
                                                       [gate rows of r; up rows of r]
``mlp.down_proj.weight`` [H, F]                        ``mlp.linear_fc2.weight``, cols split
=====================================================  ================================================

Entry points:

* :func:`load_hf_weights` -- each rank copies its own shard from an HF state dict or directory
  (safetensors only; ``*.bin`` pickles are refused).
* :func:`export_hf_state_dict` -- full HF tensors (padding removed), gathered over TP *and* PP,
  returned on **every** rank (CPU tensors). Collective: every rank must call it.
* :func:`save_hf_checkpoint` -- ``model.safetensors`` + ``config.json`` (+ tokenizer files);
  call on one rank.
* :func:`save_megatron_weights` / :func:`load_megatron_weights` -- megatron ``dist_checkpointing``
  of ``model.sharded_state_dict()``, loadable at a different TP/PP. Collective.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from nemo_prorl import collectives

__all__ = [
    "ConversionError",
    "fuse_qkv",
    "split_qkv",
    "read_hf_state_dict",
    "load_hf_weights",
    "export_hf_state_dict",
    "save_hf_checkpoint",
    "save_megatron_weights",
    "load_megatron_weights",
    "TOKENIZER_FILES",
]

_log = logging.getLogger(__name__)

TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


class ConversionError(ValueError):
    """A checkpoint does not match the model/config (missing tensor, wrong shape, pickle file...)."""


# ----------------------------------------------------------------------------------------------
# pure layout helpers


def fuse_qkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, num_groups: int, head_dim: int
) -> torch.Tensor:
    """Interleave HF q/k/v projections into megatron's fused ``linear_qkv`` layout.

    Args:
        q: ``[num_heads * head_dim, *rest]`` (weight ``rest = [H]``, bias ``rest = []``).
        k: ``[num_groups * head_dim, *rest]``.
        v: ``[num_groups * head_dim, *rest]``.
        num_heads: attention heads; num_groups: KV heads (query groups); head_dim: per-head size.

    Returns:
        ``[num_groups * (num_heads // num_groups + 2) * head_dim, *rest]``: for each group g the
        rows of its ``num_heads // num_groups`` query heads, then k_g, then v_g.

    """
    rest = q.shape[1:]
    per = num_heads // num_groups
    qg = q.reshape(num_groups, per * head_dim, *rest)
    kg = k.reshape(num_groups, head_dim, *rest)
    vg = v.reshape(num_groups, head_dim, *rest)
    return torch.cat([qg, kg, vg], dim=1).reshape(num_groups * (per + 2) * head_dim, *rest)


def split_qkv(
    fused: torch.Tensor, num_heads: int, num_groups: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`fuse_qkv`: ``[ng * (nh/ng + 2) * hd, *rest]`` -> (q, k, v)."""
    rest = fused.shape[1:]
    per = num_heads // num_groups
    grouped = fused.reshape(num_groups, (per + 2) * head_dim, *rest)
    q, k, v = torch.split(grouped, [per * head_dim, head_dim, head_dim], dim=1)
    return (
        q.reshape(num_heads * head_dim, *rest).contiguous(),
        k.reshape(num_groups * head_dim, *rest).contiguous(),
        v.reshape(num_groups * head_dim, *rest).contiguous(),
    )


# ----------------------------------------------------------------------------------------------
# reading HF checkpoints


class _HFSource:
    """Lazy access to HF tensors in a dict or a directory of safetensors files."""

    def __init__(self, source: Mapping[str, torch.Tensor] | str | Path) -> None:
        self._dict: Mapping[str, torch.Tensor] | None = None
        self._files: dict[str, Path] = {}
        if isinstance(source, Mapping):
            self._dict = source
            self.where = "the given state dict"
            return
        root = Path(source)
        self.where = str(root)
        if not root.is_dir():
            raise ConversionError(f"{root}: not a directory")
        index = root / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as err:
                raise ConversionError(f"{index}: unreadable safetensors index ({err})") from err
            self._files = {name: root / fname for name, fname in weight_map.items()}
        else:
            files = sorted(root.glob("*.safetensors"))
            if not files:
                pickles = sorted(p.name for pat in ("*.bin", "*.pt", "*.pth") for p in root.glob(pat))
                hint = (
                    f" (found {', '.join(pickles)}: pickle checkpoints are not loaded; convert them to "
                    "safetensors with a trusted tool first)"
                    if pickles
                    else ""
                )
                raise ConversionError(f"{root}: no *.safetensors weights{hint}")
            from safetensors import safe_open

            for path in files:
                with safe_open(str(path), framework="pt") as handle:
                    for name in handle.keys():
                        self._files[name] = path
        self._handles: dict[Path, Any] = {}

    def keys(self) -> list[str]:
        return list(self._dict.keys()) if self._dict is not None else list(self._files)

    def __contains__(self, name: str) -> bool:
        return name in (self._dict if self._dict is not None else self._files)

    def get(self, name: str) -> torch.Tensor:
        if self._dict is not None:
            if name not in self._dict:
                raise ConversionError(f"{self.where}: missing tensor {name!r}")
            return self._dict[name]
        if name not in self._files:
            raise ConversionError(f"{self.where}: missing tensor {name!r}")
        path = self._files[name]
        if path not in self._handles:
            from safetensors import safe_open

            try:
                self._handles[path] = safe_open(str(path), framework="pt")
            except Exception as err:  # corrupted / missing shard
                raise ConversionError(f"{path}: cannot open safetensors file ({err})") from err
        return self._handles[path].get_tensor(name)

    def file_of(self, name: str) -> str:
        return str(self._files.get(name, self.where))


def read_hf_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read every tensor of an HF safetensors checkpoint directory (single file or sharded)."""
    src = _HFSource(path)
    return {name: src.get(name) for name in src.keys()}


# ----------------------------------------------------------------------------------------------
# the mapping


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP / Float16Module wrappers (both keep the real model in ``.module``)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


class _Dims:
    def __init__(self, hf_config: Any) -> None:
        self.heads = int(_get(hf_config, "num_attention_heads"))
        self.groups = int(_get(hf_config, "num_key_value_heads", self.heads) or self.heads)
        self.hidden = int(_get(hf_config, "hidden_size"))
        self.head_dim = int(_get(hf_config, "head_dim") or self.hidden // self.heads)
        self.ffn = int(_get(hf_config, "intermediate_size"))
        self.vocab = int(_get(hf_config, "vocab_size"))
        self.tied = bool(_get(hf_config, "tie_word_embeddings", False))
        self.qkv_bias = _get(hf_config, "model_type") == "qwen2"


def _tp() -> tuple[int, int, Any]:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        return (
            int(parallel_state.get_tensor_model_parallel_rank()),
            int(parallel_state.get_tensor_model_parallel_world_size()),
            parallel_state.get_tensor_model_parallel_group(),
        )
    return 0, 1, None


# kinds: vocab (row split + pad), copy (replicated), qkv (fused, row split), fc1 (gate|up, row split),
# row (column split: linear_proj, linear_fc2)
_LAYER_SUFFIXES: dict[str, tuple[str, tuple[str, ...]]] = {
    "input_layernorm.weight": ("copy", ("input_layernorm.weight",)),
    "self_attention.linear_qkv.layer_norm_weight": ("copy", ("input_layernorm.weight",)),
    "self_attention.linear_qkv.weight": (
        "qkv",
        ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    ),
    "self_attention.linear_qkv.bias": (
        "qkv",
        ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
    ),
    "self_attention.linear_proj.weight": ("row", ("self_attn.o_proj.weight",)),
    "pre_mlp_layernorm.weight": ("copy", ("post_attention_layernorm.weight",)),
    "mlp.linear_fc1.layer_norm_weight": ("copy", ("post_attention_layernorm.weight",)),
    "mlp.linear_fc1.weight": ("fc1", ("mlp.gate_proj.weight", "mlp.up_proj.weight")),
    "mlp.linear_fc2.weight": ("row", ("mlp.down_proj.weight",)),
}


def _plan(
    model: torch.nn.Module, dims: _Dims
) -> Iterator[tuple[str, torch.nn.Parameter, str, tuple[str, ...]]]:
    """Yield ``(megatron name, parameter, kind, hf names)`` for every parameter of this stage."""
    layer_numbers: dict[str, int] = {}
    decoder = getattr(model, "decoder", None)
    if decoder is not None:
        for local_idx, layer in enumerate(decoder.layers):
            layer_numbers[str(local_idx)] = int(layer.layer_number) - 1  # global, 0-based
    for name, param in model.named_parameters():
        if name == "embedding.word_embeddings.weight":
            yield name, param, "vocab", ("model.embed_tokens.weight",)
        elif name == "output_layer.weight":
            # Tied models keep a copy of the embedding on the last stage when PP > 1.
            src = "model.embed_tokens.weight" if dims.tied else "lm_head.weight"
            yield name, param, "vocab", (src,)
        elif name == "decoder.final_layernorm.weight":
            yield name, param, "copy", ("model.norm.weight",)
        elif name.startswith("decoder.layers."):
            local_idx, suffix = name[len("decoder.layers.") :].split(".", 1)
            if suffix not in _LAYER_SUFFIXES:
                raise ConversionError(f"no HF mapping for megatron parameter {name!r}")
            kind, hf_suffixes = _LAYER_SUFFIXES[suffix]
            prefix = f"model.layers.{layer_numbers[local_idx]}."
            yield name, param, kind, tuple(prefix + s for s in hf_suffixes)
        else:
            raise ConversionError(f"no HF mapping for megatron parameter {name!r}")


def _to_megatron_shard(
    kind: str, tensors: list[torch.Tensor], dims: _Dims, padded_vocab: int, tp_rank: int, tp_size: int
) -> torch.Tensor:
    """Full HF tensor(s) -> this TP rank's megatron shard."""
    if kind == "copy":
        return tensors[0]
    if kind == "vocab":
        full = tensors[0]
        padded = torch.zeros((padded_vocab, *full.shape[1:]), dtype=full.dtype)
        padded[: full.shape[0]] = full
        return torch.chunk(padded, tp_size, dim=0)[tp_rank]
    if kind == "qkv":
        fused = fuse_qkv(*tensors, dims.heads, dims.groups, dims.head_dim)
        return torch.chunk(fused, tp_size, dim=0)[tp_rank]
    if kind == "fc1":
        gate, up = (torch.chunk(t, tp_size, dim=0)[tp_rank] for t in tensors)
        return torch.cat([gate, up], dim=0)
    if kind == "row":
        return torch.chunk(tensors[0], tp_size, dim=1)[tp_rank]
    raise AssertionError(kind)


def _expected_hf_shape(hf_name: str, dims: _Dims) -> tuple[int, ...]:
    h, hd = dims.hidden, dims.head_dim
    table = {
        "model.embed_tokens.weight": (dims.vocab, h),
        "lm_head.weight": (dims.vocab, h),
        "self_attn.q_proj.weight": (dims.heads * hd, h),
        "self_attn.k_proj.weight": (dims.groups * hd, h),
        "self_attn.v_proj.weight": (dims.groups * hd, h),
        "self_attn.q_proj.bias": (dims.heads * hd,),
        "self_attn.k_proj.bias": (dims.groups * hd,),
        "self_attn.v_proj.bias": (dims.groups * hd,),
        "self_attn.o_proj.weight": (h, dims.heads * hd),
        "mlp.gate_proj.weight": (dims.ffn, h),
        "mlp.up_proj.weight": (dims.ffn, h),
        "mlp.down_proj.weight": (h, dims.ffn),
    }
    for key, shape in table.items():
        if hf_name == key or hf_name.endswith("." + key):
            return shape
    return (h,)  # norms


@torch.no_grad()
def load_hf_weights(
    model: torch.nn.Module, hf_source: Mapping[str, torch.Tensor] | str | Path, hf_config: Any
) -> None:
    """Copy HF weights into this rank's (TP shard, PP stage of a) megatron ``GPTModel``.

    Args:
        model: from :func:`nemo_prorl.policy.megatron.model.build_gpt_model` (DDP/Float16Module
            wrappers are unwrapped).
        hf_source: an HF state dict, or a checkpoint directory with ``*.safetensors``
            (``model.safetensors.index.json`` honoured). Pickle checkpoints are refused.
        hf_config: the HF config the model was built from.

    Raises:
        ConversionError: missing tensor or wrong shape (names the file and the tensor), or no
            safetensors in the directory.

    """
    model = _unwrap(model)
    dims = _Dims(hf_config)
    src = _HFSource(hf_source)
    tp_rank, tp_size, _ = _tp()
    padded_vocab = int(getattr(model, "padded_vocab_size", 0) or 0)
    used: set[str] = set()
    for name, param, kind, hf_names in _plan(model, dims):
        tensors = []
        for hf_name in hf_names:
            tensor = src.get(hf_name)
            expected = _expected_hf_shape(hf_name, dims)
            if tuple(tensor.shape) != expected:
                raise ConversionError(
                    f"{src.file_of(hf_name)}: tensor {hf_name!r} has shape {tuple(tensor.shape)}, "
                    f"expected {expected} from the config"
                )
            tensors.append(tensor)
            used.add(hf_name)
        if kind == "vocab" and not padded_vocab:
            padded_vocab = param.shape[0] * tp_size
        shard = _to_megatron_shard(kind, tensors, dims, padded_vocab, tp_rank, tp_size)
        if tuple(shard.shape) != tuple(param.shape):
            raise ConversionError(
                f"{src.where}: {hf_names} -> megatron {name!r}: shard shape {tuple(shard.shape)} != "
                f"parameter shape {tuple(param.shape)} (TP={tp_size})"
            )
        param.copy_(shard.to(param.dtype))
    # Tensors of other pipeline stages are expected to stay unused; anything else is reported.
    known = {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"}
    foreign = [k for k in src.keys() if k not in used | known and not k.startswith("model.layers.")]
    if foreign:
        _log.warning("load_hf_weights: %d tensors in %s have no megatron counterpart and were ignored: %s",
                     len(foreign), src.where, foreign[:8])


# ----------------------------------------------------------------------------------------------
# export


def _gather_tp(tensor: torch.Tensor, dim: int, tp_size: int, group: Any) -> list[torch.Tensor]:
    if tp_size == 1:
        return [tensor]
    return collectives.all_gather(tensor, group=group)


def _iter_stage_hf(model: torch.nn.Module, dims: _Dims) -> Iterator[tuple[str, torch.Tensor]]:
    """The HF tensors of this pipeline stage, each gathered over TP when reached (collective over TP).

    Tensors stay on the parameters' device and are not copied beyond what the gather makes; the order is
    the stage's parameter order (embedding, layer by layer, final norm, head).
    """
    _, tp_size, tp_group = _tp()
    for name, param, kind, hf_names in _plan(model, dims):
        if name == "output_layer.weight" and dims.tied:
            continue  # the last stage's copy of the tied embedding
        data = param.detach()
        if kind == "copy":
            full = [data]
        elif kind == "vocab":
            full = [torch.cat(_gather_tp(data, 0, tp_size, tp_group), dim=0)[: dims.vocab]]
        elif kind == "qkv":
            fused = torch.cat(_gather_tp(data, 0, tp_size, tp_group), dim=0)
            full = list(split_qkv(fused, dims.heads, dims.groups, dims.head_dim))
        elif kind == "fc1":
            parts = [torch.chunk(p, 2, dim=0) for p in _gather_tp(data, 0, tp_size, tp_group)]
            full = [torch.cat([p[0] for p in parts], dim=0), torch.cat([p[1] for p in parts], dim=0)]
        elif kind == "row":
            full = [torch.cat(_gather_tp(data, 1, tp_size, tp_group), dim=1)]
        else:
            raise AssertionError(kind)
        yield from zip(hf_names, full)


def _stage_meta(model: torch.nn.Module, dims: _Dims) -> list[tuple[str, tuple[int, ...], str]]:
    """``(hf name, HF shape, dtype name)`` of every tensor :func:`_iter_stage_hf` yields, no gather."""
    meta = []
    for name, param, _, hf_names in _plan(model, dims):
        if name == "output_layer.weight" and dims.tied:
            continue
        dtype = str(param.dtype).removeprefix("torch.")
        meta += [(hf, _expected_hf_shape(hf, dims), dtype) for hf in hf_names]
    return meta


def weight_buckets(
    meta: list[tuple[str, tuple[int, ...], str]], bucket_bytes: int
) -> list[list[tuple[str, tuple[int, ...], str]]]:
    """Consecutive runs of ``meta`` of one dtype and at most ``bucket_bytes`` each (one tensor may exceed it).

    Args:
        meta: ``(name, shape, dtype name)`` in stream order.
        bucket_bytes: the most bytes a bucket holds (a larger tensor gets a bucket of its own).

    """
    buckets: list[list[tuple[str, tuple[int, ...], str]]] = []
    size = 0
    for entry in meta:
        nbytes = _numel(entry[1]) * torch.empty(0, dtype=getattr(torch, entry[2])).element_size()
        if not buckets or buckets[-1][-1][2] != entry[2] or size + nbytes > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(entry)
        size += nbytes
    return buckets


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


@torch.no_grad()
def iter_hf_weights(
    model: torch.nn.Module, hf_config: Any, *, bucket_bytes: int = 256 << 20
) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream the full HF-named weights, layer by layer, on every rank (collective over TP and PP).

    Every rank must run the iterator to its end, in step with the others (the rollout engine's weight
    load consumes it). Nothing is staged on the host and the whole model never exists at once: with PP=1
    each tensor is gathered over TP on the device when the consumer reaches it; with PP>1 stage ``s``
    sends its tensors to the other stages in buckets of at most ``bucket_bytes`` (one flat
    :func:`nemo_prorl.collectives.broadcast` per bucket over the pipeline group, after a small broadcast
    of the names, shapes and dtypes); a yielded tensor is then a view into its bucket's buffer, which is
    freed once the consumer (vLLM's loader copies each tensor into its parameter) drops its views.

    Yields:
        ``(hf_name, tensor)`` -- HF names and shapes, vocabulary padding removed, ``lm_head.weight``
        omitted with tied embeddings; the same set :func:`export_hf_state_dict` returns.

    """
    from megatron.core import parallel_state

    model = _unwrap(model)
    dims = _Dims(hf_config)
    pp_size = 1
    if parallel_state.model_parallel_is_initialized():
        pp_size = parallel_state.get_pipeline_model_parallel_world_size()
    if pp_size == 1:
        yield from _iter_stage_hf(model, dims)
        return
    pp_group = parallel_state.get_pipeline_model_parallel_group()
    my_stage = parallel_state.get_pipeline_model_parallel_rank()
    device = collectives.backend_device(pp_group)
    for stage in range(pp_size):
        src = dist.get_global_rank(pp_group, stage)
        meta = collectives.broadcast_object(_stage_meta(model, dims) if stage == my_stage else None, src=src,
                                            group=pp_group)
        local = _iter_stage_hf(model, dims) if stage == my_stage else None
        for bucket in weight_buckets(meta, bucket_bytes):
            dtype = getattr(torch, bucket[0][2])
            if local is not None:
                pieces = []
                for (want, _, _), (name, tensor) in zip(bucket, local):
                    if name != want:
                        raise AssertionError(f"iter_hf_weights: stage {stage} gave {name}, planned {want}")
                    pieces.append(tensor.reshape(-1).to(device, dtype))
                flat = torch.cat(pieces)
            else:
                flat = torch.empty(sum(_numel(shape) for _, shape, _ in bucket), dtype=dtype, device=device)
            collectives.broadcast(flat, src=src, group=pp_group)
            at = 0
            for name, shape, _ in bucket:
                n = _numel(shape)
                yield name, flat[at:at + n].view(shape)
                at += n


@torch.no_grad()
def export_hf_state_dict(
    model: torch.nn.Module, hf_config: Any, *, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Gather a megatron ``GPTModel`` into a full HF state dict (collective over TP and PP).

    Every rank must call this. The result -- HF names, HF shapes, vocabulary padding removed,
    ``lm_head.weight`` omitted when embeddings are tied, CPU tensors -- is returned on **every**
    rank (stages are exchanged with ``all_gather_object`` over the pipeline group). For the rollout
    engine's weight sync use :func:`iter_hf_weights`, which never holds the whole model on the host.

    Args:
        model: this rank's model (wrappers are unwrapped).
        hf_config: the HF config the model was built from.
        dtype: cast the result to this dtype (default: keep the parameters' dtype).

    Returns:
        ``{hf_name: tensor}``.

    """
    from megatron.core import parallel_state

    model = _unwrap(model)
    dims = _Dims(hf_config)
    out: dict[str, torch.Tensor] = {}
    for hf_name, tensor in _iter_stage_hf(model, dims):
        tensor = tensor.to("cpu").contiguous().clone()
        out[hf_name] = tensor if dtype is None else tensor.to(dtype)

    if parallel_state.model_parallel_is_initialized():
        pp_size = parallel_state.get_pipeline_model_parallel_world_size()
        if pp_size > 1:
            pp_group = parallel_state.get_pipeline_model_parallel_group()
            stages = collectives.all_gather_object(out, group=pp_group)
            merged: dict[str, torch.Tensor] = {}
            for stage in stages:
                merged.update(stage or {})
            out = merged
    order = {n: i for i, n in enumerate(_hf_key_order(hf_config))}
    return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], len(order))))


def _hf_key_order(hf_config: Any) -> list[str]:
    dims = _Dims(hf_config)
    names = ["model.embed_tokens.weight"]
    for i in range(int(_get(hf_config, "num_hidden_layers"))):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight"]
        names += [p + f"self_attn.{x}_proj.weight" for x in "qkv"]
        if dims.qkv_bias:
            names += [p + f"self_attn.{x}_proj.bias" for x in "qkv"]
        names += [p + "self_attn.o_proj.weight", p + "post_attention_layernorm.weight"]
        names += [p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
    names += ["model.norm.weight"]
    if not dims.tied:
        names += ["lm_head.weight"]
    return names


def save_hf_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    hf_config: Any,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """Write an HF checkpoint: ``model.safetensors``, ``config.json`` and tokenizer files.

    Call on one rank only (e.g. global rank 0).

    Args:
        state_dict: full HF state dict (e.g. from :func:`export_hf_state_dict`).
        hf_config: ``PretrainedConfig`` (saved with ``save_pretrained``) or a ``config.json`` dict.
        out_dir: created if missing.
        tokenizer_dir: copy the files in :data:`TOKENIZER_FILES` found there.

    Returns:
        ``out_dir`` as a ``Path``.

    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    dtypes = {t.dtype for t in tensors.values()}
    dtype_name = str(next(iter(dtypes))).replace("torch.", "") if len(dtypes) == 1 else None
    if isinstance(hf_config, Mapping):
        cfg = dict(hf_config)
        if dtype_name:
            cfg["dtype"] = dtype_name
        (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    else:
        if dtype_name:
            hf_config.dtype = dtype_name
        hf_config.save_pretrained(str(out))
    if tokenizer_dir is not None:
        tok = Path(tokenizer_dir)
        for fname in TOKENIZER_FILES:
            if (tok / fname).is_file() and (tok / fname).resolve() != (out / fname).resolve():
                shutil.copyfile(tok / fname, out / fname)
    return out


# ----------------------------------------------------------------------------------------------
# megatron dist checkpoints


def save_megatron_weights(model: torch.nn.Module, ckpt_dir: str | Path) -> Path:
    """Save ``model.sharded_state_dict()`` with megatron ``dist_checkpointing`` (collective).

    The checkpoint is parallelism-independent: :func:`load_megatron_weights` reads it into a model
    built at any TP/PP. The directory must be empty or absent.
    """
    from megatron.core import dist_checkpointing

    path = Path(ckpt_dir)
    if not dist.is_initialized() or dist.get_rank() == 0:
        path.mkdir(parents=True, exist_ok=True)
    collectives.barrier()
    dist_checkpointing.save(_unwrap(model).sharded_state_dict(), str(path))
    return path


def load_megatron_weights(model: torch.nn.Module, ckpt_dir: str | Path) -> None:
    """Load a :func:`save_megatron_weights` checkpoint into this rank's model (collective)."""
    from megatron.core import dist_checkpointing

    path = Path(ckpt_dir)
    if not (path / "metadata.json").is_file():
        raise ConversionError(f"{path}: not a megatron dist checkpoint (no metadata.json)")
    inner = _unwrap(model)
    state = dist_checkpointing.load(inner.sharded_state_dict(), str(path))
    missing, unexpected = inner.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing:
        raise ConversionError(f"{path}: checkpoint lacks {missing[:8]}")
