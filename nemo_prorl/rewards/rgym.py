"""The ``reasoning_gym`` reward: reasoning-gym's own scorer for the row's task.

The answer is the content of the last ``<answer>...</answer>`` after any ``</think>``; it is scored by
``reasoning_gym.get_score_answer_fn(task)(answer, entry)``. Scorer exceptions become status ``error``
with the reason; an unknown task is an ``error`` naming it (and :meth:`validate` reports it up front).
Scores are clamped to [0, 1].

Guards against scorer holes (found by probing the registry with the answer ``"garbage"``; the probe is
``tests/unit/rewards/test_rgym.py::test_garbage_probe``):

* ``game_of_life_halting`` (reasoning-gym <= 0.1.25) gives 1.0 to any non-empty answer because it
  compares ``bool(answer)`` with ``bool(entry["answer"])`` and ``bool("False")`` is true. It is
  re-scored here: the answer must name the same truth value as the reference.
* ``propositional_logic`` gives 0.25 ("trivial but valid conclusion") to strings that contain none of
  the problem's variables, such as ``"garbage"``; an answer must use at least one of them.
* An empty answer is ``no_answer`` and never reaches a scorer (several give 0.05 to ``""``).

Documented exceptions that keep partial credit for a wrong answer above 0.05 by design: ``figlet_font``
(0.1 per letter in the right place), ``spell_backward`` (fraction of the correct prefix),
``rectangle_count`` (closeness of the count). Set ``partial_credit=False`` to make every task binary.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from nemo_prorl.rewards.base import Reward, RewardResult, register_reward
from nemo_prorl.rewards.text import answer_region, last_tag
from nemo_prorl.schema import Problem

_TRUE = frozenset({"true", "yes", "1", "halts", "halt"})
_FALSE = frozenset({"false", "no", "0", "does not halt", "doesn't halt", "not halt"})


def parse_bool(text: Any) -> bool | None:
    """``True``/``False`` for an answer naming a truth value (``"True"``, ``"no"``...); else ``None``."""
    if isinstance(text, bool):
        return text
    s = re.sub(r"[\s.!*`'\"]+$", "", str(text).strip().lower()).strip("*`'\" ")
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    return None


def _score_game_of_life_halting(answer: str, entry: dict) -> float:
    gold = parse_bool(entry.get("answer"))
    pred = parse_bool(answer)
    return 1.0 if gold is not None and pred is not None and gold == pred else 0.0


def _propositional_logic_guard(answer: str, entry: dict) -> str | None:
    variables = set((entry.get("metadata") or {}).get("variables") or [])
    if variables and not any(v in answer for v in variables):
        return "answer uses none of the problem's variables"
    return None


#: task -> replacement scorer for scorers that are wrong
OVERRIDES: dict[str, Callable[[str, dict], float]] = {
    "game_of_life_halting": _score_game_of_life_halting,
}
#: task -> check returning a reason to score 0 before the task's scorer runs
GUARDS: dict[str, Callable[[str, dict], str | None]] = {
    "propositional_logic": _propositional_logic_guard,
}



GRID_TASKS: dict[str, tuple[str, ...]] = {"arc_agi": ("input", "output"), "rearc": ("input", "output")}


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


def restore_entry(task: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """Undo the JSON conversion where a task's scorer depends on Python types.

    ``arc_agi`` and ``rearc`` compare the parsed answer grid (a tuple of tuples) with
    ``metadata["output"]``; after JSON that field is a list of lists and a correct answer would score
    0.05. This turns those grids back into tuples. For every other task it returns a shallow copy.
    Scorers of reasoning-gym rows read from JSON should call it before ``score_answer``.

    Args:
        task: the row's ``task``.
        entry: the row's ``entry`` (``{"question", "answer", "metadata"}``).

    """
    out = dict(entry)
    keys = GRID_TASKS.get(task)
    if keys and isinstance(entry.get("metadata"), Mapping):
        meta = dict(entry["metadata"])
        for key in keys:
            if isinstance(meta.get(key), list):
                meta[key] = _to_tuples(meta[key])
        out["metadata"] = meta
    return out


@register_reward("reasoning_gym")
class ReasoningGymReward(Reward):
    """reasoning-gym scorer for the row's ``task`` with its ``entry``.

    Args:
        partial_credit: keep the scorers' partial credit (else any score below 1 becomes 0).
        require_answer_tag: the answer must be inside ``<answer></answer>``; when false and there is no
            tag, the whole answer region (after ``</think>``) is the answer.

    """

    def __init__(self, partial_credit: bool = True, require_answer_tag: bool = True) -> None:
        self.partial_credit = partial_credit
        self.require_answer_tag = require_answer_tag
        self._scorers: dict[str, Callable[[str, dict], float]] = {}
        self._datasets: dict[str, Any] | None = None

    def warmup(self) -> None:
        """Import reasoning-gym (several seconds) and its dataset registry."""
        if self._datasets is None:
            from reasoning_gym.factory import DATASETS

            self._datasets = DATASETS

    def validate(self, row: dict) -> list[Problem]:
        """The task must be a registered reasoning-gym dataset."""
        self.warmup()
        task = row.get("task")
        if task not in self._datasets:
            return [Problem("task", f"unknown reasoning-gym task {task!r}")]
        return []

    def _scorer(self, task: str) -> Callable[[str, dict], float]:
        if task not in self._scorers:
            if task in OVERRIDES:
                self._scorers[task] = OVERRIDES[task]
            else:
                import reasoning_gym

                self._scorers[task] = reasoning_gym.get_score_answer_fn(task)
        return self._scorers[task]

    def score(self, response: str, row: dict) -> RewardResult:
        """Score one response with the task's scorer; never raises."""
        task = row.get("task")
        self.warmup()
        if task not in self._datasets:
            return RewardResult(0.0, "error", {"reason": f"unknown reasoning-gym task {task!r}"})
        region = answer_region(response)
        if region is None:
            return RewardResult(0.0, "no_answer", {"reason": "unclosed <think> block"})
        answer = last_tag(region, "answer")
        if answer is None and not self.require_answer_tag:
            answer = region
        if answer is None or not answer.strip():
            return RewardResult(0.0, "no_answer", {"reason": "no non-empty <answer></answer>"})
        answer = answer.strip()
        info: dict[str, Any] = {"extracted": answer[:200]}
        guard = GUARDS.get(task)
        if guard is not None:
            reason = guard(answer, row["entry"])
            if reason:
                info["reason"] = reason
                return RewardResult(0.0, "ok", info)
        try:
            value = float(self._scorer(task)(answer, restore_entry(task, row["entry"])))
        except Exception as exc:
            info["reason"] = f"scorer of {task!r} raised {type(exc).__name__}: {exc}"[:500]
            return RewardResult(0.0, "error", info)
        if math.isnan(value):
            info["reason"] = f"scorer of {task!r} returned NaN"
            return RewardResult(0.0, "error", info)
        value = min(1.0, max(0.0, value))
        if not self.partial_credit and value < 1.0:
            info["raw_score"] = value
            value = 0.0
        return RewardResult(value, "ok", info)
