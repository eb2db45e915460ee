"""A CPU Adam with Transformer Engine ``FusedAdam``'s state layout, for tests without a GPU.

TE's ``FusedAdam`` is what megatron-core builds whenever ``transformer_engine`` imports, i.e. on every
H100 job; it needs CUDA. Its state layout differs from torch's Adam in the two ways that matter for
ProRL's optimizer reset and for checkpoints, and :class:`FusedAdamEmulation` reproduces both, read from
``transformer_engine/pytorch/optimizers/fused_adam.py`` (TE 2.x, ``FusedAdam``) and the kernel in
``transformer_engine/common/multi_tensor/adam.cu`` (``AdamFunctor``, ``multi_tensor_adam_cuda``):

* the step counter is ``param_groups[i]["step"]`` (a Python int), advanced by 1 at the start of
  ``step()`` for every group (set to 1 when absent), *before* the update; there is no per-parameter
  ``"step"``;
* per-parameter state is ``exp_avg``, ``exp_avg_sq`` and, with ``master_weights=True`` (megatron's
  precision-aware optimizer), ``master_param`` (the fp32 weights the kernel updates, then casts into
  the parameter). ``state_dict()`` and ``load_state_dict()`` pass every state key through
  ``name_to_dtype_map`` (``get_unscaled_state`` / ``set_scaled_state``), so any other key raises
  ``KeyError`` exactly like TE;
* ``initialize_state(param)`` / ``get_unscaled_state`` / ``set_scaled_state`` as TE (megatron's
  ``init_state_fn`` and ``DistributedOptimizer`` call them);
* the update (fp32 math, ``adam_w_mode`` 1 = decoupled weight decay, 0 = L2): ``m = b1 m + (1 - b1) g``,
  ``v = b2 v + (1 - b2) g^2``, ``p -= lr * ((m / bc1) / (sqrt(v / bc2) + eps) [+ wd * p])`` with
  ``bc = 1 - b^step`` computed on the host.

Not emulated (raises ``NotImplementedError``): ``capturable``, ``store_param_remainders``, fp16 / FP8
(scaled) states. bf16 moments are stored in bf16 and unscaled by ``.float()``, as TE does.

:func:`megatron_builds_fused_adam_emulation` makes megatron-core build this class where it would build
TE's ``FusedAdam``, with the module flags megatron sets when TE imports.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from copy import deepcopy
from itertools import chain
from typing import Any

import torch

__all__ = ["FusedAdamEmulation", "megatron_builds_fused_adam_emulation"]

_SUPPORTED_STATE_DTYPES = (torch.float32, torch.bfloat16)


class FusedAdamEmulation(torch.optim.Optimizer):
    """Adam with TE ``FusedAdam``'s constructor, per-group step counter and dtype-mapped state.

    Args: as TE's ``FusedAdam`` (``params``, ``lr``, ``betas``, ``eps``, ``weight_decay``, ``amsgrad``,
    keyword-only ``bias_correction``, ``adam_w_mode``, ``capturable``, ``master_weights``,
    ``master_weight_dtype``, ``exp_avg_dtype``, ``exp_avg_sq_dtype``, ``use_decoupled_grad``,
    ``store_param_remainders``).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        bias_correction: bool = True,
        adam_w_mode: bool = True,
        capturable: bool = False,
        master_weights: bool = False,
        master_weight_dtype: torch.dtype = torch.float32,
        exp_avg_dtype: torch.dtype = torch.float32,
        exp_avg_sq_dtype: torch.dtype = torch.float32,
        use_decoupled_grad: bool = False,
        store_param_remainders: bool = False,
    ) -> None:
        if amsgrad:
            raise RuntimeError("FusedAdam does not support the AMSGrad variant.")
        if capturable:
            raise NotImplementedError("FusedAdamEmulation: capturable=True is not emulated")
        if store_param_remainders and master_weights:
            raise NotImplementedError("FusedAdamEmulation: store_param_remainders is not emulated")
        for name, dtype in (
            ("master_weight_dtype", master_weight_dtype),
            ("exp_avg_dtype", exp_avg_dtype),
            ("exp_avg_sq_dtype", exp_avg_sq_dtype),
        ):
            allowed = (torch.float32,) if name == "master_weight_dtype" else _SUPPORTED_STATE_DTYPES
            if dtype not in allowed:
                raise NotImplementedError(
                    f"FusedAdamEmulation: {name}={dtype} (a scaled state) is not emulated"
                )
        defaults = {
            "lr": lr,
            "bias_correction": bias_correction,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
        }
        super().__init__(params, defaults)
        self.adam_w_mode = 1 if adam_w_mode else 0
        self.capturable = False
        self.master_weights = master_weights
        self.use_decoupled_grad = use_decoupled_grad
        self.store_param_remainders = False
        self.name_to_dtype_map = {
            "exp_avg": exp_avg_dtype,
            "exp_avg_sq": exp_avg_sq_dtype,
            "master_param": master_weight_dtype,
        }

    # ------------------------------------------------------------------ state access (TE API)

    def get_unscaled_state(
        self, param: torch.Tensor, state_name: str, skip_unscale: bool = False
    ) -> torch.Tensor:
        """The state as fp32 (bf16 states: a converted copy); ``KeyError`` for unknown names, as TE."""
        dtype = self.name_to_dtype_map[state_name]
        stored = self.state[param][state_name]
        if dtype == torch.float32:
            assert stored.dtype == torch.float32, (state_name, stored.dtype)
            return stored
        assert stored.dtype == dtype, (state_name, stored.dtype)
        return stored if skip_unscale else stored.float()

    def set_scaled_state(self, param: torch.Tensor, state_name: str, unscaled_state: torch.Tensor) -> None:
        """Store an fp32 value into the state (created if missing); ``KeyError`` for unknown names."""
        assert unscaled_state.dtype == torch.float32, unscaled_state.dtype
        dtype = self.name_to_dtype_map[state_name]
        state = self.state[param]
        if state_name not in state:
            state[state_name] = torch.empty_like(param, dtype=dtype)
        state[state_name].copy_(unscaled_state)

    def initialize_state(self, param: torch.Tensor, store_param_remainders: bool = False) -> None:
        """Zero moments and, with master weights, ``master_param`` = the parameter in fp32."""
        state = self.state[param]
        state["exp_avg"] = torch.zeros_like(param, dtype=self.name_to_dtype_map["exp_avg"])
        state["exp_avg_sq"] = torch.zeros_like(param, dtype=self.name_to_dtype_map["exp_avg_sq"])
        if self.master_weights:
            self.set_scaled_state(param, "master_param", param.detach().clone().float())

    # ------------------------------------------------------------------ state dict (TE semantics)

    def _id_map(self, saved_groups: list[dict[str, Any]]) -> dict[int, torch.Tensor]:
        return dict(
            zip(
                chain.from_iterable(g["params"] for g in saved_groups),
                chain.from_iterable(g["params"] for g in self.param_groups),
                strict=True,
            )
        )

    def state_dict(self) -> dict[str, Any]:
        """The torch state dict with every state key mapped through ``name_to_dtype_map`` (fp32 values)."""
        state_dict = super().state_dict()
        id_map = self._id_map(deepcopy(state_dict["param_groups"]))
        for key, value in state_dict["state"].items():
            if key in id_map:
                param = id_map[key]
                state_dict["state"][key] = {name: self.get_unscaled_state(param, name) for name in value}
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The torch load (groups, including ``step``), then each state key set through the dtype map."""
        super().load_state_dict(state_dict)
        id_map = self._id_map(deepcopy(state_dict["param_groups"]))
        for key, value in state_dict["state"].items():
            if key in id_map:
                param = id_map[key]
                self.state[param] = {}
                for name, tensor in value.items():
                    if tensor is not None:
                        self.set_scaled_state(param, name, tensor.float())

    # ------------------------------------------------------------------ the update

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One Adam update; ``group["step"]`` advances first (per group, empty groups included)."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            group["step"] = group["step"] + 1 if "step" in group else 1
            if not group["params"]:
                continue
            beta1, beta2 = group["betas"]
            if group["bias_correction"]:
                bc1 = 1.0 - math.pow(beta1, group["step"])
                bc2 = 1.0 - math.pow(beta2, group["step"])
            else:
                bc1 = bc2 = 1.0
            lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
            for param in group["params"]:
                state = self.state[param]
                if len(state) == 0:
                    self.initialize_state(param)
                grad = getattr(param, "decoupled_grad", None) if self.use_decoupled_grad else param.grad
                if grad is None:
                    continue
                self._update(param, grad, state, beta1, beta2, bc1, bc2, lr, eps, decay)
        return loss

    def _update(self, param: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor], beta1: float,
                beta2: float, bc1: float, bc2: float, lr: float, eps: float, decay: float) -> None:
        f32 = torch.float32
        g = grad.detach().to(f32)
        master = self.master_weights and "master_param" in state
        p = self.get_unscaled_state(param, "master_param") if master else param.detach().to(f32)
        m = self.get_unscaled_state(param, "exp_avg")
        v = self.get_unscaled_state(param, "exp_avg_sq")
        one = torch.ones((), dtype=f32)
        b1, b2 = torch.tensor(beta1, dtype=f32), torch.tensor(beta2, dtype=f32)
        c1, c2 = torch.tensor(bc1, dtype=f32), torch.tensor(bc2, dtype=f32)
        t_lr, t_eps, t_decay = (torch.tensor(x, dtype=f32) for x in (lr, eps, decay))
        if self.adam_w_mode == 0:  # L2: the decay enters the gradient
            g = g + t_decay * p
        m_new = b1 * m + (one - b1) * g
        v_new = b2 * v + (one - b2) * g * g
        update = (m_new / c1) / (torch.sqrt(v_new / c2) + t_eps)
        if self.adam_w_mode == 1:
            update = update + t_decay * p
        p_new = p - t_lr * update
        self.set_scaled_state(param, "exp_avg", m_new)
        self.set_scaled_state(param, "exp_avg_sq", v_new)
        if master:
            self.set_scaled_state(param, "master_param", p_new)
        param.data.copy_(p_new)


@contextlib.contextmanager
def megatron_builds_fused_adam_emulation() -> Iterator[None]:
    """Inside: megatron-core builds :class:`FusedAdamEmulation` where it would build TE's ``FusedAdam``.

    megatron-core 0.16 decides at import time. ``megatron/core/optimizer/__init__.py`` binds ``Adam`` to
    TE's ``FusedAdam`` and sets ``USING_PYTORCH_OPTIMIZER = False`` when TE imports;
    ``_get_megatron_optimizer_based_on_param_groups`` then calls
    ``Adam(params, lr, weight_decay, betas, eps, adam_w_mode=config.decoupled_weight_decay)``.
    ``megatron/core/optimizer/distrib_optimizer.py`` binds its own ``Adam`` (``DistributedOptimizer``
    type-checks the inner optimizer against it) and sets ``HAVE_APEX_OR_TE = True`` and
    ``USING_TE_OPTIMIZER = True``, which its ``state_dict`` / ``load_state_dict`` read to move the step
    between ``param_groups`` and the checkpoint. This context sets those five names as TE's presence
    does, and restores them on exit. Keep it open for the life of a policy built inside it (the
    distributed optimizer reads the flags at every save and load).
    """
    import megatron.core.optimizer as mopt
    from megatron.core.optimizer import distrib_optimizer as dopt

    names = [
        (mopt, "Adam", FusedAdamEmulation),
        (mopt, "USING_PYTORCH_OPTIMIZER", False),
        (dopt, "Adam", FusedAdamEmulation),
        (dopt, "HAVE_APEX_OR_TE", True),
        (dopt, "USING_TE_OPTIMIZER", True),
    ]
    saved = [(module, name, getattr(module, name)) for module, name, _ in names]
    for module, name, value in names:
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
