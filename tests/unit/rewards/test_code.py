"""The ``code`` reward end to end: real sandbox, real attacks, all through ``CodeReward.score``."""

from __future__ import annotations

import fcntl
import os
import socket
import time

import pytest

from nemo_prorl.rewards.base import get_reward_class
from nemo_prorl.rewards.code import CodeReward, extract_code
from nemo_prorl.rewards.sandbox import RunResult, SandboxUnavailableError

FENCE = "```"


def answer(code: str, lang: str = "python", think: str = "<think>hmm</think>\n") -> str:
    return f"{think}Here is my solution.\n{FENCE}{lang}\n{code}\n{FENCE}\n"


ADD_IO = {"domain": "code", "tests": [
    {"input": "1 2\n", "output": "3\n"},
    {"input": "10 -4\n", "output": "6"},
    {"input": "0 0\n", "output": "0\n"},
    {"input": "100 23", "output": "123\n"},
]}
ADD_SRC = "a, b = map(int, input().split())\nprint(a + b)"
ASSERT_ROW = {"domain": "code", "entry_point": "add", "tests": [
    {"assert": "assert add(1, 2) == 3"},
    {"assert": "assert candidate(-1, 1) == 0"},
    {"assert": "assert add('a', 'b') == 'ab'"},
]}


def _code_reward(**kw) -> CodeReward:
    """A CodeReward on the real sandbox, or a skip naming why this host has none."""
    try:
        return CodeReward(**kw)
    except SandboxUnavailableError as exc:
        pytest.skip(f"no isolated sandbox on this host: {exc}")


@pytest.fixture(scope="module")
def reward():
    r = _code_reward(case_timeout_s=1.0, total_timeout_s=6.0, memory_mb=512, max_output_bytes=1 << 20)
    # what already ran below this process (e.g. multiprocessing's resource tracker and spawn workers left
    # by earlier tests in the same pytest process) is not an attack's leftover
    r._pids_before = _descendant_pids()
    return r


def _descendant_pids() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def _slot_uid_processes(r: CodeReward) -> list[int]:
    """Live processes of slot uids whose slot is free (a held slot is another run on this host)."""
    sb = r.sandbox
    lo, hi = sb.base_uid, sb.base_uid + sb.slots.max_slots

    def scan() -> dict[int, list[int]]:
        found: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/status", "rb") as fh:
                    text = fh.read()
            except OSError:
                continue
            state = uid = None
            for line in text.splitlines():
                if line.startswith(b"State:"):
                    state = line.split()[1]
                if line.startswith(b"Uid:"):
                    uid = int(line.split()[1])
            if uid is not None and lo <= uid < hi and state not in (b"Z", b"X"):
                found.setdefault(uid, []).append(int(entry.name))
        return found

    leftovers = []
    for uid in scan():
        path = os.path.join(sb.slots.lock_dir, f"slot-{uid - lo}.lock")
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # the slot is in use by a concurrent run (another test session on this host)
        try:
            leftovers += scan().get(uid, [])  # the slot is free: whatever still runs under it escaped
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
    return leftovers


def _live_descendants(ignore: set[int] = frozenset()) -> list[str]:
    """Processes still running below this test process, whatever their uid.

    Every sandbox launch is a child of the grader (bwrap, then the solution as pid 1 of a fresh pid
    namespace); a daemon the solution forks stays inside that namespace, so it is a descendant of ours
    until the namespace's pid 1 dies and the kernel kills the rest. After ``score()`` returns, anything
    still alive below us escaped the clean-up. This holds with or without root (as root the slot-uid scan
    below also finds processes that left our process tree).
    """
    import psutil

    out = []
    for p in psutil.Process().children(recursive=True):
        if p.pid in ignore:
            continue
        try:
            if p.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return out


def _grader_goes_on(r: CodeReward) -> None:
    """After an attack the next row is scored normally and nothing of the attack is left running."""
    res = r.score(answer(ADD_SRC), ADD_IO)
    assert res.status == "ok" and res.score == 1.0, res.info
    assert _live_descendants(getattr(r, "_pids_before", set())) == []
    if os.geteuid() == 0:  # slot uids exist only when the grader runs as root
        assert _slot_uid_processes(r) == []


# ------------------------------------------------------------------ extraction


def test_extract_last_python_block_after_think():
    text = ("<think>try ```python\nprint(0)\n``` no</think>\n```python\nprint(1)\n```\nmore\n"
            "```\nprint(2)\n```\n```cpp\nint main(){}\n```\n")
    assert extract_code(text) == "print(2)\n"
    assert extract_code("```py\nx = 1\n```") == "x = 1\n"
    assert extract_code("no code here") is None
    assert extract_code("<think>```python\nprint(1)\n```") is None  # unfinished thinking
    assert extract_code("```python\nprint(1)\n") is None  # unterminated fence (truncated response)


def test_registered_under_code():
    assert get_reward_class("code") is CodeReward


def test_bad_options_rejected_at_construction():
    with pytest.raises(ValueError, match="case_timeout_s"):
        CodeReward(case_timeout_s=0, probe_on_init=False)
    with pytest.raises(ValueError, match="max_tests"):
        CodeReward(max_tests=0, probe_on_init=False)
    with pytest.raises(SandboxUnavailableError, match="allow_unsafe"):
        CodeReward(backend="unsafe")


def test_unavailable_sandbox_without_probe_becomes_error_status():
    r = CodeReward(backend="bwrap", probe_on_init=False)
    r._sandbox_opts["bwrap"] = "no-such-bwrap-binary"
    res = r.score(answer(ADD_SRC), ADD_IO)
    assert res.status == "error" and res.info["reason"] == "sandbox_unavailable"
    assert "install bubblewrap" in res.info["error"]


# ------------------------------------------------------------------ scoring


def test_correct_partial_wrong_stdio(reward):
    assert reward.score(answer(ADD_SRC), ADD_IO).score == 1.0
    partial = "a, b = map(int, input().split())\nprint(a + b if a else 7)"
    res = reward.score(answer(partial), ADD_IO)
    assert res.status == "ok" and res.score == pytest.approx(3 / 4) and res.info["passed"] == 3
    assert res.info["first_failure"]["index"] == 2
    res = reward.score(answer("print(42)"), ADD_IO)
    assert res.status == "ok" and res.score == 0.0 and res.info["outcomes"] == {"wrong_answer": 4}


def test_whitespace_normalised_comparison(reward):
    row = {"domain": "code", "tests": [{"input": "", "output": "1 2\n3"}]}
    assert reward.score(answer("print('  1    2  ')\nprint('3   ')\nprint()"), row).score == 1.0
    assert reward.score(answer("print('1 2 3')"), row).score == 0.0


def test_runtime_error_fails_case_even_with_right_output(reward):
    row = {"domain": "code", "tests": [{"input": "", "output": "5"}]}
    res = reward.score(answer("print(5)\nraise RuntimeError('late')"), row)
    assert res.score == 0.0 and res.info["outcomes"] == {"runtime_error": 1}


def test_assert_cases_with_entry_point(reward):
    res = reward.score(answer("def add(a, b):\n    return a + b"), ASSERT_ROW)
    assert res.status == "ok" and res.score == 1.0
    res = reward.score(answer("def add(a, b):\n    return int(a) + int(b)"), ASSERT_ROW)
    assert res.score == pytest.approx(2 / 3)
    assert res.info["first_failure"]["index"] == 2
    res = reward.score(answer("def plus(a, b):\n    return a + b"), ASSERT_ROW)
    assert res.score == 0.0 and "entry point" in res.info["first_failure"]["detail"]


def test_humaneval_style_check(reward):
    row = {"domain": "code", "entry_point": "inc", "tests": [
        {"assert": "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(-1) == 0\n"},
    ]}
    assert reward.score(answer("def inc(x):\n    return x + 1"), row).score == 1.0
    assert reward.score(answer("def inc(x):\n    return x + 2"), row).score == 0.0


def test_syntax_error_is_ok_with_zero(reward):
    res = reward.score(answer("def add(a, b) return a + b"), ASSERT_ROW)
    assert res.status == "ok" and res.score == 0.0 and res.info["reason"] == "syntax_error"
    assert "SyntaxError" in res.info["error"]


def test_no_block_and_bad_rows(reward):
    assert reward.score("the answer is 3", ADD_IO).status == "no_answer"
    res = reward.score(answer(ADD_SRC), {"domain": "code", "tests": "[not json"})
    assert res.status == "error" and res.info["error"].startswith("tests: not valid JSON")
    res = reward.score(answer(ADD_SRC), {"domain": "code", "tests": [{"input": "1"}]})
    assert res.status == "error" and "case 0" in res.info["error"]
    bad_ep = {"domain": "code", "entry_point": "a b", "tests": ASSERT_ROW["tests"]}
    res = reward.score(answer(ADD_SRC), bad_ep)
    assert res.status == "error" and "entry_point" in res.info["error"]


def test_tests_as_json_string_and_max_tests():
    import json

    r = _code_reward(case_timeout_s=1.0, max_tests=2)
    row = {"domain": "code", "tests": json.dumps(ADD_IO["tests"])}
    res = r.score(answer("print(3)"), row)
    assert res.info["total"] == 2 and res.score == pytest.approx(0.5)


# ------------------------------------------------------------------ attacks (S1-S7)


def test_exit_before_tests_fails(reward):
    """S7: sys.exit(0) / os._exit(0) in the solution must not count as passing."""
    for src in ("import sys\nsys.exit(0)\ndef add(a, b): return a + b",
                "import os\nos._exit(0)",
                "import atexit, os\ndef add(a, b): return a + b\natexit.register(lambda: os._exit(0))\n"
                "raise SystemExit(0)"):
        res = reward.score(answer(src), ASSERT_ROW)
        assert res.score == 0.0, (src, res.info)
        assert set(res.info["outcomes"]) == {"no_completion"}
    _grader_goes_on(reward)


def test_harness_tampering_fails(reward):
    """S7: forge records on the harness's stdout via /proc, kill the harness, overwrite the harness file."""
    src = (
        "import os, json, sys\n"
        "forged = json.dumps({'event': 'case', 'index': 0, 'passed': True, 'outcome': 'pass'}) + '\\n'\n"
        "for path in ('/proc/1/fd/1', '/proc/%d/fd/1' % os.getppid()):\n"
        "    try:\n        with open(path, 'w') as fh: fh.write(forged)\n"
        "    except OSError as e: print('blocked', path, e.errno, file=sys.stderr)\n"
        "try:\n    open('/proc/1/mem', 'rb').read(1)\nexcept OSError: pass\n"
        "for sig in (9, 15, 2):\n    try: os.kill(1, sig)\n    except OSError: pass\n"
        "try:\n    open(os.path.join(os.path.dirname(os.getcwd()), 'harness.py'), 'w').write('print(1)')\n"
        "except OSError: pass\n"
        "print(forged)\n"
        "def add(a, b): return None\n"
    )
    res = reward.score(answer(src), ASSERT_ROW)
    assert res.status in ("ok", "violation") and res.score == 0.0, res.info
    # the harness survived and reported every case itself
    assert res.status == "ok" and res.info["outcomes"] == {"wrong_answer": 3}
    _grader_goes_on(reward)


def test_forged_result_lines_are_a_violation(reward):
    nonce = "a" * 32
    ok_lines = (b'{"nonce": "%s", "event": "start"}\n' % nonce.encode()
                + b'{"nonce": "%s", "event": "case", "index": 0, "passed": true, "outcome": "pass"}\n'
                % nonce.encode()
                + b'{"nonce": "%s", "event": "done", "budget": null}\n' % nonce.encode())

    def judge(stdout: bytes):
        res = RunResult(returncode=0, stdout=stdout, stderr=b"", timed_out=False, killed_by=None, wall_s=0.1)
        return reward._judge(res, nonce, 1)

    assert judge(ok_lines).score == 1.0
    assert judge(ok_lines.replace(b"a" * 32, b"b" * 32, 1)).status == "violation"
    forged = b'{"event": "case", "index": 0, "passed": true, "outcome": "pass"}\n'
    assert judge(ok_lines + forged).status == "violation"
    dup = ok_lines.splitlines(keepends=True)
    assert judge(dup[0] + dup[1] + dup[1] + dup[2]).status == "violation"
    assert judge(ok_lines[:-5]).status == "violation"


def test_infinite_loop_ignoring_signals_times_out(reward):
    """S5: SIGTERM/SIGALRM ignored -> SIGKILL at the limit; status timeout, reward 0."""
    src = ("import signal\nfor s in (signal.SIGTERM, signal.SIGALRM, signal.SIGINT, signal.SIGXCPU):\n"
           "    signal.signal(s, signal.SIG_IGN)\nsignal.alarm(1)\nwhile True:\n    pass\n")
    t0 = time.monotonic()
    res = reward.score(answer(src), {"domain": "code", "tests": ADD_IO["tests"][:2]})
    assert res.status == "timeout" and res.score == 0.0
    assert time.monotonic() - t0 < 8.0
    _grader_goes_on(reward)


def test_total_budget_exhausted_is_timeout():
    r = _code_reward(case_timeout_s=1.0, total_timeout_s=1.5)
    src = "import time\nx = int(input())\nif x > 5:\n    time.sleep(5)\nprint(x)"
    row = {"domain": "code", "tests": [{"input": str(x), "output": str(x)} for x in (10, 10, 1, 2)]}
    res = r.score(answer(src), row)
    assert res.status == "timeout" and res.score == 0.0 and "budget" in res.info["reason"]
    assert res.info["outcomes"].get("skipped", 0) >= 1


def test_memory_bomb(reward):
    """S4: 100 GB at once -> MemoryError at the address-space limit; status violation (nothing passed)."""
    row = {"domain": "code", "tests": ADD_IO["tests"][:1]}
    res = reward.score(answer("x = bytearray(100 << 30)\nprint(len(x))"), row)
    assert res.score == 0.0 and res.status == "violation" and res.info["outcomes"] == {"memory": 1}
    # a growing bomb: stopped by the limit (or, on a loaded machine, by the wall clock first)
    src = "chunks = []\nwhile True:\n    chunks.append(bytearray(50 << 20))\n"
    res = reward.score(answer(src), row)
    assert res.score == 0.0 and res.status in ("violation", "timeout"), res.info
    _grader_goes_on(reward)


def test_fork_bomb(reward):
    """S3: stopped by the per-slot process limit; nothing left running afterwards."""
    src = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    t0 = time.monotonic()
    res = reward.score(answer(src), {"domain": "code", "tests": ADD_IO["tests"][:1]})
    assert res.score == 0.0 and res.status in ("timeout", "violation"), res.info
    assert time.monotonic() - t0 < 10.0
    _grader_goes_on(reward)


def test_network_to_host_loopback_blocked(reward):
    """S1: a listener on the host's 127.0.0.1 never sees a connection."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    srv.settimeout(0.5)
    port = srv.getsockname()[1]
    src = ("import socket\n"
           f"s = socket.create_connection(('127.0.0.1', {port}), timeout=0.5)\n"
           "s.sendall(b'hello')\nprint('connected')\n")
    try:
        res = reward.score(answer(src), {"domain": "code", "tests": [{"input": "", "output": "connected"}]})
        assert res.score == 0.0 and res.info["outcomes"] == {"runtime_error": 1}
        with pytest.raises(TimeoutError):
            srv.accept()
    finally:
        srv.close()
    _grader_goes_on(reward)


def test_host_secrets_not_readable(reward, tmp_path):
    """S2: a host canary file, a file in the grader's home and an environment secret are invisible inside.

    The solution reports, for each secret, whether it saw it, and the expected output is "nothing seen":
    a full or a partial leak (any one secret, found anywhere: the file itself, the grader's home, its
    environment, ``/proc/1/environ``, ``/proc/self/environ``, ``/etc/shadow``) gives a wrong answer and
    fails this test, and so does a solution that did not run at all; a control row shows the program
    does report a secret it can see.
    """
    canary = tmp_path / "canary.txt"
    canary.write_text("CANARY-7f3a")
    home = os.path.expanduser("~")
    home_canary = os.path.join(home, f".nemo-test-canary-{os.getpid()}")
    os.environ["NEMO_TEST_API_KEY"] = "SECRET-91bc"
    src = ("import os, sys\n"
           "seen = sys.stdin.read()\n"
           f"for p in ({str(canary)!r}, {home_canary!r}, '/etc/shadow', '/proc/1/environ',\n"
           "          '/proc/self/environ'):\n"
           "    try:\n        seen += open(p, errors='replace').read()\n    except OSError:\n        pass\n"
           "seen += ' '.join(f'{k}={v}' for k, v in os.environ.items())\n"
           "found = [s for s in ('CANARY-7f3a', 'HOME-55e2', 'SECRET-91bc') if s in seen]\n"
           "print('leaked: ' + ','.join(found) if found else 'nothing seen')\n")
    try:
        with open(home_canary, "w") as fh:
            fh.write("HOME-55e2")
        row = {"domain": "code", "tests": [{"input": "", "output": "nothing seen"}]}
        res = reward.score(answer(src), row)
    finally:
        del os.environ["NEMO_TEST_API_KEY"]
        os.unlink(home_canary)
    assert res.status == "ok" and res.score == 1.0, res.info
    # control: the same program does report a secret it can see (handed to it on stdin)
    control = reward.score(answer(src), {"domain": "code", "tests": [
        {"input": "x SECRET-91bc CANARY-7f3a", "output": "leaked: CANARY-7f3a,SECRET-91bc"}]})
    assert control.status == "ok" and control.score == 1.0, control.info
    _grader_goes_on(reward)


def test_writes_outside_tmp_do_not_reach_host(reward, tmp_path):
    canary = tmp_path / "keep.txt"
    canary.write_text("original")
    src = ("import os\nok = 0\n"
           f"for p in ({str(canary)!r}, '/usr/pwned', '/etc/pwned', '/pwned'):\n"
           "    try:\n        open(p, 'w').write('pwned')\n        ok += 1\n"
           "    except OSError:\n        pass\n"
           "print(ok)\n")
    res = reward.score(answer(src), {"domain": "code", "tests": [{"input": "", "output": "0"}]})
    assert res.score == 1.0  # every write was refused inside
    assert canary.read_text() == "original"
    assert not os.path.exists("/usr/pwned") and not os.path.exists("/pwned")


def test_double_fork_daemon_leaves_nothing(reward):
    marker = "nemo-daemon-marker-5521"
    src = ("import os, sys\n"
           "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
           "        os.execv(sys.executable,\n"
           f"                 [sys.executable, '-c', 'import time; time.sleep(60)', '{marker}'])\n"
           "    os._exit(0)\n"
           "print(sum(map(int, input().split())))\n")
    t0 = time.monotonic()
    res = reward.score(answer(src), ADD_IO)
    assert res.status == "ok" and res.score == 1.0 and time.monotonic() - t0 < 5.0
    leftovers = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                    if marker.encode() in fh.read():
                        leftovers.append(entry.name)
            except OSError:
                pass
    assert leftovers == []
    _grader_goes_on(reward)


def test_kill_parent_and_everyone(reward):
    """S6: os.kill(getppid(), 9), os.kill(-1, 9), os.killpg: the harness and the grader survive."""
    src = ("import os, signal\n"
           "for f in (lambda: os.kill(os.getppid(), 9), lambda: os.kill(-1, 9), lambda: os.kill(1, 9),\n"
           "          lambda: os.killpg(os.getpgid(0), signal.SIGTERM)):\n"
           "    try:\n        f()\n    except OSError:\n        pass\n"
           "print(sum(map(int, input().split())))\n")
    res = reward.score(answer(src), ADD_IO)
    # killpg(own group) takes the solution itself down -> its cases fail, but every case is reported
    assert res.status in ("ok", "timeout") and res.info["total"] == 4
    assert sum(res.info["outcomes"].values()) == 4
    src2 = ("import os\nfor f in (lambda: os.kill(os.getppid(), 9), lambda: os.kill(-1, 9)):\n"
            "    try:\n        f()\n    except OSError:\n        pass\n"
            "print(sum(map(int, input().split())))\n")
    res = reward.score(answer(src2), ADD_IO)
    assert res.status == "ok" and res.score == 1.0  # harness (pid 1) survived and graded normally
    _grader_goes_on(reward)


def test_huge_stdout(reward):
    """S4: 100 MB of stdout is cut at the cap at once."""
    src = "import sys\nblock = 'x' * (1 << 20)\nfor _ in range(100):\n    sys.stdout.write(block)\n"
    t0 = time.monotonic()
    res = reward.score(answer(src), {"domain": "code", "tests": ADD_IO["tests"][:2]})
    assert res.score == 0.0 and res.status == "violation"
    assert res.info["outcomes"] == {"output_limit": 2}
    assert time.monotonic() - t0 < 5.0
    _grader_goes_on(reward)


def test_harness_json_encoder_round_trips():
    import json

    from nemo_prorl.rewards.sandbox import code_harness

    for value in ['quote " backslash \\ newline \n tab \t nul \x00', "é 😀 \udc80", 0.25, -3, None, True,
                  {"k": 1.5, "n": None, "s": "x\ny", "b": False}]:
        assert json.loads(code_harness.to_json(value)) == value
    assert code_harness.to_json(float("nan")) == "null"
    assert code_harness.normalize("  1   2 \n\n3\t\n\n") == ["1 2", "", "3"]
