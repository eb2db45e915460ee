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

* ``puzzle24`` checks only that the answer uses four numbers in 1..10 and makes 24, so one answer
  (``4*6*1*1``) solved every puzzle; the answer must use exactly the puzzle's numbers.

Documented exceptions that keep partial credit for a wrong answer above 0.05 by design: ``figlet_font``
(0.1 per letter in the right place), ``spell_backward`` (fraction of the correct prefix),
``rectangle_count`` (closeness of the count). Set ``partial_credit=False`` to make every task binary.

No model text is evaluated (``docs/sandbox.md``, "Reasoning-gym scorers and reward workers"):

* the scorers that ``eval`` the answer or the row (or call sympy's ``parse_expr``) are replaced by
  :data:`nemo_prorl.rewards.rgym_safe.SAFE_SCORERS`, parsers with no code path;
* every scorer runs inside :func:`nemo_prorl.rewards.guard.no_code_execution`: an attempt to ``exec``
  code that was not loaded from a file, start a process, open a socket or unpickle is refused before
  it happens, and the row gets status ``violation``;
* after each row the objects scoring depends on (the scorer, its class and module, builtins, these
  modules) are compared with their state when the scorer was loaded; a change means the row patched
  the grader: the row gets ``violation`` and :attr:`ReasoningGymReward.tainted` tells the worker to
  restart, so the next row never sees the patch.

A scorer that raises on an answer while it scores the row's own reference answer is a wrong answer
(status ``ok``, score 0, ``info.reason`` says so), and so is one that raises on a task without a
reference answer (the scorer checks the answer against the metadata); only a scorer that fails on
the reference too (or a reference the safe parsers cannot read) is a grader fault, status ``error``.
"""

from __future__ import annotations

import builtins
import logging
import math
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

from nemo_prorl.rewards import guard, rgym_safe, safe_parse
from nemo_prorl.rewards.base import Reward, RewardResult, register_reward
from nemo_prorl.rewards.guard import no_code_execution
from nemo_prorl.rewards.rgym_safe import SAFE_SCORERS, GoldParseError
from nemo_prorl.rewards.text import answer_region, last_tag
from nemo_prorl.schema import Problem

log = logging.getLogger(__name__)

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


_INTS = re.compile(r"\b\d+\b")


def _puzzle24_guard(answer: str, entry: dict) -> str | None:
    numbers = (entry.get("metadata") or {}).get("numbers")
    if isinstance(numbers, list) and sorted(int(n) for n in _INTS.findall(answer)) != sorted(numbers):
        return "answer does not use exactly the puzzle's numbers"
    return None


#: task -> replacement scorer for scorers that are wrong or evaluate text
OVERRIDES: dict[str, Callable[[str, dict], float]] = {
    "game_of_life_halting": _score_game_of_life_halting,
    **SAFE_SCORERS,
}
#: task -> check returning a reason to score 0 before the task's scorer runs
GUARDS: dict[str, Callable[[str, dict], str | None]] = {
    "propositional_logic": _propositional_logic_guard,
    "puzzle24": _puzzle24_guard,
}


def _callable_ids(namespace: Mapping[str, Any], every_value: bool) -> tuple:
    """``(name, id(value), id(code))`` for a namespace's entries (only callables unless ``every_value``)."""
    out = []
    for name, value in list(namespace.items()):
        if every_value or callable(value):
            out.append((name, id(value), id(getattr(value, "__code__", None))))
    return tuple(sorted(out))


def _scorer_state(scorer: Callable, reward: ReasoningGymReward) -> int:
    """A fingerprint of everything a row's scoring calls into; any patch by a row changes it.

    Covers builtins; this module, :mod:`~nemo_prorl.rewards.rgym_safe`,
    :mod:`~nemo_prorl.rewards.safe_parse` and :mod:`~nemo_prorl.rewards.guard` (every global); the
    override and guard tables and the reward's scorer cache; the scorer's function and code objects,
    the callables of its module and the attributes of its class and bases (third-party module data
    such as caches is left out: it changes legitimately).
    """
    parts: list[Any] = [_callable_ids(vars(builtins), True), _callable_ids(OVERRIDES, True),
                        _callable_ids(GUARDS, True), _callable_ids(reward._scorers, True),
                        _callable_ids(vars(type(reward)), True)]
    parts += [_callable_ids(vars(m), True) for m in (sys.modules[__name__], rgym_safe, safe_parse, guard)]
    func = getattr(scorer, "__func__", scorer)
    parts.append((id(func), id(getattr(func, "__code__", None)), id(getattr(func, "__defaults__", None))))
    module = sys.modules.get(getattr(func, "__module__", "") or "")
    if module is not None and module.__name__ not in (__name__, rgym_safe.__name__):
        parts.append(_callable_ids(vars(module), False))
    owner = getattr(scorer, "__self__", None)
    if owner is not None:
        parts.append(id(type(owner)))
        parts += [_callable_ids(vars(k), False) for k in type(owner).__mro__ if k is not object]
    return hash(tuple(parts))



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
        self._states: dict[str, int] = {}
        self._datasets: dict[str, Any] | None = None
        #: set when a row changed the grader's state; the worker restarts before the next row
        self.tainted = False

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
                scorer = OVERRIDES[task]
            else:
                import reasoning_gym

                scorer = reasoning_gym.get_score_answer_fn(task)
            self._scorers[task] = scorer
            self._states = {t: _scorer_state(self._scorers[t], self) for t in self._scorers}
        return self._scorers[task]

    def _run(self, task: str, answer: str, entry: dict) -> tuple[Any, Exception | None, list[str]]:
        """``(value, exception, refused events)`` of the scorer under the no-code-execution guard."""
        scorer = self._scorer(task)
        with no_code_execution() as blocked:
            try:
                return scorer(answer, entry), None, list(blocked)
            except Exception as exc:
                return None, exc, list(blocked)

    def _raised(self, task: str, entry: dict, exc: Exception, info: dict[str, Any]) -> RewardResult:
        """A scorer raised on the answer: a wrong answer if it scores the reference, else a grader fault."""
        info["reason"] = f"scorer of {task!r} raised {type(exc).__name__}: {exc}"[:500]
        gold = entry.get("answer")
        if isinstance(exc, GoldParseError):
            return RewardResult(0.0, "error", info)
        if "answer" in entry and gold is None and isinstance(entry.get("metadata"), Mapping):
            # boxnet, graph_color, rubiks_cube... check the answer against the metadata; no reference
            info["reason"] += " (the task has no reference answer: counted as a wrong answer)"
            return RewardResult(0.0, "ok", info)
        if isinstance(gold, str) and gold.strip():
            _, gold_exc, blocked = self._run(task, gold.strip(), entry)
            if gold_exc is None and not blocked:
                info["reason"] += " (it scores the reference answer: counted as a wrong answer)"
                return RewardResult(0.0, "ok", info)
        return RewardResult(0.0, "error", info)

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
        check = GUARDS.get(task)
        if check is not None:
            reason = check(answer, row["entry"])
            if reason:
                info["reason"] = reason
                return RewardResult(0.0, "ok", info)
        entry = restore_entry(task, row["entry"])
        value, exc, blocked = self._run(task, answer, entry)
        if exc is None:
            try:
                value = float(value)
            except (TypeError, ValueError) as bad:
                exc = bad
        state = _scorer_state(self._scorers[task], self) if task in self._scorers else None
        if state is not None and state != self._states.get(task):
            self.tainted = True
            info["reason"] = "the grader's state changed while scoring this row; the worker restarts"
            log.warning("reasoning_gym: scoring a %r row changed the grader's state; restarting", task)
            return RewardResult(0.0, "violation", info)
        if blocked:
            info["reason"] = f"the scorer of {task!r} was refused: {'; '.join(blocked)[:300]}"
            log.warning("reasoning_gym: refused while scoring a %r row: %s", task, blocked[0])
            return RewardResult(0.0, "violation", info)
        if exc is not None:
            return self._raised(task, entry, exc, info)
        if math.isnan(value):
            info["reason"] = f"scorer of {task!r} returned NaN"
            return RewardResult(0.0, "error", info)
        value = min(1.0, max(0.0, value))
        if not self.partial_credit and value < 1.0:
            info["raw_score"] = value
            value = 0.0
        return RewardResult(value, "ok", info)
