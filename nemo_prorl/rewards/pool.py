r"""``RewardPool``: score rows in killable worker processes with a hard per-sample deadline.

Each worker is a fresh interpreter (``python -m nemo_prorl.rewards.worker``, never a fork of a trainer
that holds CUDA state or torch) talking JSON lines over pipes. The parent hands one sample at a time
to each idle worker and watches the clock: a worker that overruns ``timeout_s`` is SIGKILLed and
replaced and its sample gets status ``timeout``; a worker that dies (crash, OOM kill, someone's
``kill -9``) is replaced and its sample re-run up to ``max_retries`` times, then gets status
``error``. Every row yields exactly one result, in input order.

Workers hold nothing of value (``docs/sandbox.md``, "Reasoning-gym scorers and reward workers"): they
get a scrubbed environment (``PATH``, ``PYTHONPATH``, a private ``HOME``/``TMPDIR`` and the variables
that ``worker_env``/``worker_env_passthrough`` name), and when the pool runs as root they switch to
``rewards.worker_user`` (default ``nobody``) once their imports are done; only the workers that score
``privileged_domains`` (the code reward, which runs each program in its own sandbox under a slot uid)
keep root. Each sample carries a fresh nonce; a message with a wrong nonce, an unexpected id or a
second result for a sample means the worker's channel was tampered with: the sample gets
``violation`` and the worker is replaced. A worker whose reward reports that a row changed the
grader's state (``restart``) is replaced before it scores another row.

Example::

    with RewardPool(RewardsConfig(num_workers=4, timeout_s=10)) as pool:
        results = pool.score([{"domain": "math", "response": "... \\boxed{4}", "answer": "4"}])
"""

from __future__ import annotations

import collections
import json
import logging
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import nemo_prorl
from nemo_prorl.rewards.base import RewardResult, registered_rewards
from nemo_prorl.rewards.config import RewardsConfig

_MAX_START_FAILURES = 5
_GREETING_KEYS = frozenset({"ready", "uid", "loaded", "note"})
log = logging.getLogger(__name__)


@dataclass
class _Worker:
    proc: subprocess.Popen
    kind: str = "user"
    buf: bytearray = field(default_factory=bytearray)
    ready: bool = False
    uid: int | None = None
    started: float = field(default_factory=time.monotonic)
    task: int | None = None
    nonce: str = ""
    last: int | None = None
    deadline: float = 0.0
    loaded: set[str] = field(default_factory=set)


class _ChannelTampered(Exception):
    """A worker sent something the protocol does not allow at this point."""


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

    #: module run as each worker (``python -m``)
    worker_module = "nemo_prorl.rewards.worker"

    def __init__(self, config: RewardsConfig | None = None) -> None:
        self.config = config or RewardsConfig()
        self.config.validate()
        self._workers: list[_Worker] = []
        self._sel = selectors.DefaultSelector()
        self._closed = False
        self._start_failures = 0
        #: (uid, gid) unprivileged workers switch to; None when the pool is not root
        self._ids = self.config.worker_ids()
        self._home = tempfile.mkdtemp(prefix="nemo-prorl-rewards-")
        if self._ids is not None:
            os.chown(self._home, *self._ids)
        #: domains seen so far; new workers build their rewards before dropping privileges
        self._domains: set[str] = set()
        self._registered = frozenset(registered_rewards())
        self._warned_root = False
        #: counts of replaced workers, for logging/metrics
        self.restarts = {"timeout": 0, "died": 0, "tainted": 0}
        #: rewards scored in this process (``in_process`` domains such as ``reward_model``), built lazily
        self._local: dict[str, Any] = {}

    # ---------------------------------------------------------------------------------------- workers

    def _kind(self, row: Any) -> str:
        """``"root"`` for rows scored by workers that keep root, else ``"user"``."""
        domain = row.get("domain") if isinstance(row, dict) else None
        if self._ids is not None and domain in self.config.privileged_domains:
            return "root"
        return "user"

    def worker_env(self) -> dict[str, str]:
        """The scrubbed environment of a worker process (nothing else of the parent's is passed)."""
        root = os.path.dirname(os.path.dirname(os.path.abspath(nemo_prorl.__file__)))
        parent_path = os.environ.get("PYTHONPATH")
        env = {
            "PATH": os.environ.get("PATH") or os.defpath,
            "PYTHONPATH": root + (os.pathsep + parent_path if parent_path else ""),
            "HOME": self._home, "TMPDIR": self._home, "MPLCONFIGDIR": self._home,
            "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        env.update({k: os.environ[k] for k in self.config.worker_env_passthrough if k in os.environ})
        env.update(self.config.worker_env)
        return env

    def _spawn(self, kind: str = "user") -> _Worker:
        proc = subprocess.Popen(
            [sys.executable, "-m", self.worker_module],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self.worker_env(), start_new_session=True,
            cwd=self._home,
        )
        assert proc.stdin is not None and proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        mine = sorted(d for d in self._domains if self._kind({"domain": d}) == kind)
        hello = {"config": self.config.to_dict(), "preload": mine,
                 "user": list(self._ids) if self._ids is not None and kind == "user" else None}
        proc.stdin.write((json.dumps(hello) + "\n").encode())
        proc.stdin.flush()
        w = _Worker(proc, kind)
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

    def _ensure_workers(self, pending: dict[str, collections.deque[int]]) -> None:
        """Up to ``num_workers`` workers of each kind that has pending samples."""
        for kind, queue in pending.items():
            if not queue:
                continue
            while sum(w.kind == kind for w in self._workers) < self.config.num_workers:
                self._spawn(kind)

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers (for tests and diagnostics)."""
        return [w.proc.pid for w in self._workers]

    @property
    def worker_uids(self) -> dict[int, int | None]:
        """Map of worker pid -> the uid it reported once ready (``None`` until then)."""
        return {w.proc.pid: w.uid for w in self._workers}

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
        payloads: list[bytes | None] = [None] * n
        pending: dict[str, collections.deque[int]] = {k: collections.deque() for k in ("user", "root")}
        local = self._score_in_process(rows, out)  # in-process domains (e.g. reward_model), batched here
        done = len(local)
        for i, row in enumerate(rows):
            if i in local:
                continue
            try:
                text = json.dumps(row, ensure_ascii=False, default=str)
                payloads[i] = text.encode("utf-8", "surrogatepass")
            except (ValueError, TypeError, RecursionError) as exc:
                out[i] = ScoredRow(RewardResult(0.0, "error", {
                    "reason": f"row cannot be encoded as JSON: {type(exc).__name__}: {exc}"[:300]}), [])
                done += 1
                continue
            pending[self._kind(row)].append(i)
            if isinstance(row, dict) and row.get("domain") in self._registered:
                self._domains.add(row["domain"])
        attempts = [0] * n
        cfg = self.config
        while done < n:
            self._ensure_workers(pending)
            now = time.monotonic()
            for w in list(self._workers):
                queue = pending[w.kind]
                if w.ready and w.task is None and queue:
                    i = queue.popleft()
                    domain = rows[i].get("domain") if isinstance(rows[i], dict) else None
                    extra = 0.0 if domain in w.loaded else cfg.load_timeout_s
                    w.task, w.deadline = i, now + cfg.timeout_for(domain) + extra
                    w.nonce = secrets.token_hex(8)
                    try:
                        w.proc.stdin.write(b'{"id": %d, "nonce": "%s", "row": ' % (i, w.nonce.encode())
                                           + payloads[i] + b"}\n")
                        w.proc.stdin.flush()
                    except (BrokenPipeError, OSError):
                        pass  # noticed as EOF below
            waits = [w.deadline for w in self._workers if w.task is not None]
            waits += [w.started + cfg.load_timeout_s for w in self._workers if not w.ready]
            timeout = max(0.0, min(waits) - time.monotonic()) if waits else 0.05
            for key, _ in self._sel.select(timeout=min(timeout, 1.0)):
                w = key.data
                if w not in self._workers:
                    continue
                try:
                    chunk = os.read(w.proc.stdout.fileno(), 1 << 16)
                except BlockingIOError:
                    continue
                if not chunk:
                    done += self._on_death(w, rows, out, pending[w.kind], attempts)
                    continue
                w.buf.extend(chunk)
                while w in self._workers and (nl := w.buf.find(b"\n")) >= 0:
                    line = bytes(w.buf[:nl])
                    del w.buf[:nl + 1]
                    try:
                        done += self._on_message(w, line, out)
                    except _ChannelTampered as exc:
                        done += self._on_tampered(w, out, str(exc))
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
        self._drain(out)
        return [r for r in out if r is not None]

    def _drain(self, out: list[ScoredRow | None]) -> None:
        """Read what idle workers already sent: anything there is out of protocol (e.g. a second result)."""
        for key, _ in self._sel.select(timeout=0):
            w = key.data
            if w not in self._workers or not w.ready or w.task is not None:
                continue
            try:
                w.buf.extend(os.read(w.proc.stdout.fileno(), 1 << 16))
            except BlockingIOError:
                continue
            if w.buf.strip():
                self._on_tampered(w, out, "a message after its sample's result")

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
        """Handle one protocol line; raises :class:`_ChannelTampered` on anything out of protocol."""
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise _ChannelTampered(f"undecodable message ({exc})") from None
        if not isinstance(msg, dict):
            raise _ChannelTampered("message is not an object")
        if not w.ready:
            if msg.get("ready") is not True or not isinstance(msg.get("uid"), int) \
                    or not isinstance(msg.get("loaded"), list) or set(msg) - _GREETING_KEYS:
                raise _ChannelTampered("bad greeting")
            w.ready, w.uid = True, msg["uid"]
            w.loaded.update(d for d in msg["loaded"] if isinstance(d, str))
            if msg.get("note") and not self._warned_root:
                self._warned_root = True
                log.warning("reward workers run as root: %s", msg["note"])
            self._start_failures = 0
            return 0
        if "bad_message" in msg and w.task is not None:
            i, w.task = w.task, None
            out[i] = ScoredRow(RewardResult(0.0, "error", {
                "reason": f"reward worker could not decode the row: {msg['bad_message']}"[:300]}), [])
            return 1
        if w.task is None or msg.get("id") != w.task or msg.get("nonce") != w.nonce:
            raise _ChannelTampered("a message for no sample in flight, or with the wrong nonce")
        if "loaded" in msg:
            if not isinstance(msg["loaded"], str) or len(msg) != 3:
                raise _ChannelTampered("bad 'loaded' message")
            w.loaded.add(msg["loaded"])
            w.deadline = time.monotonic() + self.config.timeout_for(msg["loaded"])
            return 0
        i = w.task
        try:
            result = RewardResult(float(msg["score"]), msg["status"], dict(msg.get("info") or {}))
            problems = [(str(f), str(why)) for f, why in msg.get("problems") or []]
        except (KeyError, TypeError, ValueError) as exc:
            raise _ChannelTampered(f"malformed result ({exc})") from None
        w.task, w.last, w.nonce = None, i, ""
        out[i] = ScoredRow(result, problems)
        if msg.get("restart"):
            self.restarts["tainted"] += 1
            self._kill(w)
        return 1

    def _on_tampered(self, w: _Worker, out: list[ScoredRow | None], why: str) -> int:
        """Replace a worker whose channel broke protocol; its sample in flight gets ``violation``.

        The sample it finished last gets ``violation`` too: a forged result may have been accepted for
        it just before the real one arrived.
        """
        self.restarts["tainted"] += 1
        reason = f"the reward worker's result channel broke protocol ({why}); worker replaced"
        n = 0
        for i in (w.task, w.last):
            if i is not None:
                n += out[i] is None
                out[i] = ScoredRow(RewardResult(0.0, "violation", {"reason": reason}), [])
        self._kill(w)
        return n

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
        shutil.rmtree(self._home, ignore_errors=True)

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


#: statuses that are faults of the grader (bad rows, broken scorers, dead workers), not of the policy
GRADER_FAULT_STATUSES: tuple[str, ...] = ("error",)


def is_grader_fault(result: RewardResult) -> bool:
    """Whether a result counts toward ``rewards.max_error_rate``.

    Only ``error`` does: a bad row, a scorer that fails on the row's own reference, a worker that dies
    on the sample again and again. ``timeout`` (the policy's slow program, or output that keeps a
    scorer busy past the deadline), ``violation`` and ``no_answer`` are the policy's doing: zero
    rewards with their status, so a policy cannot stop training by writing slow or hostile output.
    """
    return result.status in GRADER_FAULT_STATUSES


def error_rate(results: list[RewardResult]) -> float:
    """Fraction of results that are grader faults (:func:`is_grader_fault`); 0.0 for an empty list."""
    if not results:
        return 0.0
    return sum(map(is_grader_fault, results)) / len(results)
