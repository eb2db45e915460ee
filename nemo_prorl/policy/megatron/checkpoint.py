"""Atomic, resharding-capable checkpoints of a :class:`~nemo_prorl.policy.megatron.engine.MegatronPolicy`.

Layout of one checkpoint directory (e.g. ``<run>/checkpoints/step_00000120``)::

    COMPLETE              written last; a directory without it is partial and never loaded
    metadata.json         format version, TP/PP/DP sizes, optimizer kind and Adam step layout, dtype,
                          engine step count
    extra_state.json      the trainer's state (JSON only: no pickle of anything)
    dist/                 megatron dist_checkpointing of the policy weights, the optimizer state and
                          the reference weights (keys ``reference.*``)
    rng/rank_XXXXX.pt     per-rank RNG states (a dict of uint8 tensors; read with weights_only=True)

Writing is atomic: every rank writes into ``<dir>.tmp-<uuid>`` (one uuid for the job, chosen by rank 0),
then rank 0 renames it to ``<dir>`` and finally writes ``COMPLETE``. A crash at any point leaves either
a ``*.tmp-*`` directory or a directory without ``COMPLETE``; :func:`latest_checkpoint` skips (and, if
asked, deletes) both.

Resharding: weights are saved as megatron ``ShardedTensor`` s, so a checkpoint saved at one TP/PP/DP
loads at another. Optimizer state: the non-distributed optimizer's moments are sharded like the
parameters and reshard the same way; the distributed optimizer uses the ``fully_reshardable`` format
(its DP shards are gathered over the gloo DP group into parameter-shaped tensors on DP rank 0 at save),
which is also fully reshardable (megatron-core 0.16's ``dist_checkpointing`` refuses the
``fully_sharded_model_space`` format: ``ShardedTensor.flattened_range is not supported``). Loading the
optimizer between the two optimizer kinds is not supported: it raises unless ``load_optimizer=False``
(weights only, with a warning). Adam's step counter is kept where the optimizer keeps it (per
parameter for torch Adam, per param group for Transformer Engine's ``FusedAdam``) and converted on
load when the checkpoint was written by the other one. RNG states are restored only when the rank
layout is unchanged (else a warning: the RNG streams restart from the seed).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from nemo_prorl import collectives
from nemo_prorl.policy.checkpoint_layout import COMPLETE, checkpoint_path, is_complete, latest_checkpoint

if TYPE_CHECKING:
    from nemo_prorl.policy.megatron.engine import MegatronPolicy

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "checkpoint_path",
    "is_complete",
    "latest_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load_policy_weights",
]

_log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
_OPTIM_SHARDING = "fully_reshardable"
_REF_PREFIX = "reference."


class CheckpointError(RuntimeError):
    """A checkpoint is missing, partial, corrupt or incompatible; the message names the path."""


# ---------------------------------------------------------------------------------------------- helpers


def _world() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    collectives.barrier()


def _broadcast_str(value: str) -> str:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    return str(collectives.broadcast_object(value, src=0))


def _agree(ok: bool, message: str) -> None:
    """Raise :class:`CheckpointError` on every rank if any rank reports a failure."""
    flag = torch.tensor([0 if ok else 1], dtype=torch.int64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        collectives.all_reduce(flag)
    if int(flag.item()) != 0:
        raise CheckpointError(message)


def _layout(policy: MegatronPolicy) -> dict[str, Any]:
    p = policy._parallel
    return {
        "tensor_model_parallel_size": p.tp_size(),
        "pipeline_model_parallel_size": p.pp_size(),
        "data_parallel_size": p.dp_size(),
        "world_size": p.world_size(),
    }


def _ensure_optimizer_state(policy: MegatronPolicy) -> None:
    """Give every parameter Adam state (zeros) so save and load see the same keys."""
    optimizer = policy.optimizer
    for opt in getattr(optimizer, "chained_optimizers", None) or [optimizer]:
        fn = getattr(opt, "init_state_fn", None)
        if fn is not None:
            fn(opt.optimizer, getattr(opt, "config", None))


def _step_layout(policy: MegatronPolicy) -> str:
    """Where the policy's Adam counts steps (:func:`nemo_prorl.policy.megatron.optim_reset.step_layout`)."""
    from nemo_prorl.policy.megatron.engine import _torch_optimizers
    from nemo_prorl.policy.megatron.optim_reset import step_layout

    layouts = {step_layout(opt) for opt in _torch_optimizers(policy.optimizer)}
    if len(layouts) != 1:
        raise CheckpointError(f"the policy's optimizers mix Adam step layouts {sorted(layouts)}")
    return layouts.pop()


def _fill_missing_steps(policy: MegatronPolicy) -> None:
    """Adam state without ``step`` (torch layout) means no update was taken since the moments were zeroed.

    Only for the per-parameter layout (torch Adam/AdamW): megatron's ``DistributedOptimizer.state_dict``
    reads ``state["step"]`` of every parameter there. Transformer Engine's ``FusedAdam`` counts steps in
    its param groups and its ``state_dict`` raises ``KeyError`` on a per-parameter ``step``.
    """
    from nemo_prorl.policy.megatron.engine import _torch_optimizers
    from nemo_prorl.policy.megatron.optim_reset import PER_PARAMETER, step_layout

    for torch_opt in _torch_optimizers(policy.optimizer):
        if step_layout(torch_opt) != PER_PARAMETER:
            continue
        for state in torch_opt.state.values():
            if state and "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float32)


def _align_loaded_steps(obj: Any, layout: str) -> None:
    """Put the step counter of every loaded torch-optimizer state dict where ``layout`` keeps it.

    megatron's non-distributed optimizers save torch Adam's per-parameter steps as one shared
    ``state["common_step"]``, omitted when it is 0 (a fresh or just-reset optimizer), and keep
    ``param_groups`` as they are (TE ``FusedAdam``: ``param_groups[i]["step"]``). On load:

    * per-parameter layout: megatron turns ``common_step`` back into per-parameter steps; without it the
      step is the saved groups' ``step`` (a checkpoint written by ``FusedAdam``) or 0, set on every
      parameter state (torch's Adam refuses states without it);
    * per-group layout: a ``common_step`` (a checkpoint written by torch Adam) becomes every group's
      ``step``; no per-parameter ``step`` is ever added (``FusedAdam.load_state_dict`` raises on it).

    The distributed optimizer's dicts (no ``state`` next to ``param_groups``) are left alone: megatron
    moves its step between layouts itself.
    """
    from nemo_prorl.policy.megatron.optim_reset import PER_PARAMETER

    if isinstance(obj, dict):
        state = obj.get("state")
        groups = obj.get("param_groups")
        if isinstance(state, dict) and isinstance(groups, list):
            if layout == PER_PARAMETER and "common_step" not in state:
                saved = {g.get("step") for g in groups if isinstance(g, dict)} - {None}
                step = float(saved.pop()) if len(saved) == 1 else 0.0
                for value in state.values():
                    if isinstance(value, dict) and "exp_avg" in value and "step" not in value:
                        value["step"] = torch.tensor(step, dtype=torch.float32)
            elif layout != PER_PARAMETER and "common_step" in state:
                step = int(torch.as_tensor(state.pop("common_step")).item())
                for group in groups:
                    group["step"] = step
        for value in obj.values():
            _align_loaded_steps(value, layout)
    elif isinstance(obj, list | tuple):
        for value in obj:
            _align_loaded_steps(value, layout)


def _load_optimizer_state(policy: MegatronPolicy, state: dict[str, Any]) -> None:
    """``policy.optimizer.load_state_dict(state)``, working around megatron-core 0.16 for torch Adam.

    ``DistributedOptimizer.load_state_dict`` first puts the saved step into every torch Adam state
    (``state["step"]``), then ``load_parameter_state_from_fully_reshardable`` copies the loaded tensors
    into each state by the *state's* keys while the loaded tensors never carry ``step``: ``KeyError``.
    For that case the two halves run here with the steps set aside around the second one.
    It also puts one and the same step tensor into every state, which torch's Adam then advances once
    per parameter at each step (so the bias corrections run ahead): every state gets its own copy.
    (TE's ``FusedAdam`` keeps no per-parameter step, so its load needs neither.)
    """
    from nemo_prorl.policy.megatron.optim_reset import PER_PARAMETER

    chain = getattr(policy.optimizer, "chained_optimizers", None) or [policy.optimizer]
    split = (
        len(chain) == 1
        and _step_layout(policy) == PER_PARAMETER
        and isinstance(state, dict)
        and state.get("param_state_sharding_type") == "fully_reshardable"
    )
    if not split:
        policy.optimizer.load_state_dict(state)
    else:
        dist_opt = chain[0]
        rest = {k: v for k, v in state.items() if k not in ("param_state", "param_state_sharding_type")}
        dist_opt.load_state_dict(rest)  # param groups, the step into every state, grad scaler
        inner = dist_opt.optimizer.state
        steps = {param: st.pop("step") for param, st in inner.items() if "step" in st}
        try:
            dist_opt.load_parameter_state_from_fully_reshardable(state["param_state"])
        finally:
            for param, step in steps.items():
                inner[param]["step"] = step
    from nemo_prorl.policy.megatron.engine import _torch_optimizers

    for torch_opt in _torch_optimizers(policy.optimizer):
        for st in torch_opt.state.values():
            if isinstance(st.get("step"), torch.Tensor):
                st["step"] = st["step"].clone()
        # Loaded param groups replace the live ones. Groups saved by the other Adam lack this one's
        # own settings (TE FusedAdam's ``bias_correction``); they take the constructor defaults,
        # while the saved hyper-parameters (lr, betas, eps, weight_decay) stay as saved.
        for group in torch_opt.param_groups:
            for key, value in torch_opt.defaults.items():
                group.setdefault(key, value)


def _params_not_in(model: torch.nn.Module, dtype: torch.dtype) -> list[str]:
    """Names of the floating-point parameters of ``model`` whose dtype is not ``dtype``."""
    return [n for n, p in model.named_parameters() if p.is_floating_point() and p.dtype != dtype]


def _check_uniform_dtype(policy: MegatronPolicy) -> None:
    """Refuse a 16-bit model holding other-dtype weights before megatron misaligns optimizer state.

    ``Float16OptimizerWithFloat16Params.sharded_state_dict`` maps optimizer state to weights over its
    float16 groups only, so fp32 weights (megatron's local-spec norms unless cast, see
    :func:`nemo_prorl.policy.megatron.model.cast_params_to_dtype`) shift the mapping and megatron fails
    on a shape mismatch; the distributed optimizer fails too (megatron-core 0.16.1: size mismatch in
    ``DistributedOptimizer.get_parameter_state_dp_zero``). This names the parameters instead.
    """
    dtype = policy.model.config.params_dtype
    if dtype == torch.float32:
        return
    odd = _params_not_in(policy.model, dtype)
    if odd:
        names = ", ".join(odd[:4]) + (", ..." if len(odd) > 4 else "")
        raise ValueError(
            f"policy.params_dtype={policy.config.params_dtype}: {len(odd)} parameter(s) are not in it "
            f"({names}); megatron's checkpoint would misalign their optimizer state. Build the model "
            "with nemo_prorl.policy.megatron.model.build_gpt_model, which casts them"
        )


def _sharded_state(policy: MegatronPolicy, *, is_loading: bool, with_optimizer: bool) -> dict[str, Any]:
    if with_optimizer:
        _check_uniform_dtype(policy)
    model_sd = policy.model.sharded_state_dict()
    state: dict[str, Any] = {
        "model": model_sd,
        "reference": policy.ref_model.sharded_state_dict(prefix=_REF_PREFIX),
    }
    if with_optimizer:
        # The distributed optimizer gathers its DP shards over megatron's gloo DP group onto DP rank 0
        # (host memory; the default would all-gather the whole optimizer state into every GPU).
        metadata = {
            "distrib_optim_sharding_type": _OPTIM_SHARDING,
            "distrib_optim_fully_reshardable_mem_efficient": True,
        }
        state["optimizer"] = policy.optimizer.sharded_state_dict(
            model_sd, is_loading=is_loading, metadata=metadata
        )
    return state


def _rng_state() -> dict[str, torch.Tensor]:
    import random

    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    states: dict[str, torch.Tensor] = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["torch_cuda"] = torch.cuda.get_rng_state()
    for name, value in get_cuda_rng_tracker().get_states().items():
        states[f"tracker/{name}"] = value.clone()
    py_version, py_state, py_gauss = random.getstate()
    states["python_state"] = torch.tensor(py_state, dtype=torch.int64)
    states["python_meta"] = torch.tensor([py_version, 0 if py_gauss is None else 1], dtype=torch.int64)
    states["python_gauss"] = torch.tensor([0.0 if py_gauss is None else py_gauss], dtype=torch.float64)
    return states


def _set_rng_state(states: Mapping[str, torch.Tensor]) -> None:
    import random

    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    torch.set_rng_state(states["torch_cpu"])
    if torch.cuda.is_available() and "torch_cuda" in states:
        torch.cuda.set_rng_state(states["torch_cuda"])
    tracker = {k.split("/", 1)[1]: v for k, v in states.items() if k.startswith("tracker/")}
    if tracker:
        get_cuda_rng_tracker().set_states(tracker)
    meta = states["python_meta"].tolist()
    gauss = float(states["python_gauss"][0]) if meta[1] else None
    random.setstate((int(meta[0]), tuple(int(x) for x in states["python_state"].tolist()), gauss))


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=True, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint file missing: {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint file {path} is not valid JSON: {exc}") from exc


# ---------------------------------------------------------------------------------------------- save


def save_checkpoint(policy: MegatronPolicy, directory: str | Path, extra_state: Mapping[str, Any]) -> Path:
    """Write policy weights, optimizer state, reference weights, RNG and ``extra_state`` atomically.

    Collective: every rank calls it with the same ``directory`` (on a shared file system).

    Args:
        policy: the engine.
        directory: final checkpoint directory; must not exist yet.
        extra_state: JSON-serialisable trainer state (step counters, data-sampler state, ...).

    Returns:
        ``directory`` as a ``Path``.

    Raises:
        ValueError: ``extra_state`` is not JSON-serialisable (checked before anything is written).
        FileExistsError: ``directory`` already exists.

    """
    from megatron.core import dist_checkpointing

    final = Path(directory)
    try:
        extra_json = json.loads(json.dumps(dict(extra_state), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"save_checkpoint({final}): extra_state must be JSON-serialisable: {exc}") from exc
    rank, world = _world()
    _agree(not final.exists(), f"save_checkpoint: {final} already exists; refusing to overwrite it")

    tmp = Path(_broadcast_str(f"{final}.tmp-{uuid.uuid4().hex[:12]}" if rank == 0 else ""))
    if rank == 0:
        (tmp / "dist").mkdir(parents=True)
        (tmp / "rng").mkdir()
    _barrier()

    _ensure_optimizer_state(policy)
    _fill_missing_steps(policy)
    state = _sharded_state(policy, is_loading=False, with_optimizer=True)
    # megatron's torch_dist writer forks worker processes; a child forked while torch's OpenMP pool runs
    # more than one thread hangs in its first parallel region (GNU OpenMP is not fork-safe), so the
    # save runs single-threaded.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dist_checkpointing.save(state, str(tmp / "dist"))
    finally:
        torch.set_num_threads(threads)
    torch.save(_rng_state(), tmp / "rng" / f"rank_{rank:05d}.pt")
    _barrier()
    if rank == 0:
        cfg = policy.config
        metadata = {
            "format": CHECKPOINT_FORMAT,
            **_layout(policy),
            "use_distributed_optimizer": cfg.use_distributed_optimizer,
            "params_dtype": str(cfg.params_dtype),
            "steps_taken": int(policy.steps_taken),
            "steps_since_optimizer_reset": int(policy.steps_since_optimizer_reset),
            "optimizer_sharding": _OPTIM_SHARDING,
            "optimizer_step_layout": _step_layout(policy),
        }
        _write_json(tmp / "metadata.json", metadata)
        _write_json(tmp / "extra_state.json", extra_json)
        os.replace(tmp, final)
        with open(final / COMPLETE, "w", encoding="utf-8") as f:
            f.write("ok\n")
            f.flush()
            os.fsync(f.fileno())
    _barrier()
    return final


# ---------------------------------------------------------------------------------------------- load


def load_checkpoint(
    policy: MegatronPolicy, directory: str | Path, *, load_optimizer: bool = True
) -> dict[str, Any]:
    """Restore a checkpoint written by :func:`save_checkpoint` into ``policy``.

    Args:
        policy: the engine (any TP/PP/DP layout).
        directory: a complete checkpoint directory.
        load_optimizer: restore the optimizer state. ``False`` loads policy and reference weights only
            (the optimizer starts fresh).

    Returns:
        The checkpoint's ``extra_state``.

    Raises:
        CheckpointError: partial / missing / corrupt checkpoint, or an optimizer state that cannot be
            loaded in this configuration (message says which file and why).

    """
    from megatron.core import dist_checkpointing

    path = Path(directory)
    if not path.is_dir():
        raise CheckpointError(f"load_checkpoint: {path} is not a directory")
    if not is_complete(path):
        raise CheckpointError(
            f"load_checkpoint: {path} has no {COMPLETE} marker (a partial or interrupted save); "
            "refusing to load"
        )
    metadata = _read_json(path / "metadata.json")
    if not isinstance(metadata, dict) or metadata.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"load_checkpoint: {path / 'metadata.json'} has format "
            f"{metadata.get('format') if isinstance(metadata, dict) else None!r}, "
            f"expected {CHECKPOINT_FORMAT}"
        )
    extra_state = _read_json(path / "extra_state.json")
    if not isinstance(extra_state, dict):
        raise CheckpointError(f"load_checkpoint: {path / 'extra_state.json'} must hold a JSON object")

    if (
        load_optimizer
        and bool(metadata.get("use_distributed_optimizer")) != policy.config.use_distributed_optimizer
    ):
        raise CheckpointError(
            f"load_checkpoint: {path} was saved with use_distributed_optimizer="
            f"{metadata.get('use_distributed_optimizer')} but this engine has "
            f"{policy.config.use_distributed_optimizer}; loading optimizer state across optimizer kinds is "
            "not supported -- pass load_optimizer=False to load the weights only"
        )

    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException subclass

    if load_optimizer:
        # A never-stepped optimizer has no state; megatron's distributed optimizer (torch Adam) reads
        # every state's step while building the state dict to load into.
        _ensure_optimizer_state(policy)
        _fill_missing_steps(policy)
    state = _sharded_state(policy, is_loading=True, with_optimizer=load_optimizer)
    try:
        loaded = dist_checkpointing.load(state, str(path / "dist"))
    except (Exception, CheckpointException) as exc:  # many types for corrupt or mismatched shards
        raise CheckpointError(
            f"load_checkpoint: could not read {path / 'dist'}: {type(exc).__name__}: {exc}"
        ) from exc

    policy.model.load_state_dict(loaded["model"], strict=True)
    ref_state = {k.removeprefix(_REF_PREFIX): v for k, v in loaded["reference"].items()}
    policy.ref_model.load_state_dict(ref_state, strict=True)
    if load_optimizer:
        # Restores the fp32 master weights too (bf16 / distributed optimizer keep their own copy).
        _align_loaded_steps(loaded["optimizer"], _step_layout(policy))
        _load_optimizer_state(policy, loaded["optimizer"])
        _fill_missing_steps(policy)
    else:
        warnings.warn(
            f"load_checkpoint({path}): optimizer state not loaded; Adam moments start from zero", stacklevel=2
        )
        policy.reset_optimizer()
        # The optimizer's master copies must follow the loaded weights.
        policy.optimizer.reload_model_params()
    policy.steps_taken = int(metadata.get("steps_taken", 0))
    # (older checkpoints lack the field: their optimizer was never reset after step 0)
    policy.steps_since_optimizer_reset = (
        int(metadata.get("steps_since_optimizer_reset", policy.steps_taken)) if load_optimizer else 0)

    rank, _ = _world()
    if _layout(policy) == {k: metadata.get(k) for k in _layout(policy)}:
        rng_file = path / "rng" / f"rank_{rank:05d}.pt"
        try:
            rng = torch.load(rng_file, map_location="cpu", weights_only=True)
        except FileNotFoundError as exc:
            raise CheckpointError(f"load_checkpoint: RNG state file missing: {rng_file}") from exc
        _set_rng_state(rng)
    else:
        warnings.warn(
            f"load_checkpoint({path}): saved with a different parallel layout; RNG states not restored",
            stacklevel=2,
        )
    _barrier()
    return extra_state


def load_policy_weights(policy: MegatronPolicy, directory: str | Path, *, into_policy: bool = False) -> None:
    """Reference (and, with ``into_policy``, the policy) := the policy weights stored in a checkpoint.

    The reset to the best policy (``reset.reference=best``). Only the checkpoint's ``model`` weights are
    read: its reference weights, optimizer state, RNG states, step counters and ``extra_state`` are not
    touched, so the run's optimizer, RNG streams and bookkeeping go on from where they are. The weights
    are read as megatron ``ShardedTensor`` s like :func:`load_checkpoint`'s, so a checkpoint written at
    one TP/PP layout loads at another. The reference's own sharded state dict without the ``reference.``
    prefix names exactly the policy's keys (same architecture, same sharding), so the reference reads
    the stored policy weights directly. With ``into_policy`` the policy is loaded, the optimizer's master
    copies (fp32 / distributed optimizer) are refreshed from it, and the reference copies the policy.

    Collective: every rank calls it with the same ``directory``.

    Raises:
        CheckpointError: ``directory`` is missing, partial or unreadable (the message names it).

    """
    from megatron.core import dist_checkpointing
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException subclass

    path = Path(directory)
    if not is_complete(path):
        raise CheckpointError(f"load_policy_weights: {path} is not a complete checkpoint (no {COMPLETE} "
                              "marker); was it deleted or is it partial?")
    target = policy.model if into_policy else policy.ref_model
    try:
        loaded = dist_checkpointing.load({"model": target.sharded_state_dict()}, str(path / "dist"))
    except (Exception, CheckpointException) as exc:
        raise CheckpointError(
            f"load_policy_weights: could not read {path / 'dist'}: {type(exc).__name__}: {exc}"
        ) from exc
    target.load_state_dict(loaded["model"], strict=True)
    if into_policy:
        policy.optimizer.reload_model_params()  # the master copies follow the loaded weights
        policy.reset_reference()
    _barrier()
