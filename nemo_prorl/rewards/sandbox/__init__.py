"""Sandboxes for running model-generated code (see ``docs/sandbox.md`` for the threat model).

Public API::

    sandbox, report = make_sandbox(backend="auto", allow_unsafe=False)
    result = sandbox.run({"main.py": "print(1)"}, [sandbox.python, "-I", "-S", "main.py"],
                         stdin=b"", limits=Limits(wall_s=2.0))
    result.returncode, result.stdout, result.timed_out, result.killed_by
"""

from nemo_prorl.rewards.sandbox.base import (
    DEFAULT_BASE_UID,
    Limits,
    RunResult,
    Sandbox,
    SandboxError,
    SandboxUnavailableError,
    SlotPool,
)
from nemo_prorl.rewards.sandbox.bwrap import BwrapSandbox
from nemo_prorl.rewards.sandbox.probe import BACKENDS, ProbeReport, make_sandbox
from nemo_prorl.rewards.sandbox.unsafe import UnsafeSandbox

__all__ = [
    "BACKENDS",
    "DEFAULT_BASE_UID",
    "BwrapSandbox",
    "Limits",
    "ProbeReport",
    "RunResult",
    "Sandbox",
    "SandboxError",
    "SandboxUnavailableError",
    "SlotPool",
    "UnsafeSandbox",
    "make_sandbox",
]
