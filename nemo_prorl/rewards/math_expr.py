r"""Normalisation and a small exact evaluator for final math answers (the reward's fast path).

The fast path decides the common cases without sympy: two answers that normalise to the same string, or
that evaluate to the same value (exactly, with :class:`fractions.Fraction`, when only rational
arithmetic is involved; with 60-digit :mod:`mpmath` arithmetic at fixed sample points when ``\sqrt``,
``\pi`` or variables appear), are equal; two that clearly differ are not. Anything outside the small
grammar below -- or any value comparison that is close but not equal -- returns ``None`` and the caller
falls back to math-verify. The grammar never evaluates model text as code.

Grammar (after :func:`normalize`)::

    expr   := term (("+" | "-") term)*
    term   := unary (("*" | "/" | \cdot | \times | \div | <implicit>) unary)*
    unary  := ("-" | "+") unary | power
    power  := atom ("^" group)?
    atom   := number | letter | \pi | \frac group group | \sqrt ("[" expr "]")? group | "(" expr ")" | group
    group  := "{" expr "}" | digit | letter

Implicit multiplication never starts with a number (``1 2`` is not 12 and not 2), and a number directly
followed by ``\frac`` (a mixed number such as ``2\frac{1}{2}``) is left to math-verify.
"""

from __future__ import annotations

import re
from fractions import Fraction

import mpmath

_MP = mpmath.mp
_DPS = 60
# Variables allowed in the fast path: lowercase letters except e and i (Euler's number / imaginary unit).
_VARS = frozenset("abcdfghjklmnopqrstuvwxyz")
# Fixed, generic sample points for expressions with variables (one dict per point).
_POINTS = (0.7315, 1.4142, 2.2361)
_MAX_MAGNITUDE = 10**30
_MAX_EXPONENT = 64
_MAX_DIGITS = 18

# ---------------------------------------------------------------------------------------------- normalise

_THOUSANDS_THIN = re.compile(r"(?<=\d)(?:\\,|\\;|\\ |\{,\}|~)(?=\d{3}(?!\d))")
_PLAIN_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_SPACE_CMDS = re.compile(r"\\(?:,|;|:|quad|qquad| )|~")
_DEGREE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree")
_TEXT_UNIT = re.compile(
    r"^(?P<value>.*?[0-9}])\s*\\(?:text|mbox|mathrm)\{\s*(?P<unit>[A-Za-z][A-Za-z ./^0-9]*)\}$")
_CONNECTIVES = frozenset({"or", "and", "either", "not", "nor", "but", "both", "neither", "to", "vs"})


def fix_thousands(s: str) -> str:
    r"""Remove thousands separators written as ``\,``, ``{,}``, ``\;`` or ``~`` between digit groups.

    ``1\,000`` -> ``1000``; ``871{,}408`` -> ``871408``; a whole answer ``1,234,567`` -> ``1234567``.
    Separators not followed by exactly three digits are left alone.
    """
    s = _THOUSANDS_THIN.sub("", s)
    if _PLAIN_THOUSANDS.match(s):
        s = s.replace(",", "")
    return s


def clean_latex(s: str) -> str:
    r"""Light clean-up that keeps the meaning: thousands separators, spacing commands, ``\left/\right``.

    This is what math-verify receives when the fast path cannot decide.
    """
    s = s.strip().strip("$").strip()
    s = fix_thousands(s)
    s = s.replace("\\!", "")
    s = _SPACE_CMDS.sub(" ", s)
    s = re.sub(r"\\left\.|\\right\.", "", s)
    s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\displaystyle", "")
    return s.strip()


def normalize(s: str) -> tuple[str, bool]:
    r"""Normalise a final answer for string comparison and the evaluator.

    Returns:
        ``(normalised, had_degree)``: spaces removed except between two digits, trailing ``.``
        dropped, a trailing ``\text{unit}`` dropped when the unit is a plain word (never ``or``,
        ``and``...), ``^\circ`` removed (``had_degree`` says it was there).

    """
    s = clean_latex(s)
    had_degree = bool(_DEGREE.search(s))
    if had_degree:
        s = _DEGREE.sub("", s)
    m = _TEXT_UNIT.match(s)
    if m and not (set(m.group("unit").lower().split()) & _CONNECTIVES):
        s = m.group("value")
    s = s.rstrip(". ").strip()
    s = re.sub(r"(?<=\d)\s+(?=\d)", "\x00", s)
    s = re.sub(r"\s+", "", s).replace("\x00", " ")
    if s.startswith("{") and s.endswith("}") and _balanced_inner(s):
        s = s[1:-1]
    return s, had_degree


def _balanced_inner(s: str) -> bool:
    depth = 0
    for k, c in enumerate(s):
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0 and k != len(s) - 1:
                return False
    return depth == 0


# ------------------------------------------------------------------------------------------------ tokens

_TOKEN = re.compile(
    r"(?P<num>\d+(?:\.\d+)?|\.\d+)|(?P<cmd>\\[A-Za-z]+)|(?P<op>[-+*/^(){}\[\]])|(?P<var>[A-Za-z])|(?P<sp> )"
)
_KNOWN_CMDS = frozenset({"\\frac", "\\sqrt", "\\pi", "\\cdot", "\\times", "\\div"})


class Unsupported(Exception):
    """The answer is outside the fast path's grammar; fall back to math-verify."""


def _tokenize(s: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if not m:
            raise Unsupported(f"character {s[pos]!r}")
        kind = m.lastgroup or ""
        text = m.group(0)
        if kind == "cmd" and text not in _KNOWN_CMDS:
            raise Unsupported(text)
        if kind == "num" and len(text) > _MAX_DIGITS:
            raise Unsupported("number too long")
        if kind == "var" and text not in _VARS:
            raise Unsupported(f"letter {text!r}")
        out.append((kind, text))
        pos = m.end()
    return out


# --------------------------------------------------------------------------------------------------- AST
# Nodes are tuples: ("num", Fraction) | ("var", name) | ("pi",) | (op, left, right) | ("neg", x) |
# ("sqrt", x) | ("root", n, x)


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.toks = tokens
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, text: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (text is not None and tok[1] != text):
            raise Unsupported(f"expected {text!r}")
        self.i += 1
        return tok

    def parse(self) -> tuple:
        node = self.expr()
        if self.peek() is not None:
            raise Unsupported(f"trailing {self.peek()[1]!r}")
        return node

    def expr(self) -> tuple:
        node = self.term()
        while (tok := self.peek()) is not None and tok[1] in ("+", "-"):
            self.i += 1
            node = ("add" if tok[1] == "+" else "sub", node, self.term())
        return node

    def term(self) -> tuple:
        node = self.unary()
        while (tok := self.peek()) is not None:
            if tok[1] in ("*", "\\cdot", "\\times"):
                self.i += 1
                node = ("mul", node, self.unary())
            elif tok[1] in ("/", "\\div"):
                self.i += 1
                node = ("div", node, self.unary())
            elif tok[0] == "num" or tok[0] == "sp":
                raise Unsupported("number juxtaposed with a number")
            elif tok[0] in ("var", "cmd") or tok[1] in ("(", "{"):
                if tok[1] == "\\frac" and node[0] == "num":
                    raise Unsupported("mixed number")
                node = ("mul", node, self.power())
            else:
                break
        return node

    def unary(self) -> tuple:
        tok = self.peek()
        if tok is not None and tok[1] in ("-", "+"):
            self.i += 1
            inner = self.unary()
            return ("neg", inner) if tok[1] == "-" else inner
        return self.power()

    def power(self) -> tuple:
        base = self.atom()
        tok = self.peek()
        if tok is not None and tok[1] == "^":
            self.i += 1
            return ("pow", base, self.group())
        return base

    def group(self) -> tuple:
        tok = self.take()
        if tok[1] == "{":
            node = self.expr()
            self.take("}")
            return node
        if tok[0] == "num" and len(tok[1]) == 1:
            return ("num", Fraction(tok[1]))
        if tok[0] == "var":
            return ("var", tok[1])
        if tok[1] == "\\pi":
            return ("pi",)
        raise Unsupported("group")

    def atom(self) -> tuple:
        tok = self.take()
        kind, text = tok
        if kind == "num":
            return ("num", Fraction(text))
        if kind == "var":
            return ("var", text)
        if text == "\\pi":
            return ("pi",)
        if text == "\\frac":
            return ("div", self.group(), self.group())
        if text == "\\sqrt":
            nxt = self.peek()
            if nxt is not None and nxt[1] == "[":
                self.i += 1
                index = self.expr()
                self.take("]")
                return ("root", index, self.group())
            return ("sqrt", self.group())
        if text == "(":
            node = self.expr()
            self.take(")")
            return node
        if text == "{":
            node = self.expr()
            self.take("}")
            return node
        raise Unsupported(f"unexpected {text!r}")


def parse_answer(s: str) -> tuple:
    """Parse a normalised answer into the fast path's AST; raises :class:`Unsupported`."""
    if not s:
        raise Unsupported("empty")
    return _Parser(_tokenize(s)).parse()


def _free_vars(node: tuple) -> set[str]:
    if node[0] == "var":
        return {node[1]}
    out: set[str] = set()
    for child in node[1:]:
        if isinstance(child, tuple):
            out |= _free_vars(child)
    return out


def _is_exact(node: tuple) -> bool:
    if node[0] in ("var", "pi", "sqrt", "root"):
        return False
    return all(_is_exact(c) for c in node[1:] if isinstance(c, tuple))


def _eval_exact(node: tuple) -> Fraction:
    op = node[0]
    if op == "num":
        return node[1]
    if op == "neg":
        return -_eval_exact(node[1])
    a = _eval_exact(node[1])
    b = _eval_exact(node[2])
    if op == "add":
        r = a + b
    elif op == "sub":
        r = a - b
    elif op == "mul":
        r = a * b
    elif op == "div":
        if b == 0:
            raise Unsupported("division by zero")
        r = a / b
    elif op == "pow":
        if b.denominator != 1 or abs(b.numerator) > _MAX_EXPONENT or (a == 0 and b < 0):
            raise Unsupported("exponent")
        r = a ** int(b)
    else:  # pragma: no cover - every op of the grammar is handled above
        raise Unsupported(op)
    if abs(r.numerator) > _MAX_MAGNITUDE * r.denominator or r.denominator > _MAX_MAGNITUDE:
        raise Unsupported("magnitude")
    return r


def _eval_mp(node: tuple, env: dict[str, object]):
    op = node[0]
    ctx = _MP
    if op == "num":
        return ctx.mpf(node[1].numerator) / node[1].denominator
    if op == "var":
        return env[node[1]]
    if op == "pi":
        return +ctx.pi
    if op == "neg":
        return -_eval_mp(node[1], env)
    if op == "sqrt":
        x = _eval_mp(node[1], env)
        if x < 0:
            raise Unsupported("sqrt of a negative")
        return ctx.sqrt(x)
    a = _eval_mp(node[1], env)
    b = _eval_mp(node[2], env)
    if op == "root":
        if a != int(a) or a < 2 or a > _MAX_EXPONENT or b < 0:
            raise Unsupported("root")
        return ctx.root(b, int(a))
    if op == "add":
        r = a + b
    elif op == "sub":
        r = a - b
    elif op == "mul":
        r = a * b
    elif op == "div":
        if b == 0:
            raise Unsupported("division by zero")
        r = a / b
    elif op == "pow":
        if abs(b) > _MAX_EXPONENT or (a <= 0 and b != int(b)) or (a == 0 and b < 0):
            raise Unsupported("exponent")
        r = ctx.power(a, b)
    else:  # pragma: no cover
        raise Unsupported(op)
    if abs(r) > _MAX_MAGNITUDE:
        raise Unsupported("magnitude")
    return r


def compare_values(gold: str, pred: str) -> bool | None:
    """Fast-path verdict on two normalised answers.

    Returns:
        ``True`` (equal), ``False`` (clearly different: two rationals that differ, a decimal more
        than 2e-6 away, or a relative difference above 1e-4 at some sample point with the same free
        variables) or ``None`` (outside the grammar, different variable
        sets, or too close to call -- e.g. ``0.333333`` vs ``1/3``, which math-verify's rounding
        rules decide).

    """
    try:
        g = parse_answer(gold)
        p = parse_answer(pred)
    except (Unsupported, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    gv, pv = _free_vars(g), _free_vars(p)
    if gv != pv:
        return None
    try:
        if not gv and _is_exact(g) and _is_exact(p):
            a, b = _eval_exact(g), _eval_exact(p)
            if a == b:
                return True
            if "." not in gold and "." not in pred:
                # Only rationals: math-verify compares them exactly as well.
                return False
            # A decimal literal: math-verify rounds both to 6 places, so a gap above 1e-6 can never
            # round to equal values.
            return False if abs(a - b) > Fraction(2, 10**6) else None
        with _MP.workdps(_DPS):
            names = sorted(gv)
            verdict: bool | None = True
            for k in range(len(_POINTS)):
                env = {v: _MP.mpf(_POINTS[(k + j) % len(_POINTS)]) + j for j, v in enumerate(names)}
                a, b = _eval_mp(g, env), _eval_mp(p, env)
                scale = max(1, abs(a), abs(b))
                diff = abs(a - b)
                if diff > scale * _MP.mpf("1e-4"):
                    return False
                if diff > scale * _MP.mpf("1e-40"):
                    verdict = None
                if not gv:
                    break
            return verdict
    except (Unsupported, ValueError, ZeroDivisionError, OverflowError, RecursionError, TypeError):
        return None
