"""A checkpoint written with one Adam step layout loads into the other with the step where it belongs.

torch Adam keeps ``state[p]["step"]`` (megatron saves it as one ``common_step``); Transformer Engine's
``FusedAdam`` keeps ``param_groups[i]["step"]`` and its ``load_state_dict`` raises ``KeyError`` on a
per-parameter ``step`` (``transformer_engine/pytorch/optimizers/fused_adam.py``, emulated by
:class:`~nemo_prorl.policy.megatron.fused_adam_emulation.FusedAdamEmulation`). A job that saved without
TE and resumes with it (or the other way round) must keep counting from the saved step: otherwise the
bias corrections restart on non-zero moments. The non-distributed optimizer goes through
``checkpoint._align_loaded_steps``; the distributed one through megatron's own translation.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from nemo_prorl.policy.interface import TokenBatch
from nemo_prorl.policy.megatron.config import MegatronPolicyConfig

VOCAB = 320


def _batch(seed: int) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (4, 10), generator=g)
    mask = torch.zeros(4, 10)
    mask[:, 4:] = 1
    return TokenBatch(ids, mask, extras={"advantages": torch.randn(4, generator=g)})


def _loss(lp, ent, micro, norm):
    m = micro["response_mask"].float()
    return -(lp * m * (1 + micro["advantages"][:, None])).sum() / norm["num_tokens"], {}


def _build(hf_dir, adam: str, distributed: bool, stack: contextlib.ExitStack):
    from nemo_prorl.policy.megatron.engine import MegatronPolicy
    from nemo_prorl.policy.megatron.fused_adam_emulation import megatron_builds_fused_adam_emulation

    if adam == "fused":
        stack.enter_context(megatron_builds_fused_adam_emulation())
    cfg = MegatronPolicyConfig(micro_batch_size=2, lr=1e-3, use_distributed_optimizer=distributed)
    return MegatronPolicy(hf_dir, cfg)


def _state(pol):
    from nemo_prorl.policy.megatron.engine import _torch_optimizers

    opts = _torch_optimizers(pol.optimizer)
    moments = [s[k].clone() for o in opts for s in o.state.values() for k in ("exp_avg", "exp_avg_sq")]
    per_param = {float(s["step"]) for o in opts for s in o.state.values() if "step" in s}
    per_group = {float(g["step"]) for o in opts for g in o.param_groups if g.get("step") is not None}
    return moments, per_param, per_group


@pytest.mark.parametrize("distributed", [False, True], ids=["fp32_optimizer", "distributed_optimizer"])
@pytest.mark.parametrize("saved_by,loaded_by", [("torch", "fused"), ("fused", "torch")])
def test_checkpoint_moves_the_step_between_layouts(tmp_path, saved_by, loaded_by, distributed):
    from nemo_prorl.policy.megatron import parallel
    from nemo_prorl.policy.megatron.testing import make_tiny_hf_model

    hf_dir = make_tiny_hf_model(tmp_path / "hf", "qwen2", seed=5)
    try:
        with contextlib.ExitStack() as stack:
            writer = _build(hf_dir, saved_by, distributed, stack)
            for i in range(3):
                writer.train_step(_batch(i), _loss)
            ckpt = writer.save_checkpoint(tmp_path / "ckpt", {})
            moments, _, _ = _state(writer)
            weights = {n: p.detach().clone() for n, p in writer.model.named_parameters()}
        del writer
        with contextlib.ExitStack() as stack:
            reader = _build(hf_dir, loaded_by, distributed, stack)
            reader.load_checkpoint(ckpt)
            loaded, per_param, per_group = _state(reader)
            if loaded_by == "fused":
                assert per_param == set() and per_group == {3.0}
            else:
                assert per_param == {3.0}
            assert len(loaded) == len(moments) and all(torch.equal(a, b) for a, b in zip(loaded, moments))
            assert all(torch.equal(p, weights[n]) for n, p in reader.model.named_parameters())
            reader.train_step(_batch(9), _loss)
            _, per_param, per_group = _state(reader)
            assert (per_group if loaded_by == "fused" else per_param) == {4.0}
    finally:
        parallel.destroy_parallel()
