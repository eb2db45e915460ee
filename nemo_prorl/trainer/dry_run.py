"""``nemo-prorl train --dry-run``: validate a recipe, print its phase schedule and a per-rank memory plan.

Nothing is built, trained or written: the config is composed and validated (every phase included, see
:mod:`nemo_prorl.trainer.preflight`), the model's architecture is read from its ``config.json`` (or the
built-in table of known models when the weights are not on this machine), and the memory formulas of
:mod:`nemo_prorl.trainer.memory_plan` are evaluated for every phase.
"""

from __future__ import annotations

from pathlib import Path

from nemo_prorl.algorithms.dynamic_sampling import prompts_per_round
from nemo_prorl.trainer import memory_plan as mp
from nemo_prorl.trainer.config import ProRLConfig
from nemo_prorl.trainer.preflight import (
    ModelArch,
    PhasePlan,
    check_recipe,
    engine_context,
    engine_rollout_config,
    load_model_arch,
)

_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "bf16": 2, "fp32": 4}


def layout_of(cfg: ProRLConfig, world_size: int) -> mp.Layout:
    """The :class:`~nemo_prorl.trainer.memory_plan.Layout` a config asks for on ``world_size`` ranks."""
    p, r = cfg.policy, cfg.rollout
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    param_bytes = _DTYPE_BYTES[str(p.params_dtype).lower()]
    return mp.Layout(
        tp=tp, pp=pp, dp=max(1, world_size // (tp * pp)), param_bytes=param_bytes,
        grad_bytes=4 if (p.grad_reduce_in_fp32 or param_bytes == 4) else param_bytes,
        distributed_optimizer=p.use_distributed_optimizer, reference_on_gpu=not p.reference_offload_to_cpu,
        micro_batch=p.micro_batch_size, micro_batch_tokens=p.micro_batch_tokens,
        packed=getattr(p, "sequence_packing", "off") != "off",  # auto packs on GPU (TE), as planned here
        recompute_modules=tuple(p.recompute_modules or ("mlp",)), logprob_chunk=p.logprob_chunk_size,
        rollout_tp=r.tensor_parallel_size, rollout_bytes=_DTYPE_BYTES.get(r.dtype, param_bytes),
        gpu_memory_utilization=r.gpu_memory_utilization)


def _gb(x: float) -> str:
    return f"{x / mp.GB:.2f}"


def _fits(x: float, gpu: float) -> str:
    return f"{_gb(x)}" + ("" if x <= gpu else " OVER")


def format_schedule(plans: list[PhasePlan]) -> list[str]:
    """One line per phase: steps, response limit, n, temperature, reset, shaping, mixture."""
    lines = [f"{'#':>2}  {'phase':<18} {'steps':>15}  {'max_resp':>8} {'n':>3} {'temp':>5}  {'reset':<5}  "
             "shaping / mixture"]
    for p in plans:
        shaping = []
        s = p.shaping
        if s.stop_properly_penalty_coef is not None:
            shaping.append(f"stop_properly_penalty_coef={s.stop_properly_penalty_coef:g}")
        if s.overlong_enable:
            end = s.max_response_len
            shaping.append(f"overlong ramp {end - s.overlong_buffer_len}..{end}")
        if s.length_penalty_coef > 0:
            cap = s.length_penalty_len or s.max_response_len
            end = f"->{s.length_penalty_coef_end:g}" if s.length_penalty_schedule == "cosine" else ""
            shaping.append(f"length penalty {s.length_penalty_schedule} {s.length_penalty_coef:g}{end} "
                           f"at {cap}")
        mix = ", ".join(f"{k} {v:g}" for k, v in p.mixture.items()) if p.mixture else "all data"
        steps = f"{p.start}-{p.start + p.steps - 1} ({p.steps})"
        lines.append(f"{max(p.index, 0):>2}  {p.name:<18} {steps:>15}  {p.max_response_tokens:>8} {p.n:>3} "
                     f"{p.temperature:>5g}  {'yes' if p.reset else '-':<5}  "
                     f"{'; '.join(shaping) or 'none'} | {mix}")
    return lines


def format_memory(cfg: ProRLConfig, arch: ModelArch, plans: list[PhasePlan], layout: mp.Layout,
                  world_size: int, gpu_gb: float) -> list[str]:
    """The per-rank memory plan: static state once, then each phase's training and generation peaks."""
    gpu = gpu_gb * mp.GB
    st = mp.static_memory(arch, layout)
    opt = ("fp32 m, v" + (" + master" if layout.param_bytes < 4 else "")
           + (f", sharded over DP {layout.dp}" if layout.distributed_optimizer else ", not sharded"))
    configured = getattr(cfg.policy, "recompute", None)
    lines = [f"memory per rank in GB (1 GB = 1e9 B) against a {gpu_gb:g} GB GPU (--gpu-memory-gb):",
             f"  static: weights {_gb(st.weights)} + gradients {_gb(st.gradients)} + optimizer "
             f"{_gb(st.optimizer)} ({opt}) + reference {_gb(st.reference)}"
             f"{' (offloaded)' if not layout.reference_on_gpu else ''} = {_gb(st.total)}",
             "  activations at the largest micro-batch (padded to prompt + the phase's response limit; "
             + (f"policy.micro_batch_tokens {layout.micro_batch_tokens} -> "
                + ("one packed row of max(budget, seq) tokens" if layout.packed
                   else "max(1, budget // seq) rows")
                if layout.micro_batch_tokens else f"policy.micro_batch_size {layout.micro_batch} rows")
             + "), per policy.recompute mode, with fused attention (Transformer Engine):",
             f"    none = everything; selective = recompute_modules {list(layout.recompute_modules)} "
             "recomputed; full = layer inputs + one layer",
             f"    configured: policy.recompute = {configured}"]
    vllm = cfg.rollout.backend == "vllm"
    replicas = max(1, world_size // layout.rollout_tp)
    per_round = cfg.trainer.generation_prompts or prompts_per_round(
        cfg.trainer.prompts_per_step, cfg.algorithm.dynamic_sampling.oversample)
    head = (f"  {'phase':<18} {'seq':>6} {'mb':>3}  {'act none':>9} {'selective':>9} {'full':>7}  "
            f"{'head':>5}  {'train peak none/selective/full':>32}")
    if vllm:
        head += f"  {'vLLM w':>6} {'KV need':>8} {'KV avail':>8} {'gen peak':>8}"
    lines.append(head)
    seen: set[tuple[int, int]] = set()
    over = sorted({cfg.rollout.max_prompt_tokens + p.max_response_tokens for p in plans
                   if layout.micro_batch_tokens and cfg.rollout.max_prompt_tokens + p.max_response_tokens
                   > layout.micro_batch_tokens})
    if over:
        lines.append(f"  warning: sequences of up to {over[-1]} tokens exceed policy.micro_batch_tokens "
                     f"{layout.micro_batch_tokens}: such a row trains alone in an over-budget micro-batch")
    for p in plans:
        seq = cfg.rollout.max_prompt_tokens + p.max_response_tokens
        if (seq, p.n) in seen:
            continue
        seen.add((seq, p.n))
        per_update = max(1, cfg.trainer.mini_batch_prompts * p.n // layout.dp)
        ph = mp.phase_memory(arch, layout, st, seq=seq, seqs_per_update=per_update,
                             seqs_per_round=-(-per_round * p.n // replicas), gpu_bytes=gpu)
        a, t = ph.activations, ph.train_peak
        peaks = "/".join(_fits(t[m], gpu) for m in mp.RECOMPUTE_MODES)
        line = (f"  {p.name:<18} {seq:>6} {ph.micro_batch:>3}  {_gb(a['none']):>9} {_gb(a['selective']):>9} "
                f"{_gb(a['full']):>7}  {_gb(ph.head):>5}  {peaks:>32}")
        if vllm:
            kv_flag = "" if ph.kv_needed <= ph.kv_available else "*"
            line += (f"  {_gb(ph.vllm_weights):>6} {_gb(ph.kv_needed) + kv_flag:>8} "
                     f"{_gb(ph.kv_available):>8} {_fits(ph.generation_peak, gpu):>8}")
        lines.append(line)
    if vllm:
        kv_tok = mp.kv_cache_bytes_per_token(arch, layout.rollout_bytes, layout.rollout_tp)
        lines += [f"  vLLM: weights {layout.rollout_bytes} B/param over rollout TP {layout.rollout_tp}; "
                  f"KV cache {kv_tok / 1024:.0f} KiB/token (2 x {arch.num_layers} layers x "
                  f"{arch.num_kv_heads} KV heads x {arch.head_dim} x {layout.rollout_bytes} B); KV need = "
                  f"one round's {per_round} prompts x n over {replicas} replicas, all at full length",
                  f"  KV avail = rollout.gpu_memory_utilization {layout.gpu_memory_utilization:g} x GPU - "
                  "vLLM weights; gen peak = static + that reservation ('*': vLLM runs the round in waves)"]
    return lines


def dry_run_report(cfg: ProRLConfig, *, world_size: int, gpu_memory_gb: float = 80.0,
                   config_name: str | None = None) -> str:
    """Validate ``cfg`` for ``world_size`` ranks (raises ``ConfigError``) and return the report text."""
    arch = load_model_arch(cfg.model_dir)
    plans = check_recipe(cfg, arch, world_size)
    layout = layout_of(cfg, world_size)
    engine = engine_rollout_config(cfg)
    lines = [f"nemo-prorl train --dry-run: {config_name or 'demo'} (nothing built, trained or written)", ""]
    if arch is not None:
        lines += [f"model: {cfg.model}: architecture from {arch.source}",
                  f"  {arch.num_params / 1e9:.3f} B parameters: {arch.num_layers} layers, hidden "
                  f"{arch.hidden_size}, {arch.num_heads} heads / {arch.num_kv_heads} KV heads (head dim "
                  f"{arch.head_dim}), MLP {arch.ffn_hidden_size}, vocab {arch.vocab_size}, max positions "
                  f"{arch.max_position_embeddings}"]
    lines += [f"layout: world {world_size} = TP {layout.tp} x PP {layout.pp} x DP {layout.dp}; micro-batch "
              f"{layout.micro_batch}; rollout {cfg.rollout.backend} (TP {layout.rollout_tp}), engine context "
              f"{engine_context(engine)} tokens = prompt {engine.max_prompt_tokens} + the largest phase's "
              f"response {engine.max_response_tokens}",
              f"checks: passed for {len(plans)} phase(s): engine context, model positions, reward shaping, "
              f"batch split (prompts {cfg.trainer.prompts_per_step} x n per step, mini-batch "
              f"{cfg.trainer.mini_batch_prompts} x n over DP {layout.dp})"]
    missing = [f for f in [*cfg.data.train_files, *cfg.data.val_files] if not Path(f).is_file()]
    if missing:
        lines.append(f"warning: {len(missing)} data file(s) not on this machine (the run validates them at "
                     f"start-up): {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
    lines += ["", f"schedule: {cfg.trainer.max_steps} steps", *format_schedule(plans), ""]
    if arch is not None:
        lines += format_memory(cfg, arch, plans, layout, world_size, gpu_memory_gb)
    return "\n".join(lines)
