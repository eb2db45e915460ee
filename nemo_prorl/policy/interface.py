"""What the trainer needs from a training engine: :class:`PolicyInterface` and its batch type.

The trainer never talks to megatron-core directly; it hands a :class:`TokenBatch` to an object that
satisfies :class:`PolicyInterface` (today :class:`nemo_prorl.policy.megatron.engine.MegatronPolicy`).

Token layout
------------
``input_ids[b]`` is prompt + response, right-padded to ``L``. ``response_mask[b, t] = 1`` where token
``t`` is a response token whose log-probability counts. Log-probabilities are aligned with tokens:
``logprobs[b, t] = log pi(input_ids[b, t] | input_ids[b, :t])``; position 0 has no context and is
always 0 (so ``response_mask[:, 0]`` must be 0). Positions outside the response mask are 0.

Loss function contract
----------------------
:meth:`PolicyInterface.train_step` takes a ``loss_fn`` with the signature of :class:`LossFn`::

    loss, metrics = loss_fn(logprobs, entropy, micro, norm)

* ``logprobs``: ``[b, L]`` float32 log-probs of the current policy for one micro-batch of ``b``
  sequences, laid out as above, differentiable.
* ``entropy``: ``[b, L]`` float32 per-token entropy of the policy's distribution (differentiable), or
  ``None`` when the step was called with ``with_entropy=False``.
* ``micro``: the micro-batch's slice of the batch: ``"input_ids" [b, L]``, ``"response_mask" [b, L]``
  and every tensor of :attr:`TokenBatch.extras` (``advantages [b]``, ``old_logprobs [b, L]``,
  ``ref_logprobs [b, L]``, ...), sliced along dimension 0. The rows of one micro-batch need not be
  consecutive rows of the batch (token-budget micro-batches group rows by length), and ``L`` is always
  the batch's full length, whatever length the engine's forward ran.
  With pipeline parallelism and fixed-count micro-batches the last micro-batch is padded to
  ``micro_batch_size`` with all-zero rows (``response_mask`` 0, extras 0): their contribution must be
  0 (clamp per-sequence denominators, e.g. ``mask.sum(1).clamp(min=1)``).
* ``norm``: the global normalisers of the **whole step batch**, identical on every rank:
  ``num_tokens`` (float; response tokens summed over all micro-batches and all data-parallel ranks)
  and ``num_seqs`` (float; sequences, same sum). The engine computes them with an all-reduce over
  the data-parallel group before the first micro-batch.
* Returns ``loss``: a scalar tensor that is this micro-batch's **contribution** to the step loss,
  i.e. already divided by a global normaliser from ``norm`` (token-mean:
  ``sum(per_token * mask) / norm["num_tokens"]``; sequence-mean: ``sum(per_seq) / norm["num_seqs"]``).
  The engine back-propagates the plain **sum** of the contributions over micro-batches and
  data-parallel ranks; it adds no division by the number of micro-batches or the data-parallel size
  (megatron's own scalings are switched off). Hence DP=2 with half the batch each equals DP=1 with the
  whole batch, and two micro-batches equal one.
* ``metrics``: scalar tensors, reduced the same way as the loss (summed over micro-batches and
  data-parallel ranks), so they too should be normalised by ``norm``. A ``loss_fn`` may declare other
  reductions in an attribute ``metric_reductions: Mapping[str, str]`` (metric name -> ``"sum"``,
  ``"mean"``, ``"max"`` or ``"min"``, :mod:`nemo_prorl.algorithms.metric_reduction`): ``max`` / ``min``
  metrics are reduced with max / min; ``sum`` and ``mean`` ones are summed (a ``mean`` metric's
  contribution is already weighted by the micro-batch's token share). No metric name implies a
  reduction.

:meth:`PolicyInterface.train_step` returns ``loss``, ``grad_norm`` (before clipping), ``lr``,
``num_tokens``, ``num_seqs`` and the reduced metrics, as Python floats, on every rank.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["TokenBatch", "LossFn", "PolicyInterface"]


@dataclass
class TokenBatch:
    """A batch of token sequences for log-prob computation and training.

    Attributes:
        input_ids: ``[B, L]`` int64 token ids, prompt + response, right-padded.
        response_mask: ``[B, L]`` {0, 1} (bool/int/float); 1 where the token is a response token
            whose log-prob counts. ``response_mask[:, 0]`` must be 0.
        extras: optional per-sample (``[B]``) or per-token (``[B, L]``) tensors the loss needs, e.g.
            ``advantages [B]``, ``old_logprobs [B, L]``, ``ref_logprobs [B, L]``. They are sliced into
            micro-batches along dimension 0 together with ``input_ids``.

    """

    input_ids: torch.Tensor
    response_mask: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def batch_size(self) -> int:
        """Number of sequences ``B``."""
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        """Padded sequence length ``L``."""
        return int(self.input_ids.shape[1])

    def validate(self) -> None:
        """Check shapes and dtypes; raise ``ValueError`` naming the offending field."""
        ids, mask = self.input_ids, self.response_mask
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            raise ValueError(f"TokenBatch.input_ids must be a [B, L] tensor, got {_describe(ids)}")
        if ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"TokenBatch.input_ids must be int32/int64, got {ids.dtype}")
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(ids.shape):
            raise ValueError(
                f"TokenBatch.response_mask must have the shape of input_ids {tuple(ids.shape)}, "
                f"got {_describe(mask)}"
            )
        if ids.shape[1] < 2:
            raise ValueError(f"TokenBatch.input_ids needs at least 2 positions, got L={ids.shape[1]}")
        if bool((mask[:, 0] != 0).any()):
            row = int((mask[:, 0] != 0).nonzero()[0, 0])
            raise ValueError(
                f"TokenBatch.response_mask[{row}, 0] is set: position 0 has no context and cannot be a "
                "response token"
            )
        if ids.numel() and int(ids.min()) < 0:
            row = int((ids < 0).any(dim=1).nonzero()[0, 0])
            raise ValueError(f"TokenBatch.input_ids row {row} has a negative token id")
        for name, value in self.extras.items():
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"TokenBatch.extras[{name!r}] must be a tensor, got {type(value).__name__}")
            if value.dim() == 0 or value.shape[0] != ids.shape[0]:
                raise ValueError(
                    f"TokenBatch.extras[{name!r}] must have batch dimension {ids.shape[0]} first, "
                    f"got shape {tuple(value.shape)}"
                )
            if value.dim() >= 2 and value.shape[1] != ids.shape[1]:
                raise ValueError(
                    f"TokenBatch.extras[{name!r}] is per-token but has length {value.shape[1]}, "
                    f"input_ids has {ids.shape[1]}"
                )

    def slice(self, start: int, stop: int) -> TokenBatch:
        """Rows ``start:stop`` of every tensor (views, no copy)."""
        return TokenBatch(
            input_ids=self.input_ids[start:stop],
            response_mask=self.response_mask[start:stop],
            extras={k: v[start:stop] for k, v in self.extras.items()},
        )

    def as_dict(self) -> dict[str, torch.Tensor]:
        """``input_ids``, ``response_mask`` and the extras in one flat dict (the loss's ``micro``)."""
        out = {"input_ids": self.input_ids, "response_mask": self.response_mask}
        for name, value in self.extras.items():
            if name in out:
                raise ValueError(f"TokenBatch.extras may not be named {name!r} (reserved)")
            out[name] = value
        return out


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return type(value).__name__


@runtime_checkable
class LossFn(Protocol):
    """A policy loss; see the module docstring for the exact contract."""

    def __call__(
        self,
        logprobs: torch.Tensor,
        entropy: torch.Tensor | None,
        micro: Mapping[str, torch.Tensor],
        norm: Mapping[str, float],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return ``(loss contribution, metrics)`` for one micro-batch."""
        ...


@runtime_checkable
class PolicyInterface(Protocol):
    """The training engine as the trainer sees it. All methods are collective: every rank calls them."""

    def logprobs(
        self, batch: TokenBatch, *, reference: bool = False, with_entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs (and entropies) of the policy, or of the reference policy.

        Args:
            batch: the sequences; every data-parallel rank passes its own shard.
            reference: use the frozen reference weights instead of the current ones.
            with_entropy: also return the per-token entropy.

        Returns:
            ``(logprobs [B, L], entropy [B, L] | None)``, float32 on CPU, no grad, on every rank
            (also on every pipeline stage); zero outside ``response_mask``.

        """
        ...

    def train_step(
        self, batch: TokenBatch, loss_fn: LossFn, *, with_entropy: bool = False
    ) -> dict[str, float]:
        """One optimizer step over ``batch`` (this data-parallel rank's shard); see the module docs."""
        ...

    @property
    def dp_rank(self) -> int:
        """The data-parallel rank of this process (which shard of a batch it trains on)."""
        ...

    @property
    def dp_size(self) -> int:
        """The number of data-parallel ranks (shards of a batch)."""
        ...

    def gather_data_parallel(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every data-parallel rank's ``[b, ...]`` tensor along dim 0, in rank order.

        Collective over the data-parallel group; the result is on the device ``tensor`` was on.
        """
        ...

    def set_temperature(self, temperature: float) -> None:
        """Log-probs and training use the policy's distribution at ``temperature`` (the rollouts' one)."""
        ...

    def reset_reference(self) -> None:
        """Reference policy := current policy weights (ProRL's reference reset)."""
        ...

    def reset_optimizer(self) -> None:
        """Zero all optimizer moments and step counters (ProRL's hard optimizer reset)."""
        ...

    def export_hf_state_dict(self) -> dict[str, torch.Tensor]:
        """Full HF-named weights of the current policy (gathered over TP/PP), for the rollout engine."""
        ...

    def export_hf_checkpoint(self, directory: str | Path, *, tokenizer_dir: str | Path | None = None) -> Path:
        """Write the current policy as an HF checkpoint (weights, config, tokenizer files) into ``directory``.

        Collective (the weights are gathered); one rank writes, atomically (a temporary directory renamed).
        """
        ...

    def save_checkpoint(self, directory: str | Path, extra_state: Mapping[str, Any]) -> Path:
        """Atomically write weights, optimizer, reference weights, RNG and JSON ``extra_state``."""
        ...

    def load_checkpoint(self, directory: str | Path) -> dict[str, Any]:
        """Restore a checkpoint written by :meth:`save_checkpoint`; return its ``extra_state``."""
        ...

    def load_policy_weights(self, directory: str | Path, *, into_policy: bool = False) -> None:
        """Reference (and, with ``into_policy``, the policy) := the policy weights of a saved checkpoint."""
        ...
