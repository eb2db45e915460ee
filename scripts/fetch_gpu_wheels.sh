#!/usr/bin/env bash
# Download the cp312 wheels that benchmarks/gpu/run.sh installs offline on a GPU machine without a package
# index (Python 3.12 + a CUDA torch there; no megatron-core, Transformer Engine or vLLM).
#
#   bash scripts/fetch_gpu_wheels.sh                  # -> .gpu_wheels/ (git-ignored), ~31 MiB
#   bash scripts/fetch_gpu_wheels.sh --mcore-only     # only megatron-core: use the machine's transformers
#
# The set is megatron-core 0.16.1 (what the CPU CI runs) and, by default, transformers 5.25.0 (also the
# CPU CI's) with the newer dependencies it needs (huggingface_hub 2.x pulls httpx2 and friends). Versions
# are exact so the carried folder is the same every time. The folder must stay well under 64 MiB: it
# travels with the working tree (package data included) to the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.gpu_wheels
PY=${PYTHON:-.venv/bin/python}
[[ -x $PY ]] || PY=python3
LIMIT_MIB=${LIMIT_MIB:-48}

MCORE=(megatron-core==0.16.1)
TRANSFORMERS=(transformers==5.25.0 huggingface_hub==2.4.0 tokenizers==0.23.3 safetensors==0.8.0 regex==2026.12.2
  hf-xet==1.8.0 kernels==0.19.1 tomlkit==0.15.3 httpx2==2.17.0 httpcore2==2.17.0 truststore==0.10.5 anyio==4.16.0
  idna==3.21 h11==0.16.0 typer==0.29.2 click==8.5.1 rich==15.0.0 shellingham==1.5.4 annotated-doc==0.0.7
  markdown-it-py==4.3.0 mdurl==0.1.2 pygments==2.21.0 typing-extensions==4.16.0)
WANT=("${MCORE[@]}")
[[ "${1:-}" == --mcore-only ]] || WANT+=("${TRANSFORMERS[@]}")

PLATFORMS=()
for n in 17 24 27 28 31 34 35; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)

rm -rf "$DEST" && mkdir -p "$DEST"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" "${WANT[@]}"

# one version of each package (two would stop the offline install)
dups=$(ls "$DEST"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z-' 'a-z_' | sort | uniq -d)
[[ -z $dups ]] || { echo "fetch_gpu_wheels: more than one wheel of: $dups" >&2; exit 1; }
size=$(du -sm "$DEST" | cut -f1)
echo "fetch_gpu_wheels: $(ls "$DEST"/*.whl | wc -l) wheels, ${size} MiB in $DEST"
if (( size > LIMIT_MIB )); then
  echo "fetch_gpu_wheels: ${size} MiB is over ${LIMIT_MIB} MiB; with the repository it must fit in 64 MiB" >&2
  exit 1
fi
