"""Test harness run INSIDE the sandbox by the ``code`` reward (standard library only, Python >= 3.10).

It is started as ``python -I -S harness.py`` and is pid 1 of the sandbox's pid namespace. It reads one
JSON job from stdin (then reopens stdin on /dev/null), runs every test case in a fresh child
interpreter, and writes one JSON line per event to stdout, each carrying the job's ``nonce``.

Why the solution cannot forge results:

* the harness makes itself non-dumpable (``prctl(PR_SET_DUMPABLE, 0)``), so processes of the same uid
  cannot open ``/proc/1/fd/*``, ``/proc/1/mem`` or ptrace it: the result pipe and the nonce stay private;
* as pid 1 of the namespace it cannot be killed from inside (the kernel drops SIGKILL sent to a
  namespace's init by its own members, and every catchable signal is ignored);
* stdin/stdout expected outputs never touch the sandbox filesystem; children get only their own input;
* after every case it SIGKILLs every other process in the namespace (``kill(-1)``) and reaps them, so
  daemons from one case cannot outlive it;
* assert cases are not judged here at all: the grader split them (``nemo_prorl.rewards.sandbox.checks``)
  and sends only the *calls* (the solution's function applied to the test's inputs). A fresh child runs
  the solution, evaluates the calls and writes their values, encoded as tagged plain data, to a private
  pipe; the harness passes those bytes on (``values``, base64) and the grader decodes and compares them
  against expected values that never entered the sandbox. Exiting early (``sys.exit(0)``,
  ``os._exit(0)``) leaves no values: ``no_completion``.

Job fields: ``nonce``, ``python``, ``python_flags``, ``solution``, ``with_solution`` (false: evaluate the
calls without the solution, for expected values), ``entry_point``, ``cases`` (each ``{"input",
"output"}`` or ``{"calls", "prelude", "aliases"}``), ``case_wall_s``, ``case_cpu_s``, ``total_wall_s``,
``total_cpu_s``, ``max_output_bytes``, ``max_value_bytes`` (the cap of a calls case's values and
output), ``max_values_total`` (of all calls cases' values together).

Events: ``start``; ``compile_error`` (``error``); ``case`` (``index``, ``passed``, ``outcome``,
``detail``, ``wall_s``, and ``values`` for calls cases); ``done`` (``cpu_s``, ``wall_s``, ``budget``:
``None``/``"wall"``/``"cpu"``). Outcomes: pass, returned (calls cases: values for the grader to judge),
wrong_answer, runtime_error, no_completion, timeout, memory, process_limit, file_size, output_limit,
skipped, harness_error.
"""

import binascii
import marshal
import os
import resource
import select
import signal
import sys
import time

PR_SET_DUMPABLE = 4
WORK_DIR = os.getcwd()  # the sandbox's private tmpfs (the launcher sets the cwd)
SOLUTION_DIR = os.path.join(WORK_DIR, "solution")
MAX_FD = 1024
CHILD_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
IGNORED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM,
           signal.SIGQUIT, signal.SIGPIPE, signal.SIGXFSZ)

DRIVER = r"""
import os, sys
def _harness_driver():
    data = bytearray()
    while True:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        data += chunk
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    import marshal
    spec = marshal.loads(bytes(data))
    fd = spec["fd"]
    env = {"__name__": "solution", "__builtins__": __builtins__}
    if spec["path"]:
        with open(spec["path"], encoding="utf-8") as fh:
            source = fh.read()
        exec(compile(source, "solution.py", "exec"), env)
    entry = spec.get("entry_point")
    if entry:
        if entry not in env:
            raise NameError("entry point %r is not defined by the solution" % entry)
        for alias in spec["aliases"]:
            env[alias] = env[entry]
    for stmt in spec["prelude"]:
        exec(compile(stmt, "test.py", "exec"), env)
    calls = [compile(src, "test.py", "eval") for src in spec["calls"]]
    from binascii import b2a_base64

    def b64(data):
        return b2a_base64(data, newline=False).decode("ascii")
    def enc(v, depth):
        t = type(v)
        if depth > 100:
            raise ValueError("nested too deeply")
        if v is None:
            return '["n"]'
        if t is bool:
            return '["b",1]' if v else '["b",0]'
        if t is int:
            return '["i","%s"]' % int.__format__(v, "#x")
        if t is float:
            return '["f","%s"]' % float.hex(v)
        if t is str:
            return '["s","%s"]' % b64(str.encode(v, "utf-8", "surrogatepass"))
        if t is bytes:
            return '["y","%s"]' % b64(v)
        if t is list or t is tuple or t is set or t is frozenset:
            tag = "l" if t is list else "t" if t is tuple else "S"
            return '["%s"%s]' % (tag, "".join("," + enc(x, depth + 1) for x in v))
        if t is dict:
            return '["d"%s]' % "".join(
                "," + enc(k, depth + 1) + "," + enc(x, depth + 1) for k, x in v.items())
        raise TypeError("a %s, not plain data" % t.__name__)

    def name(text):
        return '["s","%s"]' % b64(str(text)[:120].encode("utf-8", "surrogatepass"))

    out = []
    for code in calls:
        try:
            value = eval(code, env)
        except BaseException as exc:
            out.append('["x",%s]' % name(type(exc).__name__))
            continue
        try:
            out.append('["v",%s]' % enc(value, 0))
        except BaseException as exc:
            out.append('["e",%s]' % name(exc if isinstance(exc, TypeError) else type(exc).__name__))
    view = memoryview(("[" + ",".join(out) + "]").encode())
    while view:
        view = view[os.write(fd, view):]
    os._exit(0)
_harness_driver()
"""


def to_json(value):
    """JSON text of str/int/float/bool/None/dict values (the json module costs ~30 ms to import)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return repr(value) if value == value and abs(value) != float("inf") else "null"
    if isinstance(value, bytes):
        return '"' + binascii.b2a_base64(value, newline=False).decode("ascii") + '"'
    if isinstance(value, dict):
        return "{" + ", ".join(to_json(str(k)) + ": " + to_json(v) for k, v in value.items()) + "}"
    out = ['"']
    for ch in str(value):
        code = ord(ch)
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif code < 0x20 or code > 0x7E:
            if code > 0xFFFF:
                code -= 0x10000
                out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
            else:
                out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def emit(nonce, event, **fields):
    """Write one JSON result line to stdout (a single write of a short line)."""
    fields["nonce"] = nonce
    fields["event"] = event
    data = (to_json(fields) + "\n").encode()
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]


def make_undumpable():
    """prctl(PR_SET_DUMPABLE, 0); True on success."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except Exception:
        return False


def read_stdin():
    """Read the job from fd 0 until EOF, then reopen fd 0 on /dev/null."""
    data = bytearray()
    while True:
        chunk = os.read(0, 1 << 16)
        if not chunk:
            break
        data += chunk
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return marshal.loads(bytes(data))


def normalize(text):
    """Whitespace-normalised lines: runs of blanks collapsed, surrounding blank lines dropped."""
    return [" ".join(line.split()) for line in text.strip().splitlines()]


def cleanup_namespace(pid1):
    """Kill and reap every other process (only as pid 1 of a private pid namespace)."""
    if not pid1:
        return
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            break
        except PermissionError:
            break
        reap()
        time.sleep(0.001)
    reap()


def reap():
    """Collect every exited child without blocking."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _spawn(argv, cwd, cpu, fds, keep_fd):
    """Fork and exec ``argv`` in a new session with a CPU rlimit; ``fds`` become the child's 0, 1, 2."""
    pid = os.fork()
    if pid == 0:  # child: only async-signal-safe-ish calls until exec
        try:
            os.setsid()
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            if keep_fd is not None:
                os.set_inheritable(keep_fd, True)
            os.closerange(3, keep_fd if keep_fd is not None else 3)
            if keep_fd is not None:
                os.closerange(keep_fd + 1, MAX_FD)
            else:
                os.closerange(3, MAX_FD)
            for sig in IGNORED:
                signal.signal(sig, signal.SIG_DFL)
            os.chdir(cwd)
            os.execve(argv[0], argv, CHILD_ENV)
        finally:
            os._exit(127)
    return pid


def run_child(argv, stdin_bytes, wall_s, cpu_s, cap, cwd, token_pipe=None):
    """Run one child with a wall limit, a CPU rlimit and capped output.

    Returns:
        dict with returncode, stdout, stderr, token (bytes read from the token pipe), timed_out,
        output_limit, spawn_error.

    """
    cpu = max(1, int(cpu_s + 0.999))
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    keep = token_pipe[1] if token_pipe is not None else None
    try:
        pid = _spawn(argv, cwd, cpu, (in_r, out_w, err_w), keep)
    except OSError as exc:
        for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
            os.close(fd)
        if token_pipe is not None:
            os.close(token_pipe[0])
            os.close(token_pipe[1])
        return {"spawn_error": exc}
    for fd in (in_r, out_w, err_w):
        os.close(fd)
    if token_pipe is not None:
        os.close(token_pipe[1])
    names = {out_r: "stdout", err_r: "stderr"}
    if token_pipe is not None:
        names[token_pipe[0]] = "token"
    out = {"stdout": bytearray(), "stderr": bytearray(), "token": bytearray()}
    poller = select.poll()
    for fd in names:
        poller.register(fd, select.POLLIN)
    pending = memoryview(stdin_bytes)
    if pending:
        os.set_blocking(in_w, False)
        poller.register(in_w, select.POLLOUT)
    else:
        os.close(in_w)
        in_w = None
    timed_out = over = False
    status = None
    deadline = time.monotonic() + wall_s
    readers = len(names)
    exited_at = None
    while readers:
        now = time.monotonic()
        left = deadline - now
        if left <= 0:
            timed_out = True
            break
        if status is None:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status, exited_at = st, now
        if exited_at is not None and now - exited_at > 0.1:
            break  # the child is gone; whatever still holds its pipes is killed by the cleanup
        wait_ms = int(1000 * min(left, 0.02 if exited_at is not None else 0.1)) + 1
        for fd, _ev in poller.poll(wait_ms):
            if fd == in_w:
                try:
                    pending = pending[os.write(fd, pending[:65536]):]
                except OSError:
                    pending = pending[:0]
                if not pending:
                    poller.unregister(fd)
                    os.close(fd)
                    in_w = None
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                poller.unregister(fd)
                readers -= 1
                continue
            buf = out[names[fd]]
            if len(buf) + len(chunk) > cap:
                over = True
                break
            buf += chunk
        if over:
            break
    if status is None:
        if timed_out or over:
            kill_group(pid)
        left = max(0.05, deadline - time.monotonic())
        end = time.monotonic() + left
        while status is None:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
            elif time.monotonic() > end:
                timed_out = True
                kill_group(pid)
                _, status = os.waitpid(pid, 0)
            else:
                time.sleep(0.002)
    kill_group(pid)
    for fd in [*names, in_w]:
        if fd is not None:
            os.close(fd)
    rc = os.waitstatus_to_exitcode(status)
    return {"returncode": rc, "stdout": bytes(out["stdout"]), "stderr": bytes(out["stderr"]),
            "token": bytes(out["token"]), "timed_out": timed_out, "output_limit": over}


def kill_group(pid):
    """SIGKILL the child's session/process group (its pgid is its pid after setsid)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def classify_failure(res):
    """Outcome name for a child that did not pass, and a short detail."""
    if "spawn_error" in res:
        exc = res["spawn_error"]
        return ("process_limit" if getattr(exc, "errno", None) == 11 else "harness_error"), str(exc)[:200]
    if res["output_limit"]:
        return "output_limit", "output exceeded the cap"
    if res["timed_out"]:
        return "timeout", "wall-clock limit"
    rc = res["returncode"]
    if rc is not None and rc < 0:
        sig = -rc
        if sig == signal.SIGXCPU:
            return "timeout", "CPU limit (SIGXCPU)"
        if sig == signal.SIGXFSZ:
            return "file_size", "file size limit (SIGXFSZ)"
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        return "runtime_error", "killed by " + name
    tail = res["stderr"][-400:].decode("utf-8", "replace").strip()
    last = tail.splitlines()[-1] if tail else ""
    if last.startswith("AssertionError"):
        return "wrong_answer", last[:200]
    if "MemoryError" in last:
        return "memory", last[:200]
    if "BlockingIOError" in last or "Resource temporarily unavailable" in last:
        return "process_limit", last[:200]
    if rc != 0:
        return "runtime_error", (last or f"exit status {rc}")[:200]
    return "", ""


def main():
    """Run the job read from stdin; results go to stdout."""
    start = time.monotonic()
    for sig in IGNORED:
        signal.signal(sig, signal.SIG_IGN)
    undumpable = make_undumpable()
    job = read_stdin()
    nonce = job["nonce"]
    pid1 = os.getpid() == 1
    emit(nonce, "start", pid1=pid1, undumpable=undumpable)
    solution = job["solution"]
    try:
        compile(solution, "solution.py", "exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        emit(nonce, "compile_error", error=f"{type(exc).__name__}: {exc}"[:300])
        emit(nonce, "done", cpu_s=0.0, wall_s=time.monotonic() - start, budget=None)
        return 0
    os.makedirs(SOLUTION_DIR, exist_ok=True)
    path = os.path.join(SOLUTION_DIR, "solution.py")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(solution)
    python = [job["python"], *job["python_flags"]]
    cap = int(job["max_output_bytes"])
    values_left = int(job["max_values_total"])  # all calls cases' values together (the grader's memory)
    budget = None
    for index, case in enumerate(job["cases"]):
        used_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_used = used_cpu.ru_utime + used_cpu.ru_stime
        wall_left = job["total_wall_s"] - (time.monotonic() - start)
        cpu_left = job["total_cpu_s"] - cpu_used
        if budget is None and wall_left <= 0.05:
            budget = "wall"
        if budget is None and cpu_left <= 0.05:
            budget = "cpu"
        if budget is not None:
            emit(nonce, "case", index=index, passed=False, outcome="skipped",
                 detail=f"total {budget} budget exhausted", wall_s=0.0)
            continue
        case_dir = os.path.join(WORK_DIR, f"case_{index}")
        os.makedirs(case_dir, exist_ok=True)
        wall = min(job["case_wall_s"], wall_left)
        cpu = min(job["case_cpu_s"], cpu_left)
        t0 = time.monotonic()
        values = None
        try:
            if "calls" in case:
                pipe = os.pipe()
                spec = {"fd": pipe[1], "path": path if job["with_solution"] else "",
                        "entry_point": job.get("entry_point"), "aliases": case["aliases"],
                        "prelude": case["prelude"], "calls": case["calls"]}
                res = run_child(python + ["-c", DRIVER], marshal.dumps(spec, 4), wall, cpu,
                                max(1024, min(int(job["max_value_bytes"]), values_left)), case_dir,
                                token_pipe=pipe)
                ok = ("spawn_error" not in res and not res["timed_out"] and not res["output_limit"]
                      and res["returncode"] == 0 and res["token"])
                outcome, detail = ("returned", "") if ok else classify_failure(res)
                if ok:
                    values = res["token"]
                    values_left -= len(values)
                elif not outcome:
                    outcome, detail = "no_completion", "the test did not run to completion"
            else:
                res = run_child(python + [path], case["input"].encode("utf-8", "surrogatepass"), wall, cpu,
                                cap, case_dir)
                outcome, detail = classify_failure(res)
                if not outcome:
                    got = normalize(res["stdout"].decode("utf-8", "replace"))
                    ok = got == normalize(case["output"])
                    outcome, detail = ("pass", "") if ok else ("wrong_answer", "output differs")
        except Exception as exc:  # a harness bug must not lose the remaining cases
            outcome, detail = "harness_error", f"{type(exc).__name__}: {exc}"[:200]
        cleanup_namespace(pid1)
        fields = {"values": values} if values is not None else {}
        emit(nonce, "case", index=index, passed=outcome == "pass", outcome=outcome, detail=detail,
             wall_s=round(time.monotonic() - t0, 4), **fields)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    emit(nonce, "done", cpu_s=round(used.ru_utime + used.ru_stime, 4),
         wall_s=round(time.monotonic() - start, 4), budget=budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
