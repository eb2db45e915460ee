"""``load_policy_weights(into_policy=True)`` with bf16 parameters: the optimizer's fp32 master copies follow.

With ``params_dtype=bf16`` megatron-core's ``Float16OptimizerWithFloat16Params`` steps fp32 master copies
and copies them back into the bf16 model (megatron/core/optimizer/optimizer.py, ``step`` ->
``_copy_main_params_to_model_params``); loading only the model's weights would let the next step start
from the old master weights. ``reload_model_params`` copies model -> master. bf16 runs on CPU here (slowly,
but exactly as the GPU path's optimizer bookkeeping; the matmul numerics are not what is tested).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from nemo_prorl.policy.interface import TokenBatch
from nemo_prorl.policy.megatron.config import MegatronPolicyConfig


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from nemo_prorl.policy.megatron import parallel
    from nemo_prorl.policy.megatron.engine import MegatronPolicy
    from nemo_prorl.policy.megatron.testing import make_tiny_hf_model

    hf_dir = make_tiny_hf_model(tmp_path_factory.mktemp("tiny_bf16") / "llama", "llama", seed=1, tied=True)
    pol = MegatronPolicy(hf_dir, MegatronPolicyConfig(micro_batch_size=2, lr=1e-3, params_dtype="bf16"))
    yield pol
    parallel.destroy_parallel()


def _batch(seed: int) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 320, (4, 10), generator=g)
    mask = torch.zeros(4, 10)
    mask[:, 4:] = 1
    return TokenBatch(ids, mask, extras={"advantages": torch.randn(4, generator=g)})


def _loss(lp, ent, micro, norm):
    m = micro["response_mask"].float()
    return -(lp * m * (1 + micro["advantages"][:, None])).sum() / norm["num_tokens"], {}


def _params(pol) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in pol.model.named_parameters()}


def test_policy_to_best_refreshes_the_master_weights(policy, tmp_path):
    assert {p.dtype for p in policy.model.parameters()} == {torch.bfloat16}
    policy.train_step(_batch(1), _loss)
    best = _params(policy)
    ckpt = policy.save_checkpoint(tmp_path / "best", {})
    policy.train_step(_batch(2), _loss)
    policy.load_policy_weights(ckpt, into_policy=True)
    assert all(torch.equal(p, best[n]) for n, p in _params(policy).items())
    policy.reset_optimizer()
    policy.train_step(_batch(3), _loss)
    after = _params(policy)
    # the same update from a full weights-only load (which reloads the master copies) is bit-identical
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        policy.load_checkpoint(ckpt, load_optimizer=False)
    policy.train_step(_batch(3), _loss)
    assert all(torch.equal(p, after[n]) for n, p in _params(policy).items())
    assert any(not torch.equal(after[n], best[n]) for n in best)  # the compared update moved the weights
