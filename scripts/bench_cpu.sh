#!/usr/bin/env bash
# The CPU benchmark suite, side by side with the peers: LM head, code reward, whole GRPO step
# (the math reward benchmark is benchmarks/rewards/bench_math.py; add BENCH_MATH=1 to run it too).
# Results: benchmarks/results/*.json; the tables in benchmarks/RESULTS.md are written from them.
#
# Usage: scripts/bench_cpu.sh [--runs N]      (default 5 runs per variant)
#   Needs .venv (scripts/setup.sh) and the peers' .venv-bench (benchmarks/setup_peers.sh, made here if
#   missing). The machine should be otherwise idle: the scripts print the load average of every run.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=5
if [ "${1:-}" = "--runs" ]; then RUNS=$2; fi
export OMP_NUM_THREADS=1   # the scripts set torch's thread count per measurement (--threads)
export PYTHONWARNINGS=ignore
PY=.venv/bin/python
[ -x .venv-bench/bin/python ] || benchmarks/setup_peers.sh
mkdir -p benchmarks/results
echo "== load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== code reward (sandboxed test cases/s)"
$PY benchmarks/bench_code_reward.py --runs "$RUNS" --out benchmarks/results/code_reward.json
echo "== whole GRPO step vs TRL GRPOTrainer"
$PY benchmarks/bench_grpo_step.py --runs "$RUNS" --out benchmarks/results/grpo_step.json
echo "== LM head (log-probs + ProRL loss, 4,096 tokens, V=151,936, fp32)"
$PY benchmarks/bench_lmhead.py --runs "$RUNS" --out benchmarks/results/lmhead.json
if [ "${BENCH_MATH:-0}" = 1 ]; then
  echo "== math reward"
  $PY benchmarks/rewards/bench_math.py --n 140 --runs "$RUNS"
fi
echo "== load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
