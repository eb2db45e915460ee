"""Print the CPU suite's results (benchmarks/results/*.json) as the markdown tables of RESULTS.md.

Usage: ``.venv/bin/python benchmarks/report.py [results_dir]``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import bench_code_reward, bench_grpo_step  # noqa: E402


def _fmt(s: dict, digits: int = 1) -> str:
    return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f}-{s['max']:,.{digits}f})"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0]) if argv else Path(__file__).resolve().parent / "results"
    lm = root / "lmhead.json"
    if lm.is_file():
        d = json.loads(lm.read_text())
        print("| variant | tokens/s median (min-max) | working set MB median | fwd s | bwd s | load avg |")
        print("|---|---|---|---|---|---|")
        for v, r in d["variants"].items():
            print(f"| {v} | {_fmt(r['tokens_per_s'])} | {r['working_set_mb']['median']:,.0f} | "
                  f"{r['forward_s']['median']:.1f} | {r['backward_s']['median']:.1f} | "
                  f"{r['load_avg']['median']:.1f} |")
        print("\nratios:", json.dumps({k: round(v, 3) for k, v in d["ratios"].items()}), "\n")
    cr = root / "code_reward.json"
    if cr.is_file():
        d = json.loads(cr.read_text())
        print("| variant | test cases/s median (min-max) | load avg |")
        print("|---|---|---|")
        for v, r in d["variants"].items():
            print(f"| {v} | {_fmt(r['cases_per_s'])} | {r['load_avg']['median']:.1f} |")
        # like-for-like only, recomputed from the medians (older result files also held a 2-vs-1 ratio)
        ratios = bench_code_reward.like_for_like_ratios(
            {v: r["cases_per_s"]["median"] for v, r in d["variants"].items()})
        print("\nratios:", json.dumps({k: round(v, 3) for k, v in ratios.items()}),
              "scores agree:", d["scores_agree"], "\n")
    gs = root / "grpo_step.json"
    if gs.is_file():
        d = json.loads(gs.read_text())
        print("| side | s/step median (min-max) | stages (medians, s) | completion tokens | load avg |")
        print("|---|---|---|---|---|")
        for v, r in d["variants"].items():
            stages = ", ".join(f"{k[:-2]} {s['median']:.3f}" for k, s in r["stages_s"].items())
            toks = r["mean_completion_tokens"]["median"]
            print(f"| {v} | {_fmt(r['step_s'], 3)} | {stages} | {toks:.1f} | {r['load_avg']['median']:.1f} |")
        medians = {v: r["step_s"]["median"] for v, r in d["variants"].items()}
        ratios = bench_grpo_step.like_for_like_ratios(medians)
        print("\nratios (same run only):", json.dumps({k: round(v, 3) for k, v in ratios.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
