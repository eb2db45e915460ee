"""Math grading benchmark: nemo_prorl's math reward vs math-verify called directly, side by side.

Corpus: responses of ~2k / 16k / 64k characters (chain of thought with inline math, ending in a boxed
answer); half correct in an equivalent but non-identical form, over 7 rotating answer types, the other
half wrong with perturbed values. Both graders run serially in this process (one core). Each size is
timed ``--runs`` times; medians are reported. Adversarial inputs run once each: ours through the
RewardPool (hard deadline), math-verify directly with its own SIGALRM timeouts.

Usage: python benchmarks/rewards/bench_math.py [--n 200] [--runs 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import statistics
import sys
import time
from fractions import Fraction

os.environ.setdefault("OMP_NUM_THREADS", "1")

import math_verify  # noqa: E402

from nemo_prorl.rewards import RewardPool, RewardsConfig  # noqa: E402
from nemo_prorl.rewards.math import MathReward  # noqa: E402

logging.getLogger("math_verify").setLevel(logging.ERROR)

FILLER = [
    "We first note that $a + b = {x}$ and hence $2a = {y}$.",
    "Substituting $t = {x}$ into the expression gives $t^2 - {y}t$, which we simplify.",
    "Let us check the case $n = {x}$: the sum is $\\frac{{n(n+1)}}{{2}} = {y}$.",
    "By the triangle inequality, $|u - v| \\le {x}$, so the bound holds.",
    "Hence the remaining term is ${x} \\cdot {y}$, and we continue.",
]


def answer_pair(kind: int, rng: random.Random, correct: bool) -> tuple[str, str]:
    """(gold, predicted) for answer type ``kind``; ``predicted`` equivalent iff ``correct``."""
    d = 0 if correct else 1
    if kind == 0:
        q = rng.choice([2, 4, 5, 8, 10, 20, 25])
        p = rng.randint(1, 99)
        return f"\\frac{{{p}}}{{{q}}}", str(float(Fraction(p + d, q)))
    if kind == 1:
        q = rng.choice([2, 4, 5, 8])
        p = rng.randint(1, 99)
        return str(float(Fraction(p, q))), f"\\frac{{{p + d}}}{{{q}}}"
    if kind == 2:
        q, p, k = rng.choice([3, 7, 9, 11]), rng.randint(1, 20), rng.randint(2, 6)
        f = Fraction(p, q)
        return (
            f"\\frac{{{f.numerator}}}{{{f.denominator}}}",
            f"\\dfrac{{{k * (f.numerator + d)}}}{{{k * f.denominator}}}",
        )
    if kind == 3:
        a, b = rng.randint(2, 9), rng.choice([2, 3, 5, 6, 7])
        return f"{a}\\sqrt{{{b}}}", f"\\sqrt{{{a * a * b + d}}}"
    if kind == 4:
        k, m = rng.randint(1, 9), rng.choice([2, 3, 4, 6])
        return f"\\frac{{{k}\\pi}}{{{m}}}", f"\\frac{{{k + d}}}{{{m}}}\\pi"
    if kind == 5:
        n = rng.randint(100000, 999999)
        s = str(n + d)
        return str(n), f"{s[:3]}{{,}}{s[3:]}"
    r = rng.randint(1, 9)
    return f"x^2+{2 * r}x+{r * r}", f"(x+{r + d})^2"


def make_response(pred: str, length: int, rng: random.Random) -> str:
    parts = ["Let us solve the problem step by step."]
    size = len(parts[0])
    while size < length:
        s = rng.choice(FILLER).format(x=rng.randint(1, 999), y=rng.randint(1, 999))
        parts.append(s)
        size += len(s) + 1
    parts.append(f"Therefore the final answer is $\\boxed{{{pred}}}$.")
    return " ".join(parts)


def corpus(n: int, length: int, seed: int) -> list[tuple[str, str, bool]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        correct = i % 2 == 0
        gold, pred = answer_pair((i // 2) % 7, rng, correct)
        out.append((gold, make_response(pred, length, rng), correct))
    return out


def mv_grade(gold: str, response: str) -> bool:
    return bool(math_verify.verify(math_verify.parse("\\boxed{" + gold + "}"), math_verify.parse(response)))


def ours_grade(reward: MathReward, gold: str, response: str) -> bool:
    return reward.score(response, {"answer": gold}).score == 1.0


def time_grader(fn, items) -> tuple[list[bool], list[float], float]:
    verdicts, lat = [], []
    t0 = time.perf_counter()
    for gold, resp, _ in items:
        t = time.perf_counter()
        verdicts.append(fn(gold, resp))
        lat.append(time.perf_counter() - t)
    return verdicts, lat, time.perf_counter() - t0


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


ADVERSARIAL = {
    "power tower 9^{9^{9^9}}": ("1", "\\boxed{9^{9^{9^9}}}"),
    "(10^8)!": ("1", "\\boxed{(10^8)!}"),
    "3000 nested parens": ("1", "\\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}"),
    "20k nested braces": ("1", "\\boxed{" + "{" * 20000 + "1" + "}" * 20000 + "}"),
    "hedge 7 or 8 (gold 7)": ("7", "\\boxed{7 \\text{ or } 8}"),
    "1\\,000 (gold 0)": ("0", "\\boxed{1\\,000}"),
    "self-correction 5 then 7 (gold 5)": ("5", "\\boxed{5} wait, actually \\boxed{7}"),
    "871{,}409 (gold 871408)": ("871408", "\\boxed{871{,}409}"),
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200, help="responses per size")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sizes", default="2000,16000,64000")
    ap.add_argument("--json", default=None)
    ap.add_argument("--skip-adversarial", action="store_true")
    args = ap.parse_args()
    reward = MathReward()
    reward.warmup()
    print(
        f"python {platform.python_version()}, math-verify {getattr(math_verify, '__version__', '0.9.0')}, "
        f"{platform.machine()}, {os.cpu_count()} cpus; n={args.n}, runs={args.runs}"
    )
    report: dict = {"sizes": {}, "adversarial": {}}
    graders = {"ours": lambda g, r: ours_grade(reward, g, r), "math-verify": mv_grade}
    for size in map(int, args.sizes.split(",")):
        items = corpus(args.n, size, seed=size)
        for gold, resp, _ in items[:20]:  # warm-up
            mv_grade(gold, resp)
            ours_grade(reward, gold, resp)
        res: dict = {}
        for name, fn in graders.items():
            rates, p50s, p99s, verdicts = [], [], [], None
            for _ in range(args.runs):
                verdicts, lat, total = time_grader(fn, items)
                rates.append(len(items) / total)
                p50s.append(pct(lat, 0.5))
                p99s.append(pct(lat, 0.99))
            fp = sum(v and not c for v, (_, _, c) in zip(verdicts, items))
            fn_ = sum((not v) and c for v, (_, _, c) in zip(verdicts, items))
            res[name] = {
                "samples_per_s": statistics.median(rates),
                "min": min(rates),
                "max": max(rates),
                "p50_ms": 1e3 * statistics.median(p50s),
                "p99_ms": 1e3 * statistics.median(p99s),
                "false_pos": fp,
                "false_neg": fn_,
                "verdicts": verdicts,
            }
        agree = sum(a == b for a, b in zip(res["ours"]["verdicts"], res["math-verify"]["verdicts"])) / len(
            items
        )
        for name in res:
            res[name].pop("verdicts")
        res["agreement"] = agree
        res["speedup"] = res["ours"]["samples_per_s"] / res["math-verify"]["samples_per_s"]
        report["sizes"][size] = res
        print(f"\n== ~{size} chars, {len(items)} responses (half correct, 7 answer types)")
        print(
            f"{'grader':12} {'samples/s/core':>15} {'(min-max)':>17} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'FP':>4} {'FN':>4}"
        )
        for name in graders:
            r = res[name]
            print(
                f"{name:12} {r['samples_per_s']:15.1f} {r['min']:8.1f}-{r['max']:<8.1f} {r['p50_ms']:8.3f} "
                f"{r['p99_ms']:8.3f} {r['false_pos']:4d} {r['false_neg']:4d}"
            )
        print(f"agreement ours vs math-verify: {agree:.3f}; speed-up {res['speedup']:.1f}x")
    if not args.skip_adversarial:
        print(
            "\n== adversarial (once each): ours via RewardPool(timeout_s=2), "
            "math-verify direct (own 5 s alarms)"
        )
        with RewardPool(RewardsConfig(num_workers=1, timeout_s=2.0)) as pool:
            pool.score([{"domain": "math", "response": "\\boxed{1}", "answer": "1"}])
            for label, (gold, resp) in ADVERSARIAL.items():
                t = time.perf_counter()
                r = pool.score([{"domain": "math", "response": resp, "answer": gold}])[0]
                ours_s = time.perf_counter() - t
                t = time.perf_counter()
                mv = mv_grade(gold, resp)
                mv_s = time.perf_counter() - t
                report["adversarial"][label] = {
                    "ours": [r.score, r.status, ours_s],
                    "math-verify": [float(mv), mv_s],
                }
                print(
                    f"{label:36} ours: {r.score:.0f} {r.status:8} {ours_s:6.2f}s | "
                    f"math-verify: {float(mv):.0f} {mv_s:6.2f}s"
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
