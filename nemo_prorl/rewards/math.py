r"""The ``math`` reward: binary correctness of the last ``\boxed{}`` answer.

Order of decisions for one response:

1. The answer region is the text after the last ``</think>``; its last complete ``\boxed{}`` /
   ``\fbox{}`` is the answer (a self-correction counts only its final box). No box -> ``no_answer``.
2. Hedges are wrong: an answer holding ``or``/``and``/``\lor``/``\pm`` or several comma-separated
   values, when the reference is a single value, scores 0 (math-verify would read ``7 \text{ or } 8``
   as the set ``{7, 8}``; string graders would read it as ``7``).
3. Fast path: normalised strings equal, or :func:`~nemo_prorl.rewards.math_expr.compare_values`
   decides (exact rational / high-precision evaluation in a small grammar).
4. Otherwise math-verify: ``verify(parse(gold), parse(pred))`` -- gold first. Its SIGALRM timeouts are
   off by default (they only work on the main thread and have whole-second resolution); the
   :class:`~nemo_prorl.rewards.pool.RewardPool` deadline kills a runaway worker instead.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from nemo_prorl.rewards.base import Reward, RewardResult, register_reward
from nemo_prorl.rewards.math_expr import clean_latex, compare_values, normalize
from nemo_prorl.rewards.text import answer_region, last_boxed, top_level_split
from nemo_prorl.schema import Problem

_HEDGE_WORDS = ("or", "and", "either")
_HEDGE_CMDS = ("\\lor", "\\vee", "\\pm", "\\mp", "\\text{or}", "\\land", "\\wedge")


def _words(s: str) -> set[str]:
    out: set[str] = set()
    cur: list[str] = []
    for c in s + " ":
        if c.isalpha():
            cur.append(c.lower())
        else:
            if cur:
                out.add("".join(cur))
            cur = []
    return out


def hedge_reason(gold: str, pred: str) -> str | None:
    """Why ``pred`` offers alternatives that ``gold`` does not, or ``None``.

    Args:
        gold: reference answer (LaTeX).
        pred: extracted answer (LaTeX, thousands separators already removed).

    """
    gold_words, pred_words = _words(gold), _words(pred)
    for word in _HEDGE_WORDS:
        if word in pred_words and word not in gold_words:
            return f"answer offers alternatives ({word!r})"
    compact_pred, compact_gold = pred.replace(" ", ""), gold.replace(" ", "")
    for cmd in _HEDGE_CMDS:
        if cmd in compact_pred and cmd not in compact_gold:
            return f"answer offers alternatives ({cmd})"
    if "," not in gold and ";" not in gold:
        for sep in (",", ";"):
            if len(top_level_split(pred, sep)) > 1:
                return "several values given for a single-valued answer"
    return None


def _nesting_depth(s: str) -> int:
    depth = best = 0
    for c in s:
        if c in "{([":
            depth += 1
            best = max(best, depth)
        elif c in "})]":
            depth -= 1
    return best


@register_reward("math")
class MathReward(Reward):
    """Binary math reward (see the module docstring for the decision order).

    Args:
        fast_path: use the string/evaluator fast path before math-verify.
        use_math_verify: fall back to math-verify when the fast path cannot decide (else score 0).
        mv_timeout_s: math-verify's own SIGALRM timeout in whole seconds; applied only when scoring on
            the main thread (``None``: off, rely on the pool deadline).
        max_answer_chars: longer extracted answers score 0 without parsing.
        max_nesting: answers nested deeper than this (brackets/braces) score 0 without parsing.

    """

    def __init__(self, fast_path: bool = True, use_math_verify: bool = True, mv_timeout_s: int | None = None,
                 max_answer_chars: int = 1000, max_nesting: int = 50) -> None:
        self.fast_path = fast_path
        self.use_math_verify = use_math_verify
        self.mv_timeout_s = mv_timeout_s
        self.max_answer_chars = max_answer_chars
        self.max_nesting = max_nesting
        self._mv: Any = None

    def warmup(self) -> None:
        """Import math-verify (about 1 s) so the first sample does not pay for it."""
        if self._mv is None and self.use_math_verify:
            import math_verify

            logging.getLogger("math_verify").setLevel(logging.ERROR)
            logging.getLogger("latex2sympy2_extended").setLevel(logging.ERROR)
            self._mv = math_verify

    def validate(self, row: dict) -> list[Problem]:
        """The reference answer must be non-empty."""
        if not str(row.get("answer", "")).strip():
            return [Problem("answer", "empty reference answer")]
        return []

    @staticmethod
    def gold_text(answer: Any) -> str:
        """The reference answer as LaTeX text (a boxed reference is unwrapped)."""
        gold = str(answer).strip()
        boxed = last_boxed(gold) if ("\\boxed" in gold or "\\fbox" in gold) else None
        return boxed if boxed is not None else gold.strip("$").strip()

    def score(self, response: str, row: dict) -> RewardResult:
        """Score one response against ``row["answer"]``."""
        try:
            return self._score(response, row)
        except Exception as exc:  # a reward never raises
            return RewardResult(0.0, "error", {"reason": f"{type(exc).__name__}: {exc}"[:500]})

    def _score(self, response: str, row: dict) -> RewardResult:
        region = answer_region(response)
        if region is None:
            return RewardResult(0.0, "no_answer", {"reason": "unclosed <think> block"})
        pred_raw = last_boxed(region)
        if pred_raw is None or not pred_raw.strip():
            return RewardResult(0.0, "no_answer", {"reason": "no \\boxed{} answer"})
        info: dict[str, Any] = {"extracted": pred_raw[:200]}
        if len(pred_raw) > self.max_answer_chars or _nesting_depth(pred_raw) > self.max_nesting:
            info.update(path="limits", reason="answer exceeds length/nesting limits")
            return RewardResult(0.0, "ok", info)
        gold = self.gold_text(row["answer"])
        pred_clean, gold_clean = clean_latex(pred_raw), clean_latex(gold)
        hedge = hedge_reason(gold_clean, pred_clean)
        if hedge is not None:
            info.update(path="hedge", reason=hedge)
            return RewardResult(0.0, "ok", info)
        if self.fast_path:
            (gn, gdeg), (pn, pdeg) = normalize(gold), normalize(pred_raw)
            if gdeg == pdeg:
                if gn == pn and gn:
                    info["path"] = "string"
                    return RewardResult(1.0, "ok", info)
                verdict = compare_values(gn, pn)
                if verdict is not None:
                    info["path"] = "fast"
                    return RewardResult(1.0 if verdict else 0.0, "ok", info)
        if not self.use_math_verify:
            info["path"] = "undecided"
            return RewardResult(0.0, "ok", info)
        self.warmup()
        on_main = threading.current_thread() is threading.main_thread()
        timeout = self.mv_timeout_s if on_main else None
        mv = self._mv
        gold_parsed = mv.parse("\\boxed{" + gold_clean + "}", parsing_timeout=timeout)
        pred_parsed = mv.parse("\\boxed{" + pred_clean + "}", parsing_timeout=timeout)
        info["path"] = "math_verify"
        if not gold_parsed:
            info["reason"] = "reference answer could not be parsed"
            ok = gold_clean == pred_clean
        else:
            ok = bool(mv.verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
        return RewardResult(1.0 if ok else 0.0, "ok", info)
