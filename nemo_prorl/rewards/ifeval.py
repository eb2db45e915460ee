r"""The ``ifeval`` reward: fraction of a row's IFEval instructions the response follows.

The 25 instruction ids of IFEval (Zhou et al. 2023) with IFEval's keyword-argument names are checked
on the text after the last ``</think>``, the way Google's reference checker
(``google-research/instruction_following_eval/instructions.py``) checks them. Everything runs offline:
sentences are split by :mod:`nemo_prorl.rewards.sentences` (nltk's Punkt decision procedure over the
English Punkt model shipped as package data, identical to the reference's ``count_sentences`` on its
published responses), words are ``\w+`` runs as in the reference's ``count_words``, and language
identification uses ``langdetect`` with a fixed seed.

Model text is hostile: responses longer than ``max_chars`` score 0 (``path="limits"``) before any
check, and every check is linear in the response length (the reference's regexes that backtrack
quadratically -- ``\[.*?\]`` placeholders, ``^\s*\*`` bullets, ``<<[^\n]+>>`` titles, ``\s*p\.``
postscripts -- are replaced by single scans with the same matches).

Row format: ``{"instructions": [{"id": "length_constraints:number_words",
"kwargs": {"num_words": 100, "relation": "at least"}}, ...]}``. ``None``-valued kwargs are ignored (the
public IFEval file lists every kwarg of every instruction, mostly null). An unknown id or a missing /
mistyped kwarg makes the row an ``error`` naming it (:meth:`IFEvalReward.validate` reports it first).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nemo_prorl.rewards.base import Reward, RewardResult, register_reward
from nemo_prorl.rewards.sentences import count_sentences, split_sentences
from nemo_prorl.rewards.text import answer_region
from nemo_prorl.schema import Problem

RELATIONS = ("less than", "at least")

# ------------------------------------------------------------------------------------- text utilities

__all__ = ["IFEvalReward", "count_sentences", "count_words", "split_sentences"]


_WORD_RUN: Any = None


def count_words(text: str) -> int:
    r"""Number of ``\w+`` runs, with combining marks inside words (``हिन्दी`` is one word).

    The reference counts with nltk's ``RegexpTokenizer(r"\w+")``, which nltk 3.10 compiles with the
    ``regex`` package, whose ``\w`` includes combining marks (the standard ``re`` splits Devanagari or
    Bengali words at every vowel sign and virama). ``regex`` is installed with ``transformers``; without
    it, marks are joined to the word by a scan over Unicode categories.
    """
    global _WORD_RUN
    if _WORD_RUN is None:
        try:
            import regex

            _WORD_RUN = regex.compile(r"\w+")
        except ImportError:  # pragma: no cover - regex comes with transformers
            _WORD_RUN = False
    if _WORD_RUN:
        return len(_WORD_RUN.findall(text))
    count, inside = 0, False
    for ch in text:
        word = ch.isalnum() or ch == "_" or unicodedata.category(ch) in ("Mn", "Mc", "Me")
        if word and not inside:
            count += 1
        inside = word
    return count


def word_tokens(text: str) -> list[str]:
    """Word and punctuation tokens, close to a Treebank tokenizer: ``don't`` -> ``do``, ``n't``."""
    return re.findall(r"\w+(?=n't)|n't|\w+|'\w+|[^\w\s]", text)


_LANGDETECT: Any = None


def detect_language(text: str) -> str | None:
    """ISO 639-1 code of ``text``'s language by langdetect (seeded), or ``None`` if undetectable."""
    global _LANGDETECT
    if _LANGDETECT is None:
        import langdetect

        langdetect.DetectorFactory.seed = 0
        _LANGDETECT = langdetect
    try:
        return _LANGDETECT.detect(text)
    except _LANGDETECT.LangDetectException:
        return None


def _compare(count: int, relation: str, n: int) -> bool:
    return count < n if relation == "less than" else count >= n


# -------------------------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class Instruction:
    """An instruction id: its check and its keyword arguments (name -> accepted types)."""

    check: Callable[[str, dict[str, Any]], bool]
    kwargs: dict[str, tuple[type, ...]]
    optional: tuple[str, ...] = ()


def _keywords_existence(r: str, kw: dict) -> bool:
    return all(re.search(re.escape(k), r, flags=re.IGNORECASE) for k in kw["keywords"])


def _keyword_frequency(r: str, kw: dict) -> bool:
    count = len(re.findall(re.escape(kw["keyword"]), r, flags=re.IGNORECASE))
    return _compare(count, kw["relation"], kw["frequency"])


def _forbidden_words(r: str, kw: dict) -> bool:
    return not any(re.search(r"\b" + re.escape(w) + r"\b", r, flags=re.IGNORECASE)
                   for w in kw["forbidden_words"])


def _letter_frequency(r: str, kw: dict) -> bool:
    count = r.lower().count(kw["letter"].lower())
    return _compare(count, kw["let_relation"], kw["let_frequency"])


def _response_language(r: str, kw: dict) -> bool:
    lang = detect_language(r)
    return True if lang is None else lang == kw["language"]


def _number_sentences(r: str, kw: dict) -> bool:
    return _compare(count_sentences(r), kw["relation"], kw["num_sentences"])


def _number_paragraphs(r: str, kw: dict) -> bool:
    paragraphs = re.split(r"\s?\*\*\*\s?", r)
    n = len(paragraphs)
    for i, p in enumerate(paragraphs):
        if not p.strip():
            if i in (0, len(paragraphs) - 1):
                n -= 1
            else:
                return False
    return n == kw["num_paragraphs"]


def _number_words(r: str, kw: dict) -> bool:
    return _compare(count_words(r), kw["relation"], kw["num_words"])


def _nth_paragraph_first_word(r: str, kw: dict) -> bool:
    # As the reference: paragraphs are the pieces of a split on "\n\n" (empty ones are not counted but
    # keep their index), the first word is cut at . , ? ! ' " only (a trailing colon stays).
    paragraphs = r.split("\n\n")
    n = sum(1 for p in paragraphs if p.strip())
    nth = kw["nth_paragraph"]
    if not 1 <= nth <= n:
        return False
    paragraph = paragraphs[nth - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    first = ""
    for ch in word:
        if ch in ".,?!'\"":
            break
        first += ch.lower()
    return n == kw["num_paragraphs"] and first == kw["first_word"].lower()


def count_placeholders(text: str) -> int:
    r"""Matches of the reference's ``\[.*?\]`` (``[`` ... the nearest ``]`` on the same line), in one pass."""
    count = 0
    for line in text.split("\n"):
        pos = line.find("[")
        while pos >= 0:
            close = line.find("]", pos + 1)
            if close < 0:
                break
            count += 1
            pos = line.find("[", close + 1)
    return count


def _number_placeholders(r: str, kw: dict) -> bool:
    return count_placeholders(r) >= kw["num_placeholders"]


_PPS = re.compile(r"p\.\s?p\.\s?s")
_PS = re.compile(r"p\.\s?s\.")


def _postscript(r: str, kw: dict) -> bool:
    # The reference's pattern is "\s*<marker>.*$" with findall; the \s* prefix and .*$ suffix always
    # match, so it holds iff the marker occurs -- searched without the (quadratic) \s* prefix here.
    marker = kw["postscript_marker"].strip()
    low = r.lower()
    if marker.upper().replace(" ", "") in ("P.P.S", "P.P.S."):
        return _PPS.search(low) is not None
    if marker.upper().replace(" ", "") == "P.S.":
        return _PS.search(low) is not None
    return marker.lower() in low


def count_line_items(text: str, marker: str, not_followed_by: str | None = None) -> int:
    r"""Matches of the reference's ``^\s*<marker>...$`` (``re.M``), counted in one pass.

    From each line start the pattern skips whitespace -- newlines included -- and needs ``marker`` next
    (and, for ``*``, a following character other than ``*``, which may be a newline); a match runs to
    the end of the line where it ends. Every line start of one whitespace run reaches the same first
    non-space character, which this scan examines once instead of once per line start.
    """
    n = len(text)
    count = 0
    pos = 0
    while pos <= n:
        q = pos
        while q < n and text[q].isspace():
            q += 1
        ok = q < n and text[q] == marker
        if ok and not_followed_by is not None:
            ok = q + 1 < n and text[q + 1] != not_followed_by
        if ok:
            count += 1
            start = q + 2 if not_followed_by is not None else q + 1
            end = text.find("\n", start)
            if end < 0:
                break
            pos = end + 1
            continue
        nl = text.find("\n", q) if q < n else -1
        # no match from any line start up to q; the next line start after q is after its newline
        if nl < 0:
            break
        pos = nl + 1
    return count


def _number_bullet_lists(r: str, kw: dict) -> bool:
    stars = count_line_items(r, "*", not_followed_by="*")
    dashes = count_line_items(r, "-")
    return stars + dashes == kw["num_bullets"]


def _constrained_response(r: str, kw: dict) -> bool:
    s = r.strip()
    return any(opt in s for opt in ("My answer is yes.", "My answer is no.", "My answer is maybe."))


def _number_highlighted_sections(r: str, kw: dict) -> bool:
    n = sum(1 for h in re.findall(r"\*[^\n\*]*\*", r) if h.strip("*").strip())
    n += sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", r) if h.removeprefix("**").removesuffix("**").strip())
    return n >= kw["num_highlights"]


def _multiple_sections(r: str, kw: dict) -> bool:
    pattern = r"\s?" + re.escape(kw["section_spliter"].strip()) + r"\s?\d+\s?"
    return len(re.split(pattern, r)) - 1 >= kw["num_sections"]


def _json_format(r: str, kw: dict) -> bool:
    s = r.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        s = s.removeprefix(prefix)
    s = s.removesuffix("```").strip()
    try:
        json.loads(s)
    except (ValueError, RecursionError):  # 30k nested brackets: not valid JSON for us, not a grader fault
        return False
    return True


def _title(r: str, kw: dict) -> bool:
    # The reference's findall("<<[^\n]+>>") has at most one match per line: from the first "<<" to the
    # last ">>" of the line, when at least one character lies between them.
    for line in r.split("\n"):
        first, last = line.find("<<"), line.rfind(">>")
        if first >= 0 and last >= first + 3 and line[first:last + 2].lstrip("<").rstrip(">").strip():
            return True
    return False


def _two_responses(r: str, kw: dict) -> bool:
    parts = r.split("******")
    valid = []
    for i, p in enumerate(parts):
        if not p.strip():
            if i not in (0, len(parts) - 1):
                return False
        else:
            valid.append(p.strip())
    return len(valid) == 2 and valid[0] != valid[1]


def _repeat_prompt(r: str, kw: dict) -> bool:
    return r.strip().lower().startswith(kw["prompt_to_repeat"].strip().lower())


def _end_checker(r: str, kw: dict) -> bool:
    return r.strip().strip('"').lower().endswith(kw["end_phrase"].strip().lower())


def _quotation(r: str, kw: dict) -> bool:
    s = r.strip()
    return len(s) > 1 and s[0] == '"' and s[-1] == '"'


def _capital_word_frequency(r: str, kw: dict) -> bool:
    count = sum(1 for w in word_tokens(r) if w.isupper())
    return _compare(count, kw["capital_relation"], kw["capital_frequency"])


def _english_capital(r: str, kw: dict) -> bool:
    lang = detect_language(r)  # as the reference: an undetectable language passes
    return r.isupper() and (lang is None or lang == "en")


def _english_lowercase(r: str, kw: dict) -> bool:
    lang = detect_language(r)
    return r.islower() and (lang is None or lang == "en")


def _no_comma(r: str, kw: dict) -> bool:
    return "," not in r


_I, _S, _L = (int,), (str,), (list,)
INSTRUCTIONS: dict[str, Instruction] = {
    "keywords:existence": Instruction(_keywords_existence, {"keywords": _L}),
    "keywords:frequency": Instruction(_keyword_frequency, {"keyword": _S, "frequency": _I, "relation": _S}),
    "keywords:forbidden_words": Instruction(_forbidden_words, {"forbidden_words": _L}),
    "keywords:letter_frequency": Instruction(_letter_frequency,
                                             {"letter": _S, "let_frequency": _I, "let_relation": _S}),
    "language:response_language": Instruction(_response_language, {"language": _S}),
    "length_constraints:number_sentences": Instruction(_number_sentences,
                                                       {"num_sentences": _I, "relation": _S}),
    "length_constraints:number_paragraphs": Instruction(_number_paragraphs, {"num_paragraphs": _I}),
    "length_constraints:number_words": Instruction(_number_words, {"num_words": _I, "relation": _S}),
    "length_constraints:nth_paragraph_first_word": Instruction(
        _nth_paragraph_first_word, {"num_paragraphs": _I, "nth_paragraph": _I, "first_word": _S}),
    "detectable_content:number_placeholders": Instruction(_number_placeholders, {"num_placeholders": _I}),
    "detectable_content:postscript": Instruction(_postscript, {"postscript_marker": _S}),
    "detectable_format:number_bullet_lists": Instruction(_number_bullet_lists, {"num_bullets": _I}),
    "detectable_format:constrained_response": Instruction(_constrained_response, {}),
    "detectable_format:number_highlighted_sections": Instruction(_number_highlighted_sections,
                                                                 {"num_highlights": _I}),
    "detectable_format:multiple_sections": Instruction(_multiple_sections,
                                                       {"section_spliter": _S, "num_sections": _I}),
    "detectable_format:json_format": Instruction(_json_format, {}),
    "detectable_format:title": Instruction(_title, {}),
    "combination:two_responses": Instruction(_two_responses, {}),
    "combination:repeat_prompt": Instruction(_repeat_prompt, {"prompt_to_repeat": _S}),
    "startend:end_checker": Instruction(_end_checker, {"end_phrase": _S}),
    "startend:quotation": Instruction(_quotation, {}),
    "change_case:capital_word_frequency": Instruction(_capital_word_frequency,
                                                      {"capital_frequency": _I, "capital_relation": _S}),
    "change_case:english_capital": Instruction(_english_capital, {}),
    "change_case:english_lowercase": Instruction(_english_lowercase, {}),
    "punctuation:no_comma": Instruction(_no_comma, {}),
}
_RELATION_KEYS = ("relation", "let_relation", "capital_relation")


def _clean_kwargs(item: dict) -> dict[str, Any]:
    return {k: v for k, v in (item.get("kwargs") or {}).items() if v is not None}


def check_instruction(index: int, item: Any) -> list[Problem]:
    """Problems with one ``{"id", "kwargs"}`` item (unknown id, missing or mistyped kwargs)."""
    where = f"instructions[{index}]"
    if not isinstance(item, dict) or not isinstance(item.get("id"), str):
        return [Problem(f"{where}.id", "missing or not a string")]
    spec = INSTRUCTIONS.get(item["id"])
    if spec is None:
        return [Problem(f"{where}.id", f"unknown IFEval instruction id {item['id']!r}")]
    kwargs = item.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        return [Problem(f"{where}.kwargs", "expected an object")]
    kwargs = _clean_kwargs(item)
    problems = []
    for name, types in spec.kwargs.items():
        if name not in kwargs:
            if name not in spec.optional:
                problems.append(Problem(f"{where}.kwargs.{name}", f"missing (required by {item['id']})"))
            continue
        value = kwargs[name]
        if isinstance(value, bool) or not isinstance(value, types):
            problems.append(Problem(f"{where}.kwargs.{name}",
                                    f"expected {types[0].__name__}, got {type(value).__name__}"))
        elif name in _RELATION_KEYS and value not in RELATIONS:
            problems.append(Problem(f"{where}.kwargs.{name}", f"expected one of {RELATIONS}, got {value!r}"))
        elif types is _L and not all(isinstance(v, str) for v in value):
            problems.append(Problem(f"{where}.kwargs.{name}", "expected a list of strings"))
    if item["id"] == "keywords:letter_frequency" and isinstance(kwargs.get("letter"), str) \
            and len(kwargs["letter"]) != 1:
        problems.append(Problem(f"{where}.kwargs.letter", "expected a single character"))
    return problems


def _loose_variants(text: str) -> list[str]:
    lines = text.split("\n")
    bases = [text, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(),
             "\n".join(lines[1:-1]).strip()]
    return [v for b in bases for v in (b, b.replace("*", "")) if v.strip()]


@register_reward("ifeval")
class IFEvalReward(Reward):
    """Continuous IFEval reward: the fraction of the row's instructions that are followed.

    Args:
        loose: IFEval's "loose" criterion -- an instruction also counts as followed when it holds after
            removing the first and/or last line or the ``*`` markup.
        all_or_nothing: score 1.0 only when every instruction is followed (IFEval "prompt-level").
        max_chars: longer answers score 0 without any check (IFEval's longest requests, 1,200+ words,
            are about 8k characters).

    """

    def __init__(self, loose: bool = False, all_or_nothing: bool = False, max_chars: int = 100_000) -> None:
        self.loose = loose
        self.all_or_nothing = all_or_nothing
        self.max_chars = max_chars

    def validate(self, row: dict) -> list[Problem]:
        """Every instruction id must be known and carry its required kwargs."""
        problems: list[Problem] = []
        for i, item in enumerate(row.get("instructions") or []):
            problems.extend(check_instruction(i, item))
        return problems

    def score(self, response: str, row: dict) -> RewardResult:
        """Score one response; never raises."""
        problems = self.validate(row)
        if problems:
            return RewardResult(0.0, "error", {"reason": "; ".join(map(str, problems))})
        region = answer_region(response)
        if region is None:
            return RewardResult(0.0, "no_answer", {"reason": "unclosed <think> block"})
        if len(region) > self.max_chars:
            reason = f"answer has {len(region)} characters, more than max_chars={self.max_chars}"
            return RewardResult(0.0, "ok", {"path": "limits", "reason": reason})
        text = region.strip()
        if not text:
            return RewardResult(0.0, "no_answer", {"reason": "empty response"})
        variants = _loose_variants(text) if self.loose else [text]
        followed: list[bool] = []
        try:
            for item in row["instructions"]:
                spec = INSTRUCTIONS[item["id"]]
                kwargs = _clean_kwargs(item)
                followed.append(any(spec.check(v, kwargs) for v in variants))
        except Exception as exc:
            reason = f"check {item['id']!r} raised {type(exc).__name__}: {exc}"
            return RewardResult(0.0, "error", {"reason": reason[:500]})
        frac = sum(followed) / len(followed)
        value = float(all(followed)) if self.all_or_nothing else frac
        return RewardResult(value, "ok", {"followed": followed, "fraction": frac})
