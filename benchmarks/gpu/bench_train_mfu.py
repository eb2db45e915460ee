"""GPU: training tokens/s and MFU of a Qwen2 architecture on megatron-core, bf16 (NOT YET RUN).

The policy is :class:`~nemo_prorl.policy.megatron.engine.MegatronPolicy` on a random-weight model
directory (``--arch``, default the 1.5B architecture); each step is ``train_step`` on ``--batch``
sequences of ``--seq`` tokens (all response tokens) with the ProRL loss against fixed old log-probs.

MFU counts model FLOPs only: ``6 * (dense + head) + 6 * layers * hidden * seq`` per token (causal
attention, forward + backward, no recompute), divided by step time and ``--peak-tflops`` (989 for H100
SXM dense BF16) times the number of GPUs.

Usage::

    torchrun --nproc-per-node 1 benchmarks/gpu/bench_train_mfu.py --seq 8192 --batch 8 --mbs 1
    torchrun --nproc-per-node 8 benchmarks/gpu/bench_train_mfu.py --tp 2 --seq 8192 --batch 32 --mbs 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="1.5b", choices=("0.5b", "1.5b", "7b"))
    ap.add_argument("--model-dir", default="random_qwen2_{arch}")
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=8, help="sequences per step per data-parallel rank")
    ap.add_argument("--mbs", type=int, default=1, help="micro-batch size")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=2048, help="logprob_chunk_size")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--out", default="train_mfu.json")
    args = ap.parse_args()

    import torch
    import torch.distributed as dist

    from benchmarks.gpu._model import count_params, make_random_model_dir
    from nemo_prorl.algorithms import AlgorithmConfig, prorl_loss
    from nemo_prorl.policy.interface import TokenBatch
    from nemo_prorl.policy.megatron.config import MegatronPolicyConfig
    from nemo_prorl.policy.megatron.engine import MegatronPolicy

    rank = int(os.environ.get("RANK", "0"))
    model_dir = Path(args.model_dir.format(arch=args.arch))
    if rank == 0:
        make_random_model_dir(model_dir, args.arch, max_positions=max(32768, args.seq))
    if dist.is_initialized():
        dist.barrier()
    else:  # MegatronPolicy initialises the process group; wait for rank 0's files by polling
        while not (model_dir / "config.json").is_file():
            time.sleep(1)
    _, cfg = make_random_model_dir(model_dir, args.arch, max_positions=max(32768, args.seq))
    policy = MegatronPolicy(model_dir, MegatronPolicyConfig(
        tensor_model_parallel_size=args.tp, pipeline_model_parallel_size=args.pp, micro_batch_size=args.mbs,
        params_dtype="bf16", lr=1e-6, logprob_chunk_size=args.chunk, use_distributed_optimizer=True))
    alg = AlgorithmConfig()
    alg.kl.coef = 0.0
    g = torch.Generator().manual_seed(rank)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=g)
    mask = torch.ones(args.batch, args.seq)
    mask[:, 0] = 0
    batch = TokenBatch(ids, mask, {"advantages": torch.randn(args.batch, generator=g),
                                   "old_logprobs": torch.full((args.batch, args.seq), -11.0)})

    def loss_fn(lp, ent, micro, norm):  # noqa: ANN001
        out = prorl_loss(lp, micro["old_logprobs"], micro["advantages"], micro["response_mask"], alg,
                         entropy=ent, num_tokens=norm["num_tokens"], num_seqs=norm["num_seqs"])
        return out.loss, {}

    times = []
    for step in range(args.steps + args.warmup):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        policy.train_step(batch, loss_fn, with_entropy=True)
        torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    world = dist.get_world_size() if dist.is_initialized() else 1
    dp = world // (args.tp * args.pp)
    step_s = statistics.median(times)
    tokens = args.batch * args.seq * dp
    p = count_params(cfg)
    flops_per_token = 6 * (p["dense"] + p["head"]) + 6 * cfg.num_hidden_layers * cfg.hidden_size * args.seq
    result = {
        "arch": args.arch, "seq": args.seq, "batch_per_dp": args.batch, "tp": args.tp, "pp": args.pp,
        "dp": dp,
        "gpus": world, "device": torch.cuda.get_device_name(), "step_s_median": step_s,
        "step_s": times, "tokens_per_s_per_gpu": tokens / step_s / world,
        "mfu": flops_per_token * tokens / step_s / (args.peak_tflops * 1e12 * world),
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
    }
    if rank == 0:
        print(json.dumps(result))
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
