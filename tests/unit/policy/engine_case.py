"""The shared case of the engine tests that compare two ways of running one step (memory settings, packing).

One small batch with ragged response ends, old / reference log-probs as the trainer makes them, the
trainer's ProRL loss, and a step that hands back its metrics and raw gradients and then restores the
weights and the optimizer, so that one cached :class:`MegatronPolicy` serves every comparison.
"""

from __future__ import annotations

import torch

from nemo_prorl.policy.interface import TokenBatch
from nemo_prorl.policy.megatron.config import MegatronPolicyConfig

VOCAB = 320
ROWS, LENGTH = 8, 24
# response ends per row: lengths 24, 7, 15, 10, 24, 6, 19, 12 (one row = the batch's longest twice)
ENDS = [24, 7, 15, 10, 24, 6, 19, 12]


class PolicyCache:
    """``cache(**config)`` -> a :class:`MegatronPolicy` on ``hf_dir``, built once per config.

    Defaults: 2-row micro-batches, lr 1e-3, no gradient clipping (so the raw gradients compare).
    :meth:`close` tears megatron's parallel state down.
    """

    def __init__(self, hf_dir) -> None:  # noqa: ANN001
        self.hf_dir = hf_dir
        self._built: dict[tuple, object] = {}

    def __call__(self, **kw):  # noqa: ANN003, ANN204
        from nemo_prorl.policy.megatron.engine import MegatronPolicy

        key = tuple(sorted((k, repr(v)) for k, v in kw.items()))
        if key not in self._built:
            cfg = MegatronPolicyConfig(**{"micro_batch_size": 2, "lr": 1e-3, "clip_grad": 0.0, **kw})
            self._built[key] = MegatronPolicy(self.hf_dir, cfg)
        return self._built[key]

    def close(self) -> None:
        from nemo_prorl.policy.megatron import parallel

        parallel.destroy_parallel()


def make_batch(seed: int = 0) -> TokenBatch:
    """``[ROWS, LENGTH]`` random ids; row ``r`` answers from position ``3 + r % 3`` to ``ENDS[r]``."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (ROWS, LENGTH), generator=g)
    mask = torch.zeros(ROWS, LENGTH)
    for r, end in enumerate(ENDS):
        mask[r, 3 + r % 3 : end] = 1
    return TokenBatch(ids, mask, extras={"advantages": torch.randn(ROWS, generator=g)})


def with_old_and_ref(policy, batch: TokenBatch) -> TokenBatch:  # noqa: ANN001
    """Add old / reference log-probs as the trainer does (policy log-probs, perturbed so ratios != 1)."""
    g = torch.Generator().manual_seed(7)
    lp, _ = policy.logprobs(batch)
    mask = batch.response_mask
    extras = dict(batch.extras)
    extras["old_logprobs"] = (lp + 0.05 * torch.randn(lp.shape, generator=g)) * mask
    extras["ref_logprobs"] = (lp + 0.1 * torch.randn(lp.shape, generator=g)) * mask
    return TokenBatch(batch.input_ids, batch.response_mask, extras=extras)


def prorl_loss_fn(agg: str = "token-mean"):  # noqa: ANN201
    """The trainer's loss: clip 0.2 / 0.4, k3 KL 0.1, entropy 0.01, aggregation ``agg``."""
    from nemo_prorl.algorithms.config import AlgorithmConfig
    from nemo_prorl.config_schema import load
    from nemo_prorl.trainer.trainer import make_loss_fn

    alg = load(AlgorithmConfig,
               {"loss": {"agg": agg, "clip_low": 0.2, "clip_high": 0.4}, "kl": {"coef": 0.1},
                "entropy": {"coef": 0.01}}, "algorithm")
    return make_loss_fn(alg)


def step_and_restore(policy, batch: TokenBatch, loss_fn) -> tuple[dict[str, float], dict[str, torch.Tensor]]:  # noqa: ANN001
    """One train step; returns its metrics and the raw gradients, then restores weights and optimizer."""
    start = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    metrics = policy.train_step(batch, loss_fn, with_entropy=True)
    grads = {n: p.main_grad.detach().clone() for n, p in policy.model.named_parameters()}
    with torch.no_grad():
        for n, p in policy.model.named_parameters():
            p.copy_(start[n])
    policy.optimizer.reload_model_params()
    policy.reset_optimizer()
    return metrics, grads
