r"""``RewardPool``: score rows in killable worker processes with a hard per-sample deadline.

Each worker is a fresh interpreter (``python -m nemo_prorl.rewards.worker``, never a fork of a trainer
that holds CUDA state or torch) talking JSON lines over pipes. The parent hands one sample at a time
to each idle worker and watches the clock: a worker that overruns ``timeout_s`` is SIGKILLed and
replaced and its sample gets status ``timeout``; a worker that dies (crash, OOM kill, someone's
``kill -9``) is replaced and its sample re-run up to ``max_retries`` times, then gets status
``error``. Every row yields exactly one result, in input order.

Example::

    with RewardPool(RewardsConfig(num_workers=4, timeout_s=10)) as pool:
        results = pool.score([{"domain": "math", "response": "... \\boxed{4}", "answer": "4"}])
"""

from __future__ import annotations

import collections
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import nemo_prorl
from nemo_prorl.rewards.base import RewardResult
from nemo_prorl.rewards.config import RewardsConfig

_MAX_START_FAILURES = 5


@dataclass
class _Worker:
    proc: subprocess.Popen
    buf: bytearray = field(default_factory=bytearray)
    ready: bool = False
    started: float = field(default_factory=time.monotonic)
    task: int | None = None
    deadline: float = 0.0
    loaded: set[str] = field(default_factory=set)


@dataclass
class ScoredRow:
    """A result plus the row's validation problems (``(field, reason)`` pairs; empty when valid)."""

    result: RewardResult
    problems: list[tuple[str, str]]


class RewardPool:
    """A pool of reward worker processes.

    Args:
        config: pool and per-domain options; validated here.

    """

    def __init__(self, config: RewardsConfig | None = None) -> None:
        self.config = config or RewardsConfig()
        self.config.validate()
        self._workers: list[_Worker] = []
        self._sel = selectors.DefaultSelector()
        self._closed = False
        self._start_failures = 0
        #: counts of replaced workers, for logging/metrics
        self.restarts = {"timeout": 0, "died": 0}
        #: rewards scored in this process (``in_process`` domains such as ``reward_model``), built lazily
        self._local: dict[str, Any] = {}

    # ---------------------------------------------------------------------------------------- workers

    def _spawn(self) -> _Worker:
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(nemo_prorl.__file__)))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OMP_NUM_THREADS", "1")
        env["PYTHONUNBUFFERED"] = "1"
        proc = subprocess.Popen(
            [sys.executable, "-m", "nemo_prorl.rewards.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        proc.stdin.write((json.dumps(self.config.to_dict()) + "\n").encode())
        proc.stdin.flush()
        w = _Worker(proc)
        self._sel.register(proc.stdout, selectors.EVENT_READ, w)
        self._workers.append(w)
        return w

    def _kill(self, w: _Worker) -> None:
        try:
            self._sel.unregister(w.proc.stdout)
        except (KeyError, ValueError):
            pass
        try:
            os.killpg(w.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            w.proc.kill()
        except ProcessLookupError:
            pass
        w.proc.wait()
        for stream in (w.proc.stdin, w.proc.stdout):
            try:
                stream.close()
            except (OSError, BrokenPipeError):
                pass
        self._workers.remove(w)

    def _ensure_workers(self) -> None:
        while len(self._workers) < self.config.num_workers:
            self._spawn()

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers (for tests and diagnostics)."""
        return [w.proc.pid for w in self._workers]

    # ------------------------------------------------------------------------------------------ score

    def score(self, rows: list[dict]) -> list[RewardResult]:
        """Score rows; returns one :class:`RewardResult` per row, in order."""
        return [s.result for s in self.score_detailed(rows)]

    def score_detailed(self, rows: list[Any]) -> list[ScoredRow]:
        """Like :meth:`score` but also returns each row's validation problems.

        Rows of an *in-process* domain (a reward class with ``in_process = True``, e.g. ``reward_model``)
        are scored here, in this process, as one batch per domain (``score_batch``); the other rows go
        to the workers. Results keep the input order either way.
        """
        if self._closed:
            raise RuntimeError("RewardPool is closed")
        n = len(rows)
        out: list[ScoredRow | None] = [None] * n
        local = self._score_in_process(rows, out)
        payloads = [b"" if i in local else json.dumps({"id": i, "row": row}, ensure_ascii=False,
                    default=str).encode("utf-8", "surrogatepass") + b"\n" for i, row in enumerate(rows)]
        pending: collections.deque[int] = collections.deque(i for i in range(n) if i not in local)
        attempts = [0] * n
        done = len(local)
        cfg = self.config
        while done < n:
            self._ensure_workers()
            now = time.monotonic()
            for w in list(self._workers):
                if w.ready and w.task is None and pending:
                    i = pending.popleft()
                    domain = rows[i].get("domain") if isinstance(rows[i], dict) else None
                    extra = 0.0 if domain in w.loaded else cfg.load_timeout_s
                    w.task, w.deadline = i, now + cfg.timeout_for(domain) + extra
                    try:
                        w.proc.stdin.write(payloads[i])
                        w.proc.stdin.flush()
                    except (BrokenPipeError, OSError):
                        pass  # noticed as EOF below
            waits = [w.deadline for w in self._workers if w.task is not None]
            waits += [w.started + cfg.load_timeout_s for w in self._workers if not w.ready]
            timeout = max(0.0, min(waits) - time.monotonic()) if waits else 0.05
            for key, _ in self._sel.select(timeout=min(timeout, 1.0)):
                w = key.data
                try:
                    chunk = os.read(w.proc.stdout.fileno(), 1 << 16)
                except BlockingIOError:
                    continue
                if not chunk:
                    done += self._on_death(w, rows, out, pending, attempts)
                    continue
                w.buf.extend(chunk)
                while (nl := w.buf.find(b"\n")) >= 0:
                    line = bytes(w.buf[:nl])
                    del w.buf[:nl + 1]
                    done += self._on_message(w, line, out)
            now = time.monotonic()
            for w in list(self._workers):
                if w.task is not None and now > w.deadline:
                    i = w.task
                    limit = cfg.timeout_for(rows[i].get("domain") if isinstance(rows[i], dict) else None)
                    out[i] = ScoredRow(RewardResult(0.0, "timeout", {
                        "reason": f"scoring exceeded the {limit:g} s deadline; worker killed"}), [])
                    done += 1
                    self.restarts["timeout"] += 1
                    self._kill(w)
                elif not w.ready and now > w.started + cfg.load_timeout_s:
                    self._kill(w)
                    self._note_start_failure("did not start within load_timeout_s")
        return [r for r in out if r is not None]

    def _score_in_process(self, rows: list[Any], out: list[ScoredRow | None]) -> set[int]:
        """Score the rows of in-process domains into ``out``; returns their indices."""
        from nemo_prorl.rewards.base import registered_rewards
        from nemo_prorl.schema import check_scoring_row

        classes = registered_rewards()
        groups: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            domain = row.get("domain") if isinstance(row, dict) else None
            if isinstance(domain, str) and getattr(classes.get(domain), "in_process", False):
                groups.setdefault(domain, []).append(i)
        for domain, idx in groups.items():
            try:
                reward = self._local.get(domain) or classes[domain](**self.config.reward_kwargs(domain))
                self._local[domain] = reward
            except Exception as exc:
                reason = f"could not build reward {domain!r}: {type(exc).__name__}: {exc}"[:500]
                for i in idx:
                    out[i] = ScoredRow(RewardResult(0.0, "error", {"reason": reason}), [])
                continue
            todo = []
            for i in idx:
                problems = check_scoring_row(rows[i]) or reward.validate(rows[i])
                if problems:
                    out[i] = ScoredRow(RewardResult(0.0, "error", {"reason": "; ".join(map(str, problems))}),
                                       [(p.field, p.reason) for p in problems])
                else:
                    todo.append(i)
            try:
                batch = [rows[i] for i in todo]
                results = list(reward.score_batch([r["response"] for r in batch], batch))
                if len(results) != len(todo):
                    raise ValueError(f"score_batch returned {len(results)} results for {len(todo)} rows")
            except Exception as exc:  # an in-process reward must not take the caller down
                reason = f"{domain} score_batch: {type(exc).__name__}: {exc}"[:500]
                results = [RewardResult(0.0, "error", {"reason": reason}) for _ in todo]
            for i, result in zip(todo, results):
                out[i] = ScoredRow(result, [])
        return {i for idx in groups.values() for i in idx}

    def _note_start_failure(self, why: str) -> None:
        self._start_failures += 1
        if self._start_failures >= _MAX_START_FAILURES:
            raise RuntimeError(f"reward workers keep failing to start ({why}); last {self._start_failures} "
                               "attempts failed -- run `python -m nemo_prorl.rewards.worker` to see why")

    def _on_message(self, w: _Worker, line: bytes, out: list[ScoredRow | None]) -> int:
        msg = json.loads(line)
        if msg.get("ready"):
            w.ready = True
            self._start_failures = 0
            return 0
        if "loaded" in msg:
            w.loaded.add(msg["loaded"])
            w.deadline = time.monotonic() + self.config.timeout_for(msg["loaded"])
            return 0
        i = msg["id"]
        if w.task != i or out[i] is not None:
            return 0
        w.task = None
        result = RewardResult(float(msg["score"]), msg["status"], msg.get("info") or {})
        out[i] = ScoredRow(result, [tuple(p) for p in msg.get("problems") or []])
        return 1

    def _on_death(self, w: _Worker, rows: list[Any], out: list[ScoredRow | None],
                  pending: collections.deque[int], attempts: list[int]) -> int:
        i = w.task
        was_ready = w.ready
        self._kill(w)
        rc = w.proc.returncode
        if not was_ready:
            self._note_start_failure(f"worker exited with code {rc} before it was ready")
        if i is None:
            return 0
        self.restarts["died"] += 1
        attempts[i] += 1
        if attempts[i] <= self.config.max_retries:
            pending.appendleft(i)
            return 0
        out[i] = ScoredRow(RewardResult(0.0, "error", {
            "reason": f"reward worker died (exit code {rc}) on this sample {attempts[i]} time(s)"}), [])
        return 1

    # -------------------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Stop every worker (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for w in list(self._workers):
            try:
                w.proc.stdin.close()
            except OSError:
                pass
        deadline = time.monotonic() + 2.0
        for w in list(self._workers):
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            self._kill(w)
        self._sel.close()

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def error_rate(results: list[RewardResult]) -> float:
    """Fraction of results whose status is ``error`` or ``timeout`` (0.0 for an empty list)."""
    if not results:
        return 0.0
    return sum(r.status in ("error", "timeout") for r in results) / len(results)
