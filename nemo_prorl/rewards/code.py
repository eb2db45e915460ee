"""The ``code`` reward: run the response's Python program against the row's tests in a sandbox.

Order of decisions for one response:

1. The answer region is the text after the last ``</think>`` (an unfinished ``<think>`` leaves no
   answer). Its LAST fenced block tagged ``python``/``py``/``python3`` or untagged is the program; none
   -> ``no_answer``.
2. The row's ``tests`` (see :func:`nemo_prorl.schema.parse_tests`) are all run in ONE sandbox launch by
   :mod:`nemo_prorl.rewards.sandbox.code_harness`: stdin/stdout cases compare whitespace-normalised
   output line by line (and need exit status 0). Assert cases are split first, here, by
   :func:`nemo_prorl.rewards.sandbox.checks.plan_case`: only the calls into the solution (with the test's
   inputs) go into the sandbox; their values come back as plain data and are judged here with
   type-strict equality against expected values that never entered the solution's interpreter
   (non-literal expected values are computed in a separate sandbox launch without the solution, and
   cached). An assert that cannot be split is a bad row (``error``, ``reason: unsupported_test``);
   preflight reports it before training.
3. Score = passed / total (ProRL's continuous code reward). Status:

   ====================  =========================================================================
   ``ok``                the tests ran; score is the fraction passed. A syntax error is ``ok`` with
                         score 0 and ``info["reason"] == "syntax_error"``.
   ``timeout``           the total wall/CPU budget ran out, the sandbox had to be killed from
                         outside, or no case passed and at least one timed out.
   ``violation``         the result channel was tampered with (bad nonce, forged or duplicate
                         records), or no case passed and a case hit a resource limit (memory,
                         process count, file size, output size).
   ``error``             bad tests in the row, or the sandbox itself failed (host problem).
   ``no_answer``         no fenced code block in the answer region.
   ====================  =========================================================================

Resource-limit hits in a sample that passes some cases are failures of those cases only (status
``ok``); ``info["outcomes"]`` counts every outcome so they stay visible in metrics.

Options (rewards config ``code:``): see :class:`CodeReward`.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import marshal
import math
import re
import secrets
from collections import Counter
from importlib import resources
from typing import Any

from nemo_prorl.rewards.base import Reward, RewardResult, register_reward
from nemo_prorl.rewards.sandbox import (
    DEFAULT_BASE_UID,
    Limits,
    ProbeReport,
    Sandbox,
    SandboxError,
    SandboxUnavailableError,
    make_sandbox,
)
from nemo_prorl.rewards.sandbox.checks import CasePlan, UnsupportedTest, decode, judge_case, plan_case
from nemo_prorl.rewards.text import fenced_blocks
from nemo_prorl.schema import Problem, parse_tests

_PY_TAGS = {"", "python", "py", "python3", "py3"}
_LIMIT_OUTCOMES = ("memory", "process_limit", "file_size", "output_limit")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
logger = logging.getLogger(__name__)
_CACHE_SIZE = 4096
MAX_VALUE_BYTES = 1 << 20
"""Cap of one assert case's encoded values (and its output); more fails the case (``output_limit``)."""
MAX_VALUES_TOTAL = 4 << 20
"""Cap of all assert cases' encoded values of one sample together (bounds the grader's memory)."""


def _bounded_put(cache: dict, key: Any, value: Any) -> None:
    """Insert into a FIFO-bounded dict (rows repeat n times per prompt; the cache keeps them cheap)."""
    if len(cache) >= _CACHE_SIZE:
        cache.pop(next(iter(cache)))
    cache[key] = value


def plan_assert_cases(row: dict) -> dict[int, CasePlan]:
    """Split every assert case of a code row (see :mod:`nemo_prorl.rewards.sandbox.checks`).

    Raises:
        ValueError: the tests do not parse, or ``UnsupportedTest`` naming the case that cannot be split.

    """
    cases = parse_tests(row.get("tests"))
    ep = row.get("entry_point")
    plans = {}
    for i, case in enumerate(cases):
        if "assert" in case:
            try:
                plans[i] = plan_case(case["assert"], ep if isinstance(ep, str) else None)
            except UnsupportedTest as exc:
                raise UnsupportedTest(f"case {i}: assert cannot be judged outside the solution: {exc}") \
                    from None
    return plans


def code_row_problems(row: dict) -> list[Problem]:
    """Preflight checks of a code row beyond the schema: the entry point and splittable asserts."""
    ep = row.get("entry_point")
    if ep is not None and (not isinstance(ep, str) or not _IDENT.match(ep)):
        return [Problem("entry_point", f"expected a Python identifier, got {ep!r}")]
    try:
        plan_assert_cases(row)
    except UnsupportedTest as exc:
        return [Problem("tests", str(exc))]
    except ValueError:
        return []  # unparsable tests are the schema's problem
    return []


def extract_code(response: str) -> str | None:
    """The program in ``response``: its last python/untagged fenced block after the last ``</think>``.

    Args:
        response: the model's full response text.

    Returns:
        The code (without the fences), or ``None`` when there is no such block.

    """
    if "</think>" in response:
        response = response.rsplit("</think>", 1)[1]
    elif "<think>" in response:
        return None  # the model never finished thinking
    code = None
    for tag, body in fenced_blocks(response):  # one pass over the lines (a fence regex is quadratic)
        if tag.lower() in _PY_TAGS:
            code = body
    return code


def _harness_source() -> str:
    return resources.files("nemo_prorl.rewards.sandbox").joinpath("code_harness.py").read_text("utf-8")


@register_reward("code")
class CodeReward(Reward):
    """Fraction of a row's test cases that the response's program passes, run in a sandbox.

    Args:
        backend: sandbox backend, ``"auto"`` | ``"bwrap"`` | ``"unsafe"``.
        allow_unsafe: explicit opt-in to running code without isolation (see docs/sandbox.md).
        python: interpreter used inside the sandbox (default: the system ``/usr/bin/python3``).
        case_timeout_s: wall-clock limit of one test case.
        case_cpu_s: CPU limit of one test case (default: ``case_timeout_s`` rounded up).
        total_timeout_s: wall-clock (and CPU) budget of all cases of one sample; the effective budget is
            ``min(total_timeout_s, n_cases * case_timeout_s + 1)``.
        memory_mb: address-space limit of every sandboxed process.
        nproc: process/thread limit of the sandbox's slot uid.
        fsize_mb: largest file the program may write (in the sandbox's private tmpfs).
        tmpfs_mb: size of the sandbox's private ``/tmp``.
        max_output_bytes: stdout/stderr kept per case; more fails the case (``output_limit``).
        max_tests: run only the first ``max_tests`` cases (``None``: all).
        base_uid: first per-slot uid when the grader runs as root.
        max_slots: number of concurrent sandboxes per host.
        cgroups: per-sample memory and pids cgroup (bwrap backend): ``"auto"`` (where the host allows it),
            ``"required"`` (refuse to start without) or ``"off"``.
        group_memory_mb: memory budget of one sample's whole sandbox in its cgroup (all processes, tmpfs
            and memfd pages); ``None``: ``memory_mb`` + the tmpfs sizes + 64 MiB.
        probe_on_init: probe the host in ``__init__`` and raise
            :class:`~nemo_prorl.rewards.sandbox.SandboxUnavailableError` there (fail before training);
            with ``False`` the probe runs on first use and a failure becomes status ``error``.

    """

    def __init__(self, backend: str = "auto", allow_unsafe: bool = False, python: str | None = None,
                 case_timeout_s: float = 2.0, case_cpu_s: float | None = None, total_timeout_s: float = 30.0,
                 memory_mb: int = 1024, nproc: int = 64, fsize_mb: int = 16, tmpfs_mb: int = 64,
                 max_output_bytes: int = 1 << 20, max_tests: int | None = None,
                 base_uid: int = DEFAULT_BASE_UID, max_slots: int = 64, probe_on_init: bool = True,
                 cgroups: str = "auto", group_memory_mb: int | None = None) -> None:
        for name, value in (("case_timeout_s", case_timeout_s), ("total_timeout_s", total_timeout_s)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"code reward: {name} must be a positive number, got {value!r}")
        if case_cpu_s is not None and not (isinstance(case_cpu_s, (int, float)) and case_cpu_s > 0):
            raise ValueError(f"code reward: case_cpu_s must be a positive number, got {case_cpu_s!r}")
        if max_tests is not None and (not isinstance(max_tests, int) or max_tests < 1):
            raise ValueError(f"code reward: max_tests must be a positive integer or null, got {max_tests!r}")
        self.case_timeout_s = float(case_timeout_s)
        self.case_cpu_s = float(case_cpu_s) if case_cpu_s is not None else float(math.ceil(case_timeout_s))
        self.total_timeout_s = float(total_timeout_s)
        self.max_tests = max_tests
        # validates the numbers once, at start-up
        self.base_limits = Limits(wall_s=self.total_timeout_s, cpu_s=int(math.ceil(self.total_timeout_s)) + 2,
                                  memory_bytes=int(memory_mb) << 20, nproc=int(nproc),
                                  fsize_bytes=int(fsize_mb) << 20, max_output_bytes=int(max_output_bytes),
                                  tmpfs_bytes=int(tmpfs_mb) << 20,
                                  group_memory_bytes=int(group_memory_mb or 0) << 20)
        self._sandbox_opts = dict(backend=backend, allow_unsafe=allow_unsafe, python=python,
                                  base_uid=base_uid, max_slots=max_slots, cgroups=cgroups)
        self._sandbox: Sandbox | None = None
        self._harness = _harness_source()
        self._plan_cache: dict[tuple, CasePlan | str] = {}
        self._remote_cache: dict[tuple, list] = {}
        self.probe_report: ProbeReport | None = None
        if probe_on_init:
            self._sandbox, self.probe_report = make_sandbox(**self._sandbox_opts)
            logger.info("code sandbox: %s; limits in force: %s", self.probe_report.backend,
                        self.probe_report.limits_summary())

    @property
    def sandbox(self) -> Sandbox:
        """The sandbox (probed on first use when ``probe_on_init`` was false)."""
        if self._sandbox is None:
            self._sandbox, self.probe_report = make_sandbox(**self._sandbox_opts)
        return self._sandbox

    def validate(self, row: dict) -> list[Problem]:
        """Domain checks beyond the schema: a usable ``entry_point``, asserts that can be split."""
        return code_row_problems(row)

    def _value_cap(self) -> int:
        return min(self.base_limits.max_output_bytes, MAX_VALUE_BYTES)

    def _limits(self, n_cases: int, n_calls_cases: int = 0) -> tuple[Limits, float]:
        total = min(self.total_timeout_s, n_cases * self.case_timeout_s + 1.0)
        b = self.base_limits
        # the harness's own output: short records, plus the calls cases' values in base64
        values = min(n_calls_cases * self._value_cap(), MAX_VALUES_TOTAL + n_calls_cases * 1024)
        harness_out = 1024 * n_cases + (64 << 10) + values * 4 // 3 + 1024 * n_calls_cases
        limits = Limits(wall_s=total + 3.0, cpu_s=int(math.ceil(total)) + 2, memory_bytes=b.memory_bytes,
                        nproc=b.nproc, fsize_bytes=b.fsize_bytes, nofile=b.nofile,
                        max_output_bytes=max(b.max_output_bytes, harness_out),
                        tmpfs_bytes=b.tmpfs_bytes, group_memory_bytes=b.group_memory_bytes)
        return limits, total

    def score(self, response: str, row: dict) -> RewardResult:
        """Run the response's program on ``row["tests"]``; see the module docstring. Never raises."""
        try:
            return self._score(response, row)
        except SandboxUnavailableError as exc:
            return RewardResult(0.0, "error", {"reason": "sandbox_unavailable", "error": str(exc)})
        except Exception as exc:  # the contract: failures become a status, never an exception
            return RewardResult(0.0, "error",
                                {"reason": "internal_error", "error": f"{type(exc).__name__}: {exc}"})

    def _score(self, response: str, row: dict) -> RewardResult:
        if not isinstance(response, str):
            return RewardResult(0.0, "error", {"reason": "bad_row", "error": "response: expected a string"})
        code = extract_code(response)
        if code is None or not code.strip():
            return RewardResult(0.0, "no_answer", {"reason": "no fenced python code block in the answer"})
        try:
            cases = parse_tests(row.get("tests"))
        except ValueError as exc:
            return RewardResult(0.0, "error", {"reason": "bad_row", "error": f"tests: {exc}"})
        ep = row.get("entry_point")
        if ep is not None and (not isinstance(ep, str) or not _IDENT.match(ep)):
            error = f"entry_point: expected a Python identifier, got {ep!r}"
            return RewardResult(0.0, "error", {"reason": "bad_row", "error": error})
        if self.max_tests is not None:
            cases = cases[: self.max_tests]
        plans: dict[int, CasePlan] = {}
        for i, case in enumerate(cases):
            if "assert" not in case:
                continue
            key = (case["assert"], ep)
            plan = self._plan_cache.get(key)
            if plan is None:
                try:
                    plan = plan_case(case["assert"], ep)
                except UnsupportedTest as exc:
                    plan = f"case {i}: assert cannot be judged outside the solution: {exc}"
                _bounded_put(self._plan_cache, key, plan)
            if isinstance(plan, str):
                return RewardResult(0.0, "error", {"reason": "unsupported_test", "error": plan})
            plans[i] = plan
        sandbox = self.sandbox
        remote = self._remote_values(sandbox, plans)
        if isinstance(remote, RewardResult):
            return remote
        limits, total = self._limits(len(cases), len(plans))
        nonce = secrets.token_hex(16)
        job = {
            "nonce": nonce, "python": sandbox.python, "python_flags": list(sandbox.python_flags),
            "solution": code, "with_solution": True, "entry_point": ep,
            "cases": [self._job_case(plans[i]) if i in plans
                      else {"input": c["input"], "output": c["output"]} for i, c in enumerate(cases)],
            "case_wall_s": self.case_timeout_s, "case_cpu_s": self.case_cpu_s, "total_wall_s": total,
            "total_cpu_s": total, "max_output_bytes": self.base_limits.max_output_bytes,
            "max_value_bytes": self._value_cap(), "max_values_total": MAX_VALUES_TOTAL,
        }
        try:
            res = sandbox.run({"harness.py": self._harness},
                              [sandbox.python, *sandbox.python_flags, "harness.py"],
                              stdin=marshal.dumps(job, 4), limits=limits)
        except SandboxError as exc:
            return RewardResult(0.0, "error", {"reason": "sandbox_error", "error": str(exc)})
        return self._judge(res, nonce, len(cases), plans, remote)

    @staticmethod
    def _job_case(plan: CasePlan) -> dict:
        return {"calls": list(plan.calls), "prelude": list(plan.prelude), "aliases": list(plan.aliases)}

    def _remote_values(self, sandbox: Sandbox, plans: dict[int, CasePlan]) -> dict[int, list] | RewardResult:
        """Expected values that are not literals, computed in a sandbox launch that holds no solution."""
        out: dict[int, list] = {}
        todo = {}
        for i, plan in plans.items():
            if not plan.remote:
                out[i] = []
            elif (plan.prelude, plan.remote) in self._remote_cache:
                out[i] = self._remote_cache[(plan.prelude, plan.remote)]
            else:
                todo[i] = plan
        if not todo:
            return out
        order = sorted(todo)
        limits, total = self._limits(len(order), len(order))
        nonce = secrets.token_hex(16)
        job = {
            "nonce": nonce, "python": sandbox.python, "python_flags": list(sandbox.python_flags),
            "solution": "", "with_solution": False, "entry_point": None,
            "cases": [{"calls": list(todo[i].remote), "prelude": list(todo[i].prelude), "aliases": []}
                      for i in order],
            "case_wall_s": self.case_timeout_s, "case_cpu_s": self.case_cpu_s, "total_wall_s": total,
            "total_cpu_s": total, "max_output_bytes": self.base_limits.max_output_bytes,
            "max_value_bytes": self._value_cap(), "max_values_total": MAX_VALUES_TOTAL,
        }
        try:
            res = sandbox.run({"harness.py": self._harness},
                              [sandbox.python, *sandbox.python_flags, "harness.py"],
                              stdin=marshal.dumps(job, 4), limits=limits)
        except SandboxError as exc:
            return RewardResult(0.0, "error", {"reason": "sandbox_error", "error": str(exc)})
        events = self._events(res, nonce, len(order), {"total": len(order), "backend": res.backend})
        if isinstance(events, RewardResult):
            events.info["reason"] = "expected values: " + str(events.info.get("reason"))
            return RewardResult(0.0, "error", events.info)
        for ev in events:
            if ev.get("event") != "case":
                continue
            i = order[ev["index"]]
            bad = f"case {i}: an expected value of the test could not be computed"
            if ev.get("outcome") != "returned":
                error = f"{bad} ({ev.get('outcome')}: {ev.get('detail')})"
                return RewardResult(0.0, "error", {"reason": "bad_test", "error": error})
            try:
                values = decode(base64.b64decode(str(ev.get("values", "")), validate=True))
            except (ValueError, binascii.Error) as exc:
                return RewardResult(0.0, "error", {"reason": "bad_test", "error": f"{bad} ({exc})"})
            if len(values) != len(todo[i].remote) or any(kind != "v" for kind, _ in values):
                return RewardResult(0.0, "error", {"reason": "bad_test", "error": f"{bad} ({values[:3]!r})"})
            out[i] = [v for _, v in values]
            _bounded_put(self._remote_cache, (todo[i].prelude, todo[i].remote), out[i])
        return out

    def _events(self, res: Any, nonce: str, n_cases: int, info: dict) -> list[dict] | RewardResult:
        """The harness's authenticated records, in order, or the verdict when they are unusable."""
        events: list[dict] = []
        for line in res.stdout.splitlines():
            try:
                ev = json.loads(line)
            except (ValueError, RecursionError):
                ev = None
            if not isinstance(ev, dict) or ev.get("nonce") != nonce:
                info["reason"] = "result channel tampered (unauthenticated record)"
                return RewardResult(0.0, "violation", info)
            events.append(ev)
        if res.stdout and not res.stdout.endswith(b"\n"):
            info["reason"] = "result channel tampered (partial record)"
            return RewardResult(0.0, "violation", info)
        kinds = [ev.get("event") for ev in events]
        if "done" not in kinds:
            oom = res.extra.get("cgroup_oom_kills", 0)
            if res.timed_out:
                info["reason"] = "sandbox killed at the total wall limit"
                return RewardResult(0.0, "timeout", info)
            if res.killed_by == "output_limit":
                info["reason"] = "harness output exceeded the cap"
                return RewardResult(0.0, "violation", info)
            if oom:
                info["reason"] = f"sandbox memory cgroup limit: {oom} process(es) killed"
                return RewardResult(0.0, "violation", info)
            info["reason"] = "sandbox ended without results"
            info["error"] = res.stderr[-500:].decode("utf-8", "replace")
            info["returncode"] = res.returncode
            return RewardResult(0.0, "error", info)
        if (kinds[0] != "start" or kinds.count("start") != 1 or kinds.count("done") != 1
                or kinds[-1] != "done"):
            info["reason"] = "result channel tampered (bad record sequence)"
            return RewardResult(0.0, "violation", info)
        compile_errors = [ev for ev in events if ev.get("event") == "compile_error"]
        if compile_errors:
            info.update(reason="syntax_error", error=str(compile_errors[0].get("error", ""))[:300], passed=0)
            return RewardResult(0.0, "ok", info)
        indices = [ev.get("index") for ev in events if ev.get("event") == "case"]
        if sorted(indices, key=lambda i: (not isinstance(i, int), i)) != list(range(n_cases)):
            info["reason"] = "result channel tampered (missing or duplicate case records)"
            return RewardResult(0.0, "violation", info)
        return events

    def _judge(self, res: Any, nonce: str, n_cases: int, plans: dict[int, CasePlan] | None = None,
               remote: dict[int, list] | None = None) -> RewardResult:
        info: dict[str, Any] = {"total": n_cases, "backend": res.backend, "wall_s": round(res.wall_s, 4)}
        if res.extra.get("cgroup_oom_kills"):
            info["cgroup_oom_kills"] = res.extra["cgroup_oom_kills"]
        events = self._events(res, nonce, n_cases, info)
        if isinstance(events, RewardResult):
            return events
        plans, remote = plans or {}, remote or {}
        case_events = sorted((ev for ev in events if ev.get("event") == "case"), key=lambda ev: ev["index"])
        for ev in case_events:
            index = ev["index"]
            if ev.get("outcome") == "returned":
                if index not in plans:
                    info["reason"] = "result channel tampered (values for a stdin/stdout case)"
                    return RewardResult(0.0, "violation", info)
                try:
                    values = decode(base64.b64decode(str(ev.get("values", "")), validate=True))
                except (ValueError, binascii.Error) as exc:
                    ok, detail = False, str(exc)
                else:
                    ok, detail = judge_case(plans[index], values, remote.get(index, []))
                ev.update(passed=ok, outcome="pass" if ok else "wrong_answer", detail=detail)
            elif ev.get("outcome") == "pass" and index in plans:
                info["reason"] = "result channel tampered (an assert case judged inside the sandbox)"
                return RewardResult(0.0, "violation", info)
        outcomes = Counter(str(ev.get("outcome")) for ev in case_events)
        passed = sum(1 for ev in case_events if ev.get("passed") is True and ev.get("outcome") == "pass")
        failures = [ev for ev in case_events if ev.get("outcome") != "pass"]
        info.update(passed=passed, outcomes=dict(outcomes))
        done = events[-1]
        info["cpu_s"] = done.get("cpu_s")
        if failures:
            first = failures[0]
            info["first_failure"] = {"index": first.get("index"), "outcome": first.get("outcome"),
                                     "detail": str(first.get("detail", ""))[:200]}
        if done.get("budget") is not None:
            info["reason"] = f"total {done['budget']} budget exhausted"
            return RewardResult(0.0, "timeout", info)
        if passed == 0 and outcomes.get("timeout"):
            info["reason"] = "no case passed; a case timed out"
            return RewardResult(0.0, "timeout", info)
        if passed == 0 and any(outcomes.get(o) for o in _LIMIT_OUTCOMES):
            info["reason"] = "no case passed; a case hit a sandbox resource limit"
            return RewardResult(0.0, "violation", info)
        return RewardResult(passed / n_cases, "ok", info)
