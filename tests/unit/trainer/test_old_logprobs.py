"""Skipping the old-log-prob forward when a rollout batch gets exactly one update.

The trainer's loss function without ``old_logprobs`` (the current log-probs, detached, stand in) must
give the loss, metrics, gradients and update of the path that recomputes old log-probs with a separate
forward, on a real tiny megatron policy, with the KL-to-reference and entropy terms active; the
rollout/trainer mismatch metric is then computed from the train step's log-probs.
"""

from __future__ import annotations

import math

import pytest
import torch

from nemo_prorl.algorithms.config import AlgorithmConfig
from nemo_prorl.policy.interface import TokenBatch
from nemo_prorl.policy.megatron.config import MegatronPolicyConfig
from nemo_prorl.trainer.trainer import make_loss_fn, skip_old_logprobs

VOCAB = 320


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from nemo_prorl.policy.megatron import parallel
    from nemo_prorl.policy.megatron.engine import MegatronPolicy
    from nemo_prorl.policy.megatron.testing import make_tiny_hf_model

    path = make_tiny_hf_model(tmp_path_factory.mktemp("tiny") / "qwen2", "qwen2", seed=1)
    pol = MegatronPolicy(path, MegatronPolicyConfig(micro_batch_size=2, lr=1e-3, clip_grad=10.0))
    yield pol
    parallel.destroy_parallel()


def _batch(rows: int = 6, length: int = 14) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (rows, length), generator=g)
    mask = torch.zeros(rows, length)
    for r in range(rows):
        mask[r, 3 + r % 4 : length - (r % 3)] = 1.0
    return ids, mask, torch.randn(rows, generator=g)


def _snapshot(pol):
    params = {n: p.detach().clone() for n, p in pol.model.named_parameters()}
    grads = {n: p.main_grad.detach().clone() for n, p in pol.model.named_parameters()}
    return params, grads


def _restore(pol, params):
    with torch.no_grad():
        for n, p in pol.model.named_parameters():
            p.copy_(params[n])
    pol.optimizer.reload_model_params()
    pol.reset_optimizer()


def test_reused_old_logprobs_give_the_recompute_paths_loss_and_gradients(policy):
    alg = AlgorithmConfig()
    alg.kl.coef, alg.entropy.coef = 0.05, 0.01
    loss_fn = make_loss_fn(alg)
    ids, mask, adv = _batch()
    start = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    old, _ = policy.logprobs(TokenBatch(ids, mask))
    ref = (old - 0.3 * mask).float()  # a reference the policy differs from: the KL term is non-zero
    rollout = old + 0.1 * mask  # the engine's log-probs, 0.1 off at every response token

    recompute = TokenBatch(ids, mask, {"advantages": adv, "ref_logprobs": ref, "old_logprobs": old})
    m_a = policy.train_step(recompute, loss_fn, with_entropy=True)
    params_a, grads_a = _snapshot(policy)
    _restore(policy, start)
    reuse = TokenBatch(ids, mask, {"advantages": adv, "ref_logprobs": ref, "rollout_logprobs": rollout})
    m_b = policy.train_step(reuse, loss_fn, with_entropy=True)
    params_b, grads_b = _snapshot(policy)
    _restore(policy, start)

    assert m_a["kl_loss"] > 0.01 and m_a["entropy"] > 0.1
    for key in ("loss", "pg_loss", "kl_loss", "entropy"):
        assert m_b[key] == pytest.approx(m_a[key], rel=1e-6, abs=1e-7), key
    assert m_b["grad_norm"] == pytest.approx(m_a["grad_norm"], rel=1e-6)
    assert m_b["ratio_min"] == m_b["ratio_max"] == 1.0 and m_b["clip_frac_low"] == 0.0
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-7)
        # the fused training head (policy.lm_head: fused) and the log-prob pass sum in different orders:
        # ratios 1 +- 1e-7, which Adam's first update (~lr * g / |g|) amplifies where |g| ~ adam_eps (as in
        # test_engine.py::test_micro_batches_do_not_change_the_step)
        torch.testing.assert_close(params_b[name], params_a[name], rtol=0, atol=1e-2 * 1e-3)
    # mismatch metric from the train step's log-probs: exp(0.1) at every response token
    assert m_b["token_mult_prob_error"] == pytest.approx(math.exp(0.1), rel=1e-5)
    assert "token_mult_prob_error" not in m_a


def test_skip_rule(policy):
    assert policy.train_forward_matches_logprobs
    assert skip_old_logprobs("auto", 1, policy)
    assert not skip_old_logprobs("auto", 2, policy)  # 2 mini-batches or 2 epochs: the policy moves
    assert not skip_old_logprobs("recompute", 1, policy)
    assert not skip_old_logprobs("auto", 1, object())  # a policy that does not say: recompute
    cfg = policy.model.config
    cfg.attention_dropout = 0.1  # dropout: the training forward is not the no-grad forward
    try:
        assert not policy.train_forward_matches_logprobs
        assert not skip_old_logprobs("auto", 1, policy)
    finally:
        cfg.attention_dropout = 0.0
    with pytest.raises(ValueError, match="trainer.old_logprobs must be one of"):
        skip_old_logprobs("never", 1, policy)


def test_config_rejects_unknown_mode():
    from nemo_prorl.config_schema import ConfigError
    from nemo_prorl.trainer.config import TrainerConfig

    with pytest.raises(ConfigError, match="trainer.old_logprobs"):
        TrainerConfig(old_logprobs="sometimes").validate()
    TrainerConfig(old_logprobs="recompute").validate()
