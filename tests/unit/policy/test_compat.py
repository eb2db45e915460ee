"""One test per CUDA assumption that compat.apply_cpu_compat() redirects (megatron-core on CPU)."""

from __future__ import annotations

import logging

import pytest
import torch

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU compatibility layer only")


@pytest.fixture(scope="module")
def mp():
    from nemo_prorl.policy.megatron import parallel

    parallel.init_parallel(tp=1, pp=1, seed=1234)
    yield parallel
    parallel.destroy_parallel()


def _tiny_model(tied: bool = False):
    from nemo_prorl.policy.megatron.model import build_gpt_model

    cfg = {
        "model_type": "llama", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "tie_word_embeddings": tied,
    }
    return build_gpt_model(cfg)


def test_apply_is_idempotent_and_leaves_global_torch_alone(mp):
    from megatron.core.pipeline_parallel import schedules

    from nemo_prorl.policy.megatron import compat

    compat.apply_cpu_compat()
    compat.apply_cpu_compat()
    assert compat.is_cpu_compat_applied()
    assert schedules.torch is not torch  # megatron's view is swapped ...
    assert isinstance(schedules.torch.cuda, compat._CpuCuda)

    with pytest.raises((AssertionError, RuntimeError)):  # ... the real torch is untouched
        torch.zeros(1, device="cuda")


def test_rng_tracker_fork_uses_cpu_generator_streams(mp):
    from megatron.core import tensor_parallel

    tensor_parallel.model_parallel_cuda_manual_seed(1234, force_reset_rng=True)
    tracker = tensor_parallel.get_cuda_rng_tracker()
    # Megatron's TP stream seed = seed + 2718 + tp_rank (tp_rank 0 here).
    expected = torch.rand(4, generator=torch.Generator().manual_seed(1234 + 2718))
    before = torch.get_rng_state()
    with tracker.fork():
        inside = torch.rand(4)
    assert torch.equal(inside, expected)
    assert torch.equal(torch.get_rng_state(), before)  # default stream restored after the fork
    with tracker.fork():
        second = torch.rand(4)
    assert not torch.equal(second, inside)  # the TP stream advanced and was kept


def test_rng_fork_warning_is_filtered(mp, caplog):
    from megatron.core import tensor_parallel

    with caplog.at_level(logging.WARNING, logger="megatron.core.tensor_parallel.random"):
        with tensor_parallel.get_cuda_rng_tracker().fork():
            torch.rand(2)
    assert "CPU RNG state changed" not in caplog.text


def test_global_memory_buffer_is_on_cpu(mp):
    from megatron.core import parallel_state

    buf = parallel_state.get_global_memory_buffer().get_tensor((3, 5), torch.float32, "nemo-prorl-test")
    assert buf.device.type == "cpu" and tuple(buf.shape) == (3, 5)


def test_p2p_communication_sees_cpu_cuda(mp):
    from megatron.core.pipeline_parallel import p2p_communication

    assert p2p_communication.torch.cuda.synchronize() is None
    assert p2p_communication.torch.cuda.current_device() == torch.device("cpu")


def test_clip_grads_accepts_cpu_fp32_grads_and_scales(mp):
    from megatron.core.optimizer import clip_grads

    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])
    norm = clip_grads.get_grad_norm_fp32([p.grad], grad_stats_parallel_group=mp.tp_group())
    assert norm == pytest.approx(5.0)
    clip_grads.clip_grad_by_total_norm_fp32([p], max_norm=1.0, total_norm=norm)
    assert torch.allclose(p.grad, torch.tensor([0.6, 0.8, 0.0, 0.0]), atol=1e-6)


def test_schedules_forward_backward_runs_on_cpu(mp):
    from megatron.core.pipeline_parallel import get_forward_backward_func

    model = _tiny_model()
    ids = torch.randint(0, 100, (2, 8))
    pos = torch.arange(8).expand(2, -1)

    def forward_step(data_iterator, model):
        out = model(ids, pos, attention_mask=None, labels=ids)  # [b, s] per-token loss

        def loss_func(output):
            loss = output.float().mean()
            return loss, {"loss": loss.detach()}

        return out, loss_func

    losses = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter([None]), model=[model], num_microbatches=1,
        seq_length=8, micro_batch_size=2, forward_only=False,
    )
    assert len(losses) == 1 and torch.isfinite(losses[0]["loss"])
    assert model.decoder.layers[0].mlp.linear_fc1.weight.grad is not None


@pytest.mark.parametrize("use_distributed_optimizer", [False, True])
def test_megatron_optimizer_with_ddp_steps_on_cpu(mp, use_distributed_optimizer):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    model = _tiny_model()
    ddp = DistributedDataParallel(
        model.config,
        DistributedDataParallelConfig(use_distributed_optimizer=use_distributed_optimizer),
        model,
    )
    opt = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam", lr=1e-2, clip_grad=1.0, use_distributed_optimizer=use_distributed_optimizer
        ),
        [ddp],
    )
    before = model.output_layer.weight.detach().clone()
    ddp.zero_grad_buffer()
    opt.zero_grad()
    ids = torch.randint(0, 100, (2, 8))
    loss = ddp(ids, torch.arange(8).expand(2, -1), attention_mask=None, labels=ids).float().mean()
    loss.backward()
    ddp.finish_grad_sync()
    ok, grad_norm, _ = opt.step()
    assert ok and grad_norm > 0
    assert not torch.equal(before, model.output_layer.weight.detach())


def test_tied_embedding_setup_runs_under_distributed(mp):
    model = _tiny_model(tied=True)  # LanguageModule.setup_embeddings_and_output_layer calls .cuda()
    assert model.share_embeddings_and_output_weights and model.output_layer.weight is None


def test_every_preloaded_megatron_module_sees_the_cpu_view(mp):
    import sys

    from nemo_prorl.policy.megatron import compat

    for name in compat.MEGATRON_MODULES_TO_PRELOAD:
        module = sys.modules[name]
        if "torch" in vars(module):
            assert module.torch is not torch, name
            assert module.torch.zeros(2, device="cuda", pin_memory=True).device.type == "cpu"
