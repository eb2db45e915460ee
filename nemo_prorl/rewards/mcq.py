r"""The ``mcq`` reward (STEM multiple choice): binary, chosen option vs the reference option.

The answer is looked for after the last ``</think>``, in ``\boxed{...}``, in answer phrases
(``Answer: B``, ``**Answer:** (B)``, ``The answer is B``, ``the correct answer is option (B)``) and in
a final line holding only an option marker (``(B)``, ``B)``, ``B.``). The last place that names an
option wins. Every pattern is linear in the answer length, and answers longer than ``max_chars`` score
0 unread. An option may be given by its text when the row has ``options``. Naming two options as
the final answer (``B or C``, ``B, C``, ``B/C``) is wrong.
"""

from __future__ import annotations

import re
from typing import Any

from nemo_prorl.rewards.base import Reward, RewardResult, register_reward
from nemo_prorl.rewards.text import answer_region, box_spans
from nemo_prorl.schema import Problem

_ANSWER_PHRASE = re.compile(
    r"(?i)\banswer\b(?:\s+(?:is|would\s+be|should\s+be))?\s*(?:\*\*|__)?\s*[:\uff1a\-]?\s*(?:\*\*|__)?[ \t]*"
    r"(?:is\s+)?(?:option\s+|choice\s+)?(?P<cand>[^\n]{1,200})"
)
_ANSWER_WORD = re.compile(r"(?i)\banswer\b")
_FINAL_MARKER = re.compile(r"(?m)^[ \t>*_#-]*\(?(?P<cand>[A-Za-z])\)?[ \t]*[.):]?[ \t*_]*$")
_LETTER = re.compile(r"^\(?\[?(?P<l>[A-Za-z])\]?\)?(?=$|[\s.):,;/&*]|\\)")
_MULTI = re.compile(r"^\(?[A-Za-z]\)?\s*(?:,|/|&|\\?text\{\s*or\s*\}|\bor\b|\band\b|\\lor)\s*"
                    r"\(?(?P<l>[A-Za-z])\)?(?:$|[\s.),;])")


def _strip_markup(s: str) -> str:
    s = s.strip()
    s = re.sub(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}", r"\1", s)
    s = s.replace("**", "").replace("__", "").replace("$", "").replace("`", "")
    return s.strip().strip("\"'").strip()


def _norm_text(s: str) -> str:
    s = _strip_markup(s).lower()
    s = re.sub(r"[\s.,;:!]+$", "", s)
    return re.sub(r"\s+", " ", s).strip()


def option_letters(options: Any) -> dict[str, str]:
    """Options as ``{LETTER: text}`` (a list becomes A, B, C...; ``{}`` when there are none)."""
    if isinstance(options, dict):
        return {str(k).strip().upper(): str(v) for k, v in options.items()}
    if isinstance(options, list):
        return {chr(ord("A") + i): str(v) for i, v in enumerate(options)}
    return {}


class _Choice:
    __slots__ = ("letter", "multi", "text")

    def __init__(self, letter: str | None = None, multi: bool = False, text: str | None = None) -> None:
        self.letter, self.multi, self.text = letter, multi, text


def _interpret(cand: str, opts: dict[str, str], letters: str) -> _Choice | None:
    """What option ``cand`` names: a letter, several letters, or option text; ``None`` if nothing."""
    s = _strip_markup(cand)
    if not s:
        return None
    m = _MULTI.match(s)
    if m and m.group("l").upper() in letters and s[0 if s[0] != "(" else 1].upper() in letters:
        return _Choice(multi=True)
    m = _LETTER.match(s)
    if m and m.group("l").upper() in letters:
        letter = m.group("l").upper()
        # A lowercase single letter followed by more words is prose ("a value of..."), not an option.
        rest = s[m.end():].strip()
        if m.group("l").islower() and rest and not s.startswith("("):
            pass
        else:
            return _Choice(letter=letter)
    if opts:
        key = _norm_text(s)
        hits = [k for k, v in opts.items() if _norm_text(v) == key]
        if len(hits) == 1:
            return _Choice(letter=hits[0])
    return None


def _boxed_all(text: str) -> list[tuple[int, str]]:
    r"""``(position, content)`` of each complete top-level ``\boxed{...}`` (linear in ``len(text)``)."""
    return [(start, content) for start, _, content in box_spans(text)
            if text.startswith("\\boxed{", start)]


@register_reward("mcq")
class MCQReward(Reward):
    """Binary multiple-choice reward.

    Args:
        max_letters: letters considered options when a row has no ``options`` (A..J by default).
        max_chars: longer answer regions score 0 before any pattern sees them (``path="limits"``).

    """

    def __init__(self, max_letters: int = 10, max_chars: int = 100_000) -> None:
        self.max_letters = max_letters
        self.max_chars = max_chars

    def _letters(self, opts: dict[str, str]) -> str:
        if opts:
            return "".join(k for k in opts if len(k) == 1)
        return "".join(chr(ord("A") + i) for i in range(self.max_letters))

    def gold_letter(self, row: dict) -> tuple[str | None, str]:
        """The reference option letter (``None`` if the reference is free text) and its text form."""
        opts = option_letters(row.get("options"))
        gold = _strip_markup(str(row["answer"]))
        m = re.fullmatch(r"\(?([A-Za-z])\)?\.?", gold)
        if m and (not opts or m.group(1).upper() in opts):
            return m.group(1).upper(), gold
        if opts:
            hits = [k for k, v in opts.items() if _norm_text(v) == _norm_text(gold)]
            if len(hits) == 1:
                return hits[0], gold
        return None, gold

    def validate(self, row: dict) -> list[Problem]:
        """With ``options``, the reference must name exactly one of them."""
        opts = option_letters(row.get("options"))
        letter, gold = self.gold_letter(row)
        if opts and letter is None:
            why = f"reference {gold[:80]!r} is neither an option letter nor an option's text"
            return [Problem("answer", why)]
        if not gold:
            return [Problem("answer", "empty reference answer")]
        return []

    def score(self, response: str, row: dict) -> RewardResult:
        """Score one response against ``row["answer"]`` (and ``row["options"]`` when present)."""
        try:
            return self._score(response, row)
        except Exception as exc:
            return RewardResult(0.0, "error", {"reason": f"{type(exc).__name__}: {exc}"[:500]})

    def _score(self, response: str, row: dict) -> RewardResult:
        region = answer_region(response)
        if region is None:
            return RewardResult(0.0, "no_answer", {"reason": "unclosed <think> block"})
        if len(region) > self.max_chars:
            reason = f"answer has {len(region)} characters, more than max_chars={self.max_chars}"
            return RewardResult(0.0, "ok", {"path": "limits", "reason": reason})
        opts = option_letters(row.get("options"))
        letters = self._letters(opts)
        gold_letter, gold_text = self.gold_letter(row)
        cands: list[tuple[int, str]] = _boxed_all(region)
        for word in _ANSWER_WORD.finditer(region):
            m = _ANSWER_PHRASE.match(region, word.start())
            if m:
                cands.append((m.start(), m.group("cand")))
        cands += [(m.start(), m.group("cand")) for m in _FINAL_MARKER.finditer(region)]
        tail = region.rstrip()
        if tail and len(tail) <= 200 and "\n" not in tail:
            cands.append((0, tail))
        cands.sort(key=lambda c: c[0], reverse=True)
        for pos, cand in cands:
            choice = _interpret(cand, opts, letters)
            if choice is None:
                if gold_letter is None and _norm_text(cand) == _norm_text(gold_text):
                    return RewardResult(1.0, "ok", {"extracted": cand[:100]})
                continue
            info = {"extracted": cand[:100].strip(), "position": pos}
            if choice.multi:
                info["reason"] = "several options given as the final answer"
                return RewardResult(0.0, "ok", info)
            info["choice"] = choice.letter
            correct = choice.letter == gold_letter if gold_letter is not None else False
            return RewardResult(1.0 if correct else 0.0, "ok", info)
        return RewardResult(0.0, "no_answer", {"reason": "no option found in the response"})
