"""LM head benchmark: per-token log-probs + the GRPO/ProRL loss, forward and backward, fp32 on CPU.

Variants (each measured in its own process; see benchmarks/RESULTS.md for the numbers):

* ``naive``: ``log_softmax(h @ W.T).gather(labels)`` on the full ``[T, V]`` logits, then the loss.
* ``trl_fused``: the path TRL 1.16's GRPOTrainer uses -- ``trl.kernels.ChunkedLogProbFunction`` as its
  ``add_fused_lm_head`` calls it on CPU (every position, 4,096-token x 32,768-vocab tiles, outputs
  ``("log_probs", "entropy")``), then TRL's ``dapo`` loss formula. Runs in ``.venv-bench``.
* ``ours_chunked``: ``chunked_logprobs(..., with_entropy=True)`` + ``prorl_loss`` (the engine's path:
  tiles recomputed in backward).
* ``ours_fused``: ``fused_prorl_loss(..., with_entropy=True)`` (loss gradient taken inside the chunked
  forward; no recompute GEMM).
* ``ours_train``: the head ``MegatronPolicy.train_step`` runs (``policy.lm_head: fused``):
  ``vocab_parallel_fused_loss`` calling the trainer's own ``make_loss_fn`` on each chunk of rows, as the
  engine's ``_fused_head_loss`` does (TP=1, no megatron model around it).

The loss is the same in all variants: PPO clip 0.2 / 0.2, token-mean, no KL (TRL ``dapo`` with beta=0),
against fixed old log-probs. Every token is in the loss (mask all ones), so all variants do the same
work. Working set = peak RSS (``VmHWM``, reset after the inputs were created) minus RSS after the inputs.

Usage::

    .venv/bin/python benchmarks/bench_lmhead.py --runs 5 --out benchmarks/results/lmhead.json
    .venv/bin/python benchmarks/bench_lmhead.py --quick      # tiny shapes, checks the variants agree
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    load_average,
    machine_info,
    peak_rss_mb,
    peer_python,
    reset_peak_rss,
    rss_mb,
    run_child,
    stamp,
    summary,
    this_python,
    write_json,
)

VARIANTS = ("naive", "trl_fused", "ours_chunked", "ours_fused", "ours_train")
PEER_VARIANTS = {"trl_fused"}
CLIP = 0.2


def _inputs(args: argparse.Namespace):
    import torch

    g = torch.Generator().manual_seed(0)
    b = args.tokens // args.seq
    h = torch.randn(b, args.seq, args.hidden, generator=g).requires_grad_(True)
    w = torch.randn(args.vocab, args.hidden, generator=g).mul_(0.02).requires_grad_(True)
    labels = torch.randint(0, args.vocab, (b, args.seq), generator=g)
    mask = torch.ones(b, args.seq)
    adv = torch.randn(b, generator=g)
    old = -float(torch.log(torch.tensor(float(args.vocab)))) + 0.1 * torch.randn(b, args.seq, generator=g)
    return h, w, labels, mask, adv, old


def _step(variant: str, args: argparse.Namespace, h, w, labels, mask, adv, old) -> tuple[float, float, float]:
    """One forward + backward; returns ``(loss, forward_s, backward_s)``."""
    import torch

    t0 = time.perf_counter()
    if variant == "naive":
        from nemo_prorl.algorithms import prorl_loss

        logp = torch.log_softmax(h @ w.T, dim=-1)  # [B, L, V]
        lp = logp.gather(-1, labels[..., None]).squeeze(-1)
        loss = prorl_loss(lp, old, adv, mask, args.cfg).loss
    elif variant == "ours_chunked":
        from nemo_prorl.algorithms import chunked_logprobs, prorl_loss

        flat_lp, flat_ent = chunked_logprobs(h.reshape(-1, h.shape[-1]), w, labels.reshape(-1),
                                             chunk_size=args.chunk, with_entropy=True)
        loss = prorl_loss(flat_lp.view(mask.shape), old, adv, mask, args.cfg,
                          entropy=flat_ent.view(mask.shape)).loss
    elif variant == "ours_fused":
        from nemo_prorl.algorithms.logprobs import fused_prorl_loss

        out, _, _ = fused_prorl_loss(h, w, labels, old, adv, mask, args.cfg, chunk_size=args.chunk,
                                     with_entropy=True)
        loss = out.loss
    elif variant == "ours_train":
        from nemo_prorl.algorithms.logprobs import vocab_parallel_fused_loss
        from nemo_prorl.trainer.trainer import make_loss_fn

        loss_fn = make_loss_fn(args.cfg)
        data = {"response_mask": mask, "advantages": adv, "old_logprobs": old}
        norm = {"num_tokens": float(mask.sum()), "num_seqs": float(mask.shape[0])}

        def row_loss(r0, r1, lp, ent):
            return loss_fn(lp, ent, {k: v[r0:r1] for k, v in data.items()}, norm)[0]

        loss, _, _ = vocab_parallel_fused_loss(h, w, labels, mask, row_loss, chunk_size=args.chunk,
                                               with_entropy=True)
    elif variant == "trl_fused":
        from trl.kernels import ChunkedLogProbFunction
        from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

        flat = ChunkedLogProbFunction.apply(h.reshape(-1, h.shape[-1]), w, None, labels.reshape(-1), 1.0,
                                            _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, ("log_probs", "entropy"))
        lp = flat[0].view(mask.shape)
        # TRL GRPOTrainer loss_type="dapo", beta=0: -min(r A, clip(r) A), summed over the mask / tokens
        coef_1 = torch.exp(lp - old)
        coef_2 = torch.clamp(coef_1, 1 - CLIP, 1 + CLIP)
        per_token = -torch.min(coef_1 * adv[:, None], coef_2 * adv[:, None])
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    else:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    return float(loss.detach()), t1 - t0, t2 - t1


def child(args: argparse.Namespace) -> dict:
    """Measure one variant in this process (called with ``--child``)."""
    import torch

    torch.set_num_threads(args.threads)
    if args.child != "trl_fused":
        from nemo_prorl.algorithms import AlgorithmConfig

        cfg = AlgorithmConfig()
        cfg.loss.clip_low = cfg.loss.clip_high = CLIP
        cfg.loss.agg = "token-mean"
        cfg.kl.coef = 0.0
        cfg.entropy.coef = 0.0
        args.cfg = cfg
    inputs = _inputs(args)
    base = rss_mb()
    # the peak is measured from here: creating the inputs is not part of the working set
    peak_reset = reset_peak_rss()
    # warm-up on a slice (initialises BLAS / allocator paths without a full-size pass)
    h, w, labels, mask, adv, old = inputs
    warm = max(1, min(h.shape[0], 1))
    hw = h[:warm].detach().requires_grad_(True)
    _step(args.child, args, hw, w, labels[:warm], mask[:warm], adv[:warm], old[:warm])
    w.grad = None
    times, fwd, bwd, losses = [], [], [], []
    for _ in range(args.iters):
        h.grad = None
        w.grad = None
        loss, tf, tb = _step(args.child, args, *inputs)
        times.append(tf + tb)
        fwd.append(tf)
        bwd.append(tb)
        losses.append(loss)
    peak = peak_rss_mb()
    return {
        "variant": args.child,
        "tokens": args.tokens,
        "tokens_per_s": args.tokens / min(times),
        "seconds": min(times),
        "forward_s": min(fwd),
        "backward_s": min(bwd),
        "peak_rss_mb": peak,
        "rss_after_inputs_mb": base,
        "working_set_mb": peak - base,
        "peak_reset": peak_reset,
        "loss": losses[-1],
        "grad_h_sum": float(h.grad.double().sum()),
        "grad_w_norm": float(w.grad.double().norm()),
        "load_avg": load_average(),
        "torch": torch.__version__,
        "trl": __import__("trl").__version__ if args.child == "trl_fused" else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--seq", type=int, default=512, help="tokens per row (rows = tokens / seq)")
    ap.add_argument("--hidden", type=int, default=896)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--chunk", type=int, default=512, help="tokens per tile of our variants")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per measurement")
    ap.add_argument("--runs", type=int, default=5, help="processes per variant (interleaved)")
    ap.add_argument("--iters", type=int, default=1, help="timed iterations per process (the best is kept)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--quick", action="store_true", help="tiny shapes, 1 run; checks that variants agree")
    ap.add_argument("--out", default="benchmarks/results/lmhead.json")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.tokens, args.seq, args.hidden, args.vocab, args.chunk, args.runs = 256, 64, 32, 3000, 64, 1
    if args.child:
        print(__import__("json").dumps(child(args)))
        return 0
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"--variants: unknown variant {v!r}; expected some of {','.join(VARIANTS)}")
    peer = peer_python()
    skipped = [v for v in variants if v in PEER_VARIANTS and peer is None]
    variants = [v for v in variants if v not in skipped]
    if skipped:
        print(f"bench_lmhead: {skipped} skipped: no .venv-bench (run benchmarks/setup_peers.sh)",
              file=sys.stderr)
    common = ["--tokens", str(args.tokens), "--seq", str(args.seq), "--hidden", str(args.hidden),
              "--vocab", str(args.vocab), "--chunk", str(args.chunk), "--threads", str(args.threads),
              "--iters", str(args.iters)]
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.runs):
        order = variants[r % len(variants):] + variants[: r % len(variants)]  # rotate: interleaved
        for v in order:
            py = peer if v in PEER_VARIANTS else this_python()
            res = run_child(py, __file__, [*common, "--child", v])
            runs[v].append(res)
            print(f"run {r + 1}/{args.runs} {v:13s} {res['tokens_per_s']:8.1f} tok/s  "
                  f"working set {res['working_set_mb']:7.0f} MB  load {res['load_avg']:.2f}", file=sys.stderr)
    result: dict = {
        "benchmark": "lmhead", "time": stamp(), "machine": machine_info(),
        "settings": {k: getattr(args, k) for k in ("tokens", "seq", "hidden", "vocab", "chunk", "threads",
                                                    "runs", "iters", "quick")},
        "variants": {}, "ratios": {}, "skipped": skipped,
    }
    if peer is not None and "trl_fused" in variants:
        result["peer_versions"] = {"trl": runs["trl_fused"][0].get("trl")}
    for v, rs in runs.items():
        result["variants"][v] = {
            "tokens_per_s": summary([x["tokens_per_s"] for x in rs]),
            "working_set_mb": summary([x["working_set_mb"] for x in rs]),
            "peak_rss_mb": summary([x["peak_rss_mb"] for x in rs]),
            "forward_s": summary([x["forward_s"] for x in rs]),
            "backward_s": summary([x["backward_s"] for x in rs]),
            "loss": rs[0]["loss"], "grad_h_sum": rs[0]["grad_h_sum"], "grad_w_norm": rs[0]["grad_w_norm"],
            "load_avg": summary([x["load_avg"] for x in rs]),
        }
    med = {v: result["variants"][v]["tokens_per_s"]["median"] for v in runs}
    mem = {v: result["variants"][v]["working_set_mb"]["median"] for v in runs}
    for ours in ("ours_train", "ours_fused", "ours_chunked"):
        for base in ("trl_fused", "naive", "ours_chunked"):
            if ours in med and base in med and ours != base:
                result["ratios"][f"{ours}_vs_{base}_speed"] = med[ours] / med[base]
                result["ratios"][f"{ours}_vs_{base}_memory"] = mem[ours] / mem[base]
    # agreement: every variant computes the same loss and gradients
    ref = runs[variants[0]][0]
    agree = {}
    for v in variants:
        x = runs[v][0]
        agree[v] = max(abs(x["loss"] - ref["loss"]) / max(abs(ref["loss"]), 1e-12),
                       abs(x["grad_w_norm"] - ref["grad_w_norm"]) / max(abs(ref["grad_w_norm"]), 1e-12))
    result["max_rel_diff_vs_" + variants[0]] = agree
    write_json(args.out, result)
    print(__import__("json").dumps({"out": args.out, "ratios": result["ratios"], "agree": agree}))
    bad = {v: d for v, d in agree.items() if d > 1e-3}
    if bad:
        print(f"bench_lmhead: variants disagree with {variants[0]}: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
