"""Every ``torch.distributed`` collective of the package, placed on the device its group's backend needs.

A process group's backend decides which tensors it can move:

* ``gloo`` works on host memory: tensors go to the CPU;
* ``nccl`` works on GPU memory only: a CPU tensor is refused with ``RuntimeError: No backend type
  associated with device type cpu`` (``c10d::ProcessGroup::getBackend(DeviceType)`` in
  ``torch/csrc/distributed/c10d/ProcessGroup.cpp`` finds no backend registered for the CPU device type);
  tensors go to the *current* CUDA device, ``torch.device("cuda", torch.cuda.current_device())``, which
  each rank sets to its own GPU at start-up (``policy/megatron/parallel.py`` does
  ``torch.cuda.set_device(LOCAL_RANK)`` before ``init_process_group``);
* a combined group (``init_process_group("cpu:gloo,cuda:nccl")``) has a CPU backend: tensors go to the CPU.

Each function here asks ``torch.distributed.get_backend(group)``, moves the tensor to that device when
it is not there already, runs the collective, and brings the result back to the caller's device. The
in-place collectives keep their in-place contract: :func:`all_reduce` and :func:`broadcast` write the
result into the tensor they were given (copying back when the collective ran on a moved copy), so a
CPU tensor all-reduced over an NCCL group is updated in place exactly as on gloo. A tensor that is
already on the right device is used as is (no copy): the GPU hot paths pay nothing.

Object collectives (pickles of objects this package made in these very processes; never data read from
disk or the network) are torch's own. In the installed torch (2.13, ``distributed_c10d.py``),
``broadcast_object_list`` / ``all_gather_object`` / ``gather_object`` pickle each object on the host
(``_object_to_tensor``: ``pickle`` -> ``torch.ByteTensor`` -> ``.to(device)``), with ``device``
from ``_get_object_coll_device(group)``: ``"cpu"`` for gloo and for any group that has a CPU backend,
otherwise the group's first device type, ``"cuda"`` for NCCL, i.e. the current CUDA device (a device
without an index). The sizes and the byte tensors are then exchanged with the tensor collectives
``broadcast`` / ``all_gather`` / ``gather``, and ``_tensor_to_object`` brings the bytes back with
``.cpu()`` before unpickling. On NCCL they therefore need the current device set, or every rank would
use GPU 0 (hangs or "duplicate GPU" errors). :func:`broadcast_object` passes the device explicitly
(``broadcast_object_list`` accepts ``device=``); ``all_gather_object`` and ``gather_object`` take no
device argument in torch 2.13 and rely on the current device.

Without an initialised process group every function acts as in a world of one process (the collective
is the identity), so single-process code paths need no ``is_initialized()`` guards.

Layering: a leaf module that imports only torch. It lives in ``algorithms`` (which imports nothing else of
the package) because ``algorithms.logprobs`` and ``algorithms.advantages`` reduce over tensor- and
data-parallel groups; ``policy.megatron``, ``launch`` and the rollout driver use it too, under its
historical name ``nemo_prorl.collectives`` (the same module object, see that file).
``tests/unit/test_collectives.py`` fails if a collective is called anywhere else in the package.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "ReduceOp",
    "all_gather",
    "all_gather_cat",
    "all_gather_object",
    "all_reduce",
    "backend_device",
    "barrier",
    "broadcast",
    "broadcast_object",
    "gather_object",
    "is_active",
    "world_size",
]

ReduceOp = dist.ReduceOp


def is_active() -> bool:
    """Whether a default process group exists (``torch.distributed`` available and initialised)."""
    return dist.is_available() and dist.is_initialized()


def world_size(group: Any = None) -> int:
    """Number of ranks in ``group`` (the world by default); 1 without a process group."""
    return dist.get_world_size(group) if is_active() else 1


def _cuda_device() -> torch.device:
    """The current CUDA device of this rank (the tests substitute a non-CPU device here)."""
    return torch.device("cuda", torch.cuda.current_device())


def backend_device(group: Any = None) -> torch.device:
    """The device whose tensors ``group``'s backend communicates.

    Args:
        group: a process group; the default (world) group when None.

    Returns:
        ``cpu`` for gloo (and any group with a CPU backend), the current CUDA device for NCCL.

    Raises:
        ValueError: a backend this package does not know how to feed (named in the message).

    """
    backend = str(dist.get_backend(group)).lower()
    if backend == "nccl":
        return _cuda_device()
    if backend in ("gloo", "mpi") or "cpu:" in backend:
        return torch.device("cpu")
    if "cuda:nccl" in backend:
        return _cuda_device()
    raise ValueError(f"collectives: process-group backend {backend!r} is not supported; use gloo (CPU) or "
                     "nccl (GPU)")


def _staged(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` itself when it is contiguous on ``device``, else a contiguous copy there."""
    if tensor.device == device and tensor.is_contiguous():
        return tensor
    return tensor.to(device).contiguous()


def _in_place(tensor: torch.Tensor, group: Any, collective: Any) -> torch.Tensor:
    """Run the in-place ``collective(work)`` on ``tensor`` staged on the group's device, then copy back."""
    if not is_active():
        return tensor
    work = _staged(tensor, backend_device(group))
    collective(work)
    if work is not tensor:
        tensor.copy_(work.to(tensor.device))
    return tensor


def all_reduce(tensor: torch.Tensor, op: Any = ReduceOp.SUM, group: Any = None) -> torch.Tensor:
    """Reduce ``tensor`` over ``group`` in place (on any device); returns ``tensor``."""
    return _in_place(tensor, group, lambda work: dist.all_reduce(work, op=op, group=group))


def broadcast(tensor: torch.Tensor, src: int, group: Any = None) -> torch.Tensor:
    """Overwrite ``tensor`` with global rank ``src``'s in place (on any device); returns ``tensor``."""
    return _in_place(tensor, group, lambda work: dist.broadcast(work, src=src, group=group))


def all_gather(tensor: torch.Tensor, group: Any = None) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (same shape on all ranks), in group-rank order, on ``tensor``'s device."""
    if not is_active():
        return [tensor]
    work = _staged(tensor, backend_device(group))
    parts = [torch.empty_like(work) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, work, group=group)
    return [p if p.device == tensor.device else p.to(tensor.device) for p in parts]


def all_gather_cat(tensor: torch.Tensor, dim: int = 0, group: Any = None) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along ``dim`` in group-rank order, on ``tensor``'s device."""
    if not is_active():
        return tensor
    work = _staged(tensor, backend_device(group))
    parts = [torch.empty_like(work) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, work, group=group)
    return torch.cat(parts, dim).to(tensor.device)


def barrier(group: Any = None) -> None:
    """Wait for every rank of ``group``; on NCCL on this rank's own GPU (``device_ids``)."""
    if not is_active():
        return
    device = backend_device(group)
    if device.type == "cpu":
        dist.barrier(group=group)
    else:
        dist.barrier(group=group, device_ids=[device.index])


def broadcast_object(obj: Any, src: int = 0, group: Any = None) -> Any:
    """Global rank ``src``'s ``obj`` on every rank (a trusted pickle: an object this package made)."""
    if not is_active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group, device=backend_device(group))
    return box[0]


def all_gather_object(obj: Any, group: Any = None) -> list[Any]:
    """Every rank's ``obj`` in group-rank order, on every rank (trusted pickles)."""
    if not is_active():
        return [obj]
    backend_device(group)  # refuses an unknown backend before torch picks a device
    out: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def gather_object(obj: Any, dst: int = 0, group: Any = None) -> list[Any] | None:
    """Every rank's ``obj`` in group-rank order on global rank ``dst``; None elsewhere (trusted pickles)."""
    if not is_active():
        return [obj]
    backend_device(group)
    out: list[Any] | None = [None] * dist.get_world_size(group) if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst, group=group)
    return out
