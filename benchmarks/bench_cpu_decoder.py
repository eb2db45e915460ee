"""The CPU decoder on the demo: ``HFRolloutEngine`` decode steps, hand-written (``llama``) vs transformers (``hf``).

The demo's rollout shape (``nemo_prorl/conf/demo.yaml``): the shipped base model, 16 prompts x 8 samples,
temperature 1.2, 12 new tokens, fp32, 1 torch thread; and its final-eval shape (128 prompts x 16,
T 0.6 / top_p 0.95). Both decoders run in one process on the same engine settings, interleaved
(``--runs`` rounds, the order alternating each round) after one warm-up call each; the numbers are
medians of the per-call wall times, with min-max. Same seeds on both sides: the script also checks that
the two decoders give identical samples (the speed-up is only worth keeping if they do).

Usage: ``.venv/bin/python benchmarks/bench_cpu_decoder.py --runs 7``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = {"rollout": (16, 8, 1.2, 1.0), "final_eval": (128, 16, 0.6, 0.95)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--shapes", default="rollout,final_eval")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch

    from nemo_prorl.rollout.base import SamplingParams
    from nemo_prorl.rollout.hf_engine import HFRolloutEngine

    torch.set_num_threads(1)
    demo = Path(__file__).resolve().parent.parent / "nemo_prorl" / "assets" / "demo"
    rows = [json.loads(x) for x in (demo / "val.jsonl").read_text().splitlines()]
    base = HFRolloutEngine.from_pretrained(demo, max_prompt_tokens=64, max_response_tokens=12,
                                           max_batch_size=256)
    engines = {"hf": HFRolloutEngine(base.model, base.tokenizer, max_prompt_tokens=64, max_response_tokens=12,
                                     max_batch_size=256, decoder="hf"),
               "llama": HFRolloutEngine(base.model, base.tokenizer, max_prompt_tokens=64,
                                        max_response_tokens=12, max_batch_size=256, decoder="llama")}
    result: dict = {"runs": args.runs, "shapes": {}}
    for shape in args.shapes.split(","):
        n_prompts, n, temp, top_p = SHAPES[shape]
        prompts = [base.tokenizer.encode(r["prompt"] + "\n") for r in rows[:n_prompts]]
        sp = SamplingParams(temperature=temp, top_p=top_p, max_tokens=12, seed=7)
        outs = {v: e.generate(prompts, n, sp) for v, e in engines.items()}  # warm-up, and the equality check
        same = [s.token_ids for s in outs["hf"].samples] == [s.token_ids for s in outs["llama"].samples]
        times: dict[str, list[float]] = {v: [] for v in engines}
        for r in range(args.runs):
            for v in (("hf", "llama") if r % 2 == 0 else ("llama", "hf")):
                t0 = time.perf_counter()
                engines[v].generate(prompts, n, sp)
                times[v].append(time.perf_counter() - t0)
        med = {v: statistics.median(t) for v, t in times.items()}
        result["shapes"][shape] = {
            "prompts": n_prompts, "n": n, "identical_samples": same,
            "seconds": {v: {"median": med[v], "min": min(t), "max": max(t)} for v, t in times.items()},
            "speedup_llama_vs_hf": med["hf"] / med["llama"],
        }
        print(f"{shape}: hf {med['hf']:.3f} s ({min(times['hf']):.3f}-{max(times['hf']):.3f}), llama "
              f"{med['llama']:.3f} s ({min(times['llama']):.3f}-{max(times['llama']):.3f}), speed-up "
              f"{med['hf'] / med['llama']:.2f}x, identical samples: {same}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
