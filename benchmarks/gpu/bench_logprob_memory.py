"""GPU: peak memory and time of log-probs + ProRL loss (fwd+bwd) at 16k tokens, V=151,936 (NOT YET RUN).

Variants: ``naive`` (full ``[T, V]`` logits + ``log_softmax``), ``chunked`` (``chunked_logprobs`` +
``prorl_loss``), ``fused`` (``fused_prorl_loss``). Each variant runs in its own process; peak memory is
``torch.cuda.max_memory_allocated`` above the inputs. Hidden size 1536 (the 1.5B architecture), bf16
weights and hidden states (the kernels compute in fp32).

Usage (one GPU)::

    python benchmarks/gpu/bench_logprob_memory.py --tokens 16384 --runs 5 --out logprob_memory.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

VARIANTS = ("naive", "chunked", "fused")


def child(args: argparse.Namespace) -> dict:
    import torch

    from nemo_prorl.algorithms import AlgorithmConfig, chunked_logprobs, prorl_loss
    from nemo_prorl.algorithms.logprobs import fused_prorl_loss

    dev = torch.device("cuda")
    dt = torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    rows = args.tokens // args.seq
    h = torch.randn(rows, args.seq, args.hidden, device=dev, dtype=dt, generator=g).requires_grad_(True)
    w = torch.randn(args.vocab, args.hidden, device=dev, dtype=dt, generator=g).mul_(0.02)
    w.requires_grad_(True)
    labels = torch.randint(0, args.vocab, (rows, args.seq), device=dev, generator=g)
    mask = torch.ones(rows, args.seq, device=dev)
    adv = torch.randn(rows, device=dev, generator=g)
    old = torch.full((rows, args.seq), -11.0, device=dev)
    cfg = AlgorithmConfig()
    cfg.kl.coef = 0.0
    times = []
    peak = 0.0
    for it in range(args.iters + 1):
        h.grad = w.grad = None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        if args.child == "naive":
            logp = torch.log_softmax((h @ w.T).float(), dim=-1)
            lp = logp.gather(-1, labels[..., None]).squeeze(-1)
            loss = prorl_loss(lp, old, adv, mask, cfg).loss
        elif args.child == "chunked":
            lp, ent = chunked_logprobs(h.reshape(-1, args.hidden), w, labels.reshape(-1),
                                       chunk_size=args.chunk, with_entropy=True)
            loss = prorl_loss(lp.float().view(rows, -1), old, adv, mask, cfg,
                              entropy=ent.float().view(rows, -1)).loss
        else:
            out, _, _ = fused_prorl_loss(h, w, labels, old, adv, mask, cfg, chunk_size=args.chunk,
                                         with_entropy=True)
            loss = out.loss
        loss.backward()
        torch.cuda.synchronize()
        if it:  # the first iteration is a warm-up
            times.append(time.perf_counter() - t0)
            peak = max(peak, (torch.cuda.max_memory_allocated() - base) / 2**30)
    return {"variant": args.child, "peak_gib": peak, "seconds": statistics.median(times),
            "tokens_per_s": args.tokens / statistics.median(times), "device": torch.cuda.get_device_name()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--seq", type=int, default=16384, help="tokens per row")
    ap.add_argument("--hidden", type=int, default=1536)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--runs", type=int, default=1, help="processes per variant")
    ap.add_argument("--out", default="logprob_memory.json")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return 0
    res: dict = {}
    for _ in range(args.runs):
        for v in VARIANTS:
            keys = ("tokens", "seq", "hidden", "vocab", "chunk", "iters")
            cmd = [sys.executable, __file__, "--child", v] + [f"--{k}={getattr(args, k)}" for k in keys]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:  # naive may run out of memory: record it
                res.setdefault(v, []).append({"error": p.stderr[-500:]})
                continue
            res.setdefault(v, []).append(json.loads(p.stdout.strip().splitlines()[-1]))
            print(v, res[v][-1], file=sys.stderr)
    Path(args.out).write_text(json.dumps({"settings": vars(args), "runs": res}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
