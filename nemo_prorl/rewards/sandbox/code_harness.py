"""Test harness run INSIDE the sandbox by the ``code`` reward (standard library only, Python >= 3.10).

It is started as ``python -I -S harness.py`` and is pid 1 of the sandbox's pid namespace. It reads one
JSON job from stdin (then reopens stdin on /dev/null), runs every test case in a fresh child
interpreter, and writes one JSON line per event to stdout, each carrying the job's ``nonce``.

Why the solution cannot forge results:

* the harness makes itself non-dumpable (``prctl(PR_SET_DUMPABLE, 0)``), so processes of the same uid
  cannot open ``/proc/1/fd/*``, ``/proc/1/mem`` or ptrace it: the result pipe and the nonce stay private;
* as pid 1 of the namespace it cannot be killed from inside (the kernel drops SIGKILL sent to a
  namespace's init by its own members, and every catchable signal is ignored);
* test data (expected outputs) never touch the sandbox filesystem; children get only their own input;
* after every case it SIGKILLs every other process in the namespace (``kill(-1)``) and reaps them, so
  daemons from one case cannot outlive it;
* an assert case passes only if the child writes a fresh per-case token to a private pipe *after* the
  asserts ran and exits 0: ``sys.exit(0)``/``os._exit(0)`` inside the solution is a failure.

Job fields: ``nonce``, ``python``, ``python_flags``, ``solution``, ``entry_point``, ``cases`` (each
``{"input", "output"}`` or ``{"assert"}``), ``case_wall_s``, ``case_cpu_s``, ``total_wall_s``,
``total_cpu_s``, ``max_output_bytes``.

Events: ``start``; ``compile_error`` (``error``); ``case`` (``index``, ``passed``, ``outcome``,
``detail``, ``wall_s``); ``done`` (``cpu_s``, ``wall_s``, ``budget``: ``None``/``"wall"``/``"cpu"``).
Outcomes: pass, wrong_answer, runtime_error, no_completion, timeout, memory, process_limit,
file_size, output_limit, skipped, harness_error.
"""

import json
import os
import resource
import secrets
import selectors
import signal
import subprocess
import sys
import time

PR_SET_DUMPABLE = 4
SOLUTION_DIR = "/tmp/solution"

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
    import json
    spec = json.loads(bytes(data))
    token = spec["token"].encode()
    with open(spec["path"], encoding="utf-8") as fh:
        source = fh.read()
    env = {"__name__": "solution", "__builtins__": __builtins__}
    exec(compile(source, "solution.py", "exec"), env)
    entry = spec.get("entry_point")
    if entry:
        if entry not in env:
            raise NameError("entry point %r is not defined by the solution" % entry)
        env["candidate"] = env[entry]
    check_before = env.get("check")
    exec(compile(spec["test"], "test.py", "exec"), env)
    if entry and callable(env.get("check")) and env.get("check") is not check_before:
        env["check"](env[entry])
    sys.stdout.flush()
    os.write(spec["fd"], token)
    os._exit(0)
_harness_driver()
"""


def emit(nonce, event, **fields):
    """Write one JSON result line to stdout (a single write of a short line)."""
    fields["nonce"] = nonce
    fields["event"] = event
    data = (json.dumps(fields) + "\n").encode()
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
    return json.loads(bytes(data))


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


def run_child(argv, stdin_bytes, wall_s, cpu_s, cap, cwd, token_pipe=None):
    """Run one child with a wall limit, a CPU rlimit and capped output.

    Returns:
        dict with returncode, stdout, stderr, token (bytes read from the token pipe), timed_out,
        output_limit, spawn_error.

    """
    cpu = max(1, int(cpu_s + 0.999))

    def limit():
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))

    pass_fds = ()
    if token_pipe is not None:
        pass_fds = (token_pipe[1],)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=cwd, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                                start_new_session=True, preexec_fn=limit, pass_fds=pass_fds)
    except OSError as exc:
        return {"spawn_error": exc}
    finally:
        if token_pipe is not None:
            os.close(token_pipe[1])
    out = {"stdout": bytearray(), "stderr": bytearray(), "token": bytearray()}
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
    if token_pipe is not None:
        sel.register(token_pipe[0], selectors.EVENT_READ, "token")
    pending = memoryview(stdin_bytes)
    if pending:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin, selectors.EVENT_WRITE, "stdin")
    else:
        proc.stdin.close()
    timed_out = over = False
    deadline = time.monotonic() + wall_s
    readers = len(sel.get_map()) - (1 if pending else 0)
    exited_at = None
    while readers:
        now = time.monotonic()
        left = deadline - now
        if left <= 0:
            timed_out = True
            break
        if exited_at is None and proc.poll() is not None:
            exited_at = now
        if exited_at is not None and now - exited_at > 0.1:
            break  # the child is gone; whatever still holds its pipes is killed by the cleanup
        for key, _ in sel.select(timeout=min(left, 0.02 if exited_at is not None else 0.1)):
            if key.data == "stdin":
                try:
                    pending = pending[os.write(key.fd, pending[:65536]):]
                except OSError:
                    pending = pending[:0]
                if not pending:
                    sel.unregister(key.fileobj)
                    proc.stdin.close()
                continue
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                readers -= 1
                continue
            buf = out[key.data]
            if len(buf) + len(chunk) > cap:
                over = True
                break
            buf += chunk
        if over:
            break
    if timed_out or over:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.kill()
    try:
        rc = proc.wait(timeout=max(0.05, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        rc = proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    sel.close()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        try:
            stream.close()
        except OSError:
            pass
    if token_pipe is not None:
        os.close(token_pipe[0])
    return {"returncode": rc, "stdout": bytes(out["stdout"]), "stderr": bytes(out["stderr"]),
            "token": bytes(out["token"]), "timed_out": timed_out, "output_limit": over}


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
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
                signal.SIGALRM, signal.SIGQUIT):
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
        case_dir = f"/tmp/case_{index}"
        os.makedirs(case_dir, exist_ok=True)
        wall = min(job["case_wall_s"], wall_left)
        cpu = min(job["case_cpu_s"], cpu_left)
        t0 = time.monotonic()
        try:
            if "assert" in case:
                token = secrets.token_hex(16)
                pipe = os.pipe()
                spec = {"token": token, "fd": pipe[1], "path": path, "test": case["assert"],
                        "entry_point": job.get("entry_point")}
                res = run_child(python + ["-c", DRIVER], json.dumps(spec).encode(), wall, cpu, cap, case_dir,
                                token_pipe=pipe)
                ok = ("spawn_error" not in res and not res["timed_out"] and not res["output_limit"]
                      and res["returncode"] == 0 and res["token"] == token.encode())
                outcome, detail = ("pass", "") if ok else classify_failure(res)
                if not ok and not outcome:
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
        emit(nonce, "case", index=index, passed=outcome == "pass", outcome=outcome, detail=detail,
             wall_s=round(time.monotonic() - t0, 4))
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    emit(nonce, "done", cpu_s=round(used.ru_utime + used.ru_stime, 4),
         wall_s=round(time.monotonic() - start, 4), budget=budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
