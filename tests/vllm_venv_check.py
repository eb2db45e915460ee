"""Is ``.venv-vllm`` (scripts/setup_vllm_cpu.sh) usable? One answer for the whole session, said loudly.

The vLLM integration tests run their vLLM half in ``.venv-vllm``. Three cases, each reported in the
pytest summary (tests/conftest.py) so a CI log shows which one happened:

* ``ready``: the venv imports vllm, torch and megatron-core -> the tests run;
* ``absent``: no ``.venv-vllm/bin/python`` -> the tests skip, naming the set-up script (and, when
  scripts/test.sh saw the set-up fail, saying so: ``NEMO_PRORL_VLLM_SETUP=failed``);
* ``broken``: the venv exists but the import fails -> the tests FAIL with the import error, instead of
  failing later inside a subprocess or skipping.

``NEMO_PRORL_REQUIRE_VLLM=1`` turns ``absent`` into a failure too (for a CI that must run them).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

PROBE = ("import vllm, torch, megatron.core; "
         "print(f'vllm {vllm.__version__}, torch {torch.__version__}, '"
         "f'megatron-core {megatron.core.__version__}')")


@dataclass(frozen=True)
class VenvStatus:
    state: str  # "ready" | "absent" | "broken"
    detail: str

    def summary(self) -> str:
        """One line for the test summary."""
        if self.state == "ready":
            return f"vLLM tests: RUN in .venv-vllm ({self.detail})"
        if self.state == "absent":
            return f"vLLM tests: SKIPPED, {self.detail}"
        return f"vLLM tests: FAILED, .venv-vllm is broken: {self.detail}"


def venv_status(venv: Path, timeout_s: float = 300.0) -> VenvStatus:
    """Probe ``venv`` (``.venv-vllm``) by importing vllm, torch and megatron-core in its interpreter."""
    python = venv / "bin" / "python"
    if not python.exists():
        why = ".venv-vllm absent"
        if os.environ.get("NEMO_PRORL_VLLM_SETUP") == "failed":
            why += " because scripts/setup_vllm_cpu.sh FAILED (see its output above)"
        else:
            why += " (run scripts/setup_vllm_cpu.sh)"
        return VenvStatus("absent", why)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    try:
        proc = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, timeout=timeout_s,
                              env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return VenvStatus("broken", f"{python} could not run the import probe: {exc}")
    if proc.returncode != 0:
        lines = [x for x in (proc.stderr or proc.stdout).strip().splitlines() if x.strip()]
        tail = lines[-1] if lines else f"exit status {proc.returncode}"
        return VenvStatus("broken", f"`{python} -c 'import vllm'` failed: {tail} "
                                    "(re-run scripts/setup_vllm_cpu.sh, or delete .venv-vllm)")
    return VenvStatus("ready", proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "imports ok")
