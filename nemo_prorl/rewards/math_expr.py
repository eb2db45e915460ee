r"""Normalisation and an exact evaluator for final math answers (the reward's fast path).

The fast path decides only what it can decide exactly, without sympy:

* **Constants** built from rationals, ``\pi`` and square roots of rationals are put in a canonical form:
  a sum of ``c * pi**k * sqrt(m)`` with rational ``c``, integer ``k`` and square-free ``m``. Those
  monomials are linearly independent over the rationals (``pi`` is transcendental, and square roots of
  distinct square-free integers are independent), so two constants are equal **iff** their canonical
  forms are equal -- ``2\sqrt{3}`` = ``\sqrt{12}``, ``\frac{3\pi}{4}`` = ``\frac{3}{4}\pi``, exactly.
* **Expressions with variables** (rational functions of case-sensitive single-letter variables, with
  the same constant monomials as coefficients) are compared by Schwartz--Zippel identity testing: each
  coefficient is evaluated modulo a random 61-bit prime ``P`` at ``_SZ_POINTS`` independent uniformly
  random points. If ``D`` bounds the degree of the difference's numerator (computed from the syntax tree
  and capped at ``_MAX_DEGREE``), a non-identity survives one point with probability at most ``D / P``
  (``< 1e5 / 2**60 < 1e-13``); with 3 points the chance of calling two different expressions equal is
  below ``1e-39``, plus the chance that ``P`` divides every integer coefficient of the difference
  (a random prime among ~2.7e16 candidates: below ``1e-14`` for any answer the grammar admits). Points
  where a denominator vanishes are redrawn. The prime and the points come from the OS random source, so
  a policy cannot aim at them.
* Anything else -- square roots of variables, non-integer exponents of variables, nested radicals,
  ``\sqrt[n]{}``, division by a sum with radicals, decimals that are close but not equal (math-verify
  rounds to 6 places), huge numbers -- returns ``None`` and the caller falls back to math-verify.

Text answers (a word such as ``east``, a letter such as ``X``, ``\text{...}``) are compared as text,
case-sensitively: :func:`text_answer` / :func:`compare_text`. Letters are never commuting products
there (``god`` is not ``dog``).

Grammar (after :func:`normalize`)::

    expr   := term (("+" | "-") term)*
    term   := unary (("*" | "/" | \cdot | \times | \div | <implicit>) unary)*
    unary  := ("-" | "+") unary | power
    power  := atom ("^" group)?
    atom   := number | letter | \pi | \frac group group | \sqrt ("[" expr "]")? group | "(" expr ")" | group
    group  := "{" expr "}" | digit | letter

Implicit multiplication never starts with a number (``1 2`` is not 12 and not 2), and a number directly
followed by ``\frac`` (a mixed number such as ``2\frac{1}{2}``) is left to math-verify. The grammar never
evaluates model text as code; every size (digits, exponents, degree, terms, radicands) is bounded before
any arithmetic.
"""

from __future__ import annotations

import math
import random
import re
from fractions import Fraction

# Variables allowed in the fast path: letters except e, i, E, I (Euler's number / imaginary unit / their
# look-alikes); case matters (``X`` and ``x`` are different variables).
_VARS = frozenset("abcdfghjklmnopqrstuvwxyzABCDFGHJKLMNOPQRSTUVWXYZ")
_MAX_EXPONENT = 10_000       # |n| of x^n (the rational bound _MAX_BITS usually stops it first)
_MAX_PI_POWER = 64
_MAX_DIGITS = 18             # digits of one number literal
_MAX_BITS = 4000             # numerator/denominator size of an exact rational (about 1200 digits)
_MAX_TERMS = 64              # monomials c * pi^k * sqrt(m) in one value
_MAX_RADICAND = 10**12       # square roots are reduced by exact trial division below this
_MAX_DEGREE = 100_000        # degree bound of an identity tested by Schwartz--Zippel
_SZ_POINTS = 3               # independent random points per identity test
_RNG = random.SystemRandom()

# ---------------------------------------------------------------------------------------------- normalise

_THOUSANDS_THIN = re.compile(r"(?<=\d)(?:,\\!\s?|\\,|\\;|\\ |\{,\}|~)(?=\d{3}(?!\d))")
_PLAIN_THOUSANDS = re.compile(r"^-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?$")
_SPACE_THOUSANDS = re.compile(r"^-?[1-9]\d{0,2}(?: \d{3})+(?:\.\d+)?$")
_SPACE_CMDS = re.compile(r"\\(?:,|;|:|quad|qquad| )|~")
_DEGREE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree")
_TEXT_UNIT = re.compile(
    r"^(?P<value>.*?[0-9}])\s*\\(?:text|mbox|mathrm)\{\s*(?P<unit>[A-Za-z][A-Za-z ./^0-9]*)\}$")
_CONNECTIVES = frozenset({"or", "and", "either", "not", "nor", "but", "both", "neither", "to", "vs"})


def fix_thousands(s: str) -> str:
    r"""Remove thousands separators between digit groups.

    Separators: ``,\!`` (the MATH dataset's), ``\,``, ``{,}``, ``\;``, ``~``.

    ``10,\!000`` -> ``10000``; ``1\,000`` -> ``1000``; ``871{,}408`` -> ``871408``; a whole answer
    ``1,234,567`` or ``1 234 567`` -> ``1234567``. Separators not followed by exactly three digits are
    left alone, and so is a leading ``0,`` (``0,111`` is a decimal comma, see :func:`decimal_comma`).
    """
    s = _THOUSANDS_THIN.sub("", s)
    if _PLAIN_THOUSANDS.match(s):
        s = s.replace(",", "")
    elif _SPACE_THOUSANDS.match(s):
        s = s.replace(" ", "")
    return s


_DECIMAL_COMMA = re.compile(r"-?\d+,\d+")
_DECIMAL_POINT = re.compile(r"-?\d+\.\d+")


def decimal_comma(gold: str, pred: str) -> tuple[str, str]:
    """Read ``a,b`` as the decimal ``a.b`` when the other answer is written ``a.b`` with the same digits.

    ``0,111`` vs ``0.111`` and ``1000,99`` vs ``1000.99`` become equal; ``2,5`` against a gold ``2,5``
    (a list) or ``2.50`` is left alone. Returns the two answers, one of them possibly rewritten.
    """
    g, p = gold.strip(), pred.strip()
    if _DECIMAL_COMMA.fullmatch(p) and _DECIMAL_POINT.fullmatch(g) and p.replace(",", ".") == g:
        return gold, g
    if _DECIMAL_COMMA.fullmatch(g) and _DECIMAL_POINT.fullmatch(p) and g.replace(",", ".") == p:
        return p, pred
    return gold, pred


def clean_latex(s: str) -> str:
    r"""Light clean-up that keeps the meaning: thousands separators, spacing commands, ``\left/\right``.

    This is what math-verify receives when the fast path cannot decide.
    """
    s = s.strip().strip("$").strip()
    s = fix_thousands(s)
    s = s.replace("\\!", "").replace("\\%", "%")
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
        ``and``...), ``^\circ`` removed (``had_degree`` says it was there), a trailing percent sign
        removed (see :func:`split_percent`).

    """
    s = clean_latex(s)
    had_degree = bool(_DEGREE.search(s))
    if had_degree:
        s = _DEGREE.sub("", s)
    s, _ = split_percent(s)
    m = _TEXT_UNIT.match(s)
    if m and not (set(m.group("unit").lower().split()) & _CONNECTIVES):
        s = m.group("value")
    s = s.rstrip(". ").strip()
    s = re.sub(r"\\(?:cdot|times)(?![A-Za-z])", "*", s).replace("\\div", "/")
    s = re.sub(r"\\pi\s+(?=[A-Za-z])", r"\\pi*", s)  # "\pi x" must not become the command "\pix"
    s = re.sub(r"(?<=\d)\s+(?=\d)", "\x00", s)
    s = re.sub(r"\s+", "", s).replace("\x00", " ")
    if s.startswith("{") and s.endswith("}") and _balanced_inner(s):
        s = s[1:-1]
    return s, had_degree


_PERCENT = re.compile(
    r"(?<=[\d}) ])\s*(?:%|\\text\{\s*(?:percent|percentage|pct)\s*\}|(?:percent|percentage|pct)\b)[.\s]*$")


def split_percent(s: str) -> tuple[str, bool]:
    r"""``("20", True)`` for ``20%``, ``20 \%`` (after :func:`clean_latex`), ``20 percent``, ``20 pct``.

    Otherwise ``(s, False)``.

    A percent answer and the bare number are the same answer here (the MATH convention: "what percent"
    is answered ``20`` or ``20\%``); ``0.2`` vs ``20\%`` is not decided by the fast path.
    """
    m = _PERCENT.search(s)
    if m and s[:m.start()].strip() and "%" not in s[:m.start()]:
        return s[:m.start()].strip(), True
    return s, False


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


class TooLarge(Unsupported):
    """A number, exponent, degree or term count of the answer is past the evaluator's bounds."""


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
            raise TooLarge("number too long")
        if kind == "var" and text not in _VARS:
            raise Unsupported(f"letter {text!r}")
        out.append((kind, text))
        pos = m.end()
    return out


# ------------------------------------------------------------------------------------------ text answers

_TEXT_WRAP = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mathit|operatorname|mbox)\{([^{}]*)\}")
_LETTERS_ONLY = re.compile(r"\(?([A-Za-z]+(?: [A-Za-z]+)*)\)?")


def text_answer(s: str) -> str | None:
    r"""The answer as text when it is only letters (a word, a name, one letter), else ``None``.

    ``\text{East}`` -> ``East``; ``(C)`` -> ``C``; ``dog`` -> ``dog``; ``x`` -> ``x``; ``2x`` -> ``None``.
    Case is kept: the comparison is case-sensitive.
    """
    t = _TEXT_WRAP.sub(lambda m: m.group(1), s.strip().strip("$")).strip().rstrip(".").strip()
    t = re.sub(r"\s+", " ", t)
    m = _LETTERS_ONLY.fullmatch(t)
    return m.group(1) if m else None


def compare_text(gold: str, pred: str) -> bool | None:
    """Verdict for text answers: ``None`` unless one side is a word of 2+ letters or both are letters.

    A word is never a product of commuting variables: ``god`` != ``dog``, ``seat`` != ``east``, ``xy``
    != ``yx`` (math-verify reads all three as equal), and ``X`` != ``x``; only a sentence-initial capital
    of a longer word is forgiven (``Monday`` = ``monday``). Two single letters are decided
    here too (case-sensitive); a single-letter gold against an expression (``x`` vs ``1x``) is left to
    the evaluator.
    """
    tg, tp = text_answer(gold), text_answer(pred)
    if tg is None and tp is None:
        return None
    if tg is not None and tp is not None:
        if tg == tp:
            return True
        # A word capitalised at the start of a sentence is the same word ("Monday" / "monday"): only
        # the first letter may differ in case, and only in a word of 3+ letters that is lowercase after
        # it -- single letters and runs of capitals are variables and keep their case.
        return (len(tg) >= 3 and tg[1:] == tp[1:] and tg[1:].islower() and " " not in tg + tp
                and tg[0].lower() == tp[0].lower())
    word = tg if tg is not None else tp
    return False if len(word.replace(" ", "")) >= 2 else None


def letters_differ_only_in_case(gold: str, pred: str) -> bool:
    r"""True when the answers use the same letters up to case, but not the same letters.

    ``X^2`` vs ``x^2``: different variables, whatever math-verify (which lowercases) would say.
    Command names (``\frac``) and ``\text{}`` contents are ignored.
    """

    def letters(s: str) -> set[str]:
        s = _TEXT_WRAP.sub("", s)
        s = re.sub(r"\\[A-Za-z]+", "", s)
        return set(re.findall(r"[A-Za-z]", s))
    lg, lp = letters(gold), letters(pred)
    return lg != lp and {c.lower() for c in lg} == {c.lower() for c in lp}


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


def _free_vars(node: tuple) -> frozenset[str]:
    if node[0] == "var":
        return frozenset(node[1])
    out: frozenset[str] = frozenset()
    for child in node[1:]:
        if isinstance(child, tuple):
            out |= _free_vars(child)
    return out


def _has_decimal(s: str) -> bool:
    return re.search(r"\d\.\d|(?<!\d)\.\d", s) is not None


# ------------------------------------------------------------------------------------ exact arithmetic
# A value is a dict {(k, m): c} meaning sum(c * pi**k * sqrt(m)), m square-free >= 1, c != 0. With no
# variables c is a Fraction; with variables c is an int modulo the prime P of the current test.

_SMALL_PRIMES: list[int] = []


def _small_primes() -> list[int]:
    if not _SMALL_PRIMES:
        limit = 10_001
        sieve = bytearray([1]) * limit
        sieve[0:2] = b"\x00\x00"
        for i in range(2, int(limit**0.5) + 1):
            if sieve[i]:
                sieve[i * i::i] = bytearray(len(sieve[i * i::i]))
        _SMALL_PRIMES.extend(i for i in range(limit) if sieve[i])
    return _SMALL_PRIMES


def squarefree_split(n: int) -> tuple[int, int]:
    """``(s, m)`` with ``n == s*s*m`` and ``m`` square-free, for ``1 <= n <= _MAX_RADICAND``.

    Exact: after dividing out primes below 10**4 the cofactor is below 10**12 with no factor below
    10**4, so it is 1, a prime, a product of two distinct primes, or a prime squared (checked).
    """
    if not 1 <= n <= _MAX_RADICAND:
        raise TooLarge("radicand")
    s = 1
    for p in _small_primes():
        if p * p > n:
            break
        pp = p * p
        while n % pp == 0:
            n //= pp
            s *= p
    r = math.isqrt(n)
    if r > 1 and r * r == n:
        return s * r, 1
    return s, n


def _is_probable_prime(n: int) -> bool:
    if n < 2:
        return False
    for p in _small_primes()[:50]:
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d //= 2
        r += 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):  # deterministic below 3.3e24
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


_PRIMES: list[int] = []


def _random_prime() -> int:
    """A uniformly chosen prime from a per-process pool of 16 random primes in [2**60, 2**61)."""
    while len(_PRIMES) < 16:
        c = _RNG.randrange(2**60, 2**61) | 1
        if _is_probable_prime(c):
            _PRIMES.append(c)
    return _RNG.choice(_PRIMES)


class _Field:
    """Coefficient arithmetic: exact rationals (``mod=None``) or integers modulo a prime."""

    def __init__(self, mod: int | None) -> None:
        self.mod = mod

    def lift(self, q: Fraction):
        if self.mod is None:
            return q
        den = q.denominator % self.mod
        if den == 0:
            raise _Pole()
        return q.numerator * pow(den, -1, self.mod) % self.mod

    def norm(self, c):
        if self.mod is None:
            if c.numerator.bit_length() > _MAX_BITS or c.denominator.bit_length() > _MAX_BITS:
                raise TooLarge("magnitude")
            return c
        return c % self.mod

    def inv(self, c):
        if self.mod is None:
            if c == 0:
                raise Unsupported("division by zero")
            return 1 / c
        if c % self.mod == 0:
            raise _Pole()
        return pow(c, -1, self.mod)


class _Pole(Exception):
    """A denominator vanished at the sampled point (modulo P): draw another point."""


def _add(f: _Field, a: dict, b: dict, sign: int = 1) -> dict:
    out = dict(a)
    for key, c in b.items():
        v = f.norm(out.get(key, 0) + sign * c)
        if v:
            out[key] = v
        else:
            out.pop(key, None)
    if len(out) > _MAX_TERMS:
        raise TooLarge("terms")
    return out


def _mul(f: _Field, a: dict, b: dict) -> dict:
    if len(a) * len(b) > _MAX_TERMS * 4:
        raise TooLarge("terms")
    out: dict = {}
    for (k1, m1), c1 in a.items():
        for (k2, m2), c2 in b.items():
            g = math.gcd(m1, m2)  # sqrt(m1) sqrt(m2) = g sqrt(m1 m2 / g^2), square-free again
            if abs(k1 + k2) > _MAX_PI_POWER:
                raise TooLarge("power of pi")
            out = _add(f, out, {(k1 + k2, (m1 // g) * (m2 // g)): f.norm(c1 * c2 * g)})
    return out


def _inverse(f: _Field, a: dict) -> dict:
    if len(a) != 1:
        raise Unsupported("division by a sum")  # rationalising denominators is left to math-verify
    ((k, m), c), = a.items()
    return {(-k, m): f.norm(f.inv(c * m))}  # 1 / (c pi^k sqrt m) = sqrt(m) / (c m) pi^-k


def _power(f: _Field, a: dict, n: int) -> dict:
    if abs(n) > _MAX_EXPONENT:
        raise TooLarge("exponent")
    if n < 0:
        a, n = _inverse(f, a), -n
    out: dict = {(0, 1): f.lift(Fraction(1))}
    base = a
    while n:
        if n & 1:
            out = _mul(f, out, base)
        n >>= 1
        if n:
            base = _mul(f, base, base)
    return out


def _rational(v: dict) -> Fraction | None:
    """The exact rational a constant value is, or ``None`` (it involves pi or a square root)."""
    if not v:
        return Fraction(0)
    if len(v) == 1 and (0, 1) in v:
        return v[(0, 1)]
    return None


def _sqrt_const(v: dict) -> dict:
    q = _rational(v)
    if q is None or q < 0:
        raise Unsupported("square root of an irrational or negative number")
    if q == 0:
        return {}
    n = q.numerator * q.denominator  # sqrt(a/b) = sqrt(ab) / b
    s, m = squarefree_split(n)
    return {(0, m): Fraction(s, q.denominator)}


def _eval(node: tuple, f: _Field, env: dict[str, int], const: dict) -> dict:
    """Value of ``node``; variable-free subtrees are evaluated exactly once (``const``) and lifted."""
    op = node[0]
    if not _free_vars(node):
        key = id(node)
        if key not in const:
            const[key] = _eval_const(node)
        return {km: f.lift(c) for km, c in const[key].items()} if f.mod is not None else const[key]
    if op == "var":
        return {(0, 1): env[node[1]]} if env[node[1]] else {}
    if op == "neg":
        return {km: f.norm(-c) for km, c in _eval(node[1], f, env, const).items()}
    if op in ("sqrt", "root"):
        raise Unsupported("root of a variable")
    if op == "pow":
        if _free_vars(node[2]):
            raise Unsupported("variable exponent")
        n = _rational(_eval_const(node[2]))
        if n is None or n.denominator != 1:
            raise Unsupported("non-integer power of a variable")
        return _power(f, _eval(node[1], f, env, const), int(n))
    a, b = _eval(node[1], f, env, const), _eval(node[2], f, env, const)
    if op == "add":
        return _add(f, a, b)
    if op == "sub":
        return _add(f, a, b, -1)
    if op == "mul":
        return _mul(f, a, b)
    if op == "div":
        return _mul(f, a, _inverse(f, b))
    raise Unsupported(op)  # pragma: no cover - every op of the grammar is handled above


_EXACT = _Field(None)


def _eval_const(node: tuple) -> dict:
    """Exact canonical form of a variable-free node."""
    op = node[0]
    f = _EXACT
    if op == "num":
        return {(0, 1): node[1]} if node[1] else {}
    if op == "pi":
        return {(1, 1): Fraction(1)}
    if op == "neg":
        return {km: -c for km, c in _eval_const(node[1]).items()}
    if op == "sqrt":
        return _sqrt_const(_eval_const(node[1]))
    if op == "root":
        n = _rational(_eval_const(node[1]))
        if n != 2:
            raise Unsupported("root other than a square root")
        return _sqrt_const(_eval_const(node[2]))
    a, b = _eval_const(node[1]), _eval_const(node[2])
    if op == "add":
        return _add(f, a, b)
    if op == "sub":
        return _add(f, a, b, -1)
    if op == "mul":
        return _mul(f, a, b)
    if op == "div":
        return _mul(f, a, _inverse(f, b))
    if op == "pow":
        n = _rational(b)
        if n is None:
            raise Unsupported("irrational exponent")
        if n.denominator == 1:
            return _power(f, a, int(n))
        if n.denominator == 2:
            return _sqrt_const(_power(f, a, int(n.numerator)))
        raise Unsupported("fractional exponent")
    raise Unsupported(op)  # pragma: no cover


def _degree(node: tuple) -> int:
    """Bound on deg(numerator) + deg(denominator) of ``node`` as a rational function."""
    op = node[0]
    if not _free_vars(node):
        return 0
    if op == "var":
        return 1
    if op == "neg":
        return _degree(node[1])
    if op in ("sqrt", "root"):
        raise Unsupported("root of a variable")
    if op == "pow":
        n = _rational(_eval_const(node[2]))
        return _degree(node[1]) * abs(int(n)) if n is not None and n.denominator == 1 else _MAX_DEGREE + 1
    return _degree(node[1]) + _degree(node[2])


def _numeric(v: dict) -> float:
    return float(sum(float(c) * math.pi**k * math.sqrt(m) for (k, m), c in v.items()))


def _identity(g: tuple, p: tuple, names: list[str]) -> bool | None:
    """Schwartz--Zippel test of ``g == p`` as rational functions of ``names`` (see the module doc)."""
    if _degree(g) + _degree(p) > _MAX_DEGREE:
        raise TooLarge("degree")
    const: dict = {}
    f = _Field(_random_prime())
    tested = 0
    for _ in range(4 * _SZ_POINTS):
        env = {v: _RNG.randrange(f.mod) for v in names}
        try:
            a, b = _eval(g, f, env, const), _eval(p, f, env, const)
        except _Pole:
            continue
        if a != b:
            return False
        tested += 1
        if tested == _SZ_POINTS:
            return True
    return None  # poles at every draw: the expressions are undefined almost everywhere mod P


def compare_values(gold: str, pred: str) -> bool | None:
    """Fast-path verdict on two normalised answers.

    Returns:
        ``True`` (equal exactly, or as rational functions by the Schwartz--Zippel test), ``False``
        (different: two exact constants that differ -- except when a decimal literal makes the gap
        small enough for math-verify's 6-place rounding to matter -- or two expressions that differ at
        a random point) or ``None`` (outside the exact grammar; math-verify decides).

    """
    try:
        g = parse_answer(gold)
        p = parse_answer(pred)
        names = sorted(_free_vars(g) | _free_vars(p))
        if not names:
            a, b = _eval_const(g), _eval_const(p)
            if a == b:
                return True
            if not (_has_decimal(gold) or _has_decimal(pred)):
                return False
            # A decimal literal: math-verify rounds both to 6 places, so only a gap above 2e-6 is
            # certainly "different" for it as well.
            ra, rb = _rational(a), _rational(b)
            gap = abs(ra - rb) if ra is not None and rb is not None else abs(_numeric(a) - _numeric(b))
            return False if gap > 2e-6 else None
        verdict = _identity(g, p, names)
        if verdict is False and (_has_decimal(gold) or _has_decimal(pred)):
            return None  # 0.333333x vs x/3: math-verify's rounding decides
        return verdict
    except (Unsupported, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None


def const_value(s: str) -> Fraction | None:
    """Exact rational value of a normalised variable-free answer.

    ``None`` when it has letters or is irrational; raises :class:`TooLarge` past the evaluator's
    bounds (``9^{9^{9}}``) and :class:`Unsupported` outside its grammar.
    """
    node = parse_answer(s)
    if _free_vars(node):
        return None
    return _rational(_eval_const(node))
