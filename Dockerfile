# nemo_prorl on an NGC PyTorch container (CUDA, cuDNN, NCCL, Transformer Engine and apex come with it).
#
# Base: NGC PyTorch 25.12-py3 -- Ubuntu 24.04, CUDA 13.1, Python 3.12, PyTorch 2.10.0a0 (NVIDIA build).
# The registry host is a build argument; see docs/cluster.md:
#
#   docker build --build-arg REGISTRY=<NGC registry host> -t nemo-prorl:25.12 .
#
# This image has not been built in this repository's CI (no access to NGC images there); every step is
# written so that a wrong assumption fails the build loudly instead of producing a broken image:
#   * the image's torch / Transformer Engine / apex are recorded first and checked again at the end;
#   * nothing is installed with dependency resolution that could replace torch (see docs/cluster.md,
#     "Why vLLM is built from source here");
#   * `pip check` runs last.
ARG REGISTRY
ARG BASE_TAG=25.12-py3
FROM ${REGISTRY}/nvidia/pytorch:${BASE_TAG}

# vLLM release to build against the image's torch; its own torch pin must have the same major.minor as
# the image (25.12 ships 2.10) -- check `requirements/cuda.txt` of the tag before changing either.
ARG VLLM_VERSION=0.16.0
ARG MCORE_VERSION=0.16.1
# 9.0 = H100/H200 (sm_90); add 10.0 for B200. Fewer architectures = faster vLLM build.
ARG TORCH_CUDA_ARCH_LIST="9.0"
ARG MAX_JOBS=16

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    TOKENIZERS_PARALLELISM=false \
    HF_HUB_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}

# bubblewrap: the code-reward sandbox. git: the vLLM source checkout.
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap git \
 && rm -rf /var/lib/apt/lists/* \
 && bwrap --version

# Record what NVIDIA built (torch, TE, apex, flash-attn, NCCL bindings). The same lines must still be
# there at the end of the build.
RUN python - <<'PY'
import importlib.metadata as md
import torch, transformer_engine  # noqa: F401  - fail now if the base image lacks either
names = ["torch", "transformer_engine", "transformer-engine", "apex", "flash_attn", "flash-attn", "triton",
         "pytorch-triton"]
lines = []
for n in names:
    try:
        lines.append(f"{n}=={md.version(n)}")
    except md.PackageNotFoundError:
        pass
open("/opt/ngc-frozen.txt", "w").write("\n".join(sorted(set(lines))) + "\n")
print("torch", torch.__version__, "cuda", torch.version.cuda)
print(open("/opt/ngc-frozen.txt").read())
PY

# megatron-core: its only dependencies (torch, numpy, packaging) are already in the image.
RUN pip install --no-deps "megatron-core==${MCORE_VERSION}" \
 && python -c "import megatron.core; print('megatron-core', megatron.core.__version__)"

# vLLM from source against the image's torch (no wheel matches an NGC torch build; see docs/cluster.md).
# use_existing_torch.py strips vLLM's torch pins so pip cannot pull a second torch.
RUN git clone --depth 1 --branch "v${VLLM_VERSION}" https://github.com/vllm-project/vllm.git /opt/vllm \
 && cd /opt/vllm \
 && python use_existing_torch.py \
 && pip install -c /opt/ngc-frozen.txt -r requirements/build.txt \
 && MAX_JOBS=${MAX_JOBS} pip install -c /opt/ngc-frozen.txt --no-build-isolation -v . \
 && cd / && rm -rf /opt/vllm/.git \
 && python -c "import vllm; print('vllm', vllm.__version__)"

# This package. Its dependencies are resolved against the image's frozen packages (the -c file), so a
# requirement that would replace torch/TE fails here. The [gpu]/[vllm] extras are NOT used: the image
# already carries Transformer Engine, and vLLM was built above.
WORKDIR /opt/nemo_prorl
COPY . /opt/nemo_prorl
RUN pip install -c /opt/ngc-frozen.txt . \
 && python - <<'PY'
import importlib.metadata as md
for line in open("/opt/ngc-frozen.txt").read().split():
    name, want = line.split("==")
    have = md.version(name)
    assert have == want, f"{name} changed from {want} to {have}: a dependency replaced the NGC build"
import nemo_prorl.launch, megatron.core, vllm, transformer_engine  # noqa: F401
print("image ok")
PY
RUN pip check

WORKDIR /workspace
ENTRYPOINT ["nemo-prorl"]
CMD ["--help"]
