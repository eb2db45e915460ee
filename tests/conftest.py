"""Shared pytest set-up: GPU/vLLM markers skip cleanly where the hardware or package is absent."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vllm_venv_check import venv_status  # noqa: E402

VLLM_VENV = Path(__file__).resolve().parents[1] / ".venv-vllm"
_VLLM_STATUS = None  # the session's VenvStatus, probed once when a test needs .venv-vllm

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
        elif "vllm" in item.keywords and not vllm and in_vllm_venv:
            # one probe of .venv-vllm for the session: absent -> skip, broken -> fail (pytest_runtest_setup),
            # and either way the summary says which (pytest_terminal_summary)
            global _VLLM_STATUS
            if _VLLM_STATUS is None:
                _VLLM_STATUS = venv_status(VLLM_VENV)
            required = os.environ.get("NEMO_PRORL_REQUIRE_VLLM") == "1"
            if _VLLM_STATUS.state == "absent" and not required:
                item.add_marker(pytest.mark.skip(reason=_VLLM_STATUS.summary()))


def pytest_runtest_setup(item):
    if _VLLM_STATUS is not None and _VLLM_STATUS.state != "ready" and "vllm" in item.keywords \
            and getattr(getattr(item, "module", None), "RUNS_IN_VLLM_VENV", False):
        pytest.fail(_VLLM_STATUS.summary() + (" (NEMO_PRORL_REQUIRE_VLLM=1)"
                                              if _VLLM_STATUS.state == "absent" else ""), pytrace=False)


def pytest_terminal_summary(terminalreporter):
    if _VLLM_STATUS is not None:
        ready = _VLLM_STATUS.state == "ready"
        terminalreporter.write_sep("=", _VLLM_STATUS.summary(), green=ready, red=not ready, bold=True)


#: the launch variables a single-process rollout driver or vLLM engine sets for itself (os.environ, as
#: torchrun would); a later test in the same pytest process must not read them as its own launch
_LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "SLURM_NTASKS")


@pytest.fixture(autouse=True)
def _restore_launch_env():
    before = {k: os.environ.get(k) for k in _LAUNCH_VARS}
    yield
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
