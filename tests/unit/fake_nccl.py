"""An NCCL process group emulated on gloo, so CPU tests can check where collective tensors live.

What is emulated, from the installed torch (2.13) and megatron-core (0.16):

1. **NCCL refuses host tensors.** ``ProcessGroup::getBackend(c10::DeviceType)`` in
   ``torch/csrc/distributed/c10d/ProcessGroup.cpp`` looks the tensor's device type up among the group's
   backends and raises ``RuntimeError: No backend type associated with device type cpu`` for an
   NCCL-only group. Here every tensor collective that package code issues on an "NCCL" group is
   checked, and a CPU tensor raises that same error before anything is sent.
2. **Which groups are NCCL.** With ``init_process_group("nccl")`` every group created without a
   backend inherits NCCL (megatron's TP/PP/DP groups); groups created with ``backend="gloo"``
   (megatron's ``*_gloo`` groups, the rollout driver's control group) are gloo.
   ``torch.distributed.get_backend`` reports accordingly.
3. **Object collectives stage pickles on the GPU.** ``distributed_c10d._get_object_coll_device(group)``
   returns ``"cuda"`` for an NCCL group, so ``broadcast_object_list`` / ``all_gather_object`` /
   ``gather_object`` move their byte tensors to the current CUDA device.
4. **The current CUDA device** (``torch.cuda.current_device()``) is replaced by torch's lazy device
   (``torch._lazy`` TorchScript backend): a real non-CPU device of CPU builds that holds data, so a
   collective staged there round-trips its values and the call sites run to the end. The gloo group
   underneath then gets host copies (gloo cannot read lazy tensors) and the results are copied back.

Calls issued by code outside ``nemo_prorl`` (megatron-core's DDP, torch's checkpointing) are recorded
but not checked: they are out of scope (on a GPU they receive GPU tensors from megatron itself).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d

#: the tensor collectives wrapped (torch's object collectives call the c10d module's own names)
TENSOR_OPS = ("all_reduce", "broadcast", "all_gather", "gather", "scatter", "all_gather_into_tensor",
              "reduce_scatter_tensor")
_HERE = os.path.abspath(__file__)
_TORCH = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_COLLECTIVES = os.sep + os.path.join("nemo_prorl", "algorithms", "collectives.py")
#: the CPU shim's TorchFunctionMode forwards megatron's own calls (policy/megatron/compat.py; CPU only)
_COMPAT = os.sep + os.path.join("nemo_prorl", "policy", "megatron", "compat.py")


def lazy_device() -> torch.device:
    """The stand-in for ``cuda:<current>``: the lazy device (initialised on first use)."""
    import torch._lazy.ts_backend as ts

    if not getattr(lazy_device, "_ready", False):
        ts.init()
        lazy_device._ready = True  # type: ignore[attr-defined]
    return torch.device("lazy", 0)


@dataclass
class Call:
    """One wrapped collective: op, who called it, the devices of its tensors, the group's fake backend."""

    op: str
    caller: str  # "module:qualname" of the first frame outside torch (the helper, usually)
    site: str  # "module:qualname" of the first frame outside torch and nemo_prorl.collectives
    devices: list[str]
    nccl: bool
    checked: bool


@dataclass
class FakeNccl:
    """Install with :meth:`installed`; :attr:`calls` records every wrapped collective."""

    #: check every caller's tensors, not only the package's (for tests that issue collectives themselves)
    check_all: bool = False
    calls: list[Call] = field(default_factory=list)
    gloo_groups: list[Any] = field(default_factory=list)

    # -- the emulated upstream behaviour -------------------------------------------------------------
    def is_nccl(self, group: Any) -> bool:
        return not any(group is g for g in self.gloo_groups)

    def get_backend(self, group: Any = None) -> str:
        return "nccl" if self.is_nccl(group) else "gloo"

    def object_coll_device(self, group: Any = None) -> str:
        return "lazy" if self.is_nccl(group) else "cpu"

    # -- wrapping --------------------------------------------------------------------------------------
    @staticmethod
    def _frames() -> tuple[str, str, bool]:
        caller = site = ""
        package = False
        frame = sys._getframe(2)
        while frame is not None:
            path = os.path.abspath(frame.f_code.co_filename)
            if path != _HERE and not path.startswith(_TORCH) and not path.endswith(_COMPAT):
                name = f"{frame.f_globals.get('__name__', '?')}:{frame.f_code.co_qualname}"
                if not caller:
                    caller = name
                    package = name.startswith("nemo_prorl")
                if not path.endswith(_COLLECTIVES):
                    site = name
                    break
            frame = frame.f_back
        return caller, site, package

    def _wrap(self, name: str, real: Any) -> Any:
        sig = inspect.signature(real)

        def fake(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(*args, **kwargs)
            group = bound.arguments.get("group")
            tensors: list[torch.Tensor] = []
            for value in bound.arguments.values():
                if isinstance(value, torch.Tensor):
                    tensors.append(value)
                elif isinstance(value, (list, tuple)):
                    tensors.extend(v for v in value if isinstance(v, torch.Tensor))
            caller, site, package = self._frames()
            nccl = self.is_nccl(group)
            checked = nccl and (package or self.check_all)
            self.calls.append(Call(name, caller, site, [str(t.device) for t in tensors], nccl, checked))
            if checked and any(t.device.type == "cpu" for t in tensors):
                raise RuntimeError("No backend type associated with device type cpu")
            # gloo underneath: host copies in, results copied back into the staged tensors
            swapped: list[tuple[torch.Tensor, torch.Tensor]] = []

            def host(v: Any) -> Any:
                if isinstance(v, torch.Tensor) and v.device.type != "cpu":
                    h = v.to("cpu")
                    swapped.append((v, h))
                    return h
                if isinstance(v, list):
                    return [host(x) for x in v]
                return v

            for key, value in list(bound.arguments.items()):
                bound.arguments[key] = host(value)
            out = real(*bound.args, **bound.kwargs)
            for staged, h in swapped:
                staged.copy_(h.to(staged.device))
            return out

        fake.__name__ = name
        return fake

    def _barrier(self, real: Any) -> Any:
        def fake(group: Any = None, async_op: bool = False, device_ids: list[int] | None = None) -> Any:
            caller, site, package = self._frames()
            nccl = self.is_nccl(group)
            checked = nccl and (package or self.check_all)
            self.calls.append(Call("barrier", caller, site, [f"device_ids={device_ids}"], nccl, checked))
            if checked and device_ids != [lazy_device().index]:
                raise RuntimeError(f"NCCL barrier without this rank's device (device_ids={device_ids})")
            return real(group=group, async_op=async_op)

        return fake

    def _new_group(self, real: Any) -> Any:
        def fake(*args: Any, **kwargs: Any) -> Any:
            group = real(*args, **kwargs)
            backend = kwargs.get("backend", args[2] if len(args) > 2 else None)
            if backend is not None and str(backend).lower() == "gloo":
                self.gloo_groups.append(group)
            return group

        return fake

    @contextlib.contextmanager
    def installed(self) -> Iterator[FakeNccl]:
        """Patch torch.distributed (and nemo_prorl.collectives' CUDA device) for the ``with`` body."""
        from nemo_prorl import collectives

        # megatron-core binds some collectives at import time (param_and_grad_buffer.py:
        # ``dist_reduce_scatter_func = torch.distributed.reduce_scatter_tensor``): import it before the
        # patch, or the fakes stay bound in it for the rest of the process.
        with contextlib.suppress(ImportError):
            import megatron.core.distributed.param_and_grad_buffer  # noqa: F401
            import megatron.core.tensor_parallel.layers  # noqa: F401
            import megatron.core.tensor_parallel.mappings  # noqa: F401
            import megatron.core.timers  # noqa: F401
        lazy_device()
        saved: list[tuple[Any, str, Any]] = []

        def put(obj: Any, name: str, value: Any) -> None:
            saved.append((obj, name, getattr(obj, name)))
            setattr(obj, name, value)

        for name in TENSOR_OPS:
            fake = self._wrap(name, getattr(c10d, name))
            put(c10d, name, fake)
            put(dist, name, fake)
        barrier = self._barrier(c10d.barrier)
        put(c10d, "barrier", barrier)
        put(dist, "barrier", barrier)
        new_group = self._new_group(c10d.new_group)
        put(c10d, "new_group", new_group)
        put(dist, "new_group", new_group)
        put(dist, "get_backend", self.get_backend)
        put(c10d, "_get_object_coll_device", self.object_coll_device)
        put(collectives, "_cuda_device", lazy_device)
        try:
            yield self
        finally:
            for obj, name, value in reversed(saved):
                setattr(obj, name, value)

    # -- reading the record ----------------------------------------------------------------------------
    def checked_sites(self) -> dict[str, set[str]]:
        """``{site: {op, ...}}`` of the package's collectives on NCCL groups (all passed the check)."""
        out: dict[str, set[str]] = {}
        for c in self.calls:
            if c.checked:
                out.setdefault(c.site, set()).add(c.op)
        return out
