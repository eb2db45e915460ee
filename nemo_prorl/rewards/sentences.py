r"""English sentence splitting as IFEval's reference checker does it, offline and in linear time.

Google's IFEval checker (``instruction_following_eval/instructions_util.py::count_sentences``) splits
with nltk's Punkt tokenizer and its pretrained English model. This module reimplements the Punkt
*decision procedure* (Kiss & Strunk 2006, as nltk applies it in ``nltk/tokenize/punkt.py``:
``PunktSentenceTokenizer._match_potential_end_contexts``, ``text_contains_sentbreak``,
``_first_pass_annotation``, ``_second_pass_annotation``, ``_ortho_heuristic``,
``_realign_boundaries``) over the same English parameters, shipped as package data in
:mod:`nemo_prorl.rewards.punkt_english`. No nltk, no data download, nothing loaded at run time but that
module.

The behaviour that matters for IFEval's ``number_sentences``:

* only ``.``, ``?`` and ``!`` end sentences, and only when followed by whitespace and a token or by a
  closing/other punctuation mark -- a line break alone never does, so a heading or a list item without a
  full stop is part of the next sentence (padding with short lines does not add sentences);
* a period after a known abbreviation (``Dr.``, ``e.g.``) ends nothing unless the next word is a likely
  sentence starter (orthographic evidence from the model); after an initial (``J.``) or a number
  (``1.``) it ends a sentence unless the next word's orthography says otherwise;
* closing quotes and brackets after the end mark stay with the sentence.

Cost: one regex scan for candidate ends plus a bounded amount of work per candidate (the context is
the word before and the token after), so splitting is linear in the text length.
"""

from __future__ import annotations

import re
from functools import lru_cache

from nemo_prorl.rewards import punkt_english as _model

# Orthographic context flags (as in the Punkt model's ``ortho_context`` table).
_BEG_UC, _MID_UC, _UNK_UC = 1 << 1, 1 << 2, 1 << 3
_BEG_LC, _MID_LC, _UNK_LC = 1 << 4, 1 << 5, 1 << 6
_ORTHO_UC = _BEG_UC | _MID_UC | _UNK_UC
_ORTHO_LC = _BEG_LC | _MID_LC | _UNK_LC

_SENT_END = ".?!"
# Curly quotes and guillemets count as closing punctuation, as in nltk 3.10 (older nltk treated them as
# word characters; both give the same verdicts on IFEval's published responses).
_QUOTES = "\u2018\u2019\u201c\u201d\xab\xbb"
_NON_WORD = rf"(?:[)\";}}\]\*:@\'\({{\[{_QUOTES}!?])"
_MULTI_CHAR = r"(?:\-{2,}|\.{2,}|(?:\.\s){2,}\.)"
_WORD_START = r"[^\(\"\`{\[:;&\#\*@\)}\]\-,]"
_WORD_TOKEN = re.compile(
    rf"""(
        {_MULTI_CHAR}
        |
        (?={_WORD_START})\S+?
        (?=\s|$|{_NON_WORD}|{_MULTI_CHAR}|,(?=$|\s|{_NON_WORD}|{_MULTI_CHAR}))
        |
        \S
    )""",
    re.UNICODE | re.VERBOSE,
)
_PERIOD_CONTEXT = re.compile(
    rf"""[.?!](?=(?P<after_tok>{_NON_WORD}|\s+(?P<next_tok>\S+)))""",
    re.UNICODE | re.VERBOSE,
)
_REALIGN = re.compile(rf'["\')\]}}{_QUOTES}]+?(?:\s+|(?=--)|$)', re.MULTILINE)
_NUMERIC = re.compile(r"^-?[\.,]?\d[\d,\.-]*\.?$")
_INITIAL = re.compile(r"[^\W\d]\.$")
_ELLIPSIS = re.compile(r"\.\.+$")
_WHITESPACE = " \t\n\r\x0b\x0c"


@lru_cache(maxsize=1)
def _tables() -> tuple[frozenset[str], frozenset[str], frozenset[tuple[str, str]], dict[str, int]]:
    abbrev = frozenset(_model.ABBREV_TYPES.split())
    starters = frozenset(_model.SENT_STARTERS.split())
    colloc = frozenset(tuple(line.split(" ")) for line in _model.COLLOCATIONS.strip().splitlines())
    ortho = {}
    for line in _model.ORTHO_CONTEXT.strip().splitlines():
        word, flags = line.rsplit(" ", 1)
        ortho[word] = int(flags)
    return abbrev, starters, colloc, ortho  # type: ignore[return-value]


class _Tok:
    """One word token of a candidate context, with the annotations Punkt gives it."""

    __slots__ = ("abbr", "ellipsis", "sentbreak", "tok", "type")

    def __init__(self, tok: str) -> None:
        self.tok = tok
        self.type = _NUMERIC.sub("##number##", tok.lower())
        self.sentbreak = False
        self.abbr = False
        self.ellipsis = False

    @property
    def type_no_period(self) -> str:
        return self.type[:-1] if len(self.type) > 1 and self.type[-1] == "." else self.type

    @property
    def type_no_sentperiod(self) -> str:
        return self.type_no_period if self.sentbreak else self.type


def _ortho_says_starter(tok: _Tok, ortho: dict[str, int]) -> bool | None:
    """Orthographic heuristic: whether ``tok`` starts a sentence (``None``: no evidence either way)."""
    if tok.tok in ";:,.!?":
        return False
    ctx = ortho.get(tok.type_no_sentperiod, 0)
    first = tok.tok[0]
    if first.isupper() and ctx & _ORTHO_LC and not ctx & _MID_UC:
        return True
    if first.islower() and (ctx & _ORTHO_UC or not ctx & _BEG_LC):
        return False
    return None


def _annotate(tokens: list[_Tok]) -> None:
    abbrev, starters, colloc, ortho = _tables()
    for t in tokens:  # first pass: periods, abbreviations, ellipses
        tok = t.tok
        if tok in _SENT_END:
            t.sentbreak = True
        elif _ELLIPSIS.match(tok):
            t.ellipsis = True
        elif tok.endswith(".") and not tok.endswith(".."):
            stem = tok[:-1].lower()
            if stem in abbrev or stem.split("-")[-1] in abbrev:
                t.abbr = True
            else:
                t.sentbreak = True
    for t1, t2 in zip(tokens, tokens[1:]):  # second pass: context of the next token
        if not t1.tok.endswith("."):
            continue
        typ, next_typ = t1.type_no_period, t2.type_no_sentperiod
        initial = bool(_INITIAL.match(t1.tok))
        if (typ, next_typ) in colloc:
            t1.sentbreak, t1.abbr = False, True
            continue
        if (t1.abbr or t1.ellipsis) and not initial:
            starter = _ortho_says_starter(t2, ortho)
            if starter is True or (t2.tok[0].isupper() and next_typ in starters):
                t1.sentbreak = True
                continue
        if initial or typ == "##number##":
            starter = _ortho_says_starter(t2, ortho)
            if starter is False or (starter is None and initial and t2.tok[0].isupper()
                                    and not ortho.get(next_typ, 0) & _ORTHO_LC):
                t1.sentbreak, t1.abbr = False, True


def _context_has_break(context: str) -> bool:
    tokens = []
    for line in context.split("\n"):
        tokens.extend(_Tok(m.group(1)) for m in _WORD_TOKEN.finditer(line))
    _annotate(tokens)
    return any(t.sentbreak for t in tokens[:-1])


def _last_whitespace(text: str) -> int:
    for i in range(len(text) - 1, -1, -1):
        if text[i] in _WHITESPACE:
            return i
    return 0


def _candidate_ends(text: str):
    """``(match, context)`` for each potential sentence end, Punkt's way (one per word)."""
    prev_slice = (0, 0)
    prev_match = None
    for m in _PERIOD_CONTEXT.finditer(text):
        before = text[prev_slice[1]:m.start()]
        ws = _last_whitespace(before)
        start = ws + prev_slice[1] + 1 if ws else prev_slice[0]
        word = (start, m.start())
        if prev_match is not None and prev_slice[1] <= word[0]:
            yield prev_match, _context(text, prev_slice, prev_match)
        prev_match, prev_slice = m, word
    if prev_match is not None:
        yield prev_match, _context(text, prev_slice, prev_match)


def _context(text: str, word: tuple[int, int], m: re.Match) -> str:
    return text[word[0]:word[1]] + m.group() + m.group("after_tok")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each sentence of ``text`` (Punkt English, as IFEval's reference counts)."""
    slices = []
    last = 0
    for m, context in _candidate_ends(text):
        if _context_has_break(context):
            slices.append((last, m.end()))
            last = m.start("next_tok") if m.group("next_tok") else m.end()
    slices.append((last, len(text.rstrip())))
    out = []
    realign = 0
    for k, (s1, e1) in enumerate(slices):
        s1 += realign
        if k + 1 == len(slices):
            if text[s1:e1]:
                out.append((s1, e1))
            continue
        s2, e2 = slices[k + 1]
        m = _REALIGN.match(text[s2:e2])
        if m:
            out.append((s1, s2 + len(m.group(0).rstrip())))
            realign = m.end()
        else:
            realign = 0
            if text[s1:e1]:
                out.append((s1, e1))
    return out


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` (see :func:`sentence_spans`)."""
    return [text[s:e] for s, e in sentence_spans(text)]


def count_sentences(text: str) -> int:
    """Number of sentences, as ``instructions_util.count_sentences`` of the IFEval reference."""
    return len(sentence_spans(text))
