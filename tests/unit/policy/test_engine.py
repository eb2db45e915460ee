"""MegatronPolicy in one process: log-probs, train step, loss normalisation, ProRL resets."""

from __future__ import annotations

import math

import pytest
import torch

from nemo_prorl.policy.interface import PolicyInterface, TokenBatch
from nemo_prorl.policy.megatron.config import MegatronPolicyConfig

VOCAB = 320  # padded to 384 inside megatron: the padding rows must not enter the softmax


# ------------------------------------------------------------------------- config / batch (no megatron)


@pytest.mark.parametrize(
    "field,value",
    [
        ("tensor_model_parallel_size", 0),
        ("micro_batch_size", 1.5),
        ("params_dtype", "fp16"),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("adam_beta2", 1.5),
        ("clip_grad", -1.0),
        ("use_distributed_optimizer", "yes"),
        ("temperature", 0.0),
        ("seed", -3),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        MegatronPolicyConfig(**{field: value})


def test_config_from_dict_rejects_unknown_keys():
    assert MegatronPolicyConfig.from_dict({"lr": 2e-6}).lr == 2e-6
    with pytest.raises(ValueError, match="learning_rate"):
        MegatronPolicyConfig.from_dict({"learning_rate": 2e-6})
    assert MegatronPolicyConfig(params_dtype="bf16").torch_dtype == torch.bfloat16


def test_token_batch_validation():
    ids = torch.zeros(2, 5, dtype=torch.long)
    mask = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="response_mask"):
        TokenBatch(ids, torch.zeros(2, 4))
    bad = mask.clone()
    bad[1, 0] = 1
    with pytest.raises(ValueError, match=r"response_mask\[1, 0\]"):
        TokenBatch(ids, bad)
    with pytest.raises(ValueError, match="advantages"):
        TokenBatch(ids, mask, extras={"advantages": torch.zeros(3)})
    with pytest.raises(ValueError, match="old_logprobs"):
        TokenBatch(ids, mask, extras={"old_logprobs": torch.zeros(2, 4)})
    with pytest.raises(ValueError, match="int32/int64"):
        TokenBatch(ids.float(), mask)
    tb = TokenBatch(ids, mask, extras={"advantages": torch.arange(2.0)})
    assert tb.slice(1, 2).extras["advantages"].tolist() == [1.0]


# ------------------------------------------------------------------------- engine


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from nemo_prorl.policy.megatron.testing import make_tiny_hf_model

    return make_tiny_hf_model(tmp_path_factory.mktemp("tiny") / "qwen2", "qwen2", seed=0)


@pytest.fixture(scope="module")
def policy(hf_dir):
    from nemo_prorl.policy.megatron import parallel
    from nemo_prorl.policy.megatron.engine import MegatronPolicy

    pol = MegatronPolicy(hf_dir, MegatronPolicyConfig(micro_batch_size=2, lr=1e-3, clip_grad=1.0))
    yield pol
    parallel.destroy_parallel()


def _batch(seed: int = 0, rows: int = 4, length: int = 12) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (rows, length), generator=g)
    mask = torch.zeros(rows, length)
    for r in range(rows):
        start = 3 + r % 3
        stop = length - (r % 2) * 2  # right padding on odd rows
        mask[r, start:stop] = 1
    adv = torch.randn(rows, generator=g)
    return TokenBatch(ids, mask, extras={"advantages": adv})


def _nll(lp, ent, micro, norm):
    """Token-mean NLL: contribution = sum(-lp * mask) / global num_tokens."""
    m = micro["response_mask"].float()
    loss = -(lp * m).sum() / norm["num_tokens"]
    metrics = {"tokens": m.sum() / norm["num_tokens"], "lp_min": (lp * m).min()}
    return loss, metrics


_nll.metric_reductions = {"lp_min": "min"}  # the loss declares it (interface.py); the rest are summed


def _pg(lp, ent, micro, norm):
    """A REINFORCE-style loss using per-sample extras."""
    m = micro["response_mask"].float()
    return -(lp * m * micro["advantages"][:, None]).sum() / norm["num_tokens"], {}


def _naive_logprobs(pol, batch: TokenBatch, temperature: float = 1.0):
    """Full-vocabulary logits from GPTModel.forward, padding columns removed, log_softmax, gather."""
    gpt = pol.model
    ids = batch.input_ids
    pos = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
    with torch.no_grad():
        logits = gpt(ids, pos, None).float()[..., :VOCAB] / temperature  # [B, L, V]
    logp = torch.log_softmax(logits[:, :-1], -1)
    lp = logp.gather(-1, ids[:, 1:, None])[..., 0]
    ent = -(logp.exp() * logp).sum(-1)
    mask = batch.response_mask[:, 1:]
    zeros = torch.zeros(ids.shape[0], 1)
    return torch.cat([zeros, lp * mask], 1), torch.cat([zeros, ent * mask], 1)


def _params(pol) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in pol.model.named_parameters()}


def _set_params(pol, values: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in pol.model.named_parameters():
            p.copy_(values[n])
    pol.optimizer.reload_model_params()


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_policy_satisfies_protocol(policy):
    assert isinstance(policy, PolicyInterface)


def test_logprobs_match_naive_full_logits_and_hf(policy, hf_dir):
    batch = _batch(0, rows=5)  # 5 rows with micro_batch_size 2: a short last micro-batch
    lp, ent = policy.logprobs(batch, with_entropy=True)
    ref_lp, ref_ent = _naive_logprobs(policy, batch)
    assert lp.shape == (5, 12) and ent.shape == (5, 12)
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=0)
    assert bool((lp[batch.response_mask == 0] == 0).all())

    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(hf_dir)
    with torch.no_grad():
        logits = hf(batch.input_ids).logits.float()
    hf_lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    hf_lp = torch.cat([torch.zeros(5, 1), hf_lp], 1) * batch.response_mask
    torch.testing.assert_close(lp, hf_lp, atol=1e-5, rtol=0)


def test_logprobs_temperature(policy):
    batch = _batch(1)
    policy.config.temperature = 1.2
    try:
        lp, ent = policy.logprobs(batch, with_entropy=True)
    finally:
        policy.config.temperature = 1.0
    ref_lp, ref_ent = _naive_logprobs(policy, batch, temperature=1.2)
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=0)


def test_bad_token_id_is_a_clear_error(policy):
    batch = _batch(0)
    batch.input_ids[2, 4] = VOCAB
    with pytest.raises(ValueError, match="row 2"):
        policy.logprobs(batch)


def test_train_step_loss_and_metrics_and_decrease(policy):
    start = _params(policy)
    batch = _batch(2, rows=4)
    lp0, _ = policy.logprobs(batch)
    expected = float(-(lp0 * batch.response_mask).sum() / batch.response_mask.sum())
    m = policy.train_step(batch, _nll)
    assert m["loss"] == pytest.approx(expected, abs=1e-5)
    assert m["tokens"] == pytest.approx(1.0, abs=1e-6)  # summed contributions of the token fractions
    assert m["lp_min"] == pytest.approx(float(lp0.min()), abs=1e-5)  # declared "min": min-reduced
    assert m["num_tokens"] == float(batch.response_mask.sum()) and m["num_seqs"] == 4.0
    assert m["lr"] == pytest.approx(1e-3) and m["grad_norm"] > 0
    losses = [m["loss"]] + [policy.train_step(batch, _nll)["loss"] for _ in range(4)]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    _set_params(policy, start)
    policy.reset_optimizer()


def test_grad_norm_matches_autograd_on_naive_logits(policy):
    """grad_norm reported by the step equals the norm of d(token-mean NLL)/d(params) by plain autograd."""
    batch = _batch(3, rows=4)
    gpt = policy.model
    ids = batch.input_ids
    pos = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
    gpt.zero_grad(set_to_none=True)
    params = [p for p in gpt.parameters() if p.requires_grad]
    logits = gpt(ids, pos, None).float()[..., :VOCAB]
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    mask = batch.response_mask[:, 1:]
    loss = -(lp * mask).sum() / mask.sum()
    grads = torch.autograd.grad(loss, params)
    expected = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
    start = _params(policy)
    m = policy.train_step(batch, _nll)
    assert m["grad_norm"] == pytest.approx(expected, rel=1e-5)
    _set_params(policy, start)
    policy.reset_optimizer()


def test_micro_batches_do_not_change_the_step(policy):
    """4 rows as 1 micro-batch of 4, 2 of 2 and 4 of 1 give the same loss, grad norm and update."""
    batch = _batch(4, rows=4)
    start = _params(policy)
    results = []
    for mbs in (4, 2, 1):
        _set_params(policy, start)
        policy.reset_optimizer()
        policy.config.micro_batch_size = mbs
        m = policy.train_step(batch, _pg)
        results.append((m, _params(policy)))
    policy.config.micro_batch_size = 2
    _set_params(policy, start)
    policy.reset_optimizer()
    (m0, p0) = results[0]
    for m, p in results[1:]:
        assert m["loss"] == pytest.approx(m0["loss"], abs=1e-6)
        assert m["grad_norm"] == pytest.approx(m0["grad_norm"], rel=1e-5)
        # Adam's first update is ~lr * g / |g|: float round-off in tiny grads shows up at ~1e-6 * lr.
        assert _max_diff(p, p0) < 1e-2 * 1e-3


def test_reset_reference_and_optimizer(policy):
    """ProRL reset: KL(policy || ref) == 0 afterwards, and the next update equals a fresh optimizer's."""
    batch = _batch(5, rows=4)
    start = _params(policy)
    lp_init, _ = policy.logprobs(batch)
    for _ in range(2):
        policy.train_step(batch, _nll)
    lp, _ = policy.logprobs(batch)
    ref, _ = policy.logprobs(batch, reference=True)
    assert torch.equal(ref, lp_init)  # the reference is still the initial policy
    assert float((lp - ref).abs().max()) > 1e-3

    policy.reset_reference()
    policy.reset_optimizer()
    lp, _ = policy.logprobs(batch)
    ref, _ = policy.logprobs(batch, reference=True)
    assert torch.equal(lp, ref)
    k3 = torch.exp(ref - lp) - (ref - lp) - 1  # the KL estimator the loss uses
    assert float(k3.abs().max()) == 0.0

    before = _params(policy)
    m_reset = policy.train_step(batch, _pg)
    after_reset = _params(policy)

    _set_params(policy, before)
    policy.optimizer = policy._build_optimizer()  # a brand-new optimizer
    m_fresh = policy.train_step(batch, _pg)
    after_fresh = _params(policy)
    assert m_reset["loss"] == m_fresh["loss"] and m_reset["grad_norm"] == m_fresh["grad_norm"]
    assert _max_diff(after_reset, after_fresh) == 0.0
    assert _max_diff(after_reset, before) > 0.0

    # the reference did not move with the policy
    ref2, _ = policy.logprobs(batch, reference=True)
    assert torch.equal(ref2, ref)
    _set_params(policy, start)
    policy.reset_reference()
    policy.reset_optimizer()


def test_lr_warmup_ramps_and_restarts_after_an_optimizer_reset(policy):
    """Step i of a warm-up over 4 uses lr * i / 4; a reset starts the ramp again."""
    batch = _batch(9, rows=4)
    start = _params(policy)
    policy.config.lr_warmup_steps = 4
    try:
        policy.reset_optimizer()
        lrs, first_move = [], None
        for i in range(6):
            before = _params(policy)
            lrs.append(policy.train_step(batch, _pg)["lr"])
            if i == 0:
                first_move = _max_diff(_params(policy), before)
        assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3], rel=1e-6)
        # Adam's first step on zero moments moves a weight by ~lr (+ the tiny decoupled weight decay)
        assert first_move == pytest.approx(2.5e-4, rel=0.02)
        assert policy.steps_since_optimizer_reset == 6
        policy.reset_optimizer()
        assert policy.steps_since_optimizer_reset == 0
        assert policy.train_step(batch, _pg)["lr"] == pytest.approx(2.5e-4, rel=1e-6)
    finally:
        policy.config.lr_warmup_steps = 0
        _set_params(policy, start)
        policy.reset_reference()
        policy.reset_optimizer()
    assert policy.current_lr(1) == policy.config.lr  # off: constant from the first step


def test_config_rejects_a_negative_warmup():
    with pytest.raises(ValueError, match="lr_warmup_steps"):
        MegatronPolicyConfig(lr_warmup_steps=-1)


def test_non_finite_loss_skips_the_update(policy):
    batch = _batch(6)
    start = _params(policy)
    steps = policy.steps_taken

    def nan_loss(lp, ent, micro, norm):
        return (lp * micro["response_mask"]).sum() * float("nan"), {}

    m = policy.train_step(batch, nan_loss)
    assert m["skipped_nonfinite"] == 1.0 and math.isnan(m["grad_norm"])
    # weights untouched and no optimizer step counted
    assert _max_diff(_params(policy), start) == 0.0
    assert policy.steps_taken == steps

    def ok_loss(lp, ent, micro, norm):
        return -(lp * micro["response_mask"]).sum() / norm["num_tokens"], {}

    m = policy.train_step(batch, ok_loss)  # the next finite update goes through normally
    assert m["skipped_nonfinite"] == 0.0 and math.isfinite(m["grad_norm"])
    assert _max_diff(_params(policy), start) > 0.0
    _set_params(policy, start)
    policy.reset_optimizer()


def test_bad_loss_fn_output_is_a_clear_error(policy):
    batch = _batch(7)

    def vector_loss(lp, ent, micro, norm):
        return lp.sum(1), {}

    with pytest.raises(TypeError, match="scalar tensor"):
        policy.train_step(batch, vector_loss)


def test_export_hf_state_dict_round_trips_into_transformers(policy, hf_dir):
    from transformers import AutoModelForCausalLM

    sd = policy.export_hf_state_dict()
    hf = AutoModelForCausalLM.from_pretrained(hf_dir)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and all("rotary" in k for k in missing)
    batch = _batch(8)
    with torch.no_grad():
        logits = hf(batch.input_ids).logits.float()
    hf_lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    hf_lp = torch.cat([torch.zeros(batch.batch_size, 1), hf_lp], 1) * batch.response_mask
    lp, _ = policy.logprobs(batch)
    torch.testing.assert_close(lp, hf_lp, atol=1e-5, rtol=0)
