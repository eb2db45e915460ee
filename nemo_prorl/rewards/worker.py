"""A reward worker process: ``python -m nemo_prorl.rewards.worker``.

Protocol (one JSON object per line; the parent is :class:`~nemo_prorl.rewards.pool.RewardPool`):

* parent -> worker, first line: the :class:`~nemo_prorl.rewards.config.RewardsConfig` as a dict.
* worker -> parent: ``{"ready": true}`` once imports are done.
* parent -> worker: ``{"id": int, "row": {...}}`` (the row holds ``domain``, ``response`` and its
  ground truth).
* worker -> parent: ``{"id": int, "loaded": domain}`` the first time a domain's reward is built
  (the parent then restarts the sample's deadline), then
  ``{"id": int, "score": float, "status": str, "info": {...}, "problems": [[field, reason], ...]}``.

The protocol uses a private duplicate of the original stdout; ``sys.stdout`` and file descriptor 1
are pointed at stderr so that a print inside a reward cannot corrupt it. The worker never imports
torch.
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


def main() -> int:
    """Run the worker loop on stdin/stdout until stdin closes."""
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    first = sys.stdin.readline()
    if not first:
        return 0
    runner = RewardRunner(json.loads(first))
    proto.write('{"ready": true}\n')
    for line in sys.stdin:
        msg = json.loads(line)
        task_id = msg["id"]

        def loaded(domain: str, task_id: int = task_id) -> None:
            proto.write(json.dumps({"id": task_id, "loaded": domain}) + "\n")

        result, problems = runner.score_row(msg["row"], on_loaded=loaded)
        out = {"id": task_id, "score": result.score, "status": result.status,
               "info": _jsonable(result.info), "problems": problems}
        proto.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
