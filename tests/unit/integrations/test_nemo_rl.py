"""``nemo_prorl.integrations.nemo_rl`` with inputs shaped as NeMo-RL's code builds them.

Shapes and call forms emulate NeMo-RL at commit 7ea279abfbeb698b092856d0dab61e7cf39bc909 (NeMo-RL is not
installed here):

* ``nemo_rl/algorithms/loss/wrapper.py::wrap_loss_fn_with_input_preparation`` calls
  ``loss_fn(data=data, global_valid_seqs=..., global_valid_toks=..., **loss_input)`` where, for
  ``input_type == LOGPROB``, ``nemo_rl/algorithms/loss/utils.py::prepare_loss_input`` makes
  ``loss_input = {"next_token_logprobs": [B, S-1]}``.
* ``data`` holds ``[B, S]`` ``token_mask``, ``advantages``, ``prev_logprobs``,
  ``reference_policy_logprobs`` and ``[B]`` ``sample_mask`` (``ClippedPGLossDataDict`` in
  ``nemo_rl/algorithms/loss/loss_functions.py``, which slices them ``[:, 1:]``).
* ``global_valid_seqs = sum(sample_mask)``, ``global_valid_toks = sum(token_mask[:, 1:] *
  sample_mask[:, None])``, all-reduced over the data-parallel group
  (``nemo_rl/models/megatron/data.py``), as 0-d tensors.
* ``nemo_rl/environments/interfaces.py``: ``step(message_log_batch, metadata)`` with message logs of
  ``{"role", "content"}`` dicts returns ``EnvironmentReturn(observations, metadata, next_stop_strings,
  rewards [B], terminateds [B], answers)``; ``MathEnvironment`` metadata is ``{"ground_truth": str}``.
"""

from __future__ import annotations

import math

import pytest
import torch

from nemo_prorl.algorithms import AlgorithmConfig, prorl_loss
from nemo_prorl.config_schema import load
from nemo_prorl.integrations.nemo_rl import LossInputType, LossType, ProRLEnvironment, ProRLLossFn
from nemo_prorl.rewards import RewardPool, RewardsConfig


def _globals(data):
    """The normalisers as nemo_rl/models/megatron/data.py computes them (single rank)."""
    seqs = torch.sum(data["sample_mask"])
    toks = torch.sum(data["token_mask"][:, 1:] * data["sample_mask"].unsqueeze(-1))
    return seqs, toks


def _batch(b=4, s=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    token_mask = torch.zeros(b, s)
    for i in range(b):
        token_mask[i, 2:2 + 1 + i % (s - 2)] = 1.0  # prompt tokens 0..1, responses of different lengths
    data = {
        "input_ids": torch.randint(0, 50, (b, s), generator=g),
        "token_mask": token_mask,
        "sample_mask": torch.tensor([1.0] * (b - 1) + [0.0]),  # last sample dropped (e.g. filtered)
        "advantages": torch.randn(b, s, generator=g),
        "prev_logprobs": -torch.rand(b, s, generator=g) * 2,
        "generation_logprobs": -torch.rand(b, s, generator=g) * 2,
        "reference_policy_logprobs": -torch.rand(b, s, generator=g) * 2,
    }
    curr = (data["prev_logprobs"][:, 1:] + 0.3 * torch.randn(b, s - 1, generator=g)).requires_grad_(True)
    return data, curr


def test_hand_computed_case():
    """B=1, S=3: prompt token then two response tokens; ratios 1.5 (A=+1) and 0.5 (A=-1).

    clip 0.8..1.4 (clip_low 0.2, clip_high 0.4): token 1 max(-1.5, -1.4) = -1.4, token 2 max(0.5, 0.8) = 0.8;
    token-mean = -0.6 / 2 = -0.3. k3 with ref 0: exp(-lp) + lp - 1 = 1/1.5 + ln 1.5 - 1 = 0.0721318 and
    2 - ln 2 - 1 = 0.3068528.
    """
    data = {"token_mask": torch.tensor([[0.0, 1.0, 1.0]]), "sample_mask": torch.tensor([1.0]),
            "advantages": torch.tensor([[0.0, 1.0, -1.0]]), "prev_logprobs": torch.zeros(1, 3),
            "reference_policy_logprobs": torch.zeros(1, 3)}
    lp = torch.log(torch.tensor([[1.5, 0.5]])).requires_grad_(True)
    fn = ProRLLossFn({"loss": {"clip_low": 0.2, "clip_high": 0.4}, "kl": {"coef": 0.0}})
    loss, metrics = fn(data=data, global_valid_seqs=torch.tensor(1.0), global_valid_toks=torch.tensor(2.0),
                       next_token_logprobs=lp)
    assert loss.item() == pytest.approx(-0.3, abs=1e-6)
    # another micro-batch holds 2 more tokens: the same sum divided by the global count 4
    loss4, _ = fn(data=data, global_valid_seqs=torch.tensor(2.0), global_valid_toks=torch.tensor(4.0),
                  next_token_logprobs=lp)
    assert loss4.item() == pytest.approx(-0.15, abs=1e-6)
    k3 = [(1 / 1.5) + math.log(1.5) - 1, 2.0 - math.log(2.0) - 1]
    assert k3 == pytest.approx([0.0721318, 0.3068528], abs=1e-6)
    fn_kl = ProRLLossFn({"loss": {"clip_low": 0.2, "clip_high": 0.4}, "kl": {"coef": 0.1, "estimator": "k3"}})
    loss_kl, metrics_kl = fn_kl(data=data, global_valid_seqs=torch.tensor(1.0),
                                global_valid_toks=torch.tensor(2.0), next_token_logprobs=lp)
    assert loss_kl.item() == pytest.approx(-0.3 + 0.1 * sum(k3) / 2, abs=1e-6)
    assert metrics_kl["kl_loss"] == pytest.approx(sum(k3) / 2, abs=1e-6)
    assert metrics["pg_loss"] == pytest.approx(-0.3, abs=1e-6) and metrics["num_valid_samples"] == 1.0
    loss_kl.backward()
    assert lp.grad is not None and torch.isfinite(lp.grad).all()


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_equals_prorl_loss_on_the_same_inputs(agg):
    cfg = load(AlgorithmConfig, {"loss": {"agg": agg, "dual_clip": 3.0}, "kl": {"coef": 0.05}}, "algorithm")
    fn = ProRLLossFn(cfg)
    assert fn.input_type == LossInputType.LOGPROB
    assert fn.loss_type == (LossType.TOKEN_LEVEL if agg == "token-mean" else LossType.SEQUENCE_LEVEL)
    data, curr = _batch()
    seqs, toks = _globals(data)
    loss, _ = fn(data=data, global_valid_seqs=seqs, global_valid_toks=toks, next_token_logprobs=curr)
    mask = data["token_mask"][:, 1:] * data["sample_mask"][:, None]
    ref = prorl_loss(curr, data["prev_logprobs"][:, 1:], data["advantages"][:, 1:], mask, cfg,
                     ref_logprobs=data["reference_policy_logprobs"][:, 1:], num_tokens=toks, num_seqs=seqs)
    assert loss.item() == pytest.approx(ref.loss.item(), abs=1e-7)
    g1 = torch.autograd.grad(loss, curr)[0]
    g2 = torch.autograd.grad(ref.loss, curr)[0]
    assert torch.allclose(g1, g2)
    assert torch.all(g1[3] == 0)  # the sample_mask = 0 row gets no gradient


def test_micro_batches_sum_to_the_global_batch_loss():
    """NeMo-RL sums micro-batch losses normalised by the global counts (gradient accumulation)."""
    fn = ProRLLossFn({"kl": {"coef": 0.01}})
    data, curr = _batch(b=6, seed=1)
    seqs, toks = _globals(data)
    full, _ = fn(data=data, global_valid_seqs=seqs, global_valid_toks=toks, next_token_logprobs=curr)
    parts = []
    for sl in (slice(0, 2), slice(2, 6)):
        mb = {k: v[sl] for k, v in data.items()}
        parts.append(fn(data=mb, global_valid_seqs=seqs, global_valid_toks=toks,
                        next_token_logprobs=curr[sl])[0])
    assert sum(parts).item() == pytest.approx(full.item(), abs=1e-6)


def test_entropy_bonus_is_refused():
    with pytest.raises(ValueError, match=r"algorithm\.entropy\.coef"):
        ProRLLossFn({"entropy": {"coef": 0.01}})


def test_environment_rewards_equal_our_rewards():
    convs = [
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "It is \\boxed{4}"}],
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "\\boxed{5}"}],
        [{"role": "user", "content": "Pick"}, {"role": "assistant", "content": "The answer is "},
         {"role": "assistant", "content": "\\boxed{B}"}],
        [{"role": "user", "content": "Write lower case"}, {"role": "assistant", "content": "all lower"}],
        [{"role": "user", "content": "?"}, {"role": "assistant", "content": "no box"}],
    ]
    metadata = [{"ground_truth": "4"}, {"ground_truth": "4"}, {"domain": "mcq", "answer": "B"},
                {"domain": "ifeval", "instructions": [{"id": "change_case:english_lowercase", "kwargs": {}}]},
                {"ground_truth": "1"}]
    env = ProRLEnvironment({"rewards": {"num_workers": 2, "timeout_s": 20.0}})
    try:
        ret = env.step(convs, metadata)
    finally:
        env.shutdown()
    assert ret.rewards.dtype == torch.float32 and ret.rewards.shape == (5,)
    assert ret.terminateds.tolist() == [1.0] * 5
    assert ret.next_stop_strings == [None] * 5 and ret.metadata == metadata and ret.answers is None
    rows = [{"domain": "math", "answer": "4", "response": "It is \\boxed{4}"},
            {"domain": "math", "answer": "4", "response": "\\boxed{5}"},
            {"domain": "mcq", "answer": "B", "response": "The answer is \\boxed{B}"},
            {**metadata[3], "response": "all lower"},
            {"domain": "math", "answer": "1", "response": "no box"}]
    with RewardPool(RewardsConfig(num_workers=1)) as pool:
        ours = [r.score for r in pool.score(rows)]
    assert ret.rewards.tolist() == ours == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert [o["content"] for o in ret.observations] == [
        "Environment: correct", "Environment: incorrect", "Environment: correct", "Environment: correct",
        "Environment: incorrect (no_answer)"]
    batch = {"rewards": ret.rewards, "is_end": torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0])}
    _, metrics = env.global_post_process_and_metrics(batch)
    assert metrics == {"accuracy": pytest.approx(2 / 5),
                       "fraction_of_samples_properly_ended": pytest.approx(0.8)}
    with pytest.raises(ValueError, match="env.prorl: unknown key"):
        ProRLEnvironment({"reward": {}})
