"""Start-up probe: find the strongest sandbox backend this host allows, or refuse clearly.

Order of preference: ``bwrap`` (namespaces + slot uid + rlimits), then ``unsafe`` (rlimits only),
which is used only when the configuration opts in with ``allow_unsafe: true``. The probe launches a
real sandboxed interpreter once per process and configuration (about 0.1 s) and caches the verdict.
"""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass, field

from nemo_prorl.rewards.sandbox.base import (
    DEFAULT_BASE_UID,
    Limits,
    Sandbox,
    SandboxError,
    SandboxUnavailableError,
)
from nemo_prorl.rewards.sandbox.bwrap import BwrapSandbox, default_python
from nemo_prorl.rewards.sandbox.unsafe import UnsafeSandbox

BACKENDS: tuple[str, ...] = ("auto", "bwrap", "unsafe")

FIX_HINT = (
    "To fix: (1) install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; RHEL: dnf install "
    "bubblewrap); (2) allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 "
    "where that knob exists, user.max_user_namespaces > 0, and on Ubuntu 24.04+ "
    "kernel.apparmor_restrict_unprivileged_userns=0 or an AppArmor profile for bwrap; in Docker run "
    "with --security-opt seccomp=unconfined or a profile allowing clone(CLONE_NEWUSER)); or (3) accept "
    "running model code WITHOUT isolation by setting allow_unsafe: true (and backend: unsafe or auto)."
)


@dataclass
class ProbeReport:
    """What the probe found.

    Attributes:
        backend: the chosen backend name, or ``None`` when nothing usable was found.
        checks: backend name -> ``"ok"`` or the reason it failed.
        root: whether the grader runs as root (and so switches to slot uids).
        limits: which limits are in force with the default :class:`Limits` (``rlimits``, ``tmpfs``,
            ``nested_userns``, ``cgroup_memory``, ``cgroup_pids``): the value, or ``off (why)``.

    """

    backend: str | None
    checks: dict[str, str] = field(default_factory=dict)
    root: bool = False
    limits: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line per check."""
        return "; ".join(f"{k}: {v}" for k, v in self.checks.items())

    def limits_summary(self) -> str:
        """The limits in force, one ``name: value`` per entry."""
        return "; ".join(f"{k}: {v}" for k, v in self.limits.items())


_PROBE_CODE = "import sys; sys.stdout.write('sandbox-ok ' + str(sys.version_info[0]))"
_cache: dict[tuple, tuple[ProbeReport, Sandbox | None]] = {}
_cache_lock = threading.Lock()


def _explain_bwrap_failure(stderr: str, python: str, uid_note: str) -> str:
    text = stderr.strip().splitlines()[-1] if stderr.strip() else "no error output"
    if "namespace" in text or "uid map" in text or "Operation not permitted" in text:
        return f"bwrap cannot create user namespaces here ({text})"
    if "Can't find source path" in text or "No such file" in text or "Permission denied" in text:
        return (f"the interpreter {python} is not reachable inside the sandbox{uid_note} ({text}); set "
                "python to a system interpreter such as /usr/bin/python3")
    return f"bwrap failed: {text}"


def _try_bwrap(python: str | None, base_uid: int, max_slots: int, bwrap: str,
               cgroups: str = "auto") -> tuple[str, Sandbox | None]:
    if shutil.which(bwrap) is None:
        return f"bubblewrap ({bwrap}) is not installed", None
    try:
        sb = BwrapSandbox(bwrap=bwrap, python=python, base_uid=base_uid, max_slots=max_slots, cgroups=cgroups)
        res = sb.run({}, [sb.python, *sb.python_flags, "-c", _PROBE_CODE], limits=Limits(wall_s=15.0))
    except SandboxError as exc:
        return str(exc), None
    if res.returncode == 0 and res.stdout.startswith(b"sandbox-ok 3"):
        return "ok", sb
    uid_note = f" as uid {res.extra.get('uid')}" if os.geteuid() == 0 else ""
    if res.timed_out:
        return "bwrap probe timed out", None
    return _explain_bwrap_failure(res.stderr.decode("utf-8", "replace"), sb.python, uid_note), None


def _try_unsafe(python: str | None, base_uid: int, max_slots: int) -> tuple[str, Sandbox | None]:
    try:
        sb = UnsafeSandbox(python=python, base_uid=base_uid, max_slots=max_slots)
        res = sb.run({}, [sb.python, *sb.python_flags, "-c", _PROBE_CODE], limits=Limits(wall_s=15.0))
    except SandboxError as exc:
        return str(exc), None
    if res.returncode == 0 and res.stdout.startswith(b"sandbox-ok 3"):
        return "ok", sb
    return f"interpreter failed: {res.stderr.decode('utf-8', 'replace').strip()[-300:]}", None


def make_sandbox(backend: str = "auto", allow_unsafe: bool = False, python: str | None = None,
                 base_uid: int = DEFAULT_BASE_UID, max_slots: int = 64,
                 bwrap: str = "bwrap", cgroups: str = "auto") -> tuple[Sandbox, ProbeReport]:
    """Probe the host and return the strongest allowed sandbox.

    Args:
        backend: ``"auto"`` (strongest that works), ``"bwrap"`` (only bwrap) or ``"unsafe"``.
        allow_unsafe: explicit opt-in to the unisolated backend; required for ``"unsafe"``, and lets
            ``"auto"`` fall back to it.
        python: interpreter to run inside (default: the system ``python3`` under /usr).
        base_uid: first per-slot uid (root only).
        max_slots: number of concurrent sandboxes (and uids).
        bwrap: bubblewrap binary.
        cgroups: per-launch memory/pids cgroups for bwrap: ``"auto"`` (where the host allows),
            ``"required"`` (bwrap fails the probe without them) or ``"off"``.

    Returns:
        ``(sandbox, report)``.

    Raises:
        SandboxUnavailableError: nothing allowed works; the message says why and how to fix it.
        ValueError: bad option values.

    """
    if backend not in BACKENDS:
        raise ValueError(f"sandbox backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(allow_unsafe, bool):
        raise ValueError(f"allow_unsafe must be true or false, got {allow_unsafe!r}")
    if backend == "unsafe" and not allow_unsafe:
        raise SandboxUnavailableError("sandbox backend 'unsafe' runs model code without isolation; it "
                                      "must be enabled explicitly with allow_unsafe: true")
    python = python or default_python()
    key = (backend, allow_unsafe, python, base_uid, max_slots, bwrap, cgroups)
    with _cache_lock:
        if key in _cache:
            report, sb = _cache[key]
            if sb is None:
                raise SandboxUnavailableError(_refusal(report))
            return sb, report
        report = ProbeReport(backend=None, root=os.geteuid() == 0)
        sb: Sandbox | None = None
        if backend in ("auto", "bwrap"):
            verdict, sb = _try_bwrap(python, base_uid, max_slots, bwrap, cgroups)
            report.checks["bwrap"] = verdict
            if isinstance(sb, BwrapSandbox):
                report.limits = sb.enforced()
        if sb is None and allow_unsafe and backend in ("auto", "unsafe"):
            verdict, sb = _try_unsafe(python, base_uid, max_slots)
            report.checks["unsafe"] = verdict
            if sb is not None:
                lim = Limits()
                report.limits = {"rlimits": f"AS {lim.memory_bytes >> 20} MiB, CPU, FSIZE, NOFILE, NPROC "
                                            "(root)",
                                 "tmpfs": "none (host filesystem)", "cgroup_memory": "off (unsafe backend)",
                                 "cgroup_pids": "off (unsafe backend)"}
        elif sb is None:
            report.checks["unsafe"] = "not allowed (allow_unsafe is false)"
        report.backend = sb.name if sb is not None else None
        _cache[key] = (report, sb)
    if sb is None:
        raise SandboxUnavailableError(_refusal(report))
    return sb, report


def _refusal(report: ProbeReport) -> str:
    return f"no usable code sandbox on this host ({report.summary()}). {FIX_HINT}"


if __name__ == "__main__":  # python -m nemo_prorl.rewards.sandbox.probe: what this host enforces
    _sb, _report = make_sandbox(backend="auto")
    print(f"backend: {_report.backend}")
    for _k, _v in {**_report.checks, **_report.limits}.items():
        print(f"  {_k}: {_v}")
