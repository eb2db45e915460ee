"""The ``unsafe`` backend: a plain subprocess with rlimits, for hosts where bubblewrap cannot run.

It is NOT a security boundary: the command sees the host filesystem (whatever its uid may read),
the network, and the other processes. It exists for trusted data or throw-away machines and must be
enabled explicitly (``allow_unsafe: true``); creating it logs a loud warning.

What it still does: a private temporary working directory, an empty environment (PATH and LANG
only), a new session, the rlimits of :class:`~nemo_prorl.rewards.sandbox.base.Limits`, the wall
timeout and output caps. As root it also switches to the slot's unprivileged uid, so RLIMIT_NPROC
holds, host files are protected by their permissions, and after every run all processes of that uid
are killed (no escaped daemon survives). As a normal user, escaped daemons are only stopped from
holding the output pipes; they are not killed.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence

from nemo_prorl.rewards.sandbox.base import (
    DEFAULT_BASE_UID,
    Limits,
    RunResult,
    Sandbox,
    SandboxError,
    SlotPool,
    as_bytes,
    check_files,
    execute,
    kill_uid_processes,
)
from nemo_prorl.rewards.sandbox.bwrap import default_python

logger = logging.getLogger(__name__)

WARNING = ("UNSAFE SANDBOX IN USE: model-generated code runs as a plain subprocess with rlimits only -- "
           "no filesystem, network or process isolation. Install bubblewrap and enable unprivileged user "
           "namespaces to get the isolated 'bwrap' backend.")


class UnsafeSandbox(Sandbox):
    """Plain subprocess + rlimits (+ a slot uid when root).

    Args:
        python: interpreter to run (host path).
        base_uid: first slot uid (used only when running as root).
        max_slots: number of concurrent slots.

    """

    name = "unsafe"
    isolated = False

    def __init__(self, python: str | None = None, base_uid: int = DEFAULT_BASE_UID,
                 max_slots: int = 64) -> None:
        py = python or default_python()
        if py is None:
            raise SandboxError("no python3 interpreter found for the sandbox; set sandbox python=PATH")
        self.python = os.path.abspath(py)
        self.base_uid = base_uid
        self.root = os.geteuid() == 0
        self.slots = SlotPool(max_slots)
        logger.warning(WARNING)

    def run(self, files: Mapping[str, str | bytes], argv: Sequence[str], stdin: bytes = b"",
            limits: Limits | None = None) -> RunResult:
        """See :meth:`Sandbox.run`."""
        limits = limits or Limits()
        check_files(files)
        if not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
            raise SandboxError(f"argv must be a non-empty list of strings, got {argv!r}")
        with self.slots.acquire() as slot:
            uid = self.base_uid + slot if self.root else None
            workdir = tempfile.mkdtemp(prefix="nemo_prorl_unsafe_")
            try:
                for name, content in files.items():
                    path = os.path.join(workdir, name)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path, "wb") as fh:
                        fh.write(as_bytes(content))
                if uid is not None:
                    for dirpath, _dirs, names in os.walk(workdir):
                        os.chown(dirpath, uid, uid)
                        for n in names:
                            os.chown(os.path.join(dirpath, n), uid, uid)
                env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir}
                cleanup = (lambda: kill_uid_processes(uid)) if uid is not None else None
                result = execute(list(argv), stdin=stdin, limits=limits, user=uid,
                                 nproc=limits.nproc if uid is not None else None, cwd=workdir, env=env,
                                 backend=self.name, cleanup=cleanup)
                if uid is not None:
                    result.leftover_killed += kill_uid_processes(uid)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
        result.extra["uid"] = uid if uid is not None else os.getuid()
        return result
