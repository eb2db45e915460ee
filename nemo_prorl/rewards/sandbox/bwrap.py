"""The ``bwrap`` backend: bubblewrap namespaces + a per-slot unprivileged uid + rlimits.

Layout inside the sandbox (nothing else of the host is visible)::

    /usr            read-only bind of the host's /usr (the interpreter and its stdlib)
    /bin /lib ...   the host's top-level symlinks into /usr (or read-only binds where they are dirs)
    /etc/ld.so.cache  read-only, when present (faster library loading)
    <prefix>        read-only bind of the interpreter's installation prefix when it is not under /usr
    /proc /dev      a fresh procfs for the new pid namespace; a minimal devtmpfs
    /tmp            private tmpfs of ``tmpfs_bytes``: the writable place, also the working dir;
                    the ``files`` of a run are copied there from memfds (no host disk is touched)
    /dev/shm        private tmpfs of at most 16 MiB (POSIX semaphores for multiprocessing)

Everything else, including the root directory bwrap builds and ``/dev``, is remounted read-only, so
no unbounded tmpfs is writable.

Namespaces: ``--unshare-all`` (user, pid, net with only ``lo``, ipc, uts, cgroup) and, where bwrap has
it (0.8+), ``--disable-userns``: no nested user namespace, so code inside cannot mount a tmpfs of its
own (an unsized tmpfs is host memory outside every rlimit); ``--clearenv``
(PATH and LANG only), ``--new-session`` (no TIOCSTI on a shared terminal), ``--die-with-parent``,
``--cap-drop ALL``, ``--as-pid-1`` (the command is pid 1 of its namespace: when it exits, the kernel
kills every process left in the namespace, and processes inside cannot signal it with SIGKILL).

When the grader is root, bwrap is launched after switching to uid/gid ``base_uid + slot`` (no
supplementary groups), so the user namespace is unprivileged and RLIMIT_NPROC is per slot. As a
normal user bwrap runs under the user's own uid; RLIMIT_NPROC is then set to the user's current task
count plus ``Limits.nproc``.

Control groups (:mod:`nemo_prorl.rewards.sandbox.cgroup`): where the host allows it, every launch runs in
its own memory + pids cgroup (``cgroups="auto"``, the default; ``"required"`` refuses to run without;
``"off"`` never tries), which bounds memfd and tmpfs pages, kernel memory and the task count of the whole
sandbox. :attr:`BwrapSandbox.enforced` lists which limits are in force.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from nemo_prorl.rewards.sandbox import cgroup
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
    signal_name,
    uid_task_count,
)

_TOP_LEVEL = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
CGROUP_MODES = ("auto", "required", "off")
GROUP_EXTRA_PIDS = 8
"""Tasks a launch needs beyond ``Limits.nproc``: bwrap's two processes and the harness."""
_help_cache: dict[str, str] = {}


def _supports(bwrap: str, flag: str) -> bool:
    """Whether this bwrap binary knows ``flag`` (read once from ``bwrap --help``)."""
    if bwrap not in _help_cache:
        try:
            out = subprocess.run([bwrap, "--help"], capture_output=True, timeout=10, check=False)
            _help_cache[bwrap] = (out.stdout + out.stderr).decode("utf-8", "replace")
        except (OSError, subprocess.SubprocessError):
            _help_cache[bwrap] = ""
    return flag in _help_cache[bwrap]
WORKDIR = "/tmp"
SHM_BYTES = 16 << 20


def default_python() -> str | None:
    """The host interpreter a sandbox should run: the first ``python3`` under /usr, else on PATH."""
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(cand, os.X_OK):
            return cand
    return shutil.which("python3")


class BwrapSandbox(Sandbox):
    """Bubblewrap sandbox.

    Args:
        bwrap: path or name of the ``bwrap`` binary.
        python: interpreter to expose (host path; it must be readable by the slot uid).
        base_uid: first slot uid (used only when running as root).
        max_slots: number of concurrent slots (uids ``base_uid .. base_uid + max_slots - 1``).
        extra_ro_binds: more host paths to bind read-only at the same place.
        cgroups: ``"auto"`` (per-launch memory and pids cgroup where the host allows it), ``"required"``
            (raise :class:`SandboxError` where it does not) or ``"off"``.

    """

    name = "bwrap"
    isolated = True

    def __init__(self, bwrap: str = "bwrap", python: str | None = None, base_uid: int = DEFAULT_BASE_UID,
                 max_slots: int = 64, extra_ro_binds: Sequence[str] = (), cgroups: str = "auto") -> None:
        found = shutil.which(bwrap)
        if found is None:
            raise SandboxError(f"bubblewrap binary {bwrap!r} not found (install the 'bubblewrap' package)")
        self.bwrap = found
        py = python or default_python()
        if py is None:
            raise SandboxError("no python3 interpreter found for the sandbox; set sandbox python=PATH")
        self.python = os.path.abspath(py)
        if base_uid < 1000:
            raise SandboxError(f"base_uid {base_uid} is in the system range; pick an unused high uid")
        self.base_uid = base_uid
        self.root = os.geteuid() == 0
        self.slots = SlotPool(max_slots)
        if cgroups not in CGROUP_MODES:
            raise SandboxError(f"sandbox cgroups must be one of {CGROUP_MODES}, got {cgroups!r}")
        self.cgroups: cgroup.SlotCgroups | None = None
        self.cgroup_status = "off (cgroups: off)"
        if cgroups != "off":
            self.cgroups, why = cgroup.detect()
            if self.cgroups is None:
                if cgroups == "required":
                    raise SandboxError(f"sandbox cgroups: required, but {why}")
                self.cgroup_status = f"off ({why})"
            else:
                self.cgroup_status = f"on (cgroup v{self.cgroups.version}, one group per launch)"
        self.disable_userns = _supports(found, "--disable-userns")
        self._static = self._static_args(list(extra_ro_binds))

    def enforced(self, limits: Limits | None = None) -> dict[str, str]:
        """Which limits are in force for a launch with ``limits``: name -> value or why not."""
        limits = limits or Limits()
        out = {
            "rlimits": (f"AS {limits.memory_bytes >> 20} MiB, CPU {limits.cpu_s} s, FSIZE "
                        f"{limits.fsize_bytes >> 20} MiB, NOFILE {limits.nofile}, CORE 0"
                        + (f", NPROC {limits.nproc} per slot uid" if self.root else ", NPROC per user")),
            "tmpfs": f"/tmp {limits.tmpfs_bytes >> 20} MiB, /dev/shm "
                     f"{min(limits.tmpfs_bytes, SHM_BYTES) >> 20} MiB (bwrap --size); every other mount "
                     "read-only",
            "nested_userns": "disabled (--disable-userns)" if self.disable_userns
            else "allowed (bwrap < 0.8 has no --disable-userns): code may mount an unsized tmpfs",
        }
        if self.cgroups is not None:
            out["cgroup_memory"] = f"{self._group_memory(limits) >> 20} MiB per launch, swap 0"
            out["cgroup_pids"] = f"{limits.nproc + GROUP_EXTRA_PIDS} per launch"
        else:
            out["cgroup_memory"] = out["cgroup_pids"] = self.cgroup_status
        return out

    @staticmethod
    def _group_memory(limits: Limits) -> int:
        return limits.group_memory_bytes or cgroup.group_memory_bytes(
            limits.memory_bytes, limits.tmpfs_bytes, min(limits.tmpfs_bytes, SHM_BYTES))

    def _static_args(self, extra: list[str]) -> list[str]:
        args = ["--unshare-all"]
        if self.disable_userns:
            args += ["--unshare-user", "--disable-userns"]
        args += ["--die-with-parent", "--new-session", "--clearenv", "--cap-drop", "ALL",
                "--as-pid-1", "--ro-bind", "/usr", "/usr"]
        for name in _TOP_LEVEL:
            path = "/" + name
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
        if os.path.exists("/etc/ld.so.cache"):
            args += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
        real = os.path.realpath(self.python)
        binds = list(extra)
        if not real.startswith("/usr/"):
            # e.g. /opt/conda/bin/python3: expose its installation prefix, read-only
            binds.append(os.path.dirname(os.path.dirname(real)))
        for path in binds:
            if not os.path.isabs(path) or not os.path.exists(path):
                raise SandboxError(f"sandbox read-only bind {path!r}: not an existing absolute path")
            if path.rstrip("/") in ("", "/proc", "/tmp", "/dev"):
                raise SandboxError(f"sandbox read-only bind {path!r} is not allowed")
            args += ["--ro-bind", path, path]
        if self.python != real and not self.python.startswith("/usr/"):
            args += ["--symlink", real, self.python]
        args += ["--proc", "/proc", "--dev", "/dev"]
        args += ["--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8",
                 "--setenv", "HOME", WORKDIR]
        return args

    def command(self, file_fds: Mapping[str, int], argv: Sequence[str], limits: Limits) -> list[str]:
        """The full bwrap command line for one run (files are passed as inherited descriptors)."""
        cmd = [self.bwrap, *self._static, "--size", str(limits.tmpfs_bytes), "--tmpfs", WORKDIR,
               "--size", str(min(limits.tmpfs_bytes, SHM_BYTES)), "--tmpfs", "/dev/shm"]
        dirs: set[str] = set()
        for name in file_fds:
            parent = os.path.dirname(name)
            while parent and parent not in dirs:
                dirs.add(parent)
                parent = os.path.dirname(parent)
        for d in sorted(dirs, key=len):
            cmd += ["--dir", f"{WORKDIR}/{d}"]
        for name, fd in file_fds.items():
            cmd += ["--file", str(fd), f"{WORKDIR}/{name}"]
        # everything but the sized tmpfs mounts is read-only (the root tmpfs bwrap builds, /dev, /etc)
        cmd += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", WORKDIR, "--", *argv]
        return cmd

    def run(self, files: Mapping[str, str | bytes], argv: Sequence[str], stdin: bytes = b"",
            limits: Limits | None = None) -> RunResult:
        """See :meth:`Sandbox.run`."""
        limits = limits or Limits()
        check_files(files)
        if not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
            raise SandboxError(f"argv must be a non-empty list of strings, got {argv!r}")
        fds: dict[str, int] = {}
        try:
            for name, content in files.items():
                fd = os.memfd_create("sandbox-file")  # CLOEXEC; pass_fds hands it to bwrap only
                fds[name] = fd
                data = as_bytes(content)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.lseek(fd, 0, os.SEEK_SET)
            cmd = self.command(fds, argv, limits)
            with self.slots.acquire() as slot:
                procs: list[str] = []
                if self.cgroups is not None:
                    try:
                        procs = self.cgroups.prepare(slot, self._group_memory(limits),
                                                     limits.nproc + GROUP_EXTRA_PIDS)
                    except OSError as exc:
                        self.cgroups.release(slot)
                        raise SandboxError(f"cannot set up the sandbox's cgroup: {exc}") from exc
                try:
                    if self.root:
                        uid = self.base_uid + slot
                        result = execute(cmd, stdin=stdin, limits=limits, user=uid, nproc=limits.nproc,
                                         pass_fds=tuple(fds.values()), backend=self.name,
                                         cleanup=lambda: kill_uid_processes(uid), cgroup_procs=procs)
                    else:
                        nproc = uid_task_count(os.getuid()) + limits.nproc + 8
                        result = execute(cmd, stdin=stdin, limits=limits, nproc=nproc,
                                         pass_fds=tuple(fds.values()), backend=self.name, cgroup_procs=procs)
                finally:
                    if self.cgroups is not None:
                        oom, killed = self.cgroups.release(slot)
                if self.cgroups is not None:
                    result.extra["cgroup_oom_kills"] = oom
                    result.leftover_killed += killed
        finally:
            for fd in fds.values():
                os.close(fd)
        result.extra["uid"] = (self.base_uid + slot) if self.root else os.getuid()
        rc = result.returncode
        if result.killed_by is None and rc is not None and 128 < rc < 128 + 65:
            # bwrap reports a command killed by signal N as exit status 128 + N
            result.killed_by = signal_name(rc - 128)
        return result
