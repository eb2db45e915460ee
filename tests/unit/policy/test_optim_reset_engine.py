"""ProRL's optimizer reset and exact checkpoint resume through the real MegatronPolicy, for each Adam
megatron-core 0.16 may build and each of its optimizer wrappers that runs on CPU.

Adam: torch ``AdamW`` (what megatron builds without Transformer Engine, per-parameter ``state["step"]``)
and TE's ``FusedAdam`` state layout (what it builds on every GPU job: ``param_groups[i]["step"]``,
dtype-mapped ``state_dict``), the latter through
:class:`~nemo_prorl.policy.megatron.fused_adam_emulation.FusedAdamEmulation`, which megatron builds
inside :func:`~nemo_prorl.policy.megatron.fused_adam_emulation.megatron_builds_fused_adam_emulation`:
that context sets the names megatron-core binds when ``transformer_engine`` imports
(``megatron/core/optimizer/__init__.py``: ``Adam``, ``USING_PYTORCH_OPTIMIZER``;
``megatron/core/optimizer/distrib_optimizer.py``: ``Adam``, ``HAVE_APEX_OR_TE``, ``USING_TE_OPTIMIZER``,
read by ``DistributedOptimizer.state_dict``/``load_state_dict`` "for TE FusedAdam support").

Wrappers: ``FP32Optimizer`` (fp32 weights), ``Float16OptimizerWithFloat16Params`` (bf16 weights, fp32
master copies), ``DistributedOptimizer`` (one process: DP = 1) over fp32 and over bf16 weights, each
inside the ``ChainedOptimizer`` megatron-core 0.16 always returns.

bf16 here uses megatron's local layer spec (no Transformer Engine on CPU), whose torch ``RMSNorm`` is
built in fp32; :func:`~nemo_prorl.policy.megatron.model.cast_params_to_dtype` gives it bf16 weights,
emulating what a bf16 run gets upstream: TE's ``RMSNorm`` takes ``config.params_dtype`` at construction
(``transformer_engine/pytorch/module/rmsnorm.py``) and megatron's training loop casts a local-spec model
whole with ``Float16Module`` (``megatron/core/transformer/module.py``). Every weight is then in the
float16 groups, the only ones ``Float16OptimizerWithFloat16Params.sharded_state_dict`` maps.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from nemo_prorl.policy.interface import TokenBatch
from nemo_prorl.policy.megatron.config import MegatronPolicyConfig

VOCAB = 320
ADAMS = ["torch", "fused"]
WRAPPERS = ["fp32", "bf16", "distopt", "bf16-distopt"]


@pytest.fixture(scope="module", params=[(a, w) for a in ADAMS for w in WRAPPERS], ids=lambda p: "-".join(p))
def policy(request, tmp_path_factory):
    from nemo_prorl.policy.megatron import parallel
    from nemo_prorl.policy.megatron.engine import MegatronPolicy
    from nemo_prorl.policy.megatron.fused_adam_emulation import megatron_builds_fused_adam_emulation
    from nemo_prorl.policy.megatron.testing import make_tiny_hf_model

    adam, wrapper = request.param
    hf_dir = make_tiny_hf_model(tmp_path_factory.mktemp("tiny") / "qwen2", "qwen2", seed=4)
    cfg = MegatronPolicyConfig(
        micro_batch_size=2,
        lr=1e-3,
        adam_eps=1e-6,
        params_dtype="bf16" if wrapper.startswith("bf16") else "fp32",
        use_distributed_optimizer=wrapper.endswith("distopt"),
    )
    ctx = megatron_builds_fused_adam_emulation() if adam == "fused" else contextlib.nullcontext()
    with ctx:
        pol = MegatronPolicy(hf_dir, cfg)
        pol.test_kind = (adam, wrapper)
        yield pol
    parallel.destroy_parallel()


def _batch(seed: int) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (4, 10), generator=g)
    mask = torch.zeros(4, 10)
    mask[:, 4:] = 1
    return TokenBatch(ids, mask, extras={"advantages": torch.randn(4, generator=g)})


def _loss(lp, ent, micro, norm):
    m = micro["response_mask"].float()
    return -(lp * m * (1 + micro["advantages"][:, None])).sum() / norm["num_tokens"], {}


def _torch_opts(pol):
    from nemo_prorl.policy.megatron.engine import _torch_optimizers

    return _torch_optimizers(pol.optimizer)


def _params(pol) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in pol.model.named_parameters()}


def _set_params(pol, values: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in pol.model.named_parameters():
            p.copy_(values[n])


def _masters(pol) -> list[torch.Tensor]:
    """The weights the optimizer updates: the params of the torch optimizer (fp32 copies / DP shards)."""
    return [p.detach().clone() for opt in _torch_opts(pol) for g in opt.param_groups for p in g["params"]]


def _set_masters(pol, values: list[torch.Tensor]) -> None:
    targets = [p for opt in _torch_opts(pol) for g in opt.param_groups for p in g["params"]]
    assert len(targets) == len(values)
    with torch.no_grad():
        for p, v in zip(targets, values, strict=True):
            p.copy_(v)


def _counters(pol) -> dict[str, list[float]]:
    """Adam's step counters: per parameter (torch) and per group (FusedAdam)."""
    per_param, per_group = [], []
    for opt in _torch_opts(pol):
        per_param += [float(s["step"]) for s in opt.state.values() if "step" in s]
        per_group += [float(g["step"]) for g in opt.param_groups if g.get("step") is not None]
    return {"per_parameter": per_param, "per_group": per_group}


def _expect_counters(pol, step: int) -> None:
    adam, _ = pol.test_kind
    counters = _counters(pol)
    if adam == "fused":
        assert counters["per_parameter"] == []  # TE's FusedAdam has no per-parameter step
        assert counters["per_group"] and set(counters["per_group"]) == {step}
    else:
        assert counters["per_parameter"] and set(counters["per_parameter"]) == {step}


def _moments(pol) -> list[torch.Tensor]:
    keys = ("exp_avg", "exp_avg_sq")
    return [s[k].clone() for opt in _torch_opts(pol) for s in opt.state.values() for k in keys]


def test_megatron_builds_the_adam_asked_for(policy):
    from nemo_prorl.policy.megatron.fused_adam_emulation import FusedAdamEmulation
    from nemo_prorl.policy.megatron.optim_reset import step_layout

    adam, wrapper = policy.test_kind
    opts = _torch_opts(policy)
    expected = FusedAdamEmulation if adam == "fused" else torch.optim.AdamW
    assert all(type(o) is expected for o in opts)
    assert {step_layout(o) for o in opts} == {"per_group" if adam == "fused" else "per_parameter"}
    # megatron-core 0.16 always returns a ChainedOptimizer (of one here)
    assert type(policy.optimizer).__name__ == "ChainedOptimizer"
    inner = {
        "fp32": "FP32Optimizer",
        "bf16": "Float16OptimizerWithFloat16Params",
        "distopt": "DistributedOptimizer",
        "bf16-distopt": "DistributedOptimizer",
    }
    assert [type(o).__name__ for o in policy.optimizer.chained_optimizers] == [inner[wrapper]]


def test_reset_then_next_update_equals_a_fresh_optimizer(policy):
    """After training, reset_reference + reset_optimizer: KL exactly 0, counters 0, masters kept, and the
    next update equals a brand-new optimizer's over the same weights, bit for bit."""
    _, wrapper = policy.test_kind
    batch = _batch(1)
    for i in range(3):
        policy.train_step(_batch(10 + i), _loss)
    _expect_counters(policy, 3)
    masters_before = _masters(policy)

    policy.reset_reference()
    policy.reset_optimizer()
    lp, _ = policy.logprobs(batch)
    ref, _ = policy.logprobs(batch, reference=True)
    k3 = torch.exp(ref - lp) - (ref - lp) - 1  # the KL estimator the loss uses
    assert torch.equal(lp, ref) and float(k3.abs().max()) == 0.0
    _expect_counters(policy, 0)
    assert policy.steps_since_optimizer_reset == 0
    assert all(float(m.abs().max()) == 0.0 for m in _moments(policy))
    masters = _masters(policy)
    assert all(torch.equal(a, b) for a, b in zip(masters, masters_before, strict=True))
    if wrapper.startswith("bf16"):  # the fp32 masters carry bits the bf16 weights do not: they must survive
        model = torch.cat([p.detach().float().flatten() for p in policy.model.parameters()])
        assert not torch.equal(torch.cat([m.flatten() for m in masters]).sort()[0], model.sort()[0])

    weights = _params(policy)
    m_reset = policy.train_step(batch, _loss)
    after_reset = _params(policy)
    _expect_counters(policy, 1)

    _set_params(policy, weights)
    policy.optimizer = policy._build_optimizer()
    policy.steps_since_optimizer_reset = 0  # as for a new optimizer (the lr warm-up position)
    _set_masters(policy, masters)  # a fresh optimizer over the same master weights
    m_fresh = policy.train_step(batch, _loss)
    after_fresh = _params(policy)
    assert m_reset["loss"] == m_fresh["loss"] and m_reset["grad_norm"] == m_fresh["grad_norm"]
    assert m_reset["lr"] == m_fresh["lr"]
    assert all(torch.equal(after_reset[k], after_fresh[k]) for k in weights)
    assert any(not torch.equal(after_reset[k], weights[k]) for k in weights)


def test_checkpoint_resume_is_exact(policy, tmp_path):
    """save at step k -> the uninterrupted run's next two steps; then wreck the state, load, and
    repeat them: identical weights and metrics, counters restored where the layout keeps them."""
    adam, _ = policy.test_kind
    for i in range(2):
        policy.train_step(_batch(20 + i), _loss)
    k = policy.steps_since_optimizer_reset
    ckpt = policy.save_checkpoint(tmp_path / "step_k", {"k": k})
    meta = json.loads((ckpt / "metadata.json").read_text())
    assert meta["optimizer_step_layout"] == ("per_group" if adam == "fused" else "per_parameter")
    cont = [policy.train_step(_batch(30 + i), _loss) for i in range(2)]
    weights_cont = _params(policy)

    policy.train_step(_batch(40), _loss)  # move away, restart the counters, then rewind
    policy.reset_optimizer()
    assert policy.load_checkpoint(ckpt) == {"k": k}
    _expect_counters(policy, k)
    assert policy.steps_since_optimizer_reset == k
    resumed = [policy.train_step(_batch(30 + i), _loss) for i in range(2)]
    for a, b in zip(cont, resumed, strict=True):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"] and a["lr"] == b["lr"]
    weights = _params(policy)
    assert all(torch.equal(weights[n], weights_cont[n]) for n in weights)


def test_checkpoint_after_a_reset_resumes_with_restarted_counters(policy, tmp_path):
    """A save right after reset_optimizer (counters 0, megatron writes no common step) resumes at step 1."""
    policy.train_step(_batch(50), _loss)
    policy.reset_optimizer()
    ckpt = policy.save_checkpoint(tmp_path / "after_reset", {})
    cont = policy.train_step(_batch(51), _loss)
    weights_cont = _params(policy)
    policy.train_step(_batch(52), _loss)
    policy.load_checkpoint(ckpt)
    _expect_counters(policy, 0)
    resumed = policy.train_step(_batch(51), _loss)
    assert resumed["loss"] == cont["loss"] and resumed["grad_norm"] == cont["grad_norm"]
    weights = _params(policy)
    assert all(torch.equal(weights[n], weights_cont[n]) for n in weights)


def test_save_names_weights_outside_a_bf16_model_dtype(policy, tmp_path):
    """A bf16 model holding an fp32 weight (what megatron's local spec builds for its norms without
    ``cast_params_to_dtype``) is refused by name before megatron's opaque shape assertion."""
    if not policy.test_kind[1].startswith("bf16"):
        pytest.skip("fp32 models: every weight is fp32 by construction")
    norm = policy.model.decoder.final_layernorm.weight
    kept = norm.data
    norm.data = kept.float()
    try:
        with pytest.raises(ValueError, match=r"policy.params_dtype=bf16: 1 parameter.*final_layernorm"):
            policy.save_checkpoint(tmp_path / "mixed", {})
    finally:
        norm.data = kept
    assert (policy.save_checkpoint(tmp_path / "uniform", {}) / "metadata.json").is_file()
