"""Sandbox interface: resource limits, run results, the process runner and per-slot uids.

A :class:`Sandbox` runs one command on a set of small text files and returns a :class:`RunResult`.
Every backend shares the same outside-in enforcement implemented here:

* a **wall timeout** measured by the caller, after which the launched process group is killed with
  ``SIGKILL`` (for bwrap the pid namespace dies with its pid 1, taking every descendant with it);
* **capped pipes**: stdout and stderr are read concurrently and at most ``max_output_bytes`` are kept;
  a sandbox that writes more is killed at once (``killed_by == "output_limit"``), so gigabytes of output
  cost nothing;
* **rlimits** (CPU, address space, processes, file size, open files, no core dumps), applied after the
  switch to the slot's unprivileged uid.

Slots: when the grader runs as root, each concurrent run takes a *slot* and runs under uid
``base_uid + slot``. ``RLIMIT_NPROC`` is counted per uid, so a fork bomb in one sandbox cannot starve a
sibling, and ``kill(-1)`` cannot reach another slot's processes. Slots are claimed with ``flock`` on
per-slot lock files, which works across threads and processes without any configuration.
"""

from __future__ import annotations

import errno
import fcntl
import os
import resource
import selectors
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

DEFAULT_BASE_UID = 1_990_000
"""First uid of the per-slot range (uids ``base_uid .. base_uid + max_slots - 1`` must be unused)."""


class SandboxError(RuntimeError):
    """A sandbox could not be launched (bad input, host problem)."""


class SandboxUnavailableError(SandboxError):
    """No sandbox backend satisfying the configuration works on this host."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandbox launch.

    Attributes:
        wall_s: wall-clock limit of the whole launch, enforced from outside with SIGKILL.
        cpu_s: ``RLIMIT_CPU`` per process, in whole seconds (SIGXCPU, then SIGKILL at +1 s).
        memory_bytes: ``RLIMIT_AS`` (virtual address space) per process.
        nproc: ``RLIMIT_NPROC``: processes/threads of the slot uid (only meaningful with a slot uid).
        fsize_bytes: ``RLIMIT_FSIZE``: largest file a sandboxed process may write.
        nofile: ``RLIMIT_NOFILE``: open file descriptors per process.
        max_output_bytes: bytes of stdout and of stderr kept; more kills the sandbox.
        tmpfs_bytes: size of the private writable ``/tmp`` (bwrap backend).
        group_memory_bytes: memory budget of the whole launch in its cgroup (every process, tmpfs and
            memfd pages, kernel memory); 0 derives it from the others (see
            :func:`nemo_prorl.rewards.sandbox.cgroup.group_memory_bytes`). Used only where cgroups work.

    """

    wall_s: float = 10.0
    cpu_s: int = 10
    memory_bytes: int = 1 << 30
    nproc: int = 64
    fsize_bytes: int = 16 << 20
    nofile: int = 64
    max_output_bytes: int = 1 << 20
    tmpfs_bytes: int = 64 << 20
    group_memory_bytes: int = 0

    def __post_init__(self) -> None:
        if not self.wall_s > 0:
            raise ValueError(f"Limits.wall_s must be > 0, got {self.wall_s!r}")
        for name in ("cpu_s", "memory_bytes", "nproc", "fsize_bytes", "nofile", "max_output_bytes",
                     "tmpfs_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Limits.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.group_memory_bytes, int) or self.group_memory_bytes < 0:
            raise ValueError("Limits.group_memory_bytes must be an integer >= 0, got "
                             f"{self.group_memory_bytes!r}")
        if self.nofile < 16:
            raise ValueError(f"Limits.nofile must be >= 16 (the interpreter needs a few), got {self.nofile}")


@dataclass
class RunResult:
    """What one sandbox launch did.

    Attributes:
        returncode: exit status of the launched command (negative: killed by that signal); ``None``
            if it never started.
        stdout: captured standard output, at most ``max_output_bytes``.
        stderr: captured standard error, at most ``max_output_bytes``.
        timed_out: the wall limit was reached and the sandbox was killed.
        killed_by: why the grader killed the sandbox (``"wall_timeout"``, ``"output_limit"``), or a
            signal name when the command died of a signal by itself (``"SIGXCPU"``, ``"SIGKILL"``...);
            ``None`` for a normal exit.
        wall_s: seconds from launch to the end of the last read.
        stdout_truncated: more stdout was produced than kept.
        stderr_truncated: more stderr was produced than kept.
        backend: name of the backend that ran it.
        leftover_killed: processes of the slot uid still alive after the run that had to be killed.

    """

    returncode: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool
    killed_by: str | None
    wall_s: float
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    backend: str = ""
    leftover_killed: int = 0
    extra: dict = field(default_factory=dict)


def check_files(files: Mapping[str, str | bytes]) -> None:
    """Reject file names that are not plain relative paths.

    Raises:
        SandboxError: naming the offending file.

    """
    if not isinstance(files, Mapping):
        raise SandboxError(f"files must be a mapping name -> content, got {type(files).__name__}")
    for name, content in files.items():
        if not isinstance(name, str) or not name or name.startswith("/") or "\0" in name:
            raise SandboxError(f"sandbox file name {name!r}: must be a non-empty relative path")
        parts = name.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise SandboxError(f"sandbox file name {name!r}: '.', '..' and empty components are not allowed")
        if not isinstance(content, (str, bytes)):
            raise SandboxError(f"sandbox file {name!r}: content must be str or bytes")


def as_bytes(content: str | bytes) -> bytes:
    """UTF-8 encode ``content`` unless it is already bytes."""
    return content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass")


class Sandbox:
    """A way to run an untrusted command.

    Subclasses implement :meth:`run`. ``python`` is the interpreter path *as seen inside the sandbox*
    and ``python_flags`` the isolation flags to pass it (``-I -S``: no user site, no ``site`` module,
    no ``PYTHON*`` environment variables).
    """

    name: str = ""
    #: True for backends that isolate filesystem, network and pids (not only rlimits)
    isolated: bool = False
    python: str = "/usr/bin/python3"
    python_flags: tuple[str, ...] = ("-I", "-S")

    def run(self, files: Mapping[str, str | bytes], argv: Sequence[str], stdin: bytes = b"",
            limits: Limits | None = None) -> RunResult:
        """Run ``argv`` with ``files`` in a fresh private working directory.

        Args:
            files: relative file name -> content, written into the working directory first.
            argv: the command; ``argv[0]`` is resolved inside the sandbox.
            stdin: bytes fed to the command's standard input (then closed).
            limits: resource limits; the defaults of :class:`Limits` when omitted.

        Returns:
            The :class:`RunResult`; never raises for anything the command does.

        Raises:
            SandboxError: for invalid ``files``/``argv`` or when the host cannot launch it at all.

        """
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------
# slots


class SlotPool:
    """Hands out slot indices ``0 .. max_slots-1``, exclusive across threads and processes.

    Args:
        max_slots: number of slots (and uids) available.
        lock_dir: directory holding one lock file per slot; private to the current user.

    """

    def __init__(self, max_slots: int = 64, lock_dir: str | None = None) -> None:
        if max_slots < 1:
            raise ValueError(f"max_slots must be >= 1, got {max_slots}")
        self.max_slots = max_slots
        self.lock_dir = lock_dir or os.path.join(tempfile.gettempdir(), f"nemo_prorl_slots_{os.getuid()}")
        self._busy: set[int] = set()
        self._mutex = threading.Lock()

    def _open_lock(self, slot: int) -> int:
        os.makedirs(self.lock_dir, mode=0o700, exist_ok=True)
        st = os.lstat(self.lock_dir)
        if st.st_uid != os.getuid() or (st.st_mode & 0o022):
            raise SandboxError(f"slot lock directory {self.lock_dir} must be owned by uid {os.getuid()} "
                               "and not group/world writable")
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        return os.open(os.path.join(self.lock_dir, f"slot-{slot}.lock"), flags, 0o600)

    @contextmanager
    def acquire(self, timeout_s: float = 60.0) -> Iterator[int]:
        """Claim a free slot for the duration of the ``with`` block.

        Raises:
            SandboxError: if no slot frees up within ``timeout_s``.

        """
        deadline = time.monotonic() + timeout_s
        while True:
            with self._mutex:
                for slot in range(self.max_slots):
                    if slot in self._busy:
                        continue
                    fd = self._open_lock(slot)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        os.close(fd)
                        continue
                    self._busy.add(slot)
                    break
                else:
                    slot = -1
            if slot >= 0:
                break
            if time.monotonic() > deadline:
                raise SandboxError(f"no free sandbox slot out of {self.max_slots} within {timeout_s:.0f} s")
            time.sleep(0.01)
        try:
            yield slot
        finally:
            with self._mutex:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                self._busy.discard(slot)


# --------------------------------------------------------------------------------------------------
# processes


def rlimit_setter(limits: Limits, nproc: int | None, cgroup_procs: Sequence[str] = (),
                  user: int | None = None) -> Callable[[], None]:
    """Return a ``preexec_fn``: join ``cgroup_procs``, switch to ``user``, apply ``limits``.

    Runs in the forked child. The cgroup files belong to root, so the child joins its groups first and
    only then drops to the slot uid (uid and gid, no supplementary groups); ``nproc=None`` leaves
    RLIMIT_NPROC alone.
    """
    cpu = int(limits.cpu_s)
    settings = [
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes)),
        (resource.RLIMIT_FSIZE, (limits.fsize_bytes, limits.fsize_bytes)),
        (resource.RLIMIT_NOFILE, (limits.nofile, limits.nofile)),
        (resource.RLIMIT_CORE, (0, 0)),
    ]
    if nproc is not None:
        settings.append((resource.RLIMIT_NPROC, (nproc, nproc)))

    def apply() -> None:
        pid = str(os.getpid()).encode()
        for path in cgroup_procs:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)
        if user is not None:
            os.setgroups([])
            os.setresgid(user, user, user)
            os.setresuid(user, user, user)
        for which, value in settings:
            resource.setrlimit(which, value)

    return apply


def uid_task_count(uid: int) -> int:
    """Number of tasks (threads) currently owned by real uid ``uid``, from ``/proc``."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as fh:
                status = fh.read()
        except OSError:
            continue
        real_uid = threads = None
        for line in status.splitlines():
            if line.startswith(b"Uid:"):
                real_uid = int(line.split()[1])
            elif line.startswith(b"Threads:"):
                threads = int(line.split()[1])
        if real_uid == uid:
            total += threads or 1
    return total


def _live_uid(pid: str) -> int | None:
    """Real uid of a live (non-zombie) process, else ``None``."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"State:") and line.split()[1] in (b"Z", b"X"):
                    return None
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def kill_uid_processes(uid: int) -> int:
    """SIGKILL every process whose real uid is ``uid``; returns how many were signalled.

    Only for dedicated slot uids (never the grader's own uid). The real uid is read from
    ``/proc/PID/status`` because a non-dumpable process's ``/proc/PID`` directory is owned by root.
    """
    if uid == os.getuid() or uid == 0:
        raise SandboxError(f"refusing to kill all processes of uid {uid} (not a dedicated slot uid)")
    killed = 0
    for _ in range(20):  # repeat: a process may fork while we scan
        found = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or _live_uid(entry.name) != uid:
                continue
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                found += 1
            except ProcessLookupError:
                pass
        killed += found
        if not found:
            break
        time.sleep(0.005)
    return killed


def signal_name(num: int) -> str:
    """``SIGKILL`` for 9, ``SIG<n>`` for numbers without a name."""
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"SIG{num}"


def execute(cmd: Sequence[str], *, stdin: bytes, limits: Limits, user: int | None = None,
            nproc: int | None = None, pass_fds: Sequence[int] = (), cwd: str | None = None,
            env: Mapping[str, str] | None = None, backend: str = "",
            cleanup: Callable[[], int] | None = None, cgroup_procs: Sequence[str] = ()) -> RunResult:
    """Launch ``cmd`` in a new session with rlimits; enforce the wall limit and output caps.

    Args:
        cmd: command line (already wrapped by the backend).
        stdin: bytes for standard input.
        limits: the limits (wall, output caps, rlimits).
        user: uid (and gid) to switch to before exec, or ``None`` to keep the current one.
        nproc: value for ``RLIMIT_NPROC`` or ``None`` to leave it.
        pass_fds: extra descriptors the child inherits.
        cwd: working directory of the child.
        env: environment of the child (empty mapping when omitted).
        backend: name recorded in the result.
        cleanup: called when the sandbox is killed, or when its main process has exited but
            something still holds its output pipes (an escaped daemon); kills what the process group
            kill cannot reach and returns how many processes it killed.
        cgroup_procs: ``cgroup.procs`` files the child joins before it drops privileges and execs.

    Returns:
        A :class:`RunResult`.

    Raises:
        SandboxError: the command could not be started.

    """
    cap = limits.max_output_bytes
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            list(cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, close_fds=True, pass_fds=tuple(pass_fds), cwd=cwd,
            env=dict(env or {}), preexec_fn=rlimit_setter(limits, nproc, cgroup_procs, user),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxError(f"cannot launch {cmd[0]!r}: {exc}") from exc

    bufs = {"stdout": bytearray(), "stderr": bytearray()}
    truncated = {"stdout": False, "stderr": False}
    killed_by: str | None = None
    timed_out = False
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None and proc.stdin is not None
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
    pending = memoryview(stdin)
    if pending:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin, selectors.EVENT_WRITE, "stdin")
    else:
        proc.stdin.close()

    leftovers = 0

    def kill() -> None:
        nonlocal leftovers
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        if cleanup is not None:
            leftovers += cleanup()

    deadline = start + limits.wall_s
    open_readers = 2
    drain_until: float | None = None
    exited_at: float | None = None
    try:
        while open_readers:
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if killed_by is None and exited_at is not None and now - exited_at > 0.25:
                # the command is gone but its pipes are still open: an escaped process holds them
                if cleanup is not None:
                    leftovers += cleanup()
                drain_until = now + 0.5
            if killed_by is None and now >= deadline:
                killed_by, timed_out = "wall_timeout", True
                kill()
            if killed_by is not None and drain_until is None:
                drain_until = time.monotonic() + 2.0
            if drain_until is not None and time.monotonic() > drain_until:
                break  # something outside the sandbox still holds the pipe; give up reading
            horizon = (drain_until if drain_until is not None else deadline) - time.monotonic()
            for key, _ in sel.select(timeout=max(0.0, min(horizon, 0.1 if exited_at else 0.5))):
                name = key.data
                if name == "stdin":
                    try:
                        written = os.write(key.fd, pending[:65536])
                        pending = pending[written:]
                    except (BrokenPipeError, OSError):
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(key.fileobj)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    open_readers -= 1
                    continue
                buf = bufs[name]
                room = cap - len(buf)
                if len(chunk) > room:
                    buf += chunk[:max(room, 0)]
                    truncated[name] = True
                    if killed_by is None:
                        killed_by = "output_limit"
                        kill()
                else:
                    buf += chunk
        # all output closed: the command (and whatever held the pipes) is gone or closing
        remaining = max(0.05, deadline - time.monotonic()) if killed_by is None else 2.0
        try:
            proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            killed_by, timed_out = "wall_timeout", True
            kill()
            proc.wait(timeout=5.0)
    finally:
        sel.close()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            try:
                stream.close()
            except OSError:
                pass
        if proc.returncode is None:
            kill()
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                pass
    rc = proc.returncode
    if killed_by is None and rc is not None and rc < 0:
        killed_by = signal_name(-rc)
    return RunResult(
        returncode=rc, stdout=bytes(bufs["stdout"]), stderr=bytes(bufs["stderr"]), timed_out=timed_out,
        killed_by=killed_by, wall_s=time.monotonic() - start, stdout_truncated=truncated["stdout"],
        stderr_truncated=truncated["stderr"], backend=backend, leftover_killed=leftovers,
    )


def is_eagain(exc: BaseException) -> bool:
    """True for 'resource temporarily unavailable' errors (process limit reached)."""
    return isinstance(exc, OSError) and exc.errno == errno.EAGAIN
