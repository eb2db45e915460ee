"""Run megatron-core 0.15/0.16 without CUDA (CPU + gloo), for tests, CI and the tiny CPU demo.

megatron-core assumes a GPU in a handful of places. No flag or environment variable turns those
assumptions off, so :func:`apply_cpu_compat` redirects each one. Every patch here targets megatron's
own modules; nothing in ``torch`` itself is modified, so code outside megatron (the rollout engine,
transformers, user code) sees an untouched ``torch``.

The patches, each with the megatron call sites it serves:

1. **``torch`` inside megatron modules** (:class:`_CpuTorch`). Every loaded ``megatron.core.*``
   module's global name ``torch`` is rebound to a thin view of ``torch`` whose
   ``cuda`` attribute is :class:`_CpuCuda`, and whose tensor factories map ``device="cuda"`` to CPU
   and force ``pin_memory=False``. Call sites served:

   * ``torch.cuda.current_device()`` -- ``utils.GlobalMemoryBuffer.get_tensor`` (used by
     ``DotProductAttention``), ``tensor_parallel.layers``/``mappings``/``utils`` buffers,
     ``pipeline_parallel.p2p_communication`` shape exchange, ``rotary_pos_embedding``,
     ``distributed.param_and_grad_buffer``, ``optimizer.distrib_optimizer``.
   * ``torch.zeros([], device="cuda")`` -- ``pipeline_parallel.schedules`` (``total_num_tokens``);
     ``torch.tensor(..., device='cuda')`` -- ``optimizer.clip_grads``, ``optimizer.optimizer``,
     ``optimizer.grad_scaler``, ``transformer.utils`` masks.
   * ``torch.cuda.synchronize()`` -- ``pipeline_parallel.p2p_communication``, ``parallel_state``,
     ``distributed.distributed_data_parallel``; ``torch.cuda.empty_cache()`` -- ``optimizer``.
   * ``torch.cuda.Stream`` / ``stream`` / ``current_stream`` / ``default_stream`` / ``Event`` --
     ``distributed.distributed_data_parallel`` and ``param_and_grad_buffer`` (overlapped grad
     reduce), ``pipeline_parallel.utils``.
   * ``torch.cuda.get_rng_state`` / ``set_rng_state`` / ``manual_seed`` --
     ``tensor_parallel.random.CudaRNGStatesTracker.add`` and ``model_parallel_cuda_manual_seed``.
   * ``torch.cuda.synchronize()`` / ``current_device()`` in ``dist_checkpointing.strategies``
     (``filesystem_async.preload_tensors``, ``fully_parallel``, ``exchange_utils``) -- Megatron
     dist-checkpoint save/load.

   Modules imported after a call are covered by the next call: the function re-sweeps
   ``sys.modules`` every time it runs (cheap), and :func:`nemo_prorl.policy.megatron.parallel.init_parallel`
   and :func:`nemo_prorl.policy.megatron.model.build_gpt_model` both call it.

2. **RNG tracker** -- ``tensor_parallel.random._get_cuda_rng_state`` / ``_set_cuda_rng_state`` are
   replaced by CPU-generator versions, so ``get_cuda_rng_tracker().fork()`` swaps the CPU generator's
   state (TP-rank-specific dropout streams keep their meaning). The tracker's warning "CPU RNG state
   changed within GPU RNG context" is expected on CPU (the "GPU" generator *is* the CPU one) and is
   filtered from that one logger.

3. **Tensor-method checks** (:class:`_CudaTensorMethods`, a ``TorchFunctionMode`` active only while
   the wrapped megatron function runs): ``Tensor.type()`` reports ``torch.cuda.*`` type strings,
   ``Tensor.cuda()`` and ``Tensor.pin_memory()`` return the tensor itself. Wrapped call sites:

   * ``optimizer.clip_grads.clip_grad_by_total_norm_fp32`` (asserts ``'torch.cuda.FloatTensor'``),
   * ``optimizer.distrib_optimizer.DistributedOptimizer.__init__`` and
     ``._build_model_and_main_param_groups`` (dispatch on ``param.type()``),
   * ``optimizer.optimizer.Float16OptimizerWithFloat16Params.__init__`` (same),
   * ``models.common.language_module.LanguageModule.setup_embeddings_and_output_layer``
     (``weight.data.cuda()`` before the embedding all-reduce).

Nothing is patched when CUDA is available. The function is idempotent.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["apply_cpu_compat", "is_cpu_compat_applied", "MEGATRON_MODULES_TO_PRELOAD"]

_log = logging.getLogger(__name__)

# Megatron modules that hold a CUDA assumption on the code paths this package uses. They are imported
# eagerly so their ``torch`` is swapped before any of their functions run.
MEGATRON_MODULES_TO_PRELOAD: tuple[str, ...] = (
    "megatron.core.parallel_state",
    "megatron.core.utils",
    "megatron.core.tensor_parallel.random",
    "megatron.core.tensor_parallel.layers",
    "megatron.core.tensor_parallel.mappings",
    "megatron.core.tensor_parallel.utils",
    "megatron.core.tensor_parallel.cross_entropy",
    "megatron.core.tensor_parallel.data",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.pipeline_parallel.utils",
    "megatron.core.optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.optimizer.grad_scaler",
    "megatron.core.distributed",
    "megatron.core.distributed.distributed_data_parallel",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.distributed.finalize_model_grads",
    "megatron.core.models.gpt.gpt_model",
    "megatron.core.models.gpt.gpt_layer_specs",
    "megatron.core.models.common.language_module.language_module",
    "megatron.core.models.common.embeddings.rotary_pos_embedding",
    "megatron.core.transformer.attention",
    "megatron.core.transformer.dot_product_attention",
    "megatron.core.transformer.utils",
    "megatron.core.dist_checkpointing",
    "megatron.core.dist_checkpointing.serialization",
    "megatron.core.dist_checkpointing.exchange_utils",
    "megatron.core.dist_checkpointing.strategies.torch",
    "megatron.core.dist_checkpointing.strategies.filesystem_async",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
    "megatron.core.dist_checkpointing.strategies.fully_parallel",
    "megatron.core.dist_checkpointing.strategies.async_utils",
)

_CUDA_TYPE_STRINGS = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
    "torch.DoubleTensor": "torch.cuda.DoubleTensor",
    "torch.IntTensor": "torch.cuda.IntTensor",
    "torch.LongTensor": "torch.cuda.LongTensor",
    "torch.ByteTensor": "torch.cuda.ByteTensor",
    "torch.BoolTensor": "torch.cuda.BoolTensor",
}

_RNG_WARNING = "CPU RNG state changed within GPU RNG context"

_applied = False
_proxy: _CpuTorch | None = None


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return False


def _cpu_factory(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Wrap a tensor factory so ``device="cuda"`` lands on CPU and ``pin_memory`` is off."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> torch.Tensor:
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = "cpu"
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        return fn(*args, **kwargs)

    return wrapper


class _NullStream:
    """Stands in for ``torch.cuda.Stream``/``Event``: every operation is a no-op on CPU."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None

    def __enter__(self) -> _NullStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class _CpuCuda(types.ModuleType):
    """``torch.cuda`` as megatron modules see it on a CPU-only machine.

    Attributes not overridden here fall through to the real ``torch.cuda`` (``is_available()``
    stays truthful, so megatron's own ``if torch.cuda.is_available()`` branches still work).
    """

    def __init__(self, real: types.ModuleType) -> None:
        super().__init__("torch.cuda")
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    @staticmethod
    def current_device() -> torch.device:
        return torch.device("cpu")

    @staticmethod
    def synchronize(device: Any = None) -> None:
        return None

    @staticmethod
    def empty_cache() -> None:
        return None

    @staticmethod
    def get_rng_state(device: Any = "cuda") -> torch.Tensor:
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(new_state: torch.Tensor, device: Any = "cuda") -> None:
        torch.set_rng_state(new_state)

    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.default_generator.manual_seed(int(seed))

    Stream = _NullStream
    Event = _NullStream

    @staticmethod
    def stream(stream: Any = None) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    @staticmethod
    def current_stream(device: Any = None) -> _NullStream:
        return _NullStream()

    @staticmethod
    def default_stream(device: Any = None) -> _NullStream:
        return _NullStream()


class _CpuTorch(types.ModuleType):
    """A view of ``torch`` for megatron modules: CPU ``cuda`` namespace and CPU-mapping factories."""

    _FACTORIES = ("zeros", "ones", "empty", "full", "tensor", "arange", "as_tensor", "randn", "rand")

    def __init__(self) -> None:
        super().__init__("torch")
        self.cuda = _CpuCuda(torch.cuda)
        for name in self._FACTORIES:
            setattr(self, name, _cpu_factory(getattr(torch, name)))

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


class _CudaTensorMethods(TorchFunctionMode):
    """Makes CPU tensors pass megatron's CUDA-type checks while a wrapped function runs."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D102
        kwargs = kwargs or {}
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return _CUDA_TYPE_STRINGS.get(name, name)
        if func is torch.Tensor.cuda or func is torch.Tensor.pin_memory:
            return args[0]
        return func(*args, **kwargs)


def _with_cuda_tensor_methods(fn: Callable[..., Any]) -> Callable[..., Any]:
    if getattr(fn, "_nemo_prorl_cpu_compat", False):
        return fn

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _CudaTensorMethods():
            return fn(*args, **kwargs)

    wrapper._nemo_prorl_cpu_compat = True  # type: ignore[attr-defined]
    return wrapper


def _cpu_get_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    """CPU replacement of ``tensor_parallel.random._get_cuda_rng_state``."""
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state: torch.Tensor, device: Any = -1, graph_safe: bool = False) -> None:
    """CPU replacement of ``tensor_parallel.random._set_cuda_rng_state``."""
    torch.set_rng_state(new_state)


class _DropRngWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _RNG_WARNING not in record.getMessage()


def _swap_torch_in_megatron_modules(proxy: _CpuTorch) -> int:
    """Rebind the global ``torch`` in every loaded ``megatron.core`` module; returns how many."""
    count = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith("megatron.core") or module is None:
            continue
        namespace = getattr(module, "__dict__", None)
        if namespace is not None and namespace.get("torch") is torch:
            namespace["torch"] = proxy
            count += 1
    return count


def _patch_method(owner: type, name: str) -> None:
    raw = owner.__dict__[name]
    if isinstance(raw, classmethod):
        setattr(owner, name, classmethod(_with_cuda_tensor_methods(raw.__func__)))
    elif isinstance(raw, staticmethod):
        setattr(owner, name, staticmethod(_with_cuda_tensor_methods(raw.__func__)))
    else:
        setattr(owner, name, _with_cuda_tensor_methods(raw))


def is_cpu_compat_applied() -> bool:
    """Whether :func:`apply_cpu_compat` has patched megatron-core in this process."""
    return _applied


def apply_cpu_compat() -> None:
    """Make megatron-core run without CUDA. No-op when CUDA is available; safe to call repeatedly.

    The first call imports the megatron modules in :data:`MEGATRON_MODULES_TO_PRELOAD` and installs
    all patches described in this module's docstring; every call re-sweeps ``sys.modules`` so
    megatron modules imported since the last call get the CPU ``torch`` view as well.
    """
    global _applied, _proxy
    if torch.cuda.is_available():
        return
    if _proxy is None:
        _proxy = _CpuTorch()
    if not _applied:
        for module_name in MEGATRON_MODULES_TO_PRELOAD:
            importlib.import_module(module_name)

        from megatron.core.models.common.language_module import language_module
        from megatron.core.optimizer import clip_grads, distrib_optimizer, optimizer
        from megatron.core.tensor_parallel import random as mcore_random

        mcore_random._get_cuda_rng_state = _cpu_get_rng_state
        mcore_random._set_cuda_rng_state = _cpu_set_rng_state
        logging.getLogger(mcore_random.__name__).addFilter(_DropRngWarning())

        clip_grads.clip_grad_by_total_norm_fp32 = _with_cuda_tensor_methods(
            clip_grads.clip_grad_by_total_norm_fp32
        )
        # ``optimizer/__init__`` and ``distrib_optimizer`` import the function by name.
        for module in (sys.modules.get("megatron.core.optimizer"), distrib_optimizer, optimizer):
            if module is not None and hasattr(module, "clip_grad_by_total_norm_fp32"):
                module.clip_grad_by_total_norm_fp32 = clip_grads.clip_grad_by_total_norm_fp32
        _patch_method(distrib_optimizer.DistributedOptimizer, "__init__")
        _patch_method(distrib_optimizer.DistributedOptimizer, "_build_model_and_main_param_groups")
        _patch_method(optimizer.Float16OptimizerWithFloat16Params, "__init__")
        _patch_method(language_module.LanguageModule, "setup_embeddings_and_output_layer")
        _applied = True
        _log.info("megatron-core CPU compatibility applied (no CUDA device)")
    _swap_torch_in_megatron_modules(_proxy)


@contextlib.contextmanager
def cuda_tensor_methods() -> Iterator[None]:
    """Context in which ``Tensor.type()``/``.cuda()``/``.pin_memory()`` behave as in patch 3.

    For code outside megatron that calls a megatron helper not covered by the wrapped call sites.
    """
    with _CudaTensorMethods():
        yield
