"""Shared helpers of the benchmark scripts: machine facts, medians, child processes, JSON output.

Every benchmark measures each variant in its own process (so peak-memory numbers do not leak between
variants), interleaves variants across runs (so slow drift of a shared machine hits all of them), and
reports medians with min-max.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
#: the separate virtual environment holding the peers (made by benchmarks/setup_peers.sh)
PEER_VENV = REPO / ".venv-bench"


def peer_python() -> str | None:
    """The interpreter of ``.venv-bench`` if it exists (else ``None``: peer variants are skipped)."""
    py = PEER_VENV / "bin" / "python"
    return str(py) if py.is_file() else None


def load_average() -> float:
    """The 1-minute load average (how busy the shared machine was)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def rss_mb() -> float:
    """Current resident set size of this process in MB (from /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError):
        return 0.0


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (``VmHWM``) to the current RSS.

    Returns:
        Whether it worked (Linux >= 4.0: write ``5`` to ``/proc/self/clear_refs``).

    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size in MB since the last :func:`reset_peak_rss` (``VmHWM``; else ``ru_maxrss``).

    Both are reported by Linux in KiB; converted to MB (1e6 bytes) like :func:`rss_mb`, so the two can
    be subtracted.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except (OSError, ValueError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def summary(values: list[float]) -> dict[str, float]:
    """``{"median", "min", "max", "n"}`` of a list of numbers (NaN-free)."""
    vals = [v for v in values if v == v]
    if not vals:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def machine_info() -> dict[str, Any]:
    """CPU model, core count, memory, Python and library versions (those importable here)."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as fh:
            info["mem_gb"] = round(int(fh.readline().split()[1]) / 1e6, 1)
    except OSError:
        pass
    for mod in ("torch", "transformers", "megatron.core", "trl"):
        try:
            m = __import__(mod, fromlist=["__version__"])
            info[mod] = getattr(m, "__version__", "?")
        except Exception:  # noqa: BLE001 - a missing optional library is simply not listed
            pass
    return info


def run_child(python: str, script: str, args: list[str], timeout: float = 1800.0) -> dict[str, Any]:
    """Run ``python script *args`` and parse the JSON object on its last stdout line.

    Raises:
        RuntimeError: the child failed or printed no JSON (its stderr tail is in the message).

    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([python, script, *args], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=str(REPO))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{Path(script).name} {' '.join(args)} failed (rc {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON (creating the parent directory)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def stamp() -> str:
    """UTC timestamp for result files."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def this_python() -> str:
    """The interpreter running the benchmark (the project's ``.venv``)."""
    return sys.executable
