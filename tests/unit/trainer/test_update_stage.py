"""The build, log-prob and update stages (``trainer/update.py``) and the loss's metric declarations.

The stages run against :class:`BigramPolicy`, a complete, tiny ``PolicyInterface`` engine in plain torch
(a bigram table: the logits of token ``t`` depend on token ``t - 1`` only): log-probs at the policy's
temperature, the ``loss_fn`` contract (global normalisers, loss contributions summed over micro-batches,
metrics reduced as ``loss_fn.metric_reductions`` declares) and SGD updates. No megatron-core is imported;
the megatron engine is checked against the same contract in ``tests/unit/policy/test_engine.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from nemo_prorl.algorithms.config import AdvantageConfig, AlgorithmConfig
from nemo_prorl.algorithms.metric_reduction import engine_op
from nemo_prorl.algorithms.policy_loss import prorl_loss
from nemo_prorl.policy.interface import PolicyInterface, TokenBatch
from nemo_prorl.rollout.base import Sample
from nemo_prorl.rollout.metrics import token_mult_prob_error
from nemo_prorl.trainer.config import TrainerConfig
from nemo_prorl.trainer.errors import TrainingError
from nemo_prorl.trainer.records import Group, NonfiniteCount, UpdatePlan, UpdateStats
from nemo_prorl.trainer.update import (
    attach_logprobs,
    build_token_batch,
    dp_slice,
    make_loss_fn,
    plan_updates,
    reward_metrics,
    run_updates,
    train_metrics,
)

VOCAB = 11


class BigramPolicy:
    """A real (tiny) training engine satisfying ``PolicyInterface`` on one data-parallel rank."""

    train_forward_matches_logprobs = True
    dp_rank, dp_size = 0, 1

    def __init__(self, seed: int = 0, micro_batch_size: int = 2, lr: float = 0.1) -> None:
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(VOCAB, VOCAB, generator=g))
        self.reference = self.table.detach().clone()
        self.temperature = 1.0
        self.micro_batch_size, self.lr = micro_batch_size, lr
        self.calls: list[int] = []  # rows of each train_step

    def _lp(self, table: torch.Tensor, batch: TokenBatch, with_entropy: bool):
        ids, mask = batch.input_ids, batch.response_mask.float()
        logp = torch.log_softmax(table[ids[:, :-1]] / self.temperature, dim=-1)  # [B, L-1, V]
        tok = logp.gather(-1, ids[:, 1:, None])[..., 0]
        lp = torch.cat([torch.zeros_like(tok[:, :1]), tok], 1) * mask
        ent = None
        if with_entropy:
            e = -(logp.exp() * logp).sum(-1)
            ent = torch.cat([torch.zeros_like(e[:, :1]), e], 1) * mask
        return lp, ent

    def logprobs(self, batch, *, reference=False, with_entropy=False):
        with torch.no_grad():
            return self._lp(self.reference if reference else self.table, batch, with_entropy)

    def train_step(self, batch, loss_fn, *, with_entropy=False):
        self.calls.append(batch.batch_size)
        mask = batch.response_mask
        norm = {"num_tokens": float(mask.bool().sum()), "num_seqs": float(batch.batch_size)}
        declared = getattr(loss_fn, "metric_reductions", {})
        total, parts = 0.0, []
        self.table.grad = None
        for start in range(0, batch.batch_size, self.micro_batch_size):
            micro = batch.slice(start, start + self.micro_batch_size)
            lp, ent = self._lp(self.table, micro, with_entropy)
            loss, metrics = loss_fn(lp, ent, micro.as_dict(), norm)
            loss.backward()
            total += float(loss.detach())
            parts.append({k: float(v) for k, v in metrics.items()})
        out = {}
        for key in parts[0]:
            op = engine_op(declared, key)
            vals = [p[key] for p in parts]
            out[key] = sum(vals) if op == "sum" else max(vals) if op == "max" else min(vals)
        out.update(loss=total, num_tokens=norm["num_tokens"], num_seqs=norm["num_seqs"], lr=self.lr)
        if not math.isfinite(total):
            self.table.grad = None
            return {**out, "grad_norm": float("nan"), "skipped_nonfinite": 1.0}
        with torch.no_grad():
            out["grad_norm"] = float(self.table.grad.norm())
            self.table -= self.lr * self.table.grad
        return {**out, "skipped_nonfinite": 0.0}

    def gather_data_parallel(self, tensor):
        return tensor

    def set_temperature(self, temperature):
        self.temperature = float(temperature)

    def reset_reference(self):
        self.reference = self.table.detach().clone()

    def reset_optimizer(self):
        pass

    def export_hf_state_dict(self):
        return {"table": self.table.detach().clone()}

    def export_hf_checkpoint(self, directory, *, tokenizer_dir=None):
        raise NotImplementedError("not used by these stages")

    save_checkpoint = load_checkpoint = load_policy_weights = export_hf_checkpoint


def _sample(tokens, logprobs=None, finish="stop"):
    lp = None if logprobs is None else torch.tensor(logprobs)
    return Sample(prompt_index=0, prompt_token_ids=[], token_ids=list(tokens), text="", logprobs=lp,
                  finish_reason=finish)


def _groups() -> list[Group]:
    """2 groups x 2 samples; prompts of 2 and 1 tokens."""
    g0 = Group({"domain": "math"}, [1, 2], [_sample([3, 4, 5], [-0.1, -0.2, -0.3]), _sample([6], [-0.4])],
               [1.0, 0.0], [1.0, 0.0], ["ok", "ok"])
    g1 = Group({"domain": "code"}, [7], [_sample([8, 9], [-0.5, -0.6], finish="length"), _sample([10, 2])],
               [0.0, 0.5], [0.0, 0.5], ["ok", "ok"])
    return [g0, g1]


def test_the_test_policy_satisfies_the_interface():
    assert isinstance(BigramPolicy(), PolicyInterface)


def test_build_token_batch_layout_and_advantages_by_hand():
    b = build_token_batch(_groups(), pad_id=0, advantage_cfg=AdvantageConfig())
    assert b.input_ids.tolist() == [[1, 2, 3, 4, 5], [1, 2, 6, 0, 0], [7, 8, 9, 0, 0], [7, 10, 2, 0, 0]]
    assert b.response_mask.tolist() == [[0, 0, 1, 1, 1], [0, 0, 1, 0, 0], [0, 1, 1, 0, 0], [0, 1, 1, 0, 0]]
    torch.testing.assert_close(b.extras["rollout_logprobs"], torch.tensor(
        [[0, 0, -0.1, -0.2, -0.3], [0, 0, -0.4, 0, 0], [0, -0.5, -0.6, 0, 0], [0, 0, 0, 0, 0]]))
    # GRPO: (r - mean) / (unbiased std + eps) per group: [1, 0] -> +-1/sqrt(2) / (1/sqrt(2) + 1e-6)
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    torch.testing.assert_close(b.extras["advantages"], torch.tensor([a, -a, -0.25 / (math.sqrt(0.125) + 1e-6),
                                                                     0.25 / (math.sqrt(0.125) + 1e-6)]))


def test_build_token_batch_needs_engine_logprobs_for_tis():
    with pytest.raises(TrainingError, match="algorithm.loss.tis=tis needs .* sample 3 has none"):
        build_token_batch(_groups(), pad_id=0, advantage_cfg=AdvantageConfig(), tis="tis")


def test_plan_and_dp_slices():
    tc = TrainerConfig(prompts_per_step=4, mini_batch_prompts=2, ppo_epochs=3)
    plan = plan_updates(16, 4, tc, BigramPolicy())
    assert plan == UpdatePlan(seqs_per_update=8, epochs=3, num_updates=6, reuse_old_logprobs=False)
    one = plan_updates(8, 4, TrainerConfig(prompts_per_step=2, mini_batch_prompts=2), BigramPolicy())
    assert one.num_updates == 1 and one.reuse_old_logprobs
    b = build_token_batch(_groups(), pad_id=0, advantage_cfg=AdvantageConfig())
    assert dp_slice(b, 0, 4, 1, 2).input_ids.tolist() == b.input_ids[2:4].tolist()
    with pytest.raises(TrainingError, match="mini-batch of 3 sequences does not split over 2"):
        dp_slice(b, 0, 3, 0, 2)


@pytest.mark.parametrize("reuse", [False, True])
def test_attach_logprobs(reuse):
    pol = BigramPolicy()
    with torch.no_grad():
        pol.table += 0.3 * torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(1))  # != ref
    b = build_token_batch(_groups(), pad_id=0, advantage_cfg=AdvantageConfig())
    plan = UpdatePlan(seqs_per_update=4, epochs=1, num_updates=1, reuse_old_logprobs=reuse)
    out, token_mult = attach_logprobs(pol, b, plan)
    assert "ref_logprobs" not in b.extras  # the input batch is not changed
    torch.testing.assert_close(out.extras["ref_logprobs"], pol.logprobs(b, reference=True)[0])
    assert not torch.equal(out.extras["ref_logprobs"], pol.logprobs(b)[0])
    if reuse:
        assert "old_logprobs" not in out.extras and token_mult is None
    else:
        old = pol.logprobs(b)[0]
        torch.testing.assert_close(out.extras["old_logprobs"], old)
        assert token_mult == token_mult_prob_error(b.extras["rollout_logprobs"], old, b.response_mask)


def _loss_batch(seed=0, rows=6, length=9):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(rows, length)
    for r in range(rows):
        mask[r, 2 + r % 3: length - r % 2] = 1.0
    lp = -torch.rand(rows, length, generator=g) * mask
    old = lp + 0.3 * torch.randn(rows, length, generator=g) * mask
    return lp, old, mask, torch.randn(rows, generator=g)


def test_the_loss_applies_the_declared_reductions_over_micro_batches():
    """Summed contributions of 3 micro-batches equal the full batch's metric for every declared kind."""
    alg = AlgorithmConfig()
    alg.kl.coef = 0.1
    lp, old, mask, adv = _loss_batch()
    ref = old - 0.2 * mask
    roll = old + 0.05 * mask
    loss_fn = make_loss_fn(alg)
    norm = {"num_tokens": float(mask.sum()), "num_seqs": 6.0}
    full = prorl_loss(lp, old, adv, mask, alg, ref_logprobs=ref, num_tokens=norm["num_tokens"], num_seqs=6.0,
                      rollout_logprobs=roll)
    parts = []
    for s in (slice(0, 2), slice(2, 4), slice(4, 6)):
        micro = {"response_mask": mask[s], "advantages": adv[s], "old_logprobs": old[s],
                 "ref_logprobs": ref[s], "rollout_logprobs": roll[s]}
        parts.append(loss_fn(lp[s], None, micro, norm)[1])
    declared = loss_fn.metric_reductions
    assert declared["ratio_max"] == "max" and declared["ratio_min"] == "min"
    assert declared["pg_loss"] == "sum" and declared["clip_frac_high"] == "mean"
    for key, value in full.metrics.items():
        vals = torch.stack([p[key] for p in parts])
        op = engine_op(declared, key)
        got = vals.sum() if op == "sum" else vals.max() if op == "max" else vals.min()
        torch.testing.assert_close(got.double(), value.double(), rtol=1e-5, atol=1e-7, msg=key)
    tmp = sum(float(p["token_mult_prob_error"]) for p in parts)
    assert tmp == pytest.approx(token_mult_prob_error(roll, old, mask), rel=1e-6)


def test_a_micro_batch_without_tokens_contributes_nothing():
    alg = AlgorithmConfig()
    lp, old, mask, adv = _loss_batch(rows=2)
    zero = torch.zeros_like(mask)
    micro = {"response_mask": zero, "advantages": adv, "old_logprobs": old, "rollout_logprobs": old,
             "ref_logprobs": old}
    loss, metrics = make_loss_fn(alg)(lp, None, micro, {"num_tokens": 10.0, "num_seqs": 2.0})
    assert float(loss) == 0.0 and float(metrics["token_mult_prob_error"]) == 0.0
    assert float(metrics["clip_frac_high"]) == 0.0


def test_run_updates_trains_each_mini_batch_and_counts_nonfinite_updates():
    pol = BigramPolicy()
    b = build_token_batch(_groups(), pad_id=0, advantage_cfg=AdvantageConfig())
    b, _ = attach_logprobs(pol, b, UpdatePlan(2, 2, 4, False))
    start = pol.table.detach().clone()
    stats = run_updates(pol, b, make_loss_fn(AlgorithmConfig()), UpdatePlan(2, 2, 4, False),
                        NonfiniteCount(in_row=1, total=5), max_nonfinite_in_row=3, step=1)
    assert pol.calls == [2, 2, 2, 2] and len(stats.updates) == 4
    assert stats.nonfinite == NonfiniteCount(0, 5) and not torch.equal(pol.table, start)
    bad = TokenBatch(b.input_ids, b.response_mask, {**b.extras, "advantages": torch.full((4,), float("nan"))})
    with pytest.raises(TrainingError, match="3 non-finite updates in a row at step 7"):
        run_updates(pol, bad, make_loss_fn(AlgorithmConfig()), UpdatePlan(2, 2, 4, False),
                    NonfiniteCount(in_row=1, total=5), max_nonfinite_in_row=3, step=7)


def test_nonfinite_count():
    c = NonfiniteCount()
    assert c.after(True).after(True) == NonfiniteCount(2, 2)
    assert c.after(True).after(False) == NonfiniteCount(0, 1)


def test_train_metrics_average_the_updates_and_keep_the_record_layout():
    ups = [{"loss": 1.0, "kl_loss": 0.5, "entropy": 2.0, "grad_norm": 3.0, "pg_loss": 0.1, "lr": 1e-3,
            "token_mult_prob_error": 1.1},
           {"loss": 3.0, "kl_loss": 1.5, "entropy": 4.0, "grad_norm": 5.0, "pg_loss": 0.3, "lr": 1e-3,
            "token_mult_prob_error": 1.3}]
    stats = UpdateStats(updates=ups, nonfinite=NonfiniteCount(0, 2), seconds=0.5)
    m = train_metrics(stats, UpdatePlan(4, 1, 2, True), None, 0.25)
    assert list(m)[:10] == ["loss", "kl", "entropy", "grad_norm", "token_mult_prob_error",
                            "old_logprobs_reused", "time/logprobs", "time/train", "num_updates",
                            "nonfinite_total"]
    assert (m["loss"], m["kl"], m["entropy"], m["grad_norm"]) == (2.0, 1.0, 3.0, 4.0)
    assert m["token_mult_prob_error"] == pytest.approx(1.2) and m["old_logprobs_reused"] == 1.0
    assert (m["time/logprobs"], m["time/train"], m["num_updates"], m["nonfinite_total"]) == (0.25, 0.5, 2, 2)
    assert m["pg_loss"] == pytest.approx(0.2) and m["kl_loss"] == 1.0 and "loss" in m
    # the log-prob stage's value wins when it computed the old log-probs
    assert train_metrics(stats, UpdatePlan(4, 1, 2, False), 1.01, 0.0)["token_mult_prob_error"] == 1.01


def test_reward_metrics_by_hand():
    m = reward_metrics(_groups())
    assert m == {"reward/mean": 0.375, "reward/shaped_mean": 0.375, "reward/math": 0.5, "reward/code": 0.25,
                 "response_length/mean": 2.0, "response_length/max": 3, "response/truncated_frac": 0.25}
