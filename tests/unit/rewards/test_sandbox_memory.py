"""Memory the address-space rlimit does not see: memfd pages, tmpfs inodes, a tmpfs of one's own.

Real bubblewrap and real cgroups (skipped where the host has no bwrap, or does not let the grader create
cgroups). Small budgets (64 MiB) keep every test to a few seconds.
"""

from __future__ import annotations

import os

import pytest

from nemo_prorl.rewards.code import CodeReward
from nemo_prorl.rewards.sandbox import (
    BwrapSandbox,
    Limits,
    SandboxError,
    SandboxUnavailableError,
    cgroup,
    make_sandbox,
)

SMALL = dict(wall_s=20.0, memory_bytes=256 << 20, group_memory_bytes=64 << 20, fsize_bytes=16 << 20)

# 400 MiB in memfds, written (never mapped): RLIMIT_AS does not count a byte of it
MEMFD_FILL = r'''
import os
fds, held, chunk = [], 0, b"x" * (1 << 20)
try:
    while held < (400 << 20):
        fd = os.memfd_create("m", 0)
        for _ in range(15):
            os.write(fd, chunk)
            held += 1 << 20
        fds.append(fd)
    print("held", held >> 20, flush=True)
except OSError as e:
    print("stopped", held >> 20, e, flush=True)
'''

# empty files cost no tmpfs "size" but kernel memory per inode
INODE_FILL = r'''
n = 0
try:
    while n < 400000:
        open("/tmp/f%d" % n, "w").close()
        n += 1
    print("created", n, flush=True)
except OSError as e:
    print("stopped", n, e, flush=True)
'''


def _bwrap(cgroups: str) -> BwrapSandbox:
    try:
        make_sandbox(backend="bwrap")
    except SandboxUnavailableError as exc:
        pytest.skip(f"bwrap sandbox unavailable on this host: {exc}")
    try:
        return BwrapSandbox(cgroups=cgroups)
    except SandboxError as exc:
        pytest.skip(f"this host does not let the grader create cgroups: {exc}")


@pytest.fixture(scope="module")
def grouped():
    return _bwrap("required")


def _run(sb, code, **limits):
    return sb.run({"main.py": code}, [sb.python, *sb.python_flags, "main.py"],
                  limits=Limits(**{**SMALL, **limits}))


def _leftover_groups(sb) -> list[str]:
    dirs = {sb.cgroups.memory_dir, sb.cgroups.pids_dir}
    return [n for d in dirs for n in os.listdir(d) if n.startswith(cgroup.PREFIX)]


def test_probe_reports_the_limits_in_force(grouped):
    enforced = grouped.enforced(Limits(**SMALL))
    assert enforced["cgroup_memory"] == "64 MiB per launch, swap 0"
    assert enforced["cgroup_pids"].startswith("72 ")
    assert enforced["tmpfs"].startswith("/tmp 64 MiB")
    assert set(enforced) == {"rlimits", "tmpfs", "nested_userns", "cgroup_memory", "cgroup_pids"}
    _, report = make_sandbox(backend="bwrap")
    assert report.limits["cgroup_memory"].endswith("per launch, swap 0")
    off = _bwrap("off")
    assert off.enforced()["cgroup_memory"] == "off (cgroups: off)"


def test_memfd_beyond_the_group_limit_is_killed(grouped):
    """RLIMIT_AS 256 MiB, group 64 MiB: 400 MiB of memfd pages -> the group's OOM kill, nothing held."""
    res = _run(grouped, MEMFD_FILL)
    assert b"held" not in res.stdout, res.stdout
    assert res.extra["cgroup_oom_kills"] >= 1 or b"stopped" in res.stdout, (res.stdout, res.extra)
    assert res.wall_s < 10.0
    assert _leftover_groups(grouped) == []


def test_memfd_without_a_group_is_the_residual_risk():
    """The same program without the cgroup holds what it asked for (what docs/sandbox.md warns about)."""
    off = _bwrap("off")
    res = _run(off, MEMFD_FILL.replace("400 << 20", "128 << 20"))
    assert res.stdout.startswith(b"held 135"), (res.stdout, res.stderr[-300:])


def test_tmpfs_inodes_beyond_the_group_limit_are_stopped(grouped):
    res = _run(grouped, INODE_FILL, group_memory_bytes=48 << 20)
    assert b"created" not in res.stdout, res.stdout
    assert res.extra["cgroup_oom_kills"] >= 1 or b"stopped" in res.stdout
    assert _leftover_groups(grouped) == []


def test_tmpfs_data_stops_at_its_size(grouped):
    code = ("import os\nn = 0\ntry:\n    with open('/tmp/big', 'wb') as fh:\n        while n < 200:\n"
            "            fh.write(b'x' * (1 << 20))\n            n += 1\n            fh.flush()\n"
            "    print('wrote', n)\nexcept OSError as e:\n    print('stopped', n, e.errno)\n")
    res = _run(grouped, code, tmpfs_bytes=16 << 20, fsize_bytes=512 << 20)
    out = res.stdout.decode()
    assert out.startswith("stopped") and int(out.split()[1]) <= 16 and out.split()[2] == "28", out  # ENOSPC


def test_no_tmpfs_of_ones_own(grouped):
    """A nested user namespace would let the code mount an unsized tmpfs: bwrap --disable-userns."""
    if not grouped.disable_userns:
        pytest.skip("this bwrap has no --disable-userns (older than 0.8)")
    code = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "r = libc.unshare(0x10000000 | 0x00020000)\n"
            "print('unshare', r, ctypes.get_errno())\n")
    res = _run(grouped, code)
    assert res.stdout.split()[:2] == [b"unshare", b"-1"], res.stdout


def test_pids_group_bounds_a_fork_bomb(grouped):
    code = ("import os, time\nn = 0\ntry:\n    while n < 500:\n        if os.fork() == 0:\n"
            "            time.sleep(30)\n            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\n"
            "print('forked', n, flush=True)\n")
    res = _run(grouped, code, nproc=20)
    out = res.stdout.split()
    assert out[0] == b"forked" and int(out[1]) <= 20 + cgroup_extra(), res.stdout
    assert _leftover_groups(grouped) == []


def cgroup_extra() -> int:
    from nemo_prorl.rewards.sandbox.bwrap import GROUP_EXTRA_PIDS

    return GROUP_EXTRA_PIDS


def test_code_reward_memfd_attack_scores_zero():
    try:
        r = CodeReward(case_timeout_s=3.0, total_timeout_s=8.0, memory_mb=256, group_memory_mb=64,
                       cgroups="required")
    except (SandboxUnavailableError, SandboxError) as exc:
        pytest.skip(f"no bwrap sandbox with cgroups on this host: {exc}")
    fence = "```"
    row = {"domain": "code", "tests": [{"input": "", "output": "held 405"}]}
    res = r.score(f"{fence}python\n{MEMFD_FILL}\n{fence}\n", row)
    assert res.score == 0.0 and res.status in ("ok", "violation"), res.info
    ok = r.score(f"{fence}python\nprint('held', 405)\n{fence}\n", row)
    assert ok.score == 1.0, ok.info
