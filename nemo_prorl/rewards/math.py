r"""The ``math`` reward: binary correctness of the last ``\boxed{}`` answer.

Order of decisions for one response:

1. The answer region is the text after the last ``</think>``; its last complete ``\boxed{}`` /
   ``\fbox{}`` is the answer (a self-correction counts only its final box). No box -> ``no_answer``.
2. Hedges are wrong: an answer holding ``or``/``and``/``\lor``/``\pm`` or several comma-separated
   values, when the reference is a single value, scores 0 (math-verify would read ``7 \text{ or } 8``
   as the set ``{7, 8}``; string graders would read it as ``7``). A reference that is itself a list
   (``6 \text{ and } 8``, ``1, 2``, several boxes) is not single-valued.
3. Text answers (a word, a name, a letter, ``\text{...}``) are compared as text, case-sensitively
   (:func:`~nemo_prorl.rewards.math_expr.compare_text`): ``seat`` is not ``east``, ``X`` is not ``x``.
4. Fast path: normalised strings equal, or :func:`~nemo_prorl.rewards.math_expr.compare_values`
   decides exactly (canonical forms of constants; Schwartz--Zippel identity testing with variables).
5. Otherwise math-verify: ``verify(parse(gold), parse(pred))`` -- gold first -- unless the answers use
   the same letters up to case only (different variables; math-verify lowercases them). Its SIGALRM
   timeouts are off by default (they only work on the main thread and have whole-second resolution);
   the :class:`~nemo_prorl.rewards.pool.RewardPool` deadline kills a runaway worker instead.

Everything before math-verify is linear in the response length or works on the capped extracted answer
(``max_answer_chars``, ``max_nesting``), and huge numbers never reach sympy: an answer whose integer
exponents, factorials or digit runs exceed :data:`LIMITS` scores 0 with ``path="limits"``.
"""

from __future__ import annotations

import logging
import re
import threading
from fractions import Fraction
from typing import Any

from nemo_prorl.rewards.base import Reward, RewardResult, register_reward
from nemo_prorl.rewards.math_expr import (
    TooLarge,
    Unsupported,
    clean_latex,
    compare_text,
    compare_values,
    const_value,
    decimal_comma,
    letters_differ_only_in_case,
    normalize,
    split_percent,
)
from nemo_prorl.rewards.text import answer_region, box_spans, brace_pairs, last_boxed, top_level_split
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


def gold_is_list(gold: str) -> bool:
    """True when the reference lists several values (top-level ``,``/``;``, or ``and``/``or``)."""
    if len(top_level_split(gold, ",")) > 1 or len(top_level_split(gold, ";")) > 1:
        return True
    return bool(_words(gold) & {"and", "or"})


def hedge_reason(gold: str, pred: str) -> str | None:
    r"""Why ``pred`` offers alternatives that ``gold`` does not, or ``None``.

    A reference that is itself a list (:func:`gold_is_list`) accepts a list written with commas,
    semicolons or ``and`` (``6,8`` for ``6 \text{ and } 8``; math-verify then compares the two as sets
    or tuples), but still not alternatives (``or``, ``\pm``...) that the reference does not use.

    Args:
        gold: reference answer (LaTeX).
        pred: extracted answer (LaTeX, thousands separators already removed).

    """
    is_list = gold_is_list(gold)
    gold_words, pred_words = _words(gold), _words(pred)
    for word in _HEDGE_WORDS:
        if is_list and word == "and":
            continue
        if word in pred_words and word not in gold_words:
            return f"answer offers alternatives ({word!r})"
    compact_pred, compact_gold = pred.replace(" ", ""), gold.replace(" ", "")
    for cmd in _HEDGE_CMDS:
        if cmd in compact_pred and cmd not in compact_gold:
            return f"answer offers alternatives ({cmd})"
    if is_list:
        return None
    for sep in (",", ";"):
        if len(top_level_split(pred, sep)) > 1:
            return "several values given for a single-valued answer"
    return None


#: Sizes past which an extracted answer is not handed to any parser: integer exponents and factorials of
#: numbers (sympy would build the integer: ``9^{9^{9}}`` has 370 million digits).
LIMITS = {"max_exponent": 10_000, "max_factorial": 1_000}

_NUMBER = re.compile(r"\d+")


def _operand_value(expr: str) -> Fraction | None:
    """Exact value of a variable-free exponent/factorial operand.

    ``None`` if it has letters or is outside the fast path's grammar; raises :class:`TooLarge` when it
    cannot be evaluated within the fast path's bounds.
    """
    if re.search(r"[A-Za-z]", re.sub(r"\\[A-Za-z]+", "", expr)):
        return None
    try:
        return const_value(normalize(expr)[0])
    except TooLarge:
        raise
    except (Unsupported, ValueError, ZeroDivisionError, RecursionError):
        return None


def numeric_limit_reason(ans: str) -> str | None:
    r"""Why ``ans`` (an extracted answer, already length-capped) holds a number too large to evaluate.

    Flags an integer exponent above ``LIMITS["max_exponent"]`` (``2^{100000}``, ``9^{9^{9}}``: a
    variable-free exponent the exact evaluator cannot bound counts as too large) and a factorial of a
    number above ``LIMITS["max_factorial"]`` (``1000000!``, ``(10^8)!``). Exponents and factorials
    with variables (``x^{n}``, ``(2n)!``) are left alone. Each ``^`` / ``!`` costs one look-up in a
    brace table built in one pass, so the scan is linear in the answer.
    """
    pairs = brace_pairs(ans)
    opens = {v: k for k, v in pairs.items()}
    for m in re.finditer(r"\^|(?<!\\)!", ans):
        i = m.start()
        if ans[i] == "^":
            j = i + 1
            while j < len(ans) and ans[j] == " ":
                j += 1
            if j < len(ans) and ans[j] == "{" and j in pairs:
                operand = ans[j + 1:pairs[j]]
            else:
                tok = _NUMBER.match(ans, j)
                operand = tok.group(0) if tok else ""
            bound = LIMITS["max_exponent"]
        else:
            j = i - 1
            while j >= 0 and ans[j] == " ":
                j -= 1
            if j >= 0 and ans[j] in ")}":
                start = opens.get(j) if ans[j] == "}" else _open_paren(ans, j)
                operand = ans[start + 1:j] if start is not None else ans[:j]
            else:
                k = j
                while k >= 0 and ans[k].isdigit():
                    k -= 1
                operand = ans[k + 1:j + 1]
            bound = LIMITS["max_factorial"]
        if not operand.strip():
            continue
        try:
            value = _operand_value(operand)
        except TooLarge:
            return f"{'exponent' if ans[i] == '^' else 'factorial'} {operand[:40]!r} too large to evaluate"
        if value is not None and abs(value) > bound:
            return f"{'exponent' if ans[i] == '^' else 'factorial'} {operand[:40]!r} above {bound}"
    return None


def _open_paren(s: str, close: int) -> int | None:
    depth = 0
    for k in range(close, -1, -1):
        if s[k] == ")":
            depth += 1
        elif s[k] == "(":
            depth -= 1
            if depth == 0:
                return k
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
        r"""The reference answer as LaTeX text.

        A boxed reference is unwrapped; several boxes (``\boxed{1} and \boxed{2}``) are the list
        ``1, 2``; math delimiters (``$``, ``\(``, ``\)``, ``\[``, ``\]``) are dropped.
        """
        gold = str(answer).strip()
        if "\\boxed" in gold or "\\fbox" in gold:
            boxes = [b for b in box_spans(gold) if b[2].strip()]
            if boxes:
                # Boxes joined by separators only (``,``, ``and``, spacing, delimiters, a short unit
                # word) form one list answer; otherwise the last box is the answer.
                listed = [boxes[-1][2]]
                for prev, cur in zip(boxes[-2::-1], boxes[:0:-1]):
                    between = _words(gold[prev[1]:cur[0]]) - {"quad", "qquad", "text", "and"}
                    if len(between) > 1 or not ("and" in _words(gold[prev[1]:cur[0]])
                                                or "," in gold[prev[1]:cur[0]]
                                                or not re.search(r"[A-Za-z0-9]", gold[prev[1]:cur[0]])):
                        break
                    listed.insert(0, prev[2])
                return ", ".join(b.strip() for b in listed)
        for delim in ("\\(", "\\)", "\\[", "\\]", "$"):
            gold = gold.replace(delim, " ")
        return gold.strip()

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
        limit = numeric_limit_reason(pred_raw)
        if limit is not None:
            info.update(path="limits", reason=limit)
            return RewardResult(0.0, "ok", info)
        gold = self.gold_text(row["answer"])
        gold_clean, pred_clean = decimal_comma(clean_latex(gold), clean_latex(pred_raw))
        hedge = hedge_reason(gold_clean, pred_clean)
        if hedge is not None:
            info.update(path="hedge", reason=hedge)
            return RewardResult(0.0, "ok", info)
        if self.fast_path:
            text = compare_text(gold_clean, pred_clean)
            if text is not None:
                info["path"] = "text"
                return RewardResult(1.0 if text else 0.0, "ok", info)
            (gn, gdeg), (pn, pdeg) = normalize(gold_clean), normalize(pred_clean)
            if gdeg == pdeg:
                if gn == pn and gn:
                    info["path"] = "string"
                    return RewardResult(1.0, "ok", info)
                verdict = compare_values(gn, pn)
                if verdict is False and split_percent(gold_clean)[1] != split_percent(pred_clean)[1]:
                    verdict = None  # 0.2 vs 20%: which reading the reference means is math-verify's call
                if verdict is not None:
                    info["path"] = "fast"
                    return RewardResult(1.0 if verdict else 0.0, "ok", info)
        if letters_differ_only_in_case(gold_clean, pred_clean):
            info.update(path="text", reason="variables differ in case")
            return RewardResult(0.0, "ok", info)
        if not self.use_math_verify:
            info["path"] = "undecided"
            return RewardResult(0.0, "ok", info)
        self.warmup()
        on_main = threading.current_thread() is threading.main_thread()
        timeout = self.mv_timeout_s if on_main else None
        mv = self._mv
        # LaTeX extraction only: math-verify's plain-expression extraction (ExprExtractionConfig) hands
        # the matched text to sympy's parse_expr, which evaluates it as Python; its LaTeX path parses with
        # an ANTLR grammar and evaluates nothing. The answer is boxed, so the LaTeX path sees all of it.
        latex_only = [mv.LatexExtractionConfig()]
        gold_parsed = mv.parse("\\boxed{" + gold_clean + "}", extraction_config=latex_only,
                               parsing_timeout=timeout)
        pred_parsed = mv.parse("\\boxed{" + pred_clean + "}", extraction_config=latex_only,
                               parsing_timeout=timeout)
        info["path"] = "math_verify"
        if not gold_parsed:
            info["reason"] = "reference answer could not be parsed"
            ok = gold_clean == pred_clean
        else:
            ok = bool(mv.verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
        return RewardResult(1.0 if ok else 0.0, "ok", info)
