"""``policy.lm_head: fused`` vs ``chunked`` through the real ``MegatronPolicy.train_step`` (fp32, CPU).

Both heads run the trainer's own ``make_loss_fn`` (the ProRL loss: clipped surrogate with dual clip, KL k3
to a reference, entropy bonus, TIS weights from rollout log-probs). Tolerances: fp32 on a tiny Qwen2,
loss and summed metrics to 1e-6 absolute, every parameter gradient to 1e-5 relative to the largest entry
of the gradient (the heads sum the same terms in a different order), and the Adam update to 1e-2 * lr.
"""

from __future__ import annotations

import pytest
import torch

from nemo_prorl.algorithms import AlgorithmConfig
from nemo_prorl.policy.interface import TokenBatch
from nemo_prorl.policy.megatron.config import MegatronPolicyConfig
from nemo_prorl.trainer.trainer import make_loss_fn

VOCAB = 320
LR = 1e-3


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from nemo_prorl.policy.megatron import parallel
    from nemo_prorl.policy.megatron.engine import MegatronPolicy
    from nemo_prorl.policy.megatron.testing import make_tiny_hf_model

    hf_dir = make_tiny_hf_model(tmp_path_factory.mktemp("tiny") / "qwen2", "qwen2", seed=0)
    pol = MegatronPolicy(hf_dir, MegatronPolicyConfig(micro_batch_size=2, lr=LR, clip_grad=0.0,
                                                      logprob_chunk_size=5, temperature=1.2))
    yield pol
    parallel.destroy_parallel()


def _batch(pol, seed: int, rows: int = 5, length: int = 14) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (rows, length), generator=g)
    mask = torch.zeros(rows, length)
    for r in range(rows):
        mask[r, 3 + r % 3 : length - (r % 2) * 3] = 1
    lp, _ = pol.logprobs(TokenBatch(ids, mask))
    noise = lambda s: s * torch.randn(rows, length, generator=g) * mask  # noqa: E731
    extras = {"advantages": torch.randn(rows, generator=g), "old_logprobs": lp + noise(0.3),
              "ref_logprobs": lp + noise(0.2), "rollout_logprobs": lp + noise(0.3)}
    return TokenBatch(ids, mask, extras=extras)


def _step(pol, batch, loss_fn, head: str, start):
    with torch.no_grad():
        for n, p in pol.model.named_parameters():
            p.copy_(start[n])
    pol.optimizer.reload_model_params()
    pol.reset_optimizer()
    pol.config.lm_head = head
    m = pol.train_step(batch, loss_fn, with_entropy=True)
    grads = {n: p.main_grad.detach().clone() for n, p in pol.model.named_parameters()}
    params = {n: p.detach().clone() for n, p in pol.model.named_parameters()}
    return m, grads, params


@pytest.mark.parametrize("agg,tokens", [("token-mean", None), ("seq-mean-token-mean", 24)])
def test_fused_head_equals_chunked_head_in_train_step(policy, agg, tokens):
    alg = AlgorithmConfig()
    alg.loss.agg, alg.loss.dual_clip, alg.loss.tis = agg, 3.0, "tis"
    alg.kl.coef, alg.kl.estimator, alg.entropy.coef = 0.1, "k3", 0.01
    loss_fn = make_loss_fn(alg)
    batch = _batch(policy, seed=0)
    start = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    policy.config.micro_batch_tokens = tokens
    try:
        mc, gc, pc = _step(policy, batch, loss_fn, "chunked", start)
        mf, gf, pf = _step(policy, batch, loss_fn, "fused", start)
    finally:
        policy.config.micro_batch_tokens = None
        policy.config.lm_head = "fused"
        with torch.no_grad():
            for n, p in policy.model.named_parameters():
                p.copy_(start[n])
        policy.optimizer.reload_model_params()
        policy.reset_optimizer()
    assert mf.keys() == mc.keys()
    assert abs(mf["loss"]) > 1e-4 and mf["grad_norm"] > 0  # the comparison is not vacuous
    for k in mc:
        if k not in ("lr",):
            assert mf[k] == pytest.approx(mc[k], abs=1e-6, rel=1e-5), k
    assert max(float(g.abs().max()) for g in gc.values()) > 1e-6  # grads kept after the step
    for n in gc:
        scale = float(gc[n].abs().max())
        assert float((gf[n] - gc[n]).abs().max()) <= 1e-5 * max(scale, 1e-12), n
    assert max(float((pf[n] - pc[n]).abs().max()) for n in pc) < 1e-2 * LR
    assert max(float((pf[n] - start[n]).abs().max()) for n in pc) > 0.1 * LR  # a real update happened


def test_lm_head_key_is_validated():
    with pytest.raises(ValueError, match="policy.lm_head"):
        MegatronPolicyConfig(lm_head="naive")
    assert MegatronPolicyConfig().lm_head == "fused"
    assert MegatronPolicyConfig.from_dict({"lm_head": "chunked"}).lm_head == "chunked"
