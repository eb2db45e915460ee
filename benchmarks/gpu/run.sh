#!/usr/bin/env bash
# Run benchmarks/gpu/gpu_check.py on a GPU machine that has Python 3.12 + a CUDA torch and no package index.
#
#   here (with the index):   bash scripts/fetch_gpu_wheels.sh            # -> .gpu_wheels/ (~31 MiB)
#   there (repo root, .gpu_wheels beside it):   bash benchmarks/gpu/run.sh   # results: $OUT/gpu_check.json
#
# The wheels go to their own --target folder (nothing of the machine's Python is changed); the checkout
# comes first on PYTHONPATH, then the carried wheels, then the machine's own packages.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu_check_out}
WHEELS=${WHEELS:-.gpu_wheels}
SITE=${SITE:-/tmp/nemo_prorl_site}
LIMIT_S=${LIMIT_S:-460}   # under 8 minutes, leaving time for the install
mkdir -p "$OUT"
PY=${PYTHON:-python3}

if compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
    || { echo "run.sh: offline install of $WHEELS failed" >&2; exit 2; }
  export PYTHONPATH=$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}
else
  echo "run.sh: no wheels in $WHEELS; using the installed packages" >&2
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OUT

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "run.sh: no nvidia-smi"
timeout "$LIMIT_S" "$PY" benchmarks/gpu/gpu_check.py --out "$OUT/gpu_check.json" "$@" 2>&1 | tee "$OUT/gpu_check.log"
rc=${PIPESTATUS[0]}
"$PY" - "$OUT/gpu_check.json" <<'PY'
import json, sys
try:
    rep = json.load(open(sys.argv[1]))
except (OSError, ValueError) as exc:
    sys.exit(f"no report: {exc}")
for c in rep["checks"]:
    figs = {k: v for k, v in c["figures"].items() if not isinstance(v, (list, dict))}
    print(f"{c['name']:24s} {c['status']:8s} {c['seconds']:7.1f}s  {c.get('reason') or c.get('error') or ''}"[:160])
    for k in ("mfu", "step_s_median", "tokens_per_s", "peak_above_inputs_gib", "train_peak_gib",
              "reset_vs_fresh_max_abs_diff", "cpu_tensor_on_dp_group", "weights_max_abs_diff"):
        if k in figs:
            print(f"{'':26s}{k} = {figs[k]}")
PY
exit "$rc"
