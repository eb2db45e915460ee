"""GPU: the colocated vLLM rollout path of ``VLLMRolloutEngine``, measured piece by piece (NOT YET RUN).

Random-weight Qwen2 architecture (``--arch``), token-id prompts of ``--prompt-len`` random ids, ``--n``
samples per prompt, ``--max-tokens`` new tokens (random weights rarely emit EOS, so lengths are close to
fixed). One JSON per rank (``--out``, ``{rank}`` is replaced), with:

* ``batched``: output tokens/s of ``engine.generate`` -- one unseeded request per prompt with ``n``
  samples, the call seeded once through the default generator (median of ``--runs`` after a warm-up),
  plus ``reproducible``: two calls with the same seed gave the same tokens;
* ``per_request_seeds``: the same prompts sent the old way (``n`` requests of ``n=1``, each with its own
  ``seed``), which puts vLLM's sampler on its one-request-at-a-time path; ``speedup`` = batched / this;
* ``refit``: ``update_weights`` from a lazy stream of GPU tensors (what ``MegatronPolicy.iter_hf_weights``
  gives) and from a full state dict, median seconds;
* ``sleep_cycle``: for sleep level 1 and 2, seconds of ``sleep()``, of the refit into the sleeping engine
  (level 2 refills discarded weights) and of ``wake()``, and the device memory free while asleep;
* under ``torchrun`` (``external_launcher``): each rank is an independent replica (``dp_rank``,
  ``dp_size``); rank 0 also writes ``replicas.json`` with the summed tokens/s and the slowest rank's time.

Compare with the decode bound in the research notes (1.5B at 4k context: ~27k tok/s on one H100) and the
refit target (< 50 ms on one node).

Usage::

    python benchmarks/gpu/bench_vllm_rollout.py --arch 1.5b --prompts 64 --n 16 --max-tokens 4096
    torchrun --nproc-per-node 8 benchmarks/gpu/bench_vllm_rollout.py --arch 1.5b --prompts 64 --n 16 \\
        --max-tokens 4096 --out vllm_rollout_rank{rank}.json
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


def median_rate(tokens: list[int], seconds: list[float]) -> float:
    """Median over runs of tokens / seconds (runs with zero time are left out)."""
    rates = [t / s for t, s in zip(tokens, seconds) if s > 0]
    return statistics.median(rates) if rates else 0.0


def per_request_seed_params(sampling, n: int, prompts: int) -> list[dict]:
    """The old request layout: ``prompts x n`` requests of ``n=1``, each with its own seed (kwargs)."""
    from nemo_prorl.rollout.sampling import sample_seed
    from nemo_prorl.rollout.vllm_engine import request_params

    out = []
    for i in range(prompts):
        for j in range(n):
            kw = request_params(sampling, 1)
            kw["seed"] = sample_seed(int(sampling.seed), i, j)
            out.append(kw)
    return out


def _timed(fn):
    import torch

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="1.5b", choices=("0.5b", "1.5b", "7b"))
    ap.add_argument("--model-dir", default="random_qwen2_{arch}")
    ap.add_argument("--prompts", type=int, default=64, help="prompts per rank")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip-per-request-seeds", action="store_true", help="skip the slow old-layout run")
    ap.add_argument("--out", default="vllm_rollout.json", help="'{rank}' is replaced by the global rank")
    args = ap.parse_args()

    import torch
    from safetensors.torch import load_file

    from benchmarks.gpu._model import make_random_model_dir
    from nemo_prorl.rollout.base import SamplingParams
    from nemo_prorl.rollout.vllm_engine import VLLMRolloutEngine

    rank = int(os.environ.get("RANK", "0"))
    if "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    model_dir, cfg = make_random_model_dir(Path(args.model_dir.format(arch=args.arch)), args.arch,
                                           max_positions=max(32768, args.prompt_len + args.max_tokens))
    result: dict = {"arch": args.arch, "device": torch.cuda.get_device_name(), "rank": rank,
                    "prompts": args.prompts, "n": args.n, "prompt_len": args.prompt_len,
                    "max_tokens": args.max_tokens}

    def engine_at(level: int) -> VLLMRolloutEngine:
        return VLLMRolloutEngine(model_dir, max_prompt_tokens=args.prompt_len,
                                 max_response_tokens=args.max_tokens,
                                 gpu_memory_utilization=args.gpu_memory_utilization, dtype="bfloat16",
                                 tensor_parallel_size=args.tensor_parallel_size, sleep_level=level,
                                 distributed_executor_backend="external_launcher")

    engine = engine_at(2)
    result.update(dp_rank=engine.dp_rank, dp_size=engine.dp_size, init_s=engine.init_s)
    g = torch.Generator().manual_seed(1000 + engine.dp_rank)  # each replica its own prompts
    prompts = torch.randint(0, cfg.vocab_size, (args.prompts, args.prompt_len), generator=g).tolist()
    engine.generate(prompts[: max(1, args.prompts // 8)], args.n,
                    SamplingParams(temperature=1.0, max_tokens=min(64, args.max_tokens), seed=0))  # warm-up

    # batched: one unseeded request per prompt, the call seeded once
    toks, secs = [], []
    for r in range(args.runs):
        sp = SamplingParams(temperature=1.0, max_tokens=args.max_tokens, seed=r)
        out, dt = _timed(lambda sp=sp: engine.generate(prompts, args.n, sp))
        toks.append(sum(len(s.token_ids) for s in out.samples))
        secs.append(dt)
    again = engine.generate(prompts[:2], 2, SamplingParams(temperature=1.0, max_tokens=32, seed=7))
    twice = engine.generate(prompts[:2], 2, SamplingParams(temperature=1.0, max_tokens=32, seed=7))
    same = [s.token_ids for s in again.samples] == [s.token_ids for s in twice.samples]
    result["batched"] = {"output_tokens_per_s": median_rate(toks, secs), "seconds": secs, "tokens": toks,
                         "reproducible": same}

    # the old layout: per-request seeds (vLLM's one-by-one sampler path)
    if not args.skip_per_request_seeds:
        from vllm import SamplingParams as VSamplingParams

        sp = SamplingParams(temperature=1.0, max_tokens=args.max_tokens, seed=0)
        reqs = [{"prompt_token_ids": p} for p in prompts for _ in range(args.n)]
        params = [VSamplingParams(**kw) for kw in per_request_seed_params(sp, args.n, len(prompts))]
        outs, dt = _timed(lambda: engine.llm.generate(reqs, params, use_tqdm=False))
        n_tok = sum(len(o.outputs[0].token_ids) for o in outs)
        result["per_request_seeds"] = {"output_tokens_per_s": n_tok / dt, "seconds": dt, "tokens": n_tok}
        result["per_request_seeds"]["speedup"] = (result["batched"]["output_tokens_per_s"]
                                                  / max(1e-9, n_tok / dt))

    # refit: a stream of GPU tensors vs a full state dict
    state = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        state.update({k: v.cuda() for k, v in load_file(str(f)).items()})
    stream_s, dict_s = [], []
    for _ in range(args.runs + 1):
        stream_s.append(_timed(lambda: engine.update_weights(iter(state.items())))[1])
        dict_s.append(_timed(lambda: engine.update_weights(state))[1])
    result["refit"] = {"stream_s": statistics.median(stream_s[1:]), "dict_s": statistics.median(dict_s[1:]),
                       "first_stream_s": stream_s[0],
                       "weights_gb": sum(v.numel() * v.element_size() for v in state.values()) / 1e9}

    # independent replicas (torchrun): the summed rate and the slowest replica, before anything is closed
    if engine.dp_size > 1:
        from nemo_prorl import collectives

        everyone = collectives.all_gather_object(result["batched"])
        if rank == 0:
            total = sum(r["output_tokens_per_s"] for r in everyone)
            slowest = max(statistics.median(r["seconds"]) for r in everyone)
            Path("replicas.json").write_text(json.dumps({"replicas": len(everyone),
                                                         "output_tokens_per_s_total": total,
                                                         "slowest_replica_s": slowest}, indent=2))

    # sleep cycle at level 2 (the default); level 1 for comparison in a single process only (a second
    # engine needs the first closed, which tears down the process group a torchrun world shares)
    cycles = {}
    levels = (2, 1) if engine.dp_size * args.tensor_parallel_size == 1 else (2,)
    for level in levels:
        if level == 1:
            engine.close()
            engine = engine_at(1)
        eng = engine
        free_awake = torch.cuda.mem_get_info()[0]
        _, t_sleep = _timed(eng.sleep)
        free_asleep = torch.cuda.mem_get_info()[0]
        _, t_refit = _timed(lambda eng=eng: eng.update_weights(iter(state.items())))
        _, t_wake = _timed(eng.wake)
        check = eng.generate(prompts[:1], 1, SamplingParams(temperature=1.0, max_tokens=8, seed=1))
        cycles[f"level{level}"] = {"sleep_s": t_sleep, "refit_asleep_s": t_refit, "wake_s": t_wake,
                                   "freed_gb": (free_asleep - free_awake) / 1e9,
                                   "generates_after": len(check.samples) == 1}
    result["sleep_cycle"] = cycles

    print(json.dumps(result))
    Path(args.out.format(rank=rank)).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
