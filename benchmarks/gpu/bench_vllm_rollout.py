"""GPU: vLLM rollout throughput and weight-sync time through ``VLLMRolloutEngine`` (NOT YET RUN).

Random-weight Qwen2 architecture (``--arch``), token-id prompts of ``--prompt-len`` random ids,
``--n`` samples per prompt, ``--max-tokens`` new tokens (random weights rarely emit EOS, so lengths
are close to fixed). Reported: output tokens/s (median of ``--runs`` generate calls after one warm-up),
and ``update_weights`` time for a full HF state dict already on the GPU (median of ``--runs``), i.e. the
refit cost of a colocated engine. Compare with the decode bound in the research notes (1.5B at 4k
context: ~27k tok/s on one H100).

Usage (one GPU)::

    python benchmarks/gpu/bench_vllm_rollout.py --arch 1.5b --prompts 64 --n 16 --max-tokens 4096
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="1.5b", choices=("0.5b", "1.5b", "7b"))
    ap.add_argument("--model-dir", default="random_qwen2_{arch}")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default="vllm_rollout.json")
    args = ap.parse_args()

    import torch
    from safetensors.torch import load_file

    from benchmarks.gpu._model import make_random_model_dir
    from nemo_prorl.rollout.base import SamplingParams
    from nemo_prorl.rollout.vllm_engine import VLLMRolloutEngine

    model_dir, cfg = make_random_model_dir(Path(args.model_dir.format(arch=args.arch)), args.arch,
                                           max_positions=max(32768, args.prompt_len + args.max_tokens))
    engine = VLLMRolloutEngine(model_dir, max_prompt_tokens=args.prompt_len,
                               max_response_tokens=args.max_tokens,
                               gpu_memory_utilization=args.gpu_memory_utilization, dtype="bfloat16",
                               distributed_executor_backend="uni")
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, cfg.vocab_size, (args.prompts, args.prompt_len), generator=g).tolist()
    sampling = SamplingParams(temperature=1.0, max_tokens=args.max_tokens, seed=0)
    engine.generate(prompts[: max(1, args.prompts // 8)], args.n, sampling)  # warm-up
    rates, lengths = [], []
    for r in range(args.runs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        params = SamplingParams(temperature=1.0, max_tokens=args.max_tokens, seed=r)
        out = engine.generate(prompts, args.n, params)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        toks = sum(len(s.token_ids) for s in out.samples)
        rates.append(toks / dt)
        lengths.append(toks / len(out.samples))
    state = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        state.update({k: v.cuda() for k, v in load_file(str(f)).items()})
    syncs = []
    for _ in range(args.runs + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        engine.update_weights(state)
        torch.cuda.synchronize()
        syncs.append(time.perf_counter() - t0)
    result = {
        "arch": args.arch, "device": torch.cuda.get_device_name(), "prompts": args.prompts, "n": args.n,
        "prompt_len": args.prompt_len, "max_tokens": args.max_tokens,
        "output_tokens_per_s": statistics.median(rates), "output_tokens_per_s_runs": rates,
        "mean_response_tokens": statistics.median(lengths),
        "weight_sync_s": statistics.median(syncs[1:]), "weight_sync_s_first": syncs[0],
        "weights_gb": sum(v.numel() * v.element_size() for v in state.values()) / 1e9,
    }
    print(json.dumps(result))
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
