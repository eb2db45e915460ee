"""A reward worker process: ``python -m nemo_prorl.rewards.worker``.

Protocol (one JSON object per line; the parent is :class:`~nemo_prorl.rewards.pool.RewardPool`):

* parent -> worker, first line: ``{"config": RewardsConfig as a dict, "preload": [domain, ...],
  "user": [uid, gid] or null}``.
* the worker builds (and warms up) the rewards of ``preload`` and, when ``user`` is given, drops to
  that uid/gid for good (no supplementary groups, umask 077), provided that user can read the
  interpreter, the standard library and ``sys.path`` (:func:`unreadable_as`); otherwise it stays
  root and says why.
* worker -> parent: ``{"ready": true, "uid": int, "loaded": [domain, ...]}`` (plus ``"note"``: why it
  stayed root) once that is done.
* parent -> worker: ``{"id": int, "nonce": str, "row": {...}}`` (the row holds ``domain``,
  ``response`` and its ground truth; the nonce is fresh per sample).
* worker -> parent: ``{"id": int, "nonce": str, "loaded": domain}`` the first time a domain's reward
  is built (the parent then restarts the sample's deadline), then
  ``{"id": int, "nonce": str, "score": float, "status": str, "info": {...}, "problems": [[field,
  reason], ...]}``, plus ``"restart": true`` when the reward reports that the row changed the
  grader's state (``reward.tainted``); the worker then exits and the parent starts a fresh one.
* a line the worker cannot decode is answered ``{"bad_message": reason}``.

The protocol uses a private duplicate of the original stdout, written with ``os.write``; ``sys.stdout``
and file descriptor 1 are pointed at stderr so that a print inside a reward cannot corrupt it. The
worker never imports torch and never evaluates model text (``docs/sandbox.md``).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from nemo_prorl.rewards.base import Reward, RewardResult
from nemo_prorl.schema import check_scoring_row


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return json.loads(json.dumps(value, default=str))


class RewardRunner:
    """Builds rewards lazily from a config and scores validated rows (used in the worker process)."""

    def __init__(self, config: dict[str, Any]) -> None:
        from nemo_prorl.rewards.config import RewardsConfig

        self.config = RewardsConfig(**config)
        self.rewards: dict[str, Reward] = {}

    def get(self, domain: str) -> tuple[Reward, bool]:
        """The reward instance of ``domain`` and whether it was just built."""
        if domain in self.rewards:
            return self.rewards[domain], False
        from nemo_prorl.rewards import get_reward_class

        reward = get_reward_class(domain)(**self.config.reward_kwargs(domain))
        warm = getattr(reward, "warmup", None)
        if callable(warm):
            warm()
        self.rewards[domain] = reward
        return reward, True

    def score_row(self, row: Any, on_loaded=None) -> tuple[RewardResult, list[tuple[str, str]]]:
        """Validate then score one row; never raises.

        Returns:
            The result and the validation problems (``(field, reason)`` pairs; empty when valid).

        """
        problems = check_scoring_row(row)
        if problems:
            reason = "; ".join(str(p) for p in problems)
            return RewardResult(0.0, "error", {"reason": reason}), [(p.field, p.reason) for p in problems]
        try:
            reward, fresh = self.get(row["domain"])
        except Exception as exc:
            reason = f"could not build reward {row['domain']!r}: {type(exc).__name__}: {exc}"
            return RewardResult(0.0, "error", {"reason": reason}), []
        if fresh and on_loaded is not None:
            on_loaded(row["domain"])
        try:
            domain_problems = reward.validate(row)
        except Exception as exc:
            domain_problems = []
            return RewardResult(0.0, "error", {"reason": f"validate raised {type(exc).__name__}: {exc}"}), []
        if domain_problems:
            reason = "; ".join(str(p) for p in domain_problems)
            return (RewardResult(0.0, "error", {"reason": reason}),
                    [(p.field, p.reason) for p in domain_problems])
        try:
            result = reward.score(row["response"], row)
        except Exception as exc:  # rewards must not raise; be safe anyway
            result = RewardResult(0.0, "error", {"reason": f"{type(exc).__name__}: {exc}"[:500]})
        if not isinstance(result, RewardResult):
            result = RewardResult(0.0, "error", {"reason": f"reward returned {type(result).__name__}"})
        score = float(result.score)
        if not 0.0 <= score <= 1.0 or score != score:
            result = RewardResult(0.0, "error", {"reason": f"reward returned score {score!r} outside [0, 1]"})
        return result, []


def drop_privileges(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` for good: no supplementary groups, real/effective/saved ids all changed.

    The kernel also clears the process's "dumpable" flag on the change, so other processes of the
    same uid cannot ptrace it or open its ``/proc/<pid>/fd`` (the result pipe).

    Raises:
        PermissionError: when the switch did not take (root could be regained).

    """
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    os.umask(0o077)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise PermissionError(f"could not switch to uid {uid} / gid {gid}")
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise PermissionError("root could be regained after dropping privileges")


def unreadable_as(uid: int, gid: int, paths: list[str]) -> str | None:
    """The first of ``paths`` that ``uid``/``gid`` cannot read and search (checked in a forked child).

    A worker that dropped privileges while its interpreter or packages are unreadable to that user
    (an interpreter under ``/root``: pyenv, conda) would fail on its next lazy import (even a codec
    lookup), so the worker checks first and stays root when this returns a path.
    """
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            bad = [i for i, path in enumerate(paths) if not os.access(path, os.R_OK | os.X_OK)]
            code = 10 + min(bad[0], 200) if bad else 0
        finally:
            os._exit(code)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code == 0:
        return None
    return paths[code - 10] if code >= 10 else f"(could not switch to uid {uid})"


def import_paths() -> list[str]:
    """Directories a worker imports from: the interpreter's, the standard library's and ``sys.path``'s."""
    import encodings

    import nemo_prorl

    dirs = [os.path.dirname(os.path.realpath(sys.executable)), os.path.dirname(os.__file__),
            os.path.dirname(encodings.__file__), os.path.dirname(os.path.dirname(nemo_prorl.__file__))]
    dirs += [p for p in sys.path if p and os.path.isdir(p)]
    return list(dict.fromkeys(os.path.realpath(d) for d in dirs))


def _send(fd: int, obj: dict[str, Any]) -> None:
    data = (json.dumps(obj) + "\n").encode("utf-8", "surrogatepass")
    while data:
        data = data[os.write(fd, data):]


def main() -> int:
    """Run the worker loop on stdin/stdout until stdin closes."""
    fd = os.dup(1)
    os.set_inheritable(fd, False)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    first = sys.stdin.readline()
    if not first:
        return 0
    hello = json.loads(first)
    runner = RewardRunner(hello["config"])
    for domain in hello.get("preload") or []:
        try:
            runner.get(domain)
        except Exception as exc:  # reported again when a row of that domain is scored
            print(f"reward worker: could not preload {domain!r}: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
    greeting: dict[str, Any] = {"ready": True, "uid": os.geteuid(), "loaded": sorted(runner.rewards)}
    if hello.get("user"):
        uid, gid = (int(v) for v in hello["user"])
        blocked = unreadable_as(uid, gid, import_paths())
        if blocked is None:
            drop_privileges(uid, gid)
            greeting["uid"] = os.geteuid()
        else:
            greeting["note"] = (f"stayed root: uid {uid} cannot read {blocked}; install Python and the "
                                "packages where that user can read them, or set rewards.worker_user")
    _send(fd, greeting)
    for line in sys.stdin:
        try:
            msg = json.loads(line)
            task_id, nonce, row = msg["id"], msg["nonce"], msg["row"]
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            _send(fd, {"bad_message": f"{type(exc).__name__}: {exc}"[:300]})
            continue

        def loaded(domain: str, task_id: int = task_id, nonce: str = nonce) -> None:
            _send(fd, {"id": task_id, "nonce": nonce, "loaded": domain})

        result, problems = runner.score_row(row, on_loaded=loaded)
        out = {"id": task_id, "nonce": nonce, "score": result.score, "status": result.status,
               "info": _jsonable(result.info), "problems": problems}
        tainted = any(getattr(r, "tainted", False) for r in runner.rewards.values())
        if tainted:
            out["restart"] = True
        _send(fd, out)
        if tainted:
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
