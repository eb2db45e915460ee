"""Per-sandbox control groups: one memory and pids budget for everything a sandbox launch does.

``RLIMIT_AS`` bounds one process's address space, not what the kernel holds on its behalf: pages written
into a ``memfd`` or a tmpfs (without mapping them), tmpfs inodes, pipe buffers, and the sum over many
processes. A memory cgroup charges all of that to the group, and a pids cgroup bounds its task count
whatever the uid. Each sandbox slot gets its own group for the length of one launch::

    <grader's own cgroup>/nemo_prorl_slot<N>      memory.max (v2) / memory.limit_in_bytes (v1)
                                                  memory.swap.max = 0 / memory.memsw.limit_in_bytes
                                                  pids.max

The launched process joins the group before it execs bubblewrap (while the grader is still root, see
:func:`nemo_prorl.rewards.sandbox.base.execute`), so every descendant is inside from its first page.
After the launch every process left in the group is killed, the kernel's OOM-kill count is read, and the
group is removed.

Both hierarchies are supported: cgroup v2 (the unified ``memory`` and ``pids`` controllers must be
enabled in the grader's cgroup's ``cgroup.subtree_control``; the grader tries to enable them, which the
kernel refuses while processes live directly in that cgroup, so run the grader in a delegated cgroup,
e.g. ``systemd-run --scope -p Delegate=yes``) and cgroup v1 (separate ``memory`` and ``pids``
hierarchies). Where neither works (no root, no delegation, a read-only ``/sys/fs/cgroup``),
:func:`detect` says why and the sandbox runs with rlimits only (see docs/sandbox.md for the residual risk).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass, field

PREFIX = "nemo_prorl_slot"
SLACK_BYTES = 64 << 20
"""Memory allowed beyond the per-process limit and the tmpfs sizes: the harness, bwrap, page tables."""


def _read(path: str) -> str:
    with open(path, encoding="ascii") as fh:
        return fh.read()


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode("ascii"))
    finally:
        os.close(fd)


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, super options) of the cgroup mounts, from /proc/self/mountinfo."""
    out = []
    try:
        text = _read("/proc/self/mountinfo")
    except OSError:
        return out
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        parts, rparts = left.split(), right.split()
        if len(parts) < 5 or len(rparts) < 3 or rparts[0] not in ("cgroup", "cgroup2"):
            continue
        out.append((parts[4].replace("\\040", " "), rparts[0], set(rparts[2].split(","))))
    return out


def _own_paths() -> dict[str, str]:
    """Controller (or ``""`` for v2) -> the grader's cgroup path, from /proc/self/cgroup."""
    out = {}
    for line in _read("/proc/self/cgroup").splitlines():
        hid, controllers, path = line.split(":", 2)
        if hid == "0" and controllers == "":
            out[""] = path
        for c in controllers.split(","):
            if c:
                out[c] = path
    return out


@dataclass
class SlotCgroups:
    """Creates, joins and removes the per-slot groups under the grader's own cgroup(s).

    Attributes:
        version: 1 or 2.
        memory_dir: the parent directory of the memory groups.
        pids_dir: the parent directory of the pids groups (the same as ``memory_dir`` on v2).

    """

    version: int
    memory_dir: str
    pids_dir: str
    _oom_base: dict[int, int] = field(default_factory=dict)

    def _dirs(self, slot: int) -> list[str]:
        name = f"{PREFIX}{slot}"
        dirs = [os.path.join(self.memory_dir, name)]
        if self.pids_dir != self.memory_dir:
            dirs.append(os.path.join(self.pids_dir, name))
        return dirs

    def prepare(self, slot: int, memory_bytes: int, pids: int) -> list[str]:
        """Create the slot's group(s) with the limits; return the ``cgroup.procs`` files to join.

        Raises:
            OSError: the kernel refused (the caller turns it into a ``SandboxError``).

        """
        for d in self._dirs(slot):
            try:
                os.mkdir(d, 0o755)
            except FileExistsError:
                self._kill(d)  # a group left by an earlier launch that could not be removed
        mem, pid_dir = self._dirs(slot)[0], self._dirs(slot)[-1]
        if self.version == 2:
            _write(os.path.join(mem, "memory.max"), str(memory_bytes))
            swap = os.path.join(mem, "memory.swap.max")
            if os.path.exists(swap):  # absent when the kernel does no swap accounting
                _write(swap, "0")
            _write(os.path.join(mem, "pids.max"), str(pids))
        else:
            memsw = os.path.join(mem, "memory.memsw.limit_in_bytes")
            has_memsw = os.path.exists(memsw)
            if has_memsw:
                _write(memsw, "-1")  # memsw must stay >= the limit while the limit changes
            _write(os.path.join(mem, "memory.limit_in_bytes"), str(memory_bytes))
            if has_memsw:
                _write(memsw, str(memory_bytes))
            _write(os.path.join(pid_dir, "pids.max"), str(pids))
        self._oom_base[slot] = self.oom_kills(slot)
        return [os.path.join(d, "cgroup.procs") for d in self._dirs(slot)]

    def oom_kills(self, slot: int) -> int:
        """Processes the kernel's OOM killer has killed in the slot's memory group so far."""
        mem = self._dirs(slot)[0]
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            for line in _read(os.path.join(mem, name)).splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def procs(self, slot: int) -> list[int]:
        """Pids currently in the slot's group(s)."""
        found: set[int] = set()
        for d in self._dirs(slot):
            try:
                found.update(int(x) for x in _read(os.path.join(d, "cgroup.procs")).split())
            except OSError:
                pass
        return sorted(found)

    def _kill(self, d: str) -> int:
        killed = 0
        kill_file = os.path.join(d, "cgroup.kill")
        if self.version == 2 and os.path.exists(kill_file):
            try:
                _write(kill_file, "1")
            except OSError:
                pass
        for _ in range(50):
            try:
                pids = [int(x) for x in _read(os.path.join(d, "cgroup.procs")).split()]
            except OSError:
                return killed
            if not pids:
                return killed
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.002)
        return killed

    def release(self, slot: int) -> tuple[int, int]:
        """Kill what is left in the slot's group(s) and remove them.

        Returns:
            ``(oom_kills, leftovers_killed)`` for this launch.

        """
        oom = self.oom_kills(slot) - self._oom_base.pop(slot, 0)
        killed = 0
        for d in self._dirs(slot):
            killed += self._kill(d)
            for _ in range(100):  # exiting tasks leave the group a little after SIGKILL
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        break
                    time.sleep(0.002)
        return max(oom, 0), killed


def join(procs_files: list[str]) -> None:
    """Move the calling process into the groups (runs in the forked child, before the uid switch)."""
    pid = str(os.getpid())
    for path in procs_files:
        _write(path, pid)


def _try(groups: SlotCgroups) -> str:
    """Create, limit, join (with a short-lived child) and remove a probe group; ``"ok"`` or why not."""
    slot = 10_000 + os.getpid() % 10_000
    try:
        files = groups.prepare(slot, 64 << 20, 16)
    except OSError as exc:
        groups.release(slot)
        return f"cannot create a limited group under {groups.memory_dir} ({exc.strerror or exc})"
    try:
        pid = os.fork()
        if pid == 0:
            try:
                join(files)
                os._exit(0)
            except BaseException:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            return f"cannot move a process into a group under {groups.memory_dir}"
    finally:
        groups.release(slot)
    return "ok"


def detect() -> tuple[SlotCgroups | None, str]:
    """Find a cgroup hierarchy where per-slot groups can be created; ``(groups, "ok")`` or ``(None, why)``."""
    try:
        own = _own_paths()
    except OSError as exc:
        return None, f"cannot read /proc/self/cgroup ({exc})"
    mounts = _mounts()
    reasons = []
    v1_mem = next((m for m, t, o in mounts if t == "cgroup" and "memory" in o), None)
    v1_pids = next((m for m, t, o in mounts if t == "cgroup" and "pids" in o), None)
    if v1_mem and v1_pids and "memory" in own and "pids" in own:
        mem_dir = os.path.join(v1_mem, own["memory"].lstrip("/"))
        pids_dir = os.path.join(v1_pids, own["pids"].lstrip("/"))
        groups = SlotCgroups(version=1, memory_dir=mem_dir, pids_dir=pids_dir)
        verdict = _try(groups)
        if verdict == "ok":
            return groups, "ok"
        reasons.append(f"cgroup v1: {verdict}")
    v2 = next((m for m, t, _ in mounts if t == "cgroup2"), None)
    if v2 and "" in own:
        base = os.path.join(v2, own[""].lstrip("/"))
        try:
            available = set(_read(os.path.join(v2, "cgroup.controllers")).split())
        except OSError:
            available = set()
        if not {"memory", "pids"} <= available:
            reasons.append(f"cgroup v2 at {v2}: memory/pids controllers not available (bound to v1?)")
        else:
            try:
                enabled = set(_read(os.path.join(base, "cgroup.subtree_control")).split())
                if not {"memory", "pids"} <= enabled:
                    _write(os.path.join(base, "cgroup.subtree_control"), "+memory +pids")
            except OSError as exc:
                reasons.append(f"cgroup v2: cannot enable memory and pids for children of {base} "
                               f"({exc.strerror}; the grader must run in a delegated cgroup with no "
                               "processes of its own there)")
            else:
                groups = SlotCgroups(version=2, memory_dir=base, pids_dir=base)
                verdict = _try(groups)
                if verdict == "ok":
                    return groups, "ok"
                reasons.append(f"cgroup v2: {verdict}")
    if not reasons:
        reasons.append("no cgroup hierarchy with memory and pids controllers is mounted")
    return None, "; ".join(reasons)


def group_memory_bytes(memory_bytes: int, tmpfs_bytes: int, shm_bytes: int) -> int:
    """Memory budget of one sandbox: one process's address space, both tmpfs mounts, and slack."""
    return memory_bytes + tmpfs_bytes + shm_bytes + SLACK_BYTES
