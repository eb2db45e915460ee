"""How a loss's metrics combine over micro-batches and data-parallel ranks: the loss declares it.

A loss runs on one micro-batch at a time, but its metrics are reported per step. Each metric is one of
four kinds, and the loss says which (``LossOutput.reductions``; a per-token policy loss declares its own
metrics when it registers, see :func:`~nemo_prorl.algorithms.registry.register_policy_loss`):

* ``sum``: the value is already the micro-batch's share of a globally normalised term, e.g.
  ``pg_loss = sum_{mb tokens} l_t / N_tok`` with ``N_tok`` the response tokens of the whole step batch
  (all micro-batches, all ranks). The step value is the plain sum of the micro-batch values.
* ``mean``: the value is a mean over the micro-batch's ``n_mb`` response tokens (``clip_frac_high``,
  ``ratio_mean``). The step value is the token-weighted mean ``sum_mb value_mb * n_mb / N_tok``; the
  micro-batch contributes ``value_mb * share`` with ``share = n_mb / N_tok`` (:func:`contribution`), and
  the contributions are summed.
* ``max`` / ``min``: the step value is the max / min over the micro-batch values.

A training engine therefore applies only three operations to the contributions: sum, max, min
(:data:`ENGINE_OPS`). Example, two micro-batches with 3 and 1 tokens (``N_tok = 4``) reporting a
``mean`` metric of 0.5 and 1.0: contributions ``0.5 * 3/4 = 0.375`` and ``1.0 * 1/4 = 0.25``, step value
``0.625`` = the mean over the 4 tokens.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

SUM = "sum"
MEAN = "mean"
MAX = "max"
MIN = "min"
#: every kind of metric reduction a loss may declare
REDUCTIONS: tuple[str, ...] = (SUM, MEAN, MAX, MIN)
#: the operation an engine applies over micro-batches and ranks to the contributions of each kind
ENGINE_OPS: dict[str, str] = {SUM: "sum", MEAN: "sum", MAX: "max", MIN: "min"}


def check_reductions(declared: Mapping[str, str], owner: str) -> dict[str, str]:
    """Validate a declaration ``{metric name: kind}``; ``ValueError`` names ``owner`` and the metric."""
    out: dict[str, str] = {}
    for name, kind in declared.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{owner}: metric names must be non-empty strings, got {name!r}")
        if kind not in REDUCTIONS:
            raise ValueError(f"{owner}: metric {name!r} declares reduction {kind!r}; expected one of: "
                             f"{', '.join(REDUCTIONS)}")
        out[name] = kind
    return out


def contribution(value: torch.Tensor, kind: str, share: torch.Tensor | float) -> torch.Tensor:
    """A micro-batch's contribution to the step value of a metric of ``kind``.

    Args:
        value: the metric on the micro-batch (scalar).
        kind: one of :data:`REDUCTIONS`.
        share: ``n_mb / N_tok``, the micro-batch's share of the step batch's response tokens.

    Returns:
        ``value * share`` for ``mean``; ``value`` itself for ``sum``, ``max`` and ``min``.

    """
    if kind not in REDUCTIONS:
        raise ValueError(f"unknown metric reduction {kind!r}; expected one of: {', '.join(REDUCTIONS)}")
    return value * share if kind == MEAN else value


def engine_op(declared: Mapping[str, str], name: str) -> str:
    """``sum``, ``max`` or ``min``: how an engine reduces the contributions of metric ``name``.

    A metric the declaration does not name is summed (the ``loss_fn`` contract's default: contributions
    already normalised by the step's global counts).
    """
    return ENGINE_OPS[declared.get(name, SUM)]

