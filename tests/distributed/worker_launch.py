"""Launch a tests/distributed/scripts worker: one plain process, or ``nproc`` gloo ranks under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_worker(script: Path, mode: str, hf: Path, work: Path, nproc: int, timeout: int = 300) -> str:
    """Run ``script --mode MODE --hf HF --work WORK``; assert it exits 0 and return its stdout."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    if nproc == 1:
        cmd = [sys.executable, str(script)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone",
               str(script)]
    cmd += ["--mode", mode, "--hf", str(hf), "--work", str(work)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{mode} failed (rc={proc.returncode}):\n{out[-6000:]}"
    return proc.stdout
