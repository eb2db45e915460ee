"""Memory settings of MegatronPolicy that must not change the maths: recompute and token-budget micro-batches.

Every comparison runs the real :class:`MegatronPolicy` (megatron-core's local layer spec, CPU, fp32,
gloo, one process) on the same weights and the same batch, and compares the step's loss and the raw
gradients (megatron's ``main_grad`` buffers after the step, ``clip_grad=0`` so nothing rescales them).

Recompute: megatron reruns the very same kernels on the same inputs in backward
(``transformer_block.TransformerBlock._checkpointed_forward`` for ``full``,
``transformer_layer.TransformerLayer._forward_mlp`` / ``attention.Attention._checkpointed_attention_forward``
for ``selective``, both through ``tensor_parallel.random.checkpoint``), so on CPU the results are
bitwise equal (measured max |diff| 0.0); asserted with ``atol=1e-7``.

Token budget: the micro-batches have other shapes than the fixed-count path's (rows regrouped, forward
cut at each micro-batch's longest row), so matmul round-off differs; measured max |diff| <= 6e-8 on a
loss of ~0.5 and <= 4e-8 on gradients of up to ~0.09; asserted with ``atol=1e-6`` (``rtol=1e-5``).
"""

from __future__ import annotations

import pytest
import torch
from engine_case import (
    ENDS,
    LENGTH,
    ROWS,
    PolicyCache,
    make_batch,
    prorl_loss_fn,
    step_and_restore,
    with_old_and_ref,
)

from nemo_prorl.policy.interface import TokenBatch
from nemo_prorl.policy.megatron.config import MegatronPolicyConfig
from nemo_prorl.policy.micro_batching import padding_fraction, sequence_lengths, token_budget_bins

# On a CUDA machine the same tests run on the GPU (Transformer Engine's spec when installed), where the
# attention backward may accumulate in a nondeterministic order: looser there, unmeasured.
_CUDA = torch.cuda.is_available()
RECOMPUTE_ATOL = 1e-5 if _CUDA else 1e-7
BUDGET_ATOL, BUDGET_RTOL = (1e-5, 1e-4) if _CUDA else (1e-6, 1e-5)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from nemo_prorl.policy.megatron.testing import make_tiny_hf_model

    return make_tiny_hf_model(tmp_path_factory.mktemp("tiny") / "qwen2", "qwen2", seed=0, num_layers=4)


@pytest.fixture(scope="module")
def build(hf_dir):
    """``build(**config)`` -> a MegatronPolicy (cached per config); parallel state torn down at the end."""
    cache = PolicyCache(hf_dir)
    yield cache
    cache.close()


def _assert_grads_close(got, want, atol, rtol=0.0):
    assert got.keys() == want.keys()
    assert max(float(g.abs().max()) for g in want.values()) > 0
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=atol, rtol=rtol, msg=name)


# ------------------------------------------------------------------------------------------- recompute


@pytest.mark.parametrize(
    "recompute",
    [
        {"recompute": "full"},
        {"recompute": "full", "recompute_num_layers": 2},
        {"recompute": "selective"},  # ["mlp"]
        {"recompute": "selective", "recompute_modules": ["core_attn", "mlp"]},
    ],
    ids=["full", "full-2-layers", "selective-mlp", "selective-attn-mlp"],
)
def test_recompute_gives_the_same_loss_and_gradients(build, recompute):
    base = build()
    batch = with_old_and_ref(base, make_batch(1))
    loss_fn = prorl_loss_fn()
    m0, g0 = step_and_restore(base, batch, loss_fn)
    policy = build(**recompute)
    cfg = policy.model.config
    want = policy.config.transformer_overrides()
    assert cfg.recompute_granularity == want["recompute_granularity"]
    if recompute["recompute"] == "full":
        assert cfg.recompute_method == "uniform" and cfg.recompute_num_layers == want["recompute_num_layers"]
    else:
        assert cfg.recompute_modules == want["recompute_modules"]
    m1, g1 = step_and_restore(policy, batch, loss_fn)
    assert m1["loss"] == pytest.approx(m0["loss"], abs=RECOMPUTE_ATOL)
    assert m1["grad_norm"] == pytest.approx(m0["grad_norm"], rel=1e-4 if _CUDA else 1e-6)
    _assert_grads_close(g1, g0, RECOMPUTE_ATOL)


def test_recompute_config_errors_name_the_key_and_the_fix():
    with pytest.raises(ValueError, match=r"^policy\.recompute: unknown value 'partial'; expected one"):
        MegatronPolicyConfig(recompute="partial")
    with pytest.raises(ValueError, match=r"policy\.recompute_num_layers.*set policy\.recompute=full"):
        MegatronPolicyConfig(recompute="selective", recompute_num_layers=2)
    with pytest.raises(ValueError, match=r"^policy\.recompute_num_layers: must be >= 1, got 0"):
        MegatronPolicyConfig(recompute="full", recompute_num_layers=0)
    with pytest.raises(ValueError, match=r"policy\.recompute_modules.*set policy\.recompute=selective"):
        MegatronPolicyConfig(recompute="full", recompute_modules=["mlp"])
    with pytest.raises(ValueError, match=r"'layernorm' is not supported"):
        MegatronPolicyConfig(recompute="selective", recompute_modules=["layernorm"])
    with pytest.raises(ValueError, match=r"'moe' is not a dense-model module"):
        MegatronPolicyConfig(recompute="selective", recompute_modules=["moe"])
    with pytest.raises(ValueError, match=r"^policy\.recompute_modules: expected list of str or null"):
        MegatronPolicyConfig(recompute="selective", recompute_modules="mlp")
    assert MegatronPolicyConfig().transformer_overrides() == {}
    assert MegatronPolicyConfig(recompute="full").transformer_overrides() == {
        "recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1,
    }
    assert MegatronPolicyConfig(recompute="selective").transformer_overrides() == {
        "recompute_granularity": "selective", "recompute_modules": ["mlp"],
    }


def test_recompute_num_layers_must_divide_the_layers_per_stage(hf_dir):
    from nemo_prorl.policy.megatron.engine import MegatronPolicy

    with pytest.raises(ValueError, match=r"policy\.recompute_num_layers=3 must divide the 4 layers"):
        MegatronPolicy(hf_dir, MegatronPolicyConfig(recompute="full", recompute_num_layers=3))


def test_trainer_config_reports_the_dotted_policy_key():
    from nemo_prorl.config_schema import ConfigError
    from nemo_prorl.trainer.config import build_config

    with pytest.raises(ConfigError, match=r"^policy\.recompute: unknown value 'everything'; expected one of"):
        build_config({"model": "m", "policy": {"recompute": "everything"}})
    with pytest.raises(ConfigError, match=r"^policy\.micro_batch_tokens: must be >= 2, got 1; null \(fixed"):
        build_config({"model": "m", "policy": {"micro_batch_tokens": 1}})


# ------------------------------------------------------------------------------- token-budget batches


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("budget", [24, 50, 200])
def test_token_budget_step_equals_the_fixed_count_step(build, budget, agg):
    """Same mini-batch cut by a token budget or into fixed pairs: same loss, metrics and gradients.

    ``seq-mean-token-sum-norm`` with ``norm_len`` null divides by the padded length ``L``: it stays
    invariant because the ``loss_fn`` always sees ``[b, L]`` rows, whatever length the forward ran.
    """
    base = build()
    batch = with_old_and_ref(base, make_batch(2))
    loss_fn = prorl_loss_fn(agg)
    m0, g0 = step_and_restore(base, batch, loss_fn)
    policy = build(micro_batch_tokens=budget)
    m1, g1 = step_and_restore(policy, batch, loss_fn)
    for key in ("loss", "pg_loss", "kl_loss", "entropy", "clip_fraction"):
        if key in m0:
            assert m1[key] == pytest.approx(m0[key], abs=BUDGET_ATOL, rel=BUDGET_RTOL), key
    assert m1["num_tokens"] == m0["num_tokens"] and m1["num_seqs"] == m0["num_seqs"]
    _assert_grads_close(g1, g0, BUDGET_ATOL, BUDGET_RTOL)


def test_padding_fraction_hand_computed(build):
    batch = with_old_and_ref(build(), make_batch(3))
    lengths = sequence_lengths(batch.response_mask)
    assert lengths == ENDS
    real = sum(ENDS)  # 117
    # fixed count: 8 rows, every one run at L = 24 -> 192 computed positions
    m_fixed, _ = step_and_restore(build(), batch, prorl_loss_fn())
    assert m_fixed["perf/padding_fraction"] == pytest.approx(1 - real / (ROWS * LENGTH))
    # budget 50: sorted 24, 24 | 19, 15 | 12, 10, 7, 6 -> 48 + 38 + 48 = 134
    assert token_budget_bins(lengths, 50) == [[0, 4], [6, 2], [7, 3, 1, 5]]
    m_budget, _ = step_and_restore(build(micro_batch_tokens=50), batch, prorl_loss_fn())
    assert m_budget["perf/padding_fraction"] == pytest.approx(padding_fraction(real, 134))
    assert m_budget["perf/padding_fraction"] == pytest.approx(17 / 134)


def test_token_budget_logprobs_in_the_original_row_order(build):
    base = build()
    batch = make_batch(4)
    lp0, ent0 = base.logprobs(batch, with_entropy=True)
    policy = build(micro_batch_tokens=40)  # bins reorder rows: [0, 4] | [6] | [2, 7] | [3, 1, 5]
    lp1, ent1 = policy.logprobs(batch, with_entropy=True)
    torch.testing.assert_close(lp1, lp0, atol=BUDGET_ATOL, rtol=0)
    torch.testing.assert_close(ent1, ent0, atol=BUDGET_ATOL, rtol=0)
    assert lp1.shape == (ROWS, LENGTH)
    assert bool((lp1[batch.response_mask == 0] == 0).all())
    # a permuted batch gives the permuted log-probs
    perm = torch.tensor([5, 2, 7, 0, 3, 6, 1, 4])
    shuffled = TokenBatch(batch.input_ids[perm], batch.response_mask[perm], extras={})
    lp2, _ = policy.logprobs(shuffled)
    torch.testing.assert_close(lp2, lp0[perm], atol=BUDGET_ATOL, rtol=0)


def test_logprob_token_budget_overrides_the_training_one(build):
    batch = make_batch(5)
    lp0, _ = build().logprobs(batch)
    policy = build(micro_batch_tokens=200, logprob_micro_batch_tokens=24)  # one row per micro-batch
    lp1, _ = policy.logprobs(batch)
    torch.testing.assert_close(lp1, lp0, atol=BUDGET_ATOL, rtol=0)


def test_a_row_longer_than_the_budget_runs_alone(build, caplog):
    base = build()
    batch = with_old_and_ref(base, make_batch(6))
    m0, g0 = step_and_restore(base, batch, prorl_loss_fn())
    policy = build(micro_batch_tokens=20)  # the two 24-token rows exceed it
    with caplog.at_level("WARNING", logger="nemo_prorl.policy.megatron.engine"):
        m1, g1 = step_and_restore(policy, batch, prorl_loss_fn())
    assert "exceed the micro-batch token budget 20" in caplog.text
    assert m1["loss"] == pytest.approx(m0["loss"], abs=BUDGET_ATOL, rel=BUDGET_RTOL)
    _assert_grads_close(g1, g0, BUDGET_ATOL, BUDGET_RTOL)


def test_paper_recipe_budget_holds_its_longest_row():
    """nemo_prorl/conf/prorl_1p5b.yaml sizes micro_batch_tokens for the 16k phase's longest row."""
    from nemo_prorl.trainer.config import build_config, compose

    cfg = build_config(compose("prorl_1p5b", []), require_model=False)
    longest = cfg.rollout.max_prompt_tokens + max(
        [cfg.rollout.max_response_tokens] + [p.max_response_tokens or 0 for p in cfg.phases]
    )
    assert longest == 17408
    assert cfg.policy.micro_batch_tokens >= longest
    assert cfg.policy.recompute in ("selective", "full")
    # the comment's activation figure: budget x 28 layers x 19,456 B (selective MLP recompute, 1.5B)
    assert cfg.policy.micro_batch_tokens * 28 * 19456 / 1e9 == pytest.approx(10.04, abs=0.01)
