"""torch.distributed + megatron-core model-parallel set-up, on GPU (nccl) or CPU (gloo).

Usage::

    from nemo_prorl.policy.megatron import parallel
    parallel.init_parallel(tp=2, pp=1, seed=1234)   # under torchrun, or single-process
    ...
    parallel.destroy_parallel()

Under ``torchrun`` the world comes from ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``
(``LOCAL_RANK`` picks the GPU). With none of them set, a single-process world is created on a free
loopback port, so the same code runs from a plain ``python`` call or a pytest process.
"""

from __future__ import annotations

import datetime
import os
import socket

import torch
import torch.distributed as dist

from nemo_prorl.policy.megatron.compat import apply_cpu_compat

__all__ = [
    "init_parallel",
    "destroy_parallel",
    "is_initialized",
    "world_size",
    "global_rank",
    "tp_rank",
    "tp_size",
    "pp_rank",
    "pp_size",
    "dp_rank",
    "dp_size",
    "tp_group",
    "pp_group",
    "dp_group",
    "is_pipeline_first_stage",
    "is_pipeline_last_stage",
    "device",
]

_created_process_group = False


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def device() -> torch.device:
    """The device this rank computes on: ``cuda:LOCAL_RANK`` when CUDA is available, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_parallel(
    tp: int = 1,
    pp: int = 1,
    *,
    seed: int = 1234,
    backend: str | None = None,
    timeout_minutes: int = 30,
) -> None:
    """Initialise torch.distributed (if needed) and megatron-core's model-parallel groups.

    Args:
        tp: tensor-parallel size.
        pp: pipeline-parallel size. ``world_size`` must be divisible by ``tp * pp``; the rest is
            data parallel.
        seed: base seed; megatron's ``model_parallel_cuda_manual_seed`` derives the data-parallel,
            tensor-parallel and expert RNG streams from it (on CPU they live in the CPU generator).
        backend: torch.distributed backend; default ``nccl`` with CUDA, ``gloo`` without.
        timeout_minutes: collective timeout.

    Raises:
        ValueError: bad sizes, or the world size is not divisible by ``tp * pp``.
        RuntimeError: model parallel is already initialised with different sizes.

    """
    from megatron.core import parallel_state, tensor_parallel

    if tp < 1 or pp < 1:
        raise ValueError(f"init_parallel: tp and pp must be >= 1, got tp={tp}, pp={pp}")
    cuda = torch.cuda.is_available()
    if not cuda:
        apply_cpu_compat()
    if backend is None:
        backend = "nccl" if cuda else "gloo"

    global _created_process_group
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
        else:
            port = _free_loopback_port()
            dist.init_process_group(
                backend=backend,
                init_method=f"tcp://127.0.0.1:{port}",
                rank=0,
                world_size=1,
                timeout=datetime.timedelta(minutes=timeout_minutes),
            )
        _created_process_group = True

    world = dist.get_world_size()
    if world % (tp * pp) != 0:
        raise ValueError(
            f"init_parallel: world size {world} is not divisible by tp*pp = {tp}*{pp} = {tp * pp}"
        )
    if parallel_state.model_parallel_is_initialized():
        cur_tp = parallel_state.get_tensor_model_parallel_world_size()
        cur_pp = parallel_state.get_pipeline_model_parallel_world_size()
        if (cur_tp, cur_pp) != (tp, pp):
            raise RuntimeError(
                f"init_parallel: model parallel already initialised with tp={cur_tp}, pp={cur_pp}; "
                f"call destroy_parallel() before re-initialising with tp={tp}, pp={pp}"
            )
    else:
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            distributed_timeout_minutes=timeout_minutes,
        )
    if not cuda:
        apply_cpu_compat()  # covers megatron modules imported since the first call
    tensor_parallel.model_parallel_cuda_manual_seed(seed, force_reset_rng=True)


def destroy_parallel() -> None:
    """Tear down megatron's groups and, if :func:`init_parallel` created it, the process group."""
    from megatron.core import parallel_state

    global _created_process_group
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if _created_process_group and dist.is_initialized():
        dist.destroy_process_group()
    _created_process_group = False


def is_initialized() -> bool:
    """Whether megatron's model-parallel groups exist."""
    from megatron.core import parallel_state

    return bool(parallel_state.model_parallel_is_initialized())


def world_size() -> int:
    """Number of ranks in the default process group (1 if torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def global_rank() -> int:
    """Rank of this process in the default group (0 if torch.distributed is not initialised)."""
    return dist.get_rank() if dist.is_initialized() else 0


def tp_rank() -> int:
    """Tensor-parallel rank."""
    from megatron.core import parallel_state

    return int(parallel_state.get_tensor_model_parallel_rank())


def tp_size() -> int:
    """Tensor-parallel world size."""
    from megatron.core import parallel_state

    return int(parallel_state.get_tensor_model_parallel_world_size())


def pp_rank() -> int:
    """Pipeline-parallel rank (stage index)."""
    from megatron.core import parallel_state

    return int(parallel_state.get_pipeline_model_parallel_rank())


def pp_size() -> int:
    """Pipeline-parallel world size (number of stages)."""
    from megatron.core import parallel_state

    return int(parallel_state.get_pipeline_model_parallel_world_size())


def dp_rank() -> int:
    """Data-parallel rank."""
    from megatron.core import parallel_state

    return int(parallel_state.get_data_parallel_rank())


def dp_size() -> int:
    """Data-parallel world size."""
    from megatron.core import parallel_state

    return int(parallel_state.get_data_parallel_world_size())


def tp_group() -> dist.ProcessGroup:
    """The tensor-parallel process group of this rank."""
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_group()


def pp_group() -> dist.ProcessGroup:
    """The pipeline-parallel process group of this rank."""
    from megatron.core import parallel_state

    return parallel_state.get_pipeline_model_parallel_group()


def dp_group() -> dist.ProcessGroup:
    """The data-parallel process group of this rank."""
    from megatron.core import parallel_state

    return parallel_state.get_data_parallel_group()


def is_pipeline_first_stage() -> bool:
    """Whether this rank holds the first pipeline stage (embedding)."""
    from megatron.core import parallel_state

    return bool(parallel_state.is_pipeline_first_stage(ignore_virtual=True))


def is_pipeline_last_stage() -> bool:
    """Whether this rank holds the last pipeline stage (final norm + output layer)."""
    from megatron.core import parallel_state

    return bool(parallel_state.is_pipeline_last_stage(ignore_virtual=True))
