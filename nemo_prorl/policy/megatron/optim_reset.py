"""Restart Adam exactly: ProRL's hard optimizer reset for every Adam megatron-core 0.16 may build.

Contract: after :func:`restart_adam`, the optimizer's next ``step()`` is bit for bit the first step of a
freshly built optimizer over the same (master) weights: Adam's update at step ``t`` is

    m_t = b1 m_{t-1} + (1 - b1) g,   v_t = b2 v_{t-1} + (1 - b2) g^2,
    p  -= lr * (m_t / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t)) + eps)     (+ lr * wd * p for AdamW)

and a fresh optimizer runs it with ``m_0 = v_0 = 0`` and ``t = 1``. So the moments are zeroed and the
step counter that feeds the bias corrections ``1 - b^t`` is set back to 0 (every Adam advances it to 1
before its first update). Missing the counter is not a small error: zeroed moments with an old counter
make the first update ``(1 - b1) / (1 - b1^t)`` over ``sqrt((1 - b2) / (1 - b2^t))`` times a fresh
optimizer's; with ``b1 = 0.9, b2 = 0.999``: 0.48x at t = 11, 1.8x at t = 401, 2.5x at t = 1001.

Where megatron-core keeps that state depends on which Adam it built (``megatron/core/optimizer/__init__.py``
imports Transformer Engine's ``FusedAdam`` when TE imports, else Apex's, else ``torch.optim.Adam/AdamW``):

=================  ==============================================  ======================================
layout             step counter                                    per-parameter state
=================  ==============================================  ======================================
``per_parameter``  ``state[p]["step"]``: a 0-dim float tensor       ``exp_avg``, ``exp_avg_sq``
(torch Adam/AdamW)  (megatron's ``DistributedOptimizer`` also       (``max_exp_avg_sq`` with amsgrad)
                   writes a ``param_groups[i]["step"]`` copy on
                   load; torch ignores it)
``per_group``      ``param_groups[i]["step"]``: a Python int, or a  ``exp_avg``, ``exp_avg_sq``, and with
(TE / Apex         1-element int tensor with ``capturable=True``;   ``master_weights=True`` (megatron's
FusedAdam)         ``step()`` adds 1 before the update, or sets 1   precision-aware optimizer)
                   when the key is absent                           ``master_param``
=================  ==============================================  ======================================

Roles, and what a restart does to each:

* moments (``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``): zeroed in place, so shapes, dtypes,
  DP shards and any tensor a CUDA graph captured stay valid. TE's low-precision moments are zero when
  their stored values are zero whatever their scale; TE's FP8 moments (a ``QuantizedTensor``) are
  re-quantized from zeros, as TE's ``_initialize_state`` does.
* step counters (per parameter and per group): set to 0 in place (tensors) or to ``0`` of the same type.
* master weights (``master_param``): untouched; they *are* the weights (megatron's own fp32 copies in
  ``Float16OptimizerWithFloat16Params`` / ``DistributedOptimizer`` are parameters of the torch
  optimizer, not state, and are untouched as well).
* group hyper-parameters (``lr``, ``betas``, ``eps``, ``weight_decay``, ...): untouched; the engine
  restarts its lr warm-up itself.

Any other state key raises :class:`ValueError` before anything is changed: an unknown key is either a
new optimizer this module does not know (its reset would be a guess) or state injected by mistake
(TE's ``state_dict`` maps every key through its dtype table and raises ``KeyError`` on the next save).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import torch

__all__ = [
    "PER_GROUP",
    "PER_PARAMETER",
    "MOMENT_KEYS",
    "MASTER_WEIGHT_KEYS",
    "STEP_KEY",
    "RestartSummary",
    "restart_adam",
    "state_roles",
    "step_layout",
]

PER_PARAMETER = "per_parameter"
PER_GROUP = "per_group"

STEP_KEY = "step"
MOMENT_KEYS: dict[str, frozenset[str]] = {
    PER_PARAMETER: frozenset({"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}),
    PER_GROUP: frozenset({"exp_avg", "exp_avg_sq"}),
}
MASTER_WEIGHT_KEYS: dict[str, frozenset[str]] = {
    PER_PARAMETER: frozenset(),
    PER_GROUP: frozenset({"master_param"}),
}


class RestartSummary(NamedTuple):
    """What :func:`restart_adam` did: tensors zeroed, counters restarted, master weights kept."""

    moments: int
    step_counters: int
    master_weights_kept: int


def step_layout(optimizer: torch.optim.Optimizer) -> str:
    """Where ``optimizer`` keeps Adam's step counter: :data:`PER_PARAMETER` or :data:`PER_GROUP`.

    Raises:
        TypeError: not an Adam whose state layout is known (the message names the class).

    """
    if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        return PER_PARAMETER
    # TE's FusedAdam has the dtype table its state_dict maps every state key through; Apex's
    # FusedAdam keeps the same per-group counter.
    if hasattr(optimizer, "name_to_dtype_map") or type(optimizer).__name__ == "FusedAdam":
        return PER_GROUP
    if hasattr(optimizer, "sub_optimizers"):
        raise TypeError(
            f"restart_adam: {type(optimizer).__name__} (megatron's optimizer_cpu_offload) is not supported; "
            "it mirrors its state into sub-optimizers that a reset would have to keep in sync"
        )
    raise TypeError(
        f"restart_adam: unknown optimizer {type(optimizer).__module__}.{type(optimizer).__name__}; "
        "only torch Adam/AdamW and Transformer Engine / Apex FusedAdam have a known state layout"
    )


def state_roles(layout: str) -> dict[str, str]:
    """Per-parameter state key -> role (``"moment"``, ``"counter"``, ``"master"``) for ``layout``."""
    if layout not in MOMENT_KEYS:
        raise ValueError(f"state_roles: layout must be {PER_PARAMETER!r} or {PER_GROUP!r}, got {layout!r}")
    roles = dict.fromkeys(MOMENT_KEYS[layout], "moment")
    roles.update(dict.fromkeys(MASTER_WEIGHT_KEYS[layout], "master"))
    if layout == PER_PARAMETER:
        roles[STEP_KEY] = "counter"
    return roles


def _param_states(optimizer: torch.optim.Optimizer) -> Iterator[tuple[int, dict[str, Any]]]:
    yield from enumerate(optimizer.state.values())


def _check_keys(optimizer: torch.optim.Optimizer, layout: str) -> None:
    roles = state_roles(layout)
    name = type(optimizer).__name__
    for index, state in _param_states(optimizer):
        unknown = sorted(set(state) - set(roles))
        if not unknown:
            continue
        hint = ""
        if layout == PER_GROUP and STEP_KEY in unknown:
            hint = (
                f" ({name} counts steps in param_groups[i]['step']; a per-parameter 'step' was injected "
                "from outside, e.g. by a checkpoint written for torch Adam, and its state_dict() would "
                "raise KeyError)"
            )
        raise ValueError(
            f"restart_adam: {name} state of parameter #{index} has unknown key(s) {unknown}{hint}; "
            f"known for the {layout} layout: {sorted(roles)}. Refusing to guess whether they are "
            "moments, counters or weights; nothing was reset"
        )
    for index, group in enumerate(optimizer.param_groups):
        value = group.get(STEP_KEY)
        if isinstance(value, bool) or not (value is None or isinstance(value, int | float | torch.Tensor)):
            raise ValueError(
                f"restart_adam: {name}.param_groups[{index}]['step'] is {value!r}; expected an int, a "
                "float or a tensor; nothing was reset"
            )


def _zero_moment(value: Any, where: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"restart_adam: {where} is a {type(value).__name__}, expected a tensor")
    quantize = getattr(value, "quantize_", None)
    if type(value) is not torch.Tensor and callable(quantize) and hasattr(value, "dequantize"):
        # TE QuantizedTensor (FP8 moments): write zeros through its quantizer.
        quantize(torch.zeros(value.shape, dtype=torch.float32, device=value.device))
    else:
        value.zero_()


def _zero_counter(value: Any) -> Any:
    """The restarted counter: tensors zeroed in place (the same object is returned), numbers -> 0."""
    if isinstance(value, torch.Tensor):
        value.zero_()
        return value
    return type(value)(0)


def restart_adam(optimizer: torch.optim.Optimizer) -> RestartSummary:
    """Reset a torch-level Adam in place so its next step equals a fresh optimizer's first step.

    Args:
        optimizer: the torch optimizer inside a megatron optimizer (``megatron_opt.optimizer``):
            ``torch.optim.Adam`` / ``AdamW``, Transformer Engine or Apex ``FusedAdam``.

    Returns:
        How many moment tensors were zeroed, step counters restarted and master weights kept.

    Raises:
        TypeError: an optimizer whose state layout is unknown.
        ValueError: a state key that is neither a moment, a counter nor a master weight for this
            layout (checked for every parameter before anything is modified).

    """
    layout = step_layout(optimizer)
    _check_keys(optimizer, layout)
    roles = state_roles(layout)
    moments = counters = masters = 0
    for index, state in _param_states(optimizer):
        for key in list(state):
            role = roles[key]
            if role == "moment":
                _zero_moment(state[key], f"{type(optimizer).__name__} state #{index} {key!r}")
                moments += 1
            elif role == "counter":
                state[key] = _zero_counter(state[key])
                counters += 1
            else:
                masters += 1
    for group in optimizer.param_groups:
        if group.get(STEP_KEY) is not None:
            group[STEP_KEY] = _zero_counter(group[STEP_KEY])
            counters += 1
    return RestartSummary(moments, counters, masters)
