"""MegatronPolicy on one CUDA device (NCCL, world size 1): bf16, Transformer Engine spec when present.

Skipped without CUDA (tests/conftest.py). See docs/gpu-validation.md for what these validate.
"""

from __future__ import annotations

import pytest
import torch

from nemo_prorl.policy.interface import TokenBatch
from nemo_prorl.policy.megatron.config import MegatronPolicyConfig

pytestmark = pytest.mark.gpu

VOCAB = 320


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from nemo_prorl.policy.megatron.testing import make_tiny_hf_model

    return make_tiny_hf_model(tmp_path_factory.mktemp("tiny_gpu") / "qwen2", "qwen2", seed=0)


@pytest.fixture(scope="module")
def policy(hf_dir):
    from nemo_prorl.policy.megatron import parallel
    from nemo_prorl.policy.megatron.engine import MegatronPolicy

    pol = MegatronPolicy(
        hf_dir,
        MegatronPolicyConfig(params_dtype="bf16", micro_batch_size=2, lr=1e-3, reference_offload_to_cpu=True),
    )
    yield pol
    parallel.destroy_parallel()


def _batch(seed: int = 0) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (4, 24), generator=g)
    mask = torch.zeros(4, 24)
    mask[:, 8:] = 1
    return TokenBatch(ids, mask, extras={"advantages": torch.randn(4, generator=g)})


def _nll(lp, ent, micro, norm):
    m = micro["response_mask"].float()
    return -(lp * m).sum() / norm["num_tokens"], {}


def test_runs_on_cuda_with_nccl(policy):
    import torch.distributed as dist

    assert dist.get_backend() == "nccl"
    assert next(policy.model.parameters()).is_cuda
    # every weight, norms included: TE builds them in params_dtype, the local spec via cast_params_to_dtype
    assert {p.dtype for p in policy.model.parameters()} == {torch.bfloat16}
    assert not next(policy.ref_model.parameters()).is_cuda  # offloaded reference


def test_bf16_logprobs_close_to_fp32_hf(policy, hf_dir):
    from transformers import AutoModelForCausalLM

    batch = _batch(0)
    lp, ent = policy.logprobs(batch, with_entropy=True)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32)
    with torch.no_grad():
        logits = hf(batch.input_ids).logits.float()
    ref = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    ref = torch.cat([torch.zeros(4, 1), ref], 1) * batch.response_mask
    assert float((lp - ref).abs().max()) < 5e-2  # bf16 weights and activations
    assert bool((ent[batch.response_mask.bool()] > 0).all())


def test_bf16_training_and_reset(policy):
    batch = _batch(1)
    losses = [policy.train_step(batch, _nll)["loss"] for _ in range(4)]
    assert losses[-1] < losses[0], losses
    policy.reset_reference()
    policy.reset_optimizer()
    lp, _ = policy.logprobs(batch)
    ref, _ = policy.logprobs(batch, reference=True)
    assert torch.equal(lp, ref)


def test_bf16_checkpoint_round_trip(policy, tmp_path):
    batch = _batch(2)
    policy.train_step(batch, _nll)
    ckpt = policy.save_checkpoint(tmp_path / "step_00000001", {"step": 1})
    cont = policy.train_step(batch, _nll)
    policy.load_checkpoint(ckpt)
    resumed = policy.train_step(batch, _nll)
    assert resumed["loss"] == pytest.approx(cont["loss"], rel=1e-6)
    assert resumed["grad_norm"] == pytest.approx(cont["grad_norm"], rel=1e-5)
