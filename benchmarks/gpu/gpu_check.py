"""The H100 path checked on one GPU in a few minutes: a JSON entry per check, pass/fail/skipped + figures.

Runs on a machine with Python 3.12 and a CUDA torch and nothing else of this stack (no Transformer
Engine, apex or vLLM: megatron-core then uses its local layer spec and torch AdamW); megatron-core
(and optionally transformers) come from carried wheels, see ``benchmarks/gpu/run.sh`` and
``scripts/fetch_gpu_wheels.sh``. Each check is isolated: an exception fails that check only, and the
JSON is rewritten after every check, so a timeout still leaves the finished ones.

=======================  =====================================================================================
check                    pass criterion (figures recorded either way)
=======================  =====================================================================================
environment              always passes: versions, device, which optimizer megatron-core picked
engine_bf16              bf16 MegatronPolicy on CUDA: process group NCCL, params bf16 on the GPU, log-probs
                         within 5e-2 of the fp32 transformers model, loss falls over 4 steps
process_group            world size 1: all_reduce / all_gather of device tensors on the world and the data-
                         parallel group give the right values; what a CPU tensor does there is recorded
                         (NCCL refuses it: the reason every collective goes through nemo_prorl.collectives)
optimizer_reset          plain and distributed optimizer: after reset_optimizer() every Adam step counter (per
                         parameter and per param group) is 0, the lr warm-up restarts, and the next update
                         equals a freshly built optimizer's (fp32: bit for bit on CPU, within 1e-6 of the
                         update on CUDA)
checkpoint_round_trip    save, step, load, step again (fp32 plain optimizer; on CUDA also bf16 + distributed
                         optimizer, the recipe's settings): same loss (rel 1e-6), grad norm (rel 1e-5),
                         weights (bit for bit on CPU, within 1% of the update on CUDA), step counters
collective_placement     nemo_prorl.collectives moves a CPU tensor to the backend's device and back (skipped
                         when the module is not present in this build)
arch_1p5b_train          Qwen2-1.5B shapes (hidden 1536, 28 layers, 12 heads, 2 KV heads, FFN 8960, vocab
                         151936), random bf16 weights, distributed optimizer: train-step time, tokens/s, MFU
logprob_head_16k         chunked log-prob head (+ entropy) forward and backward at 8,192 and 16,384 tokens,
                         V=151,936, bf16: peak memory above the inputs below the naive fp32 logits (9.3 GiB
                         at 16k), and growing by under a quarter of theirs when the tokens double
vllm_colocated           (skipped without vLLM) tiny model, external_launcher engine after the NCCL group:
                         seeded batched generation reproduces, a level-2 sleep refuses to wake before a
                         sync, the policy's weight stream refills the weights, samples equal those before
=======================  =====================================================================================

Usage::

    python benchmarks/gpu/gpu_check.py --out $OUT/gpu_check.json          # on the GPU (about 4-6 minutes)
    python benchmarks/gpu/gpu_check.py --cpu-smoke --out /tmp/check.json    # the CPU-capable checks, gloo

MFU = model FLOPs / (step time x peak), model FLOPs per token ``6 * (dense + head) + 6 * layers * hidden
* seq`` (forward + backward, causal attention, no recompute), as in ``bench_train_mfu.py``; the peak is
the dense BF16 rate of the card (989 TFLOP/s for H100 SXM / H200, 756 for H100 PCIe; ``--peak-tflops``).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

#: Qwen2-1.5B / DeepSeek-R1-Distill-Qwen-1.5B shapes
QWEN2_1P5B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                  num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=False)
TINY_VOCAB = 320
#: dense BF16 peak, TFLOP/s, by a substring of the device name (first match wins)
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))


class Skip(Exception):
    """Raised by a check that cannot run here (the reason is recorded)."""


# ---------------------------------------------------------------------------------------------- helpers


def _cuda() -> bool:
    return torch.cuda.is_available()


def _sync() -> None:
    if _cuda():
        torch.cuda.synchronize()


def _free() -> None:
    gc.collect()
    if _cuda():
        torch.cuda.empty_cache()


def _tiny_model(ctx: dict[str, Any]) -> Path:
    """A random 2-layer Qwen2 (hidden 64, vocab 320) written once per run."""
    if "tiny_dir" not in ctx:
        from nemo_prorl.policy.megatron.testing import make_tiny_hf_model

        ctx["tiny_dir"] = make_tiny_hf_model(Path(ctx["tmp"]) / "tiny_qwen2", "qwen2", seed=0)
    return ctx["tiny_dir"]


def _policy(model_dir: Path, **overrides: Any):
    from nemo_prorl.policy.megatron.config import MegatronPolicyConfig
    from nemo_prorl.policy.megatron.engine import MegatronPolicy

    settings = dict(micro_batch_size=2, lr=1e-3, params_dtype="fp32", seed=1234)
    settings.update(overrides)
    return MegatronPolicy(model_dir, MegatronPolicyConfig(**settings))


def _batch(seed: int, rows: int = 4, length: int = 24, vocab: int = TINY_VOCAB):
    from nemo_prorl.policy.interface import TokenBatch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, length), generator=g)
    mask = torch.zeros(rows, length)
    mask[:, length // 3:] = 1
    return TokenBatch(ids, mask, extras={"advantages": torch.randn(rows, generator=g)})


def _pg_loss(lp, ent, micro, norm):
    """REINFORCE with per-sample advantages, token-mean (the engine's loss_fn contract)."""
    m = micro["response_mask"].float()
    return -(lp * m * micro["advantages"][:, None]).sum() / norm["num_tokens"], {}


def _nll(lp, ent, micro, norm):
    m = micro["response_mask"].float()
    return -(lp * m).sum() / norm["num_tokens"], {}


def _params(pol) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in pol.model.named_parameters()}


def _set_params(pol, values: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in pol.model.named_parameters():
            p.copy_(values[n])
    pol.optimizer.reload_model_params()


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def adam_step_counters(optimizer: Any) -> dict[str, list[float]]:
    """Every Adam step counter inside a megatron optimizer: per parameter (torch Adam/AdamW keeps
    ``state[p]["step"]``) and per param group (Transformer Engine's FusedAdam keeps ``group["step"]``)."""
    from nemo_prorl.policy.megatron.engine import _torch_optimizers

    per_param, per_group = [], []
    for opt in _torch_optimizers(optimizer):
        for group in opt.param_groups:
            if "step" in group:
                per_group.append(float(group["step"]))
        for state in opt.state.values():
            if "step" in state:
                per_param.append(float(state["step"]))
    return {"per_param": sorted(set(per_param)), "per_group": sorted(set(per_group))}


def _optimizer_names(optimizer: Any) -> list[str]:
    from nemo_prorl.policy.megatron.engine import _torch_optimizers

    chain = list(getattr(optimizer, "chained_optimizers", None) or [])
    wrappers = [type(optimizer).__name__] + [type(o).__name__ for o in chain]
    return wrappers + [f"{type(o).__module__}.{type(o).__name__}" for o in _torch_optimizers(optimizer)]


def _teardown() -> None:
    from nemo_prorl.policy.megatron import parallel

    parallel.destroy_parallel()
    _free()


def _random_qwen2_dir(out: Path, arch: dict[str, Any], max_positions: int) -> tuple[Path, Any]:
    """Random bf16 weights of a Qwen2 architecture, initialised on the GPU when there is one (fast)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from nemo_prorl.policy.megatron.testing import make_tiny_tokenizer

    cfg = Qwen2Config(max_position_embeddings=max_positions, rope_theta=1e6, rms_norm_eps=1e-6, **arch)
    if not (out / "config.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        with torch.device("cuda" if _cuda() else "cpu"):
            model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
        model.save_pretrained(str(out), safe_serialization=True)
        make_tiny_tokenizer().save_pretrained(str(out))  # prompts are token ids; the tokenizer is a stub
        del model
        _free()
    return out, cfg


def flops_per_token(cfg: Any, seq: int) -> float:
    """Model FLOPs per trained token (forward + backward): 6 x parameters + causal attention."""
    h, f, n, v = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    # q,o + k,v + qkv bias + mlp + norms
    per_layer = 2 * h * h + 2 * h * kv + (h + 2 * kv) + 3 * h * f + 2 * h
    return 6.0 * (n * per_layer + v * h) + 6.0 * n * h * seq


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    for key, value in PEAK_TFLOPS:
        if key in name:
            return value
    return None


# ----------------------------------------------------------------------------------------------- checks


def check_environment(ctx, fig):
    import megatron.core

    fig.update(python=platform.python_version(), torch=torch.__version__, torch_cuda=torch.version.cuda,
               megatron_core=megatron.core.__version__, cuda_available=_cuda())
    import importlib.metadata as md
    import importlib.util

    # versions from the installed metadata, without importing (a vLLM import alone takes many seconds)
    for mod, dists in (("transformers", ("transformers",)), ("vllm", ("vllm",)), ("apex", ("apex",)),
                       ("transformer_engine", ("transformer_engine", "transformer-engine"))):
        if importlib.util.find_spec(mod) is None:
            fig[mod] = "absent"
            continue
        for dist_name in dists:
            try:
                fig[mod] = md.version(dist_name)
                break
            except md.PackageNotFoundError:
                fig[mod] = "present (no metadata)"
    import nemo_prorl

    fig["nemo_prorl"] = str(Path(nemo_prorl.__file__).parent)
    if _cuda():
        props = torch.cuda.get_device_properties(0)
        fig.update(device=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                   sms=props.multi_processor_count, capability=f"{props.major}.{props.minor}",
                   allow_tf32_matmul=torch.backends.cuda.matmul.allow_tf32)


def check_engine_bf16(ctx, fig):
    if not _cuda():
        raise Skip("needs CUDA")
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    hf_dir = _tiny_model(ctx)
    pol = _policy(hf_dir, params_dtype="bf16", reference_offload_to_cpu=True)
    try:
        param = next(pol.model.parameters())
        fig.update(backend=dist.get_backend(), param_device=str(param.device), param_dtype=str(param.dtype),
                   reference_on_cpu=not next(pol.ref_model.parameters()).is_cuda,
                   optimizer=_optimizer_names(pol.optimizer))
        batch = _batch(0)
        lp, ent = pol.logprobs(batch, with_entropy=True)
        hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
        with torch.no_grad():
            logits = hf(batch.input_ids).logits.float()
        ref = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
        ref = torch.cat([torch.zeros(ref.shape[0], 1), ref], 1) * batch.response_mask
        fig["logprob_max_abs_diff_vs_fp32_hf"] = float((lp.float().cpu() - ref).abs().max())
        fig["entropy_min"] = float(ent.float().cpu()[batch.response_mask.bool()].min())
        losses = [pol.train_step(_batch(1), _nll)["loss"] for _ in range(4)]
        fig["losses"] = losses
        assert fig["backend"] == "nccl", fig["backend"]
        assert param.is_cuda and param.dtype == torch.bfloat16
        assert fig["logprob_max_abs_diff_vs_fp32_hf"] < 5e-2
        assert losses[-1] < losses[0], losses
    finally:
        del pol
        _free()


def check_process_group(ctx, fig):
    import torch.distributed as dist

    from nemo_prorl.policy.megatron import parallel

    parallel.init_parallel(1, 1)
    backend = dist.get_backend()
    dev = parallel.device()
    fig.update(backend=backend, world_size=dist.get_world_size(), device=str(dev))
    for name, group in (("world", None), ("data_parallel", parallel.dp_group())):
        x = torch.arange(6, dtype=torch.float32, device=dev).view(2, 3) + 1
        y = x.clone()
        dist.all_reduce(y, group=group)
        out = [torch.empty_like(x)]
        dist.all_gather(out, x, group=group)
        _sync()
        ok = torch.equal(y, x) and torch.equal(out[0], x)  # world size 1: sum and gather are the identity
        fig[f"{name}_device_collectives"] = "ok" if ok else "wrong values"
        assert ok, name
    x = torch.ones(2, 3)  # a CPU tensor, as the policy returns log-probs
    try:
        dist.all_gather([torch.empty_like(x)], x, group=parallel.dp_group())
        fig["cpu_tensor_on_dp_group"] = "ok"
    except Exception as exc:  # noqa: BLE001 - the point is to record what the backend does
        fig["cpu_tensor_on_dp_group"] = f"refused: {type(exc).__name__}: {str(exc)[:200]}"


def _reset_vs_fresh(ctx: dict[str, Any], distributed: bool) -> dict[str, Any]:
    """3 steps, reset, 1 step; the same weights with a freshly built optimizer, the same step."""
    fig: dict[str, Any] = {}
    pol = _policy(_tiny_model(ctx), use_distributed_optimizer=distributed, lr_warmup_steps=3)
    try:
        fig["optimizer"] = _optimizer_names(pol.optimizer)
        batch = _batch(5)
        for _ in range(3):
            pol.train_step(batch, _nll)
        fig["counters_before_reset"] = adam_step_counters(pol.optimizer)
        pol.reset_optimizer()
        fig["counters_after_reset"] = after = adam_step_counters(pol.optimizer)
        before = _params(pol)
        m_reset = pol.train_step(_batch(6), _pg_loss)
        after_reset = _params(pol)

        _set_params(pol, before)
        pol.optimizer = pol._build_optimizer()  # a brand-new optimizer around the same weights
        pol.steps_since_optimizer_reset = 0
        m_fresh = pol.train_step(_batch(6), _pg_loss)
        after_fresh = _params(pol)
        diff = _max_diff(after_reset, after_fresh)
        update = _max_diff(after_fresh, before)
        fig.update(lr_reset=m_reset.get("lr"), lr_fresh=m_fresh.get("lr"), update_max_abs=update,
                   reset_vs_fresh_max_abs_diff=diff, bit_identical=diff == 0.0,
                   loss_equal=m_reset["loss"] == m_fresh["loss"])
        stale = [c for c in after["per_param"] + after["per_group"] if c != 0.0]
        assert not stale, f"step counters not restarted: {after}"
        assert update > 0.0
        assert fig["lr_reset"] == fig["lr_fresh"], "the lr warm-up did not restart with the reset"
        tol = 0.0 if not _cuda() else 1e-6 * update
        assert diff <= tol, f"reset update differs from a fresh optimizer's by {diff} (update {update})"
        return fig
    finally:
        del pol
        _free()


def check_optimizer_reset(ctx, fig):
    errors = []
    for name, distributed in (("plain", False), ("distributed", True)):
        try:
            fig[name] = _reset_vs_fresh(ctx, distributed)
        except Exception as exc:  # noqa: BLE001 - run the other variant, then fail
            fig[name] = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    assert not errors, "; ".join(errors)


def _round_trip(ctx: dict[str, Any], dtype: str, distributed: bool) -> dict[str, Any]:
    """Step, save, step, load, step again; the two last steps must agree."""
    fig: dict[str, Any] = {"params_dtype": dtype, "distributed_optimizer": distributed}
    pol = _policy(_tiny_model(ctx), params_dtype=dtype, use_distributed_optimizer=distributed)
    try:
        fig["optimizer"] = _optimizer_names(pol.optimizer)
        batch = _batch(2)
        pol.train_step(batch, _nll)
        t0 = time.perf_counter()
        where = Path(ctx["tmp"]) / f"ckpt_{dtype}_{int(distributed)}" / "step_00000001"
        ckpt = pol.save_checkpoint(where, {"step": 1})
        fig["save_s"] = time.perf_counter() - t0
        fig["checkpoint_mib"] = sum(f.stat().st_size for f in Path(ckpt).rglob("*") if f.is_file()) / 2**20
        counters = adam_step_counters(pol.optimizer)
        p_saved = _params(pol)
        cont = pol.train_step(batch, _nll)
        p_cont = _params(pol)
        t0 = time.perf_counter()
        pol.load_checkpoint(ckpt)
        fig["load_s"] = time.perf_counter() - t0
        fig["counters_saved"], fig["counters_loaded"] = counters, adam_step_counters(pol.optimizer)
        resumed = pol.train_step(batch, _nll)
        p_res = _params(pol)
        fig.update(loss_continued=cont["loss"], loss_resumed=resumed["loss"],
                   grad_norm_continued=cont["grad_norm"], grad_norm_resumed=resumed["grad_norm"],
                   weights_max_abs_diff=_max_diff(p_cont, p_res), update_max_abs=_max_diff(p_cont, p_saved))
        # the counters the layout uses must come back; megatron's DistributedOptimizer also writes a
        # param_groups[i]["step"] copy on load that torch Adam ignores (optim_reset.py's layout table)
        loaded = fig["counters_loaded"]
        assert loaded["per_param"] == counters["per_param"], (counters, loaded)
        assert not counters["per_group"] or loaded["per_group"] == counters["per_group"], (counters, loaded)
        assert math.isclose(resumed["loss"], cont["loss"], rel_tol=1e-6)
        assert math.isclose(resumed["grad_norm"], cont["grad_norm"], rel_tol=1e-5)
        # bit for bit on CPU; on CUDA within 1% of the step's update (bf16 rounding of a reordered sum)
        tol = 0.0 if not _cuda() else 1e-2 * fig["update_max_abs"]
        assert fig["weights_max_abs_diff"] <= tol, fig["weights_max_abs_diff"]
        return fig
    finally:
        del pol
        _free()


def check_checkpoint_round_trip(ctx, fig):
    # The recipe's settings (prorl_1p5b: bf16 + distributed optimizer) and the plain fp32 path; both
    # failed at save time before the fixes in docs/gpu-validation.md ("Found on CPU").
    variants = [("bf16_distributed", "bf16", True), ("fp32_plain", "fp32", False)]
    errors = []
    for name, dtype, distributed in variants:
        try:
            fig[name] = _round_trip(ctx, dtype, distributed)
        except Exception as exc:  # noqa: BLE001 - run the other variant, then fail
            fig[name] = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    assert not errors, "; ".join(errors)


def check_collective_placement(ctx, fig):
    try:
        from nemo_prorl import collectives
    except ImportError:
        raise Skip("not present: nemo_prorl.collectives is not in this build") from None
    from nemo_prorl.policy.megatron import parallel

    needed = ("all_gather", "all_reduce", "backend_device")
    missing = [n for n in needed if not hasattr(collectives, n)]
    if missing:
        raise Skip(f"nemo_prorl.collectives has no {missing}")
    parallel.init_parallel(1, 1)
    group = parallel.dp_group()
    fig["backend_device"] = str(collectives.backend_device(group))
    x = torch.arange(6, dtype=torch.float32).view(2, 3)  # on the CPU, like the policy's log-probs
    gathered = collectives.all_gather(x, group=group)
    fig["all_gather_result_device"] = str(gathered[0].device)
    y = x.clone()
    collectives.all_reduce(y, group=group)
    fig["all_reduce_result_device"] = str(y.device)
    assert len(gathered) == 1 and gathered[0].device.type == "cpu" and torch.equal(gathered[0], x)
    assert y.device.type == "cpu" and torch.equal(y, x)
    if _cuda():
        assert fig["backend_device"].startswith("cuda"), fig["backend_device"]


def check_arch_1p5b_train(ctx, fig):
    if not _cuda():
        raise Skip("needs CUDA")
    args = ctx["args"]
    seq, batch, steps, warm = args.seq, args.batch, args.steps, args.warmup
    t0 = time.perf_counter()
    model_dir, cfg = _random_qwen2_dir(Path(ctx["tmp"]) / "random_qwen2_1p5b", QWEN2_1P5B,
                                       max_positions=max(32768, args.lp_tokens))
    fig["model_dir_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pol = _policy(model_dir, params_dtype="bf16", micro_batch_size=1, lr=1e-6, use_distributed_optimizer=True,
                  logprob_chunk_size=2048)
    fig["build_s"] = time.perf_counter() - t0
    try:
        fig.update(optimizer=_optimizer_names(pol.optimizer), seq=seq, batch=batch,
                   static_gib=torch.cuda.memory_allocated() / 2**30)
        g = torch.Generator().manual_seed(0)
        from nemo_prorl.policy.interface import TokenBatch

        ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=g)
        mask = torch.ones(batch, seq)
        mask[:, 0] = 0
        tb = TokenBatch(ids, mask, {"advantages": torch.randn(batch, generator=g)})
        torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(warm + steps):
            _sync()
            t = time.perf_counter()
            pol.train_step(tb, _pg_loss, with_entropy=True)
            _sync()
            if i >= warm:
                times.append(time.perf_counter() - t)
        step_s = statistics.median(times)
        peak = peak_tflops(torch.cuda.get_device_name(), args.peak_tflops)
        tokens = batch * seq
        fig.update(step_s=times, step_s_median=step_s, tokens_per_s=tokens / step_s,
                   train_peak_gib=torch.cuda.max_memory_allocated() / 2**30,
                   flops_per_token=flops_per_token(cfg, seq), peak_tflops=peak)
        if peak:
            fig["mfu"] = flops_per_token(cfg, seq) * tokens / step_s / (peak * 1e12)
        # the policy's own log-probs (forward only, no grad) at the long length: whole-model peak
        L = args.lp_tokens
        ids = torch.randint(0, cfg.vocab_size, (1, L), generator=g)
        m = torch.ones(1, L)
        m[:, : L // 16] = 0
        _free()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        pol.logprobs(TokenBatch(ids, m, {}))
        _sync()
        fig.update(policy_logprobs_tokens=L, policy_logprobs_s=time.perf_counter() - t,
                   policy_logprobs_peak_above_static_gib=(torch.cuda.max_memory_allocated() - base) / 2**30)
        assert all(math.isfinite(x) for x in times)
    finally:
        del pol
        _free()


def _head_peak(T: int, H: int, V: int, chunk: int) -> tuple[float, float, bool]:
    """(median seconds, peak GiB above the inputs, all finite) of the chunked head, fwd + bwd, bf16."""
    from nemo_prorl.algorithms import chunked_logprobs

    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(T)
    h = torch.randn(T, H, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_(True)
    w = (torch.randn(V, H, device=dev, dtype=torch.bfloat16, generator=g) * 0.02).requires_grad_(True)
    labels = torch.randint(0, V, (T,), device=dev, generator=g)
    adv = torch.randn(T, device=dev, generator=g)
    times, peaks, finite = [], [], True
    for it in range(3):
        h.grad = w.grad = None
        _free()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        lp, ent = chunked_logprobs(h, w, labels, chunk_size=chunk, with_entropy=True)
        loss = -(lp.float() * adv).mean() - 1e-3 * ent.float().mean()
        loss.backward()
        _sync()
        finite = finite and bool(torch.isfinite(lp).all()) and bool(torch.isfinite(w.grad).all())
        if it:  # the first is a warm-up
            times.append(time.perf_counter() - t)
            peaks.append((torch.cuda.max_memory_allocated() - base) / 2**30)
    del h, w, labels, adv, lp, ent, loss
    _free()
    return statistics.median(times), max(peaks), finite


def check_logprob_head_16k(ctx, fig):
    if not _cuda():
        raise Skip("needs CUDA")
    args = ctx["args"]
    T, H, V, chunk = args.lp_tokens, QWEN2_1P5B["hidden_size"], QWEN2_1P5B["vocab_size"], args.lp_chunk
    naive = lambda n: n * V * 4 / 2**30  # the fp32 [n, V] logits alone
    half_s, half_peak, ok_half = _head_peak(T // 2, H, V, chunk)
    full_s, full_peak, ok_full = _head_peak(T, H, V, chunk)
    fig.update(tokens=T, hidden=H, vocab=V, chunk=chunk, seconds=full_s, peak_above_inputs_gib=full_peak,
               half_tokens_seconds=half_s, half_tokens_peak_gib=half_peak, naive_fp32_logits_gib=naive(T),
               weight_grad_gib=V * H * 2 / 2**30, tokens_per_s=T / full_s, finite=ok_half and ok_full)
    assert fig["finite"]
    assert full_peak < naive(T), fig
    # chunking makes the peak (nearly) independent of the token count: doubling T must not add
    # anything like the naive logits' growth
    assert full_peak - half_peak < 0.25 * (naive(T) - naive(T // 2)), fig


def check_vllm_colocated(ctx, fig):
    """The trainer's vLLM path on the tiny model: NCCL group first, then an ``external_launcher`` engine.

    Seeded batched generation reproduces; a level-2 sleep refuses to wake before a sync; the policy's
    weight stream (``MegatronPolicy.iter_hf_weights``) refills the discarded weights and the samples equal
    the ones before the sleep (same weights).
    """
    if not _cuda():
        raise Skip("needs CUDA")
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise Skip("vllm is not installed (benchmarks/gpu/bench_vllm_rollout.py measures this path)")
    from nemo_prorl.policy.megatron import parallel
    from nemo_prorl.rollout.base import SamplingParams
    from nemo_prorl.rollout.vllm_engine import VLLMRolloutEngine

    tiny = _tiny_model(ctx)
    parallel.init_parallel(1, 1)  # the trainer's process group exists before the engine
    policy = _policy(tiny)
    t0 = time.perf_counter()
    eng = VLLMRolloutEngine(tiny, max_prompt_tokens=32, max_response_tokens=16, dtype="float32",
                            gpu_memory_utilization=0.3, enforce_eager=True, sleep_level=2)
    fig["init_s"] = round(time.perf_counter() - t0, 2)
    fig.update(dp_rank=eng.dp_rank, dp_size=eng.dp_size, sleep_supported=eng.sleep_supported)
    prompts = [[5, 6, 7, 8], [9, 10]]
    sp = SamplingParams(temperature=1.0, max_tokens=16, seed=3)
    first = [s.token_ids for s in eng.generate(prompts, 4, sp).samples]
    assert first == [s.token_ids for s in eng.generate(prompts, 4, sp).samples], "call seed not reproducible"
    eng.sleep()
    if eng.sleep_supported:
        try:
            eng.wake()
        except RuntimeError:
            fig["wake_refused_before_sync"] = True
        else:
            raise AssertionError("woke on discarded level-2 weights")
    _sync()
    t0 = time.perf_counter()
    eng.update_weights(policy.iter_hf_weights())
    _sync()
    fig["refit_stream_s"] = round(time.perf_counter() - t0, 4)
    fig["refit"] = dict(eng.last_sync)
    eng.wake()
    after = [s.token_ids for s in eng.generate(prompts, 4, sp).samples]
    fig["same_samples_after_refit"] = after == first
    assert after == first, "samples changed after re-loading the same weights"
    eng.close()


CHECKS: list[tuple[str, Callable[[dict, dict], None]]] = [
    ("environment", check_environment),
    ("engine_bf16", check_engine_bf16),
    ("process_group", check_process_group),
    ("optimizer_reset", check_optimizer_reset),
    ("checkpoint_round_trip", check_checkpoint_round_trip),
    ("collective_placement", check_collective_placement),
    ("arch_1p5b_train", check_arch_1p5b_train),
    ("logprob_head_16k", check_logprob_head_16k),
    ("vllm_colocated", check_vllm_colocated),
]
#: the checks a CPU smoke run executes (the rest need CUDA and are recorded as skipped)
CPU_CHECKS = ("environment", "process_group", "optimizer_reset", "checkpoint_round_trip",
              "collective_placement")


def run_checks(names: list[str], ctx: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run each check in isolation, rewriting ``out`` after every one; returns the report."""
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "cpu_smoke": ctx["args"].cpu_smoke, "checks": []}
    for name, fn in CHECKS:
        if name not in names:
            continue
        fig: dict[str, Any] = {}
        entry: dict[str, Any] = {"name": name, "status": "pass", "figures": fig}
        t0 = time.perf_counter()
        try:
            fn(ctx, fig)
        except Skip as exc:
            entry.update(status="skipped", reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - one failure must not stop the other checks
            entry.update(status="fail", error=f"{type(exc).__name__}: {exc}"[:2000],
                         traceback=traceback.format_exc()[-4000:])
        entry["seconds"] = round(time.perf_counter() - t0, 3)
        report["checks"].append(entry)
        print(f"[gpu_check] {name:24s} {entry['status']:8s} {entry['seconds']:8.1f}s "
              f"{entry.get('reason') or entry.get('error') or ''}"[:300], flush=True)
        out.write_text(json.dumps(report, indent=1, default=str))
    statuses = [c["status"] for c in report["checks"]]
    report["summary"] = {s: statuses.count(s) for s in ("pass", "fail", "skipped")}
    out.write_text(json.dumps(report, indent=1, default=str))
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_check.json"))
    ap.add_argument("--cpu-smoke", action="store_true",
                    help=f"run only the checks that work on CPU/gloo ({', '.join(CPU_CHECKS)})")
    ap.add_argument("--only", nargs="*", default=None, help="run only these checks")
    ap.add_argument("--seq", type=int, default=4096, help="1.5B train step: tokens per sequence")
    ap.add_argument("--batch", type=int, default=4, help="1.5B train step: sequences per step")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--lp-tokens", type=int, default=16384)
    ap.add_argument("--lp-chunk", type=int, default=2048)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--tmp", default=None, help="scratch directory (default: a fresh temporary one)")
    args = ap.parse_args(argv)

    names = [n for n, _ in CHECKS]
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            ap.error(f"unknown checks {unknown}; known: {names}")
        names = list(args.only)
    if args.cpu_smoke:
        names = [n for n in names if n in CPU_CHECKS]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        ctx: dict[str, Any] = {"args": args, "tmp": tmp}
        try:
            report = run_checks(names, ctx, out)
        finally:
            try:
                _teardown()
            except Exception:  # noqa: BLE001 - nothing left to report into
                pass
    print(json.dumps(report["summary"]))
    return 0 if report["summary"]["fail"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
