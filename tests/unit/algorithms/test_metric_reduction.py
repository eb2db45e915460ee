"""A loss declares how each of its metrics reduces (``algorithms/metric_reduction.py``)."""

from __future__ import annotations

import pytest
import torch

from nemo_prorl.algorithms.config import AlgorithmConfig
from nemo_prorl.algorithms.metric_reduction import REDUCTIONS, check_reductions, contribution, engine_op
from nemo_prorl.algorithms.policy_loss import CLIPPED_METRICS, PRORL_METRICS, prorl_loss
from nemo_prorl.algorithms.registry import policy_loss_metric_reductions, register_policy_loss


def test_contributions_of_a_token_mean_sum_to_the_batch_mean():
    """Micro-batches of 3 and 1 tokens with means 0.5 and 1.0: 0.375 + 0.25 = 0.625 over the 4 tokens."""
    parts = [contribution(torch.tensor(0.5), "mean", 3 / 4), contribution(torch.tensor(1.0), "mean", 1 / 4)]
    assert float(sum(parts)) == pytest.approx(0.625)
    for kind in ("sum", "max", "min"):
        assert float(contribution(torch.tensor(0.5), kind, 0.25)) == 0.5
    with pytest.raises(ValueError, match="unknown metric reduction 'avg'"):
        contribution(torch.tensor(0.5), "avg", 0.25)


def test_engine_ops_and_the_undeclared_default():
    declared = {"a": "sum", "b": "mean", "c": "max", "d": "min"}
    assert [engine_op(declared, k) for k in "abcde"] == ["sum", "sum", "max", "min", "sum"]
    assert engine_op({}, "ratio_max") == "sum"  # no name rule: only a declaration makes a max


def test_check_reductions_names_owner_and_metric():
    assert check_reductions({"x": "max"}, "loss 'l'") == {"x": "max"}
    with pytest.raises(ValueError, match=r"loss 'l': metric 'x' declares reduction 'median'; expected"):
        check_reductions({"x": "median"}, "loss 'l'")
    assert REDUCTIONS == ("sum", "mean", "max", "min")


def test_policy_losses_declare_their_metrics_when_they_register():
    assert policy_loss_metric_reductions("clipped") == CLIPPED_METRICS
    assert CLIPPED_METRICS["ratio_max"] == "max" and CLIPPED_METRICS["ratio_min"] == "min"
    with pytest.raises(ValueError, match="declares reduction 'biggest'"):
        register_policy_loss("test_bad_decl", metric_reductions={"m": "biggest"})


def test_prorl_loss_declares_every_metric_it_reports():
    alg = AlgorithmConfig()
    alg.loss.tis, alg.loss.tis_max = "tis", 2.0
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(3, 5)
    mask[:, 0] = 0
    lp = -torch.rand(3, 5, generator=g)
    out = prorl_loss(lp, lp + 0.1, torch.randn(3, generator=g), mask, alg, ref_logprobs=lp - 0.1,
                     entropy=torch.rand(3, 5, generator=g), rollout_logprobs=lp + 0.05)
    assert set(out.reductions) == set(out.metrics)
    assert {k: out.reductions[k] for k in PRORL_METRICS if k in out.metrics} == \
        {k: v for k, v in PRORL_METRICS.items() if k in out.metrics}
    assert out.reductions["is_oob_ratio"] == "mean" and out.reductions["pg_loss"] == "sum"
