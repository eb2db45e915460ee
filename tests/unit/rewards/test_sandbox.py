"""Sandbox backends: isolation, limits, probing and slots (real bwrap; no mocks)."""

from __future__ import annotations

import json
import logging
import os
import threading

import pytest

from nemo_prorl.rewards.sandbox import (
    BwrapSandbox,
    Limits,
    SandboxError,
    SandboxUnavailableError,
    SlotPool,
    UnsafeSandbox,
    make_sandbox,
)
from nemo_prorl.rewards.sandbox.base import check_files


@pytest.fixture(scope="module")
def bwrap_box():
    try:
        sb, report = make_sandbox(backend="bwrap")
    except SandboxUnavailableError as exc:
        pytest.skip(f"bwrap sandbox unavailable on this host: {exc}")
    assert report.backend == "bwrap"
    return sb


def _py(sb, code: str, **kw):
    return sb.run({"main.py": code}, [sb.python, *sb.python_flags, "main.py"], **kw)


def test_limits_validation():
    with pytest.raises(ValueError, match="wall_s"):
        Limits(wall_s=0)
    with pytest.raises(ValueError, match="memory_bytes"):
        Limits(memory_bytes=-1)
    with pytest.raises(ValueError, match="nofile"):
        Limits(nofile=3)


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../b", "", "a//b", "./a"])
def test_check_files_rejects_bad_names(name):
    with pytest.raises(SandboxError, match="sandbox file name"):
        check_files({name: "x"})


def test_unsafe_requires_opt_in():
    with pytest.raises(SandboxUnavailableError, match="allow_unsafe"):
        make_sandbox(backend="unsafe")
    with pytest.raises(ValueError, match="backend"):
        make_sandbox(backend="docker")


def test_missing_bwrap_refuses_with_fix_hint():
    with pytest.raises(SandboxUnavailableError) as info:
        make_sandbox(backend="auto", bwrap="definitely-not-a-bwrap-binary")
    msg = str(info.value)
    assert "not installed" in msg and "install bubblewrap" in msg and "allow_unsafe: true" in msg


def test_missing_bwrap_falls_back_to_unsafe_only_when_opted_in(caplog):
    with caplog.at_level(logging.WARNING):
        sb, report = make_sandbox(backend="auto", allow_unsafe=True, bwrap="definitely-not-a-bwrap-binary")
    assert report.backend == "unsafe" and isinstance(sb, UnsafeSandbox)
    assert "not installed" in report.checks["bwrap"]
    assert any("UNSAFE SANDBOX" in r.getMessage() for r in caplog.records)
    res = _py(sb, "import sys; print(sys.stdin.read().upper())", stdin=b"abc")
    assert res.returncode == 0 and res.stdout == b"ABC\n"


def test_slot_pool_exclusive_across_threads(tmp_path):
    pool = SlotPool(max_slots=3, lock_dir=str(tmp_path / "locks"))
    seen: list[int] = []
    barrier = threading.Barrier(3)

    def worker():
        with pool.acquire() as slot:
            seen.append(slot)
            barrier.wait(timeout=5)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == [0, 1, 2]
    with pool.acquire() as a, pool.acquire() as b:
        assert a != b
    with pytest.raises(SandboxError, match="no free sandbox slot"):
        with pool.acquire(), pool.acquire(), pool.acquire(), pool.acquire(timeout_s=0.05):
            pass


def test_bwrap_view_of_the_host(bwrap_box, tmp_path):
    os.environ["NEMO_SANDBOX_TEST_SECRET"] = "s3cr3t-value"
    try:
        code = (
            "import os, json, socket\n"
            "print(json.dumps({'root': sorted(os.listdir('/')), 'cwd': os.getcwd(), 'uid': os.getuid(),\n"
            "  'env': dict(os.environ), 'pid': os.getpid(), 'files': sorted(os.listdir('.')),\n"
            "  'nested': open('pkg/data.txt').read(),\n"
            "  'net': sorted(name for _, name in socket.if_nameindex())}))\n"
        )
        res = bwrap_box.run({"main.py": code, "pkg/data.txt": "hello"},
                            [bwrap_box.python, *bwrap_box.python_flags, "main.py"])
    finally:
        del os.environ["NEMO_SANDBOX_TEST_SECRET"]
    assert res.returncode == 0, res.stderr
    seen = json.loads(res.stdout)
    allowed = {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "proc", "dev", "tmp"}
    assert set(seen["root"]) <= allowed
    assert "work" not in seen["root"] and "root" not in seen["root"] and "home" not in seen["root"]
    assert seen["cwd"] == "/tmp" and seen["files"] == ["main.py", "pkg"] and seen["nested"] == "hello"
    assert seen["pid"] == 1  # --as-pid-1 in a fresh pid namespace
    assert "NEMO_SANDBOX_TEST_SECRET" not in seen["env"]
    assert set(seen["env"]) <= {"PATH", "LANG", "HOME", "PWD"}
    # a fresh network namespace: loopback only, none of the host's interfaces (listed with if_nameindex,
    # which needs no /sys inside)
    assert seen["net"] == ["lo"], seen["net"]
    if os.geteuid() == 0:
        assert seen["uid"] == res.extra["uid"] >= bwrap_box.base_uid  # the slot uid, not root


def test_bwrap_readonly_usr_and_tmpfs_size(bwrap_box):
    code = (
        "import os\n"
        "try:\n    open('/usr/evil', 'w')\n    print('usr-writable')\nexcept OSError:\n    print('usr-ro')\n"
        "try:\n"
        "    with open('big', 'wb') as f:\n"
        "        for _ in range(100):\n            f.write(b'x' * (1 << 20))\n"
        "    print('big-ok')\n"
        "except OSError as e:\n    print('big-fail', e.errno)\n"
    )
    res = _py(bwrap_box, code, limits=Limits(wall_s=5, fsize_bytes=200 << 20, tmpfs_bytes=8 << 20))
    lines = res.stdout.decode().split()
    assert lines[0] == "usr-ro"
    assert lines[1] == "big-fail"  # tmpfs full at 8 MiB (ENOSPC), not the host disk


def test_bwrap_wall_timeout_kills_everything(bwrap_box):
    code = (
        "import os, signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "if os.fork() == 0:\n    os.setsid()\n    while True: pass\n"
        "while True: time.sleep(1)\n"
    )
    res = _py(bwrap_box, code, limits=Limits(wall_s=1.0))
    assert res.timed_out and res.killed_by == "wall_timeout"
    assert res.wall_s < 4.0


def test_bwrap_output_cap(bwrap_box):
    res = _py(bwrap_box, "import sys\nwhile True: sys.stdout.write('x' * 65536)\n",
              limits=Limits(wall_s=10.0, max_output_bytes=100_000))
    assert res.killed_by == "output_limit" and res.stdout_truncated
    assert len(res.stdout) == 100_000 and res.wall_s < 5.0


def test_bwrap_memory_limit(bwrap_box):
    res = _py(bwrap_box, "x = bytearray(512 << 20)\nprint('allocated')\n",
              limits=Limits(wall_s=5.0, memory_bytes=256 << 20))
    assert res.returncode != 0 and b"MemoryError" in res.stderr and b"allocated" not in res.stdout


def test_bwrap_stdin_and_exit_code(bwrap_box):
    res = _py(bwrap_box, "import sys\ndata = sys.stdin.read()\nprint(len(data))\nsys.exit(3)\n",
              stdin=b"y" * 300_000)
    assert res.returncode == 3 and res.stdout == b"300000\n" and not res.timed_out


def test_bwrap_cpu_limit(bwrap_box):
    res = _py(bwrap_box, "while True: pass\n", limits=Limits(wall_s=10.0, cpu_s=1))
    assert res.killed_by in ("SIGXCPU", "SIGKILL") and not res.timed_out


@pytest.mark.skipif(os.geteuid() != 0, reason="slot uids need root")
def test_unsafe_backend_kills_escaped_daemons():
    sb = UnsafeSandbox()
    marker = "nemo-unsafe-daemon-marker-7731"
    code = (
        "import os, sys\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.execv(sys.executable,\n"
        f"                 [sys.executable, '-c', 'import time; time.sleep(60)', '{marker}'])\n"
        "    os._exit(0)\n"
        "print('parent done')\n"
    )
    res = _py(sb, code, limits=Limits(wall_s=5.0))
    assert res.stdout == b"parent done\n" and res.wall_s < 3.0
    assert res.leftover_killed >= 1
    assert not _processes_with(marker)


def _processes_with(marker: str) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                    if marker.encode() in fh.read():
                        out.append(int(entry.name))
            except OSError:
                pass
    return out


def test_bwrap_rejects_bad_binds():
    with pytest.raises(SandboxError, match="not an existing absolute path"):
        BwrapSandbox(extra_ro_binds=["relative/path"])
