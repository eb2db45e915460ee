"""Code reward benchmark: sandboxed test cases per second, ours vs a prime_code-style baseline.

Variants (each measurement in its own process, interleaved over runs):

* ``ours_score``: the ``code`` reward's ``score()`` called serially in one process, with the bwrap
  sandbox (full isolation: user/pid/net/mount namespaces, per-case rlimits, private tmpfs).
* ``ours_pool``: the same reward through ``RewardPool`` with 2 workers (how the trainer runs it).
* ``baseline``: an UNSANDBOXED check in the style of verl's ``prime_code`` grader, written here from its
  description: for every test case, a ``multiprocessing.Process`` (fork) plus a ``Manager`` list for the
  result; the child applies a "reliability guard" (disables ``os.kill``, ``os.system``,
  ``shutil.rmtree``, ``subprocess.Popen``, ``builtins.exit``... and caps its address space), then
  ``exec``\\ s the program in-process with stdin/stdout redirected (or execs it and the assert), under a
  per-case ``signal.alarm``; the parent joins with a global timeout. Cases run one after the other, as
  prime_code's continuous mode does. This is NOT isolation: the program shares the grader's user,
  filesystem, network and environment.
* ``baseline_2``: the baseline with two checks in flight at once (a thread per core), for a 2-core
  comparison with ``ours_pool``.

Ratios (``like_for_like_ratios``): ``ours_score / baseline`` (one check at a time on each side) and
``ours_pool / baseline_2`` (two at a time on each side); no other pairing is printed.

Corpus: ``--samples`` responses over 6 problems (stdin/stdout and assert styles), ``--cases`` test cases
each; every third response has a bug that fails some cases. All variants must give the same scores.

Usage::

    .venv/bin/python benchmarks/bench_code_reward.py --runs 5 --out benchmarks/results/code_reward.json
    .venv/bin/python benchmarks/bench_code_reward.py --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    load_average,
    machine_info,
    run_child,
    stamp,
    summary,
    this_python,
    write_json,
)

VARIANTS = ("ours_score", "ours_pool", "baseline", "baseline_2")
#: the only ratios printed: each compares like with like (same number of checks in flight).
#: ours_pool against the serial baseline is not one (it compared 2 workers with 1: "2.1x" was 1.31x).
LIKE_FOR_LIKE = {"serial": ("ours_score", "baseline"), "two_in_flight": ("ours_pool", "baseline_2")}


def like_for_like_ratios(medians: dict[str, float]) -> dict[str, float]:
    """``{"serial_ours_vs_baseline": a/b, "two_in_flight_ours_vs_baseline": c/d}`` for the pairs measured."""
    return {f"{name}_ours_vs_baseline": medians[ours] / medians[base]
            for name, (ours, base) in LIKE_FOR_LIKE.items() if ours in medians and base in medians}

# (program, bug, case generator) -- the bug is a text replacement that makes some cases fail
_PROBLEMS = [
    ("n = int(input())\nxs = list(map(int, input().split()))\nprint(sum(xs))\n",
     ("sum(xs)", "sum(xs[:3])"),
     lambda i: {"input": f"{i + 2}\n{' '.join(str(j * 7 % 13) for j in range(i + 2))}\n",
                "output": str(sum(j * 7 % 13 for j in range(i + 2)))}),
    ("s = input().strip()\nprint(s[::-1])\n",
     ("s[::-1]", "s[::-1] if len(s) < 6 else s"),
     lambda i: {"input": "ab" * (i + 1) + "c\n", "output": ("ab" * (i + 1) + "c")[::-1]}),
    ("def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
     ("a, b = b, a + b", "a, b = b, a + b + (n > 3)"),
     lambda i: {"assert": f"assert fib({i + 3}) == {_fib(i + 3)}"}),
    ("import sys\nwords = sys.stdin.read().split()\nprint(' '.join(sorted(words)))\n",
     ("sorted(words)", "sorted(words)[:4]"),
     lambda i: {"input": " ".join(f"w{(j * 5) % 11}" for j in range(i + 2)) + "\n",
                "output": " ".join(sorted(f"w{(j * 5) % 11}" for j in range(i + 2)))}),
    ("def is_prime(n):\n    if n < 2:\n        return False\n    d = 2\n    while d * d <= n:\n"
     "        if n % d == 0:\n            return False\n        d += 1\n    return True\n",
     ("d * d <= n", "d * d < n"),
     lambda i: {"assert": f"assert is_prime({[2, 3, 4, 9, 25, 29, 49, 97, 121, 169][i % 10]}) == "
                          f"{[True, True, False, False, False, True, False, True, False, False][i % 10]}"}),
    ("n = int(input())\nprint(sum(i * i for i in range(n)))\n",
     ("range(n)", "range(min(n, 5))"),
     lambda i: {"input": f"{i * 3}\n", "output": str(sum(k * k for k in range(i * 3)))}),
]


def _fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def make_corpus(samples: int, cases: int) -> list[dict]:
    """Rows of the code domain: ``response`` (fenced program), ``tests``."""
    rows = []
    for s in range(samples):
        prog, (old, new), gen = _PROBLEMS[s % len(_PROBLEMS)]
        if s % 3 == 2:
            prog = prog.replace(old, new)
        rows.append({"domain": "code", "prompt": f"problem {s % len(_PROBLEMS)}",
                     "response": f"Here is my solution.\n```python\n{prog}```\n",
                     "tests": [gen(i) for i in range(cases)]})
    return rows


# ---------------------------------------------------------------------------------------- baseline

def _reliability_guard(max_bytes: int) -> None:
    """Best-effort guard applied inside the forked checker (as prime_code-style graders do)."""
    import builtins
    import os
    import resource
    import shutil
    import subprocess

    resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))
    builtins.exit = None
    builtins.quit = None
    for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork",
                 "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod",
                 "fchown", "chmod", "chown", "chroot", "lchown", "getcwd", "chdir"):
        if hasattr(os, name):
            setattr(os, name, None)
    shutil.rmtree = None
    shutil.move = None
    shutil.chown = None
    subprocess.Popen = None


def _check_one(program: str, case: dict, result: list, timeout_s: int) -> None:
    """Child body: run ONE test case of ``program`` in-process and append True/False to ``result``."""
    import contextlib
    import io
    import signal

    def on_alarm(signum, frame):  # noqa: ANN001, ARG001
        raise TimeoutError

    signal.signal(signal.SIGALRM, on_alarm)
    _reliability_guard(1 << 30)
    ok = False
    signal.alarm(timeout_s)
    try:
        if "assert" in case:
            env: dict = {"__name__": "__main__"}
            exec(compile(program, "<solution>", "exec"), env)  # noqa: S102 - the unsandboxed baseline
            exec(compile(case["assert"], "<test>", "exec"), env)  # noqa: S102
            ok = True
        else:
            out = io.StringIO()
            old_stdin = sys.stdin
            sys.stdin = io.StringIO(case["input"])
            try:
                with contextlib.redirect_stdout(out):
                    exec(compile(program, "<solution>", "exec"), {"__name__": "__main__"})  # noqa: S102
            finally:
                sys.stdin = old_stdin
            got = [ln.strip() for ln in out.getvalue().strip().splitlines()]
            want = [ln.strip() for ln in case["output"].strip().splitlines()]
            ok = got == want
    except BaseException:  # noqa: BLE001 - any failure of the program fails the case
        ok = False
    finally:
        signal.alarm(0)
    result.append(ok)


def baseline_check(program: str, case: dict, timeout_s: int = 2) -> bool:
    """One prime_code-style check: a fresh Process + Manager per test case, global join timeout."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    with ctx.Manager() as manager:
        result = manager.list()
        p = ctx.Process(target=_check_one, args=(program, case, result, timeout_s))
        p.start()
        p.join(timeout=timeout_s + 1)
        if p.is_alive():
            p.kill()
            p.join()
        return bool(result[0]) if len(result) else False


def baseline_score(row: dict) -> float:
    """Fraction of the row's cases passed (continuous reward), cases one after the other."""
    from nemo_prorl.rewards.code import extract_code

    program = extract_code(row["response"]) or ""
    passed = sum(baseline_check(program, case) for case in row["tests"])
    return passed / len(row["tests"])


# ------------------------------------------------------------------------------------------ child

def child(args: argparse.Namespace) -> dict:
    """Score the corpus once with one variant (called with ``--child``)."""
    rows = make_corpus(args.samples, args.cases)
    warm = make_corpus(2, 2)
    variant = args.child
    pool = None
    if variant == "ours_score":
        from nemo_prorl.rewards.code import CodeReward

        reward = CodeReward(backend="bwrap")

        def score_all(rs: list[dict]) -> list[float]:
            out = []
            for r in rs:
                res = reward.score(r["response"], r)
                if res.status != "ok":
                    raise RuntimeError(f"code reward status {res.status}: {res.info}")
                out.append(res.score)
            return out
    elif variant == "ours_pool":
        from nemo_prorl.rewards.config import RewardsConfig
        from nemo_prorl.rewards.pool import RewardPool

        pool = RewardPool(RewardsConfig(num_workers=2, code_sandbox={"backend": "bwrap"}))

        def score_all(rs: list[dict]) -> list[float]:
            results = pool.score(rs)
            bad = [r for r in results if r.status != "ok"]
            if bad:
                raise RuntimeError(f"code reward status {bad[0].status}: {bad[0].info}")
            return [r.score for r in results]
    elif variant in ("baseline", "baseline_2"):
        workers = 2 if variant == "baseline_2" else 1

        def score_all(rs: list[dict]) -> list[float]:
            if workers == 1:
                return [baseline_score(r) for r in rs]
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(workers) as ex:
                return list(ex.map(baseline_score, rs))
    else:
        raise ValueError(variant)
    score_all(warm)  # start-up (sandbox probe, pool workers) is not timed
    load = load_average()
    t0 = time.perf_counter()
    scores = score_all(rows)
    dt = time.perf_counter() - t0
    if pool is not None:
        pool.close()
    n_cases = sum(len(r["tests"]) for r in rows)
    return {"variant": variant, "cases": n_cases, "seconds": dt, "cases_per_s": n_cases / dt,
            "scores": scores, "load_avg": load}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=24)
    ap.add_argument("--cases", type=int, default=10, help="test cases per sample")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--quick", action="store_true", help="a tiny corpus, 1 run")
    ap.add_argument("--out", default="benchmarks/results/code_reward.json")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.samples, args.cases, args.runs = 3, 2, 1
    if args.child:
        print(json.dumps(child(args)))
        return 0
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"--variants: unknown variant {v!r}; expected some of {','.join(VARIANTS)}")
    common = ["--samples", str(args.samples), "--cases", str(args.cases)]
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.runs):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            res = run_child(this_python(), __file__, [*common, "--child", v])
            runs[v].append(res)
            print(f"run {r + 1}/{args.runs} {v:11s} {res['cases_per_s']:7.1f} cases/s  "
                  f"load {res['load_avg']:.2f}", file=sys.stderr)
    expected = [float(x) for x in runs[variants[0]][0]["scores"]]
    agree = {v: all(rs_["scores"] == expected for rs_ in rs) for v, rs in runs.items()}
    result: dict = {
        "benchmark": "code_reward", "time": stamp(), "machine": machine_info(),
        "settings": {"samples": args.samples, "cases": args.cases, "runs": args.runs, "quick": args.quick},
        "variants": {v: {"cases_per_s": summary([x["cases_per_s"] for x in rs]),
                         "load_avg": summary([x["load_avg"] for x in rs])} for v, rs in runs.items()},
        "scores_agree": agree, "mean_score": sum(expected) / len(expected), "ratios": {},
    }
    med = {v: result["variants"][v]["cases_per_s"]["median"] for v in runs}
    result["ratios"] = like_for_like_ratios(med)
    write_json(args.out, result)
    print(json.dumps({"out": args.out, "cases_per_s": med, "ratios": result["ratios"], "agree": agree}))
    if not all(agree.values()):
        print("bench_code_reward: variants disagree on scores", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
