"""The .venv-vllm probe behind the loud vLLM line of the test summary (tests/vllm_venv_check.py).

Real interpreters stand in for the three states: no venv, a venv whose ``python`` cannot import vllm
(this test's own interpreter, which has no vllm), and one that can (a shell ``python`` printing what
the real probe prints, since vllm itself is not installed here).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vllm_venv_check import venv_status  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_absent(tmp_path, monkeypatch):
    monkeypatch.delenv("NEMO_PRORL_VLLM_SETUP", raising=False)
    st = venv_status(tmp_path / ".venv-vllm")
    assert st.state == "absent" and "run scripts/setup_vllm_cpu.sh" in st.summary()
    assert st.summary().startswith("vLLM tests: SKIPPED")
    monkeypatch.setenv("NEMO_PRORL_VLLM_SETUP", "failed")
    assert "setup_vllm_cpu.sh FAILED" in venv_status(tmp_path / ".venv-vllm").summary()


def _venv_with(tmp_path: Path, target: str) -> Path:
    venv = tmp_path / ".venv-vllm"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(target)
    return venv


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed in this interpreter")
def test_broken_names_the_import_error(tmp_path):
    st = venv_status(_venv_with(tmp_path, sys.executable))  # an interpreter without vllm
    assert st.state == "broken"
    assert st.summary().startswith("vLLM tests: FAILED, .venv-vllm is broken")
    assert "No module named 'vllm'" in st.detail and "setup_vllm_cpu.sh" in st.detail


def test_ready(tmp_path):
    fake = tmp_path / "fake_python"
    fake.write_text(textwrap.dedent("""\
        #!/bin/sh
        echo "vllm 0.32.0, torch 2.13.0+cpu, megatron-core 0.16.1"
        """))
    fake.chmod(0o755)
    st = venv_status(_venv_with(tmp_path, str(fake)))
    assert st.state == "ready" and st.summary() == (
        "vLLM tests: RUN in .venv-vllm (vllm 0.32.0, torch 2.13.0+cpu, megatron-core 0.16.1)")


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed in this interpreter")
def test_broken_venv_fails_the_vllm_tests_loudly(tmp_path):
    """End to end: a pytest session over a vLLM test with a broken .venv-vllm fails it and says why."""
    repo = tmp_path / "repo"
    (repo / "tests" / "integration").mkdir(parents=True)
    for name in ("conftest.py", "vllm_venv_check.py"):
        (repo / "tests" / name).write_text((REPO / "tests" / name).read_text())
    (repo / "tests" / "integration" / "test_x.py").write_text(textwrap.dedent("""\
        import pytest
        RUNS_IN_VLLM_VENV = True

        @pytest.mark.vllm
        def test_uses_vllm_venv():
            pass
        """))
    (repo / "pyproject.toml").write_text('[tool.pytest.ini_options]\nmarkers = ["vllm: v", "gpu: g"]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEMO_PRORL_")}
    _venv_with(repo, sys.executable)  # an interpreter without vllm
    broken = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                            cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert broken.returncode == 1 and "1 error" in broken.stdout, broken.stdout
    assert "vLLM tests: FAILED, .venv-vllm is broken" in broken.stdout
    assert "No module named 'vllm'" in broken.stdout
