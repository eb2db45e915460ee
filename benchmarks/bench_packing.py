"""Sequence packing vs binned padding on CPU: ``MegatronPolicy.train_step`` and ``logprobs`` wall time.

Question: on megatron's local layer spec (CPU, no Transformer Engine) packing can only be expressed as a
block-diagonal causal mask over the pack (``policy.sequence_packing=on`` -> ``"mask"``), which computes
``pack_len^2`` attention scores where binned padding computes ``rows x longest^2``. Does dropping the
padding pay for that? This decides the CPU default of ``policy.sequence_packing: auto``.

Variants (same weights, same batch, same token budget ``T`` for both):

* ``binned``: ``sequence_packing=off`` -- rows sorted by length, micro-batches of ``rows x longest <= T``.
* ``packed``: ``sequence_packing=on`` -- first-fit-decreasing packs of ``sum(len) <= T``, one row each.

Batch: ``--rows`` sequences, prompt ``U(16, 48)`` tokens, response long-tailed (log-normal, median
``0.15 x cap``, sigma 0.9, clipped to the cap): most responses short, a few at the cap, as in RL.
Model: the package's demo model (``nemo_prorl/assets/demo``: Qwen2, hidden 256, 2 layers), fp32.
Each run times every variant once, in rotating order (shared-machine drift hits all); medians over runs.
The warm-up run also checks that the variants agree: log-probs within 1e-4 and the step's loss within
1e-5 (relative), else the script fails.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_packing.py --cap 128 --budget 512 --runs 7
    .venv/bin/python benchmarks/bench_packing.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import load_average, machine_info, stamp, summary, write_json  # noqa: E402

VARIANTS = {"binned": "off", "packed": "on"}


def _batch(rows: int, cap: int, vocab: int, seed: int):
    import torch

    from nemo_prorl.policy.interface import TokenBatch

    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(16, 49, (rows,), generator=g)
    resp = torch.exp(torch.randn(rows, generator=g) * 0.9 + torch.log(torch.tensor(0.15 * cap)))
    lengths = torch.minimum(prompts + resp.round().long().clamp(min=1), torch.tensor(cap))
    ids = torch.randint(0, vocab, (rows, cap), generator=g)
    mask = torch.zeros(rows, cap)
    for r in range(rows):
        mask[r, int(prompts[r]) : int(lengths[r])] = 1
    extras = {"advantages": torch.randn(rows, generator=g)}
    lp = -torch.rand(rows, cap, generator=g) * mask
    extras["old_logprobs"] = lp
    extras["ref_logprobs"] = lp
    return TokenBatch(ids, mask, extras=extras), [int(v) for v in lengths]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--cap", type=int, default=128, help="longest sequence (prompt + response)")
    ap.add_argument("--budget", type=int, default=512, help="policy.micro_batch_tokens for both variants")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="2 runs, 16 rows: checks that it works")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        args.rows, args.runs = 16, 1

    import torch

    from nemo_prorl.algorithms.config import AlgorithmConfig
    from nemo_prorl.config_schema import load
    from nemo_prorl.policy import packing
    from nemo_prorl.policy.megatron.config import MegatronPolicyConfig
    from nemo_prorl.policy.megatron.engine import MegatronPolicy
    from nemo_prorl.policy.micro_batching import padded_tokens, token_budget_bins
    from nemo_prorl.trainer.trainer import make_loss_fn

    model = Path(__file__).resolve().parent.parent / "nemo_prorl" / "assets" / "demo"
    policies = {}
    for name, mode in VARIANTS.items():
        cfg = MegatronPolicyConfig(micro_batch_tokens=args.budget, sequence_packing=mode, lr=1e-6,
                                   clip_grad=0.0)
        policies[name] = MegatronPolicy(model, cfg)
    assert policies["packed"].packing == "mask" and policies["binned"].packing == "off"
    vocab = int(policies["binned"].hf_config.vocab_size)
    batch, lengths = _batch(args.rows, args.cap, vocab, seed=0)
    loss_fn = make_loss_fn(load(AlgorithmConfig, {"loss": {"agg": "token-mean"}, "kl": {"coef": 0.0}}))
    bins = token_budget_bins(lengths, args.budget)
    packs = packing.pack_bins(lengths, args.budget)
    layout = {
        "real_positions": sum(lengths),
        "binned": {"micro_batches": len(bins), "positions": padded_tokens(bins, lengths),
                   "attention_scores": sum(len(b) * lengths[b[0]] ** 2 for b in bins)},
        "packed": {"micro_batches": len(packs), "positions": packing.packed_tokens(packs, lengths),
                   "attention_scores": sum(sum(lengths[i] for i in b) ** 2 for b in packs)},
        "lengths": {"min": min(lengths), "median": sorted(lengths)[len(lengths) // 2], "max": max(lengths)},
    }
    times: dict[str, dict[str, list[float]]] = {n: {"train_step": [], "logprobs": []} for n in VARIANTS}
    padding: dict[str, float] = {}
    warm: dict[str, tuple] = {}
    names = list(VARIANTS)
    for run in range(args.runs + 1):  # run 0 warms up
        order = names[run % len(names):] + names[: run % len(names)]
        for name in order:
            policy = policies[name]
            t0 = time.perf_counter()
            lp, _ = policy.logprobs(batch)
            t1 = time.perf_counter()
            m = policy.train_step(batch, loss_fn)
            t2 = time.perf_counter()
            padding[name] = m["perf/padding_fraction"]
            if not run:
                warm[name] = (lp, m["loss"])
            else:
                times[name]["logprobs"].append(t1 - t0)
                times[name]["train_step"].append(t2 - t1)
    agree = {"max_abs_logprob_diff": float((warm["packed"][0] - warm["binned"][0]).abs().max()),
             "loss_rel_diff": abs(warm["packed"][1] - warm["binned"][1]) / max(abs(warm["binned"][1]), 1e-12)}
    if agree["max_abs_logprob_diff"] > 1e-4 or agree["loss_rel_diff"] > 1e-5:
        raise SystemExit(f"packed and binned variants disagree: {agree}")
    result = {
        "benchmark": "packing", "stamp": stamp(), "machine": machine_info(), "load_average": load_average(),
        "threads": torch.get_num_threads(), "args": vars(args), "layout": layout,
        "padding_fraction": padding, "agree": agree,
        "seconds": {n: {k: summary(v) for k, v in t.items()} for n, t in times.items()},
    }
    for kind in ("train_step", "logprobs"):
        b, p = (result["seconds"][n][kind]["median"] for n in ("binned", "packed"))
        result[f"packed_over_binned_{kind}"] = p / b
    if args.out:
        write_json(args.out, result)
    import json

    print(json.dumps(result))


if __name__ == "__main__":
    main()
