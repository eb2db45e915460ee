"""A whole tiny GRPO step on CPU: ours (MegatronPolicy + HFRolloutEngine) vs TRL's GRPOTrainer.

Same model, batch, n and lengths on both sides (the replayable TRL configuration of the research notes):

* model: a random ``Qwen2ForCausalLM``, 2 layers, hidden 64, intermediate 128, 4 heads / 2 KV heads,
  tied embeddings (90,944 parameters), built from the same seed on both sides;
* tokenizer: byte-level BPE without merges, vocab 260 (256 bytes + 4 specials), left padding;
* data: 64 prompts "Question i: what is a plus b? Answer:"; one step = 8 prompts x 4 generations = 32
  sequences, at most 32 completion tokens, temperature 1.0;
* reward: ``-abs(20 - len(completion)) / 20`` as a plain Python function;
* loss: PPO clip 0.2 / 0.2, token-mean, no KL (TRL ``loss_type="dapo"``, ``beta=0``), one optimizer
  step per generation batch, lr 1e-5, grad-norm clip 1.0.

TRL (``--child trl``, in ``.venv-bench``): ``GRPOTrainer`` with the GRPOConfig of the notes (its
defaults include gradient checkpointing and ``adamw_torch_fused``); a ``TrainerCallback`` times each
optimizer step, and the generation phase is timed by wrapping the trainer's generate method.

Ours (``--child ours``): the step loop the trainer runs, from the package's public pieces:
``HFRolloutEngine.generate`` (the transformers forward with a growing cache) -> reward
-> ``compute_advantages`` -> old log-probs by the trainer's rule ``skip_old_logprobs``: with one update
per rollout batch (this benchmark) the separate ``MegatronPolicy.logprobs`` pass is skipped and the
update's own log-probs, detached, are the old ones, as TRL does with ``num_iterations=1``
(variant ``ours_recompute`` forces the pass; ``ours_padded`` uses fixed micro-batches padded to the
longest) -> ``MegatronPolicy.train_step`` with the trainer's
``make_loss_fn`` (``prorl_loss``, entropy computed, rollout/trainer mismatch metric) -> weight sync
``export_hf_state_dict`` -> ``update_weights``. Each stage is timed.

The first ``--warmup`` steps are dropped; the rest give the per-process median s/step; the reported
number is the median over ``--runs`` processes per side, interleaved. Ratios to TRL are printed only
for variants measured in the same run as TRL (``like_for_like_ratios``).

``--lengths long-tail`` (the realistic shape): at most 256 completion tokens, untied output layer whose
end-of-sequence row is a fixed random vector (scale 1.3/8, seed 1), so the stop probability varies with
the context and completion lengths are long-tailed as reasoning traces are (measured on the benchmark
prompts: median ~42, 90th percentile ~190 tokens, a few near the cap). Variants then are ``ours``
(token-budget micro-batches: ``micro_batch_tokens = 8 x (64 + 256)``, rows sorted by length and binned),
``ours_padded`` (the same step with fixed micro-batches of 8 rows padded to the batch's longest: the same
memory bound) and ``trl``. Every step records completion tokens/s and the padding fraction of the
training forward (ours: the engine's ``perf/padding_fraction``; TRL, which pads completions to the
batch's longest and left-pads prompts, estimated from its logged mean/max completion length and the
prompts' mean/max length).

``ours_compiled`` / ``ours_padded_compiled``: ``ours`` / ``ours_padded`` with the engine's decode step through
``torch.compile`` (``rollout.compile: true``); the compile lands in the first (dropped) step, recorded as
``first_step_s``. TRL's ``GRPOTrainer`` builds its ``GenerationConfig`` with ``disable_compile=True``, so its
generation is always eager: a compiled variant against TRL compares the two products as configured, not one
technique.

``--model mid`` runs the same comparison on a 4-layer, hidden-512 Qwen2 (about 12M parameters in its
layers; end-of-sequence row scaled 48x more so the lengths stay long-tailed: median ~80, 90th percentile
~210, a few at the cap): its matmuls, not per-operation overhead, set the time on a CPU, as they do for
real models, so each side's time follows the tokens it computes (padding included).

Usage::

    .venv/bin/python benchmarks/bench_grpo_step.py --runs 5 --out benchmarks/results/grpo_step.json
    .venv/bin/python benchmarks/bench_grpo_step.py --lengths long-tail --model mid \
        --variants ours,ours_padded,trl
    .venv/bin/python benchmarks/bench_grpo_step.py --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    load_average,
    machine_info,
    peer_python,
    run_child,
    stamp,
    summary,
    this_python,
    write_json,
)

#: ``*_compiled``: the same variant with the engine's decode step through torch.compile (``rollout.compile``)
VARIANTS = ("ours", "ours_padded", "ours_recompute", "ours_compiled", "ours_padded_compiled", "trl")
PROMPTS_PER_STEP, N, N_PROMPTS, MAX_PROMPT_TOKENS = 8, 4, 64, 64
#: per ``--lengths``: completion cap, rows per micro-batch (the memory bound both of our variants keep),
#: and the scale of the end-of-sequence output row (``None`` = tied embeddings, the original benchmark)
#: ``lr`` (optional): both sides' learning rate for this shape, over the model's (see ``MODELS``): long-tailed
#: lengths are measured at 1e-9 on every model, so that both sides sample the same work every step (at
#: 1e-5 TRL's updates shortened the tiny model's completions to 57.6 tokens on average against our 67.6).
SHAPES = {"short": {"max_tokens": 32, "micro_rows": PROMPTS_PER_STEP * N, "eos_scale": None},
          "long-tail": {"max_tokens": 256, "micro_rows": 8, "eos_scale": 1.3, "lr": 1e-9}}
#: per ``--model``: the random Qwen2's size. ``tiny`` (90k parameters) is bound by per-operation overhead on
#: a CPU, where a batch of 32 rows costs about what one row does; ``mid`` (about 12M parameters in its
#: layers) is bound by its matmuls, as models are at scale, so the work each side computes shows in its time.
#: ``eos_scale_mult`` multiplies the ``--lengths`` shape's end-of-sequence scale (the hidden states of the
#: larger model have another scale; chosen so the lengths are long-tailed alike, not by step times).
#: ``lr``: both sides' learning rate. ``mid`` uses 1e-9 (every stage still runs, the optimizer included, but
#: the weights barely move): at 1e-5 the length reward drove TRL's completions from a median of ~90 tokens
#: to ~1 within two steps (the scaled end-of-sequence row amplifies every update), so the two sides no
#: longer sampled the same work.
MODELS = {"tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "eos_scale_mult": 1.0, "lr": 1e-5},
          "mid": {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 4,
                  "num_attention_heads": 8, "num_key_value_heads": 2, "eos_scale_mult": 48.0, "lr": 1e-9}}


def learning_rate(args: argparse.Namespace) -> float:
    """Both sides' learning rate: the ``--lengths`` shape's if it sets one, else the ``--model``'s."""
    return SHAPES[args.lengths].get("lr", MODELS[args.model]["lr"])


def like_for_like_ratios(medians: dict[str, float]) -> dict[str, float]:
    """Speed-ups between variants measured in the same run (never across runs), from s/step medians.

    TRL's s/step over each of ours (``ours`` skips the redundant old-log-prob pass, as TRL does with
    ``num_iterations=1``; ``ours_recompute`` forces it; ``ours_padded`` pads fixed micro-batches to the
    longest), and ``ours_padded`` over ``ours`` (what token-budget micro-batches gain).
    """
    out = {}
    if "trl" in medians:
        out.update({f"{v}_speedup_vs_trl": medians["trl"] / medians[v]
                    for v in VARIANTS if v != "trl" and v in medians})
    for fast, slow in (("ours", "ours_padded"), ("ours_compiled", "ours_padded_compiled"),
                       ("ours_compiled", "ours")):
        if fast in medians and slow in medians:
            out[f"{fast}_speedup_vs_{slow}"] = medians[slow] / medians[fast]
    return out

CLIP = 0.2
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]


def reward_len(text: str) -> float:
    """The benchmark reward: prefer completions of 20 characters."""
    return -abs(20 - len(text)) / 20


def build_tokenizer():
    """Byte-level BPE tokenizer without merges: 256 byte tokens + 4 specials, left padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for s in SPECIALS:
        vocab[s] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>", unk_token="<unk>", padding_side="left")


def build_model(tokenizer, seed: int = 0, eos_scale: float | None = None, size: str = "tiny"):
    """The random Qwen2 of the benchmark (fp32), of size ``MODELS[size]``.

    ``eos_scale``: untie the output layer and set its end-of-sequence row to ``eos_scale / 8`` times a
    fixed standard-normal vector (generator seed 1): the stop probability then depends on the context,
    which gives long-tailed completion lengths (``--lengths long-tail``).
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    dims = {k: v for k, v in MODELS[size].items() if k not in ("eos_scale_mult", "lr")}
    hidden = dims["hidden_size"]
    cfg = Qwen2Config(vocab_size=len(tokenizer), **dims, tie_word_embeddings=eos_scale is None,
                      max_position_embeddings=512, rope_theta=10000.0, torch_dtype="float32",
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    if eos_scale is not None:
        with torch.no_grad():
            g = torch.Generator().manual_seed(1)
            scale = eos_scale * MODELS[size]["eos_scale_mult"]
            model.lm_head.weight[tokenizer.eos_token_id] = scale * torch.randn(hidden, generator=g) / 8
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def prompts() -> list[str]:
    """The 64 benchmark prompts."""
    return [f"Question {i}: what is {(i * 37) % 90 + 10} plus {(i * 53) % 90 + 10}? Answer:"
            for i in range(N_PROMPTS)]


# ------------------------------------------------------------------------------------------- TRL

def child_trl(args: argparse.Namespace) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(args.threads)
    shape = SHAPES[args.lengths]
    tok = build_tokenizer()
    model = build_model(tok, eos_scale=shape["eos_scale"], size=args.model)
    ds = Dataset.from_list([{"prompt": p} for p in prompts()])

    def reward_fn(completions, **kwargs):  # noqa: ANN001, ANN003, ARG001
        return [reward_len(c) for c in completions]

    steps: list[float] = []
    gen: list[float] = []
    lengths: list[float] = []
    max_lengths: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):  # noqa: ANN001, ANN003, ARG002
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):  # noqa: ANN001, ANN003, ARG002
            steps.append(time.perf_counter() - self.t0)

        def on_log(self, a, state, control, logs=None, **kw):  # noqa: ANN001, ANN003, ARG002
            if logs and "completions/mean_length" in logs:
                lengths.append(float(logs["completions/mean_length"]))
                max_lengths.append(float(logs.get("completions/max_length", float("nan"))))

    with tempfile.TemporaryDirectory() as out:
        cfg = GRPOConfig(output_dir=out, per_device_train_batch_size=PROMPTS_PER_STEP * N, num_generations=N,
                         gradient_accumulation_steps=1, max_completion_length=shape["max_tokens"],
                         max_steps=args.steps, learning_rate=learning_rate(args), logging_steps=1,
                         save_strategy="no",
                         report_to="none", bf16=False, use_cpu=True, seed=42, dataloader_num_workers=0,
                         use_vllm=False, log_completions=False, epsilon=CLIP, beta=0.0, loss_type="dapo")
        trainer = GRPOTrainer(model=model, reward_funcs=reward_fn, args=cfg, train_dataset=ds,
                              processing_class=tok, callbacks=[Timer()])
        name = "_generate_single_turn" if hasattr(trainer, "_generate_single_turn") else "_generate"
        orig = getattr(trainer, name)

        def timed(*a, **kw):  # noqa: ANN002, ANN003
            t0 = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                gen.append(time.perf_counter() - t0)

        setattr(trainer, name, timed)
        trainer.train()
    keep = steps[args.warmup:]
    plens = [len(tok(p)["input_ids"]) for p in prompts()]
    p_mean, p_max = statistics.mean(plens), max(plens)
    rows = PROMPTS_PER_STEP * N
    tok_s = [rows * m / t for m, t in zip(lengths[args.warmup:], keep)]
    pad = [1 - (p_mean + m) / (p_max + x) for m, x in zip(lengths[args.warmup:], max_lengths[args.warmup:])]
    return {"variant": "trl", "trl": trl.__version__, "torch": torch.__version__,
            "step_s": statistics.median(keep), "steps": keep,
            "completion_tokens_per_s": statistics.median(tok_s) if tok_s else None,
            "padding_fraction": statistics.median(pad) if pad else None,
            "stages": {"generate_s": (statistics.median(gen[args.warmup:])
                                      if len(gen) > args.warmup else None)},
            "mean_completion_tokens": statistics.mean(lengths) if lengths else None,
            "gradient_checkpointing": bool(cfg.gradient_checkpointing), "optim": str(cfg.optim),
            "load_avg": load_average()}


# ------------------------------------------------------------------------------------------- ours

def child_ours(args: argparse.Namespace) -> dict:
    """``ours`` (token-budget micro-batches) or ``ours_padded`` (fixed rows padded to the longest), eager or
    ``*_compiled``; ``ours_recompute`` forces the old-log-prob pass."""
    import torch

    from nemo_prorl.algorithms import AlgorithmConfig, compute_advantages
    from nemo_prorl.policy.interface import TokenBatch
    from nemo_prorl.policy.megatron.config import MegatronPolicyConfig
    from nemo_prorl.policy.megatron.engine import MegatronPolicy
    from nemo_prorl.rollout.base import SamplingParams
    from nemo_prorl.rollout.hf_engine import HFRolloutEngine
    from nemo_prorl.trainer.trainer import make_loss_fn, skip_old_logprobs

    torch.set_num_threads(args.threads)
    shape = SHAPES[args.lengths]
    max_tokens, rows = shape["max_tokens"], shape["micro_rows"]
    tok = build_tokenizer()
    model = build_model(tok, eos_scale=shape["eos_scale"], size=args.model)
    alg = AlgorithmConfig()
    alg.loss.clip_low = alg.loss.clip_high = CLIP
    alg.loss.agg = "token-mean"
    alg.kl.coef = 0.0
    prompt_ids = [tok(p)["input_ids"] for p in prompts()]
    stage_names = ("generate_s", "reward_s", "logprobs_s", "train_s", "sync_s")
    stages: dict[str, list[float]] = {k: [] for k in stage_names}
    steps: list[float] = []
    lengths: list[float] = []
    mismatch: list[float] = []
    tok_s: list[float] = []
    pad: list[float] = []
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d, safe_serialization=True)
        tok.save_pretrained(d)
        padded = args.child in ("ours_padded", "ours_padded_compiled")
        budget = None if padded else rows * (MAX_PROMPT_TOKENS + max_tokens)
        pcfg = MegatronPolicyConfig(micro_batch_size=rows, micro_batch_tokens=budget, params_dtype="fp32",
                                    lr=learning_rate(args), weight_decay=0.0, clip_grad=1.0, seed=42)
        policy = MegatronPolicy(d, pcfg)
        compiled = args.child.endswith("_compiled")
        engine = HFRolloutEngine(model, tok, max_prompt_tokens=MAX_PROMPT_TOKENS,
                                 max_response_tokens=max_tokens, max_batch_size=PROMPTS_PER_STEP * N,
                                 compile_decode=compiled)

        loss_fn = make_loss_fn(alg)
        mode = "recompute" if args.child == "ours_recompute" else "auto"
        reuse = skip_old_logprobs(mode, 1, policy)  # one update per rollout batch

        for step in range(args.steps):
            t_start = time.perf_counter()
            lo = (step * PROMPTS_PER_STEP) % N_PROMPTS
            batch_prompts = prompt_ids[lo : lo + PROMPTS_PER_STEP]
            t0 = time.perf_counter()
            out = engine.generate(batch_prompts, N, SamplingParams(temperature=1.0, max_tokens=max_tokens,
                                                                   seed=step))
            t1 = time.perf_counter()
            rewards = torch.tensor([reward_len(s.text) for s in out.samples])
            groups = torch.tensor([s.prompt_index for s in out.samples])
            adv = compute_advantages(rewards, groups, alg.advantage).float()
            seqs = [list(s.prompt_token_ids) + list(s.token_ids) for s in out.samples]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros(len(seqs), width)
            rollout_lp = torch.zeros(len(seqs), width)
            for b, (seq, s) in enumerate(zip(seqs, out.samples)):
                ids[b, : len(seq)] = torch.tensor(seq)
                mask[b, len(s.prompt_token_ids) : len(seq)] = 1.0
                rollout_lp[b, len(s.prompt_token_ids) : len(seq)] = s.logprobs
            batch = TokenBatch(ids, mask, {"advantages": adv})
            t2 = time.perf_counter()
            if reuse:  # the train step's own log-probs are the old ones; mismatch measured there
                batch.extras["rollout_logprobs"] = rollout_lp
            else:
                old_lp, _ = policy.logprobs(batch)
                batch.extras["old_logprobs"] = old_lp
            t3 = time.perf_counter()
            metrics = policy.train_step(batch, loss_fn, with_entropy=True)
            t4 = time.perf_counter()
            if reuse:
                mismatch.append(metrics["token_mult_prob_error"])
            engine.update_weights(policy.export_hf_state_dict())
            t5 = time.perf_counter()
            steps.append(t5 - t_start)
            tok_s.append(sum(len(s.token_ids) for s in out.samples) / (t5 - t_start))
            pad.append(metrics["perf/padding_fraction"])
            for k, v in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                stages[k].append(v)
            lengths.append(sum(len(s.token_ids) for s in out.samples) / len(out.samples))
    keep = steps[args.warmup:]
    return {"variant": args.child, "torch": torch.__version__, "step_s": statistics.median(keep),
            "steps": keep,
            "completion_tokens_per_s": statistics.median(tok_s[args.warmup:]),
            "padding_fraction": statistics.median(pad[args.warmup:]),
            "stages": {k: statistics.median(v[args.warmup:]) for k, v in stages.items()},
            "mean_completion_tokens": statistics.mean(lengths), "load_avg": load_average(),
            "old_logprobs_reused": reuse,
            "token_mult_prob_error": statistics.mean(mismatch) if mismatch else None,
            "compile_decode": compiled, "first_step_s": steps[0]}


# ------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=14, help="steps per process (the first --warmup dropped)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5, help="processes per side, interleaved")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--lengths", choices=tuple(SHAPES), default="short",
                    help="completion-length shape: short (32-token cap) or long-tail (256 cap, long-tailed)")
    ap.add_argument("--model", choices=tuple(MODELS), default="tiny",
                    help="model size: tiny (overhead-bound on CPU) or mid (matmul-bound, ~12M parameters)")
    ap.add_argument("--quick", action="store_true", help="3 steps, 1 run")
    ap.add_argument("--out", default="benchmarks/results/grpo_step.json")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.runs = min(args.steps, 3), 1, 1
    if args.child:
        res = child_trl(args) if args.child == "trl" else child_ours(args)
        print(json.dumps(res))
        return 0
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"--variants: unknown variant {v!r}; expected some of {','.join(VARIANTS)}")
    peer = peer_python()
    skipped = [v for v in variants if v == "trl" and peer is None]
    variants = [v for v in variants if v not in skipped]
    if skipped:
        print("bench_grpo_step: trl skipped: no .venv-bench (run benchmarks/setup_peers.sh)", file=sys.stderr)
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
              "--lengths", args.lengths, "--model", args.model]
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.runs):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            res = run_child(peer if v == "trl" else this_python(), __file__, [*common, "--child", v])
            runs[v].append(res)
            print(f"run {r + 1}/{args.runs} {v:14s} {res['step_s']:.3f} s/step  "
                  f"{res.get('completion_tokens_per_s') or float('nan'):.0f} tok/s  "
                  f"padding {res.get('padding_fraction') or float('nan'):.3f}  stages {res['stages']}  "
                  f"load {res['load_avg']:.2f}", file=sys.stderr)
    result: dict = {
        "benchmark": "grpo_step", "time": stamp(), "machine": machine_info(),
        "settings": {"steps": args.steps, "warmup": args.warmup, "runs": args.runs, "threads": args.threads,
                     "prompts_per_step": PROMPTS_PER_STEP, "n": N, "lengths": args.lengths,
                     **SHAPES[args.lengths], "model": args.model, **MODELS[args.model],
                     "lr": learning_rate(args), "quick": args.quick},
        "variants": {}, "ratios": {}, "skipped": skipped,
    }
    for v, rs in runs.items():
        stage_keys = [k for k in rs[0]["stages"] if rs[0]["stages"][k] is not None]
        result["variants"][v] = {
            "step_s": summary([x["step_s"] for x in rs]),
            "stages_s": {k: summary([x["stages"][k] for x in rs]) for k in stage_keys},
            "mean_completion_tokens": summary([x["mean_completion_tokens"] for x in rs
                                               if x.get("mean_completion_tokens") is not None]),
            "completion_tokens_per_s": summary([x["completion_tokens_per_s"] for x in rs
                                                if x.get("completion_tokens_per_s") is not None]),
            "padding_fraction": summary([x["padding_fraction"] for x in rs
                                         if x.get("padding_fraction") is not None]),
            "load_avg": summary([x["load_avg"] for x in rs]),
            "extra": {k: rs[0][k] for k in ("trl", "torch", "gradient_checkpointing", "optim",
                                            "old_logprobs_reused", "token_mult_prob_error", "compile_decode")
                      if k in rs[0]},
            **({"first_step_s": summary([x["first_step_s"] for x in rs])} if "first_step_s" in rs[0] else {}),
        }
    result["ratios"] = like_for_like_ratios({v: result["variants"][v]["step_s"]["median"] for v in runs})
    write_json(args.out, result)
    print(json.dumps({"out": args.out, "step_s": {v: result["variants"][v]["step_s"]["median"] for v in runs},
                      "ratios": result["ratios"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
