"""Parsers for model answers with no code path: Python literals, exact arithmetic, sympy expressions.

Several reasoning-gym scorers read an answer with ``eval`` or sympy's ``parse_expr`` (which is ``eval``
of a rewritten string), so a model answer such as ``__import__('os').system(...)`` ran on the grading
host. The scorers in :mod:`nemo_prorl.rewards.rgym` that replace them read answers with the parsers
below instead. Each one is a tokenizer (one linear regex pass) plus a recursive-descent parser over a
small grammar. Nothing is evaluated except arithmetic on numbers and the construction of sympy
objects from a fixed table of names, so there is nothing for a hostile answer to call.

Every parser bounds its input: at most :data:`MAX_CHARS` characters, :data:`MAX_DEPTH` levels of
nesting (well inside the interpreter's recursion limit), integers of at most 4,300 digits (Python's
own ``int`` limit), and powers whose result would have more than :data:`MAX_POWER_BITS` bits are
refused (``9**9**9`` is refused in microseconds instead of stalling). Anything outside a grammar raises
:class:`ParseError`; callers treat that exactly as the original scorer treated an exception from
``eval``/``parse_expr`` (the answer is not in that form).
"""

from __future__ import annotations

import keyword
import re
from fractions import Fraction
from typing import Any

MAX_CHARS = 20_000
MAX_DEPTH = 100
MAX_INT_DIGITS = 4_300
MAX_POWER_BITS = 100_000
MAX_EXPONENT = 1_000
MAX_SHIFT = 10_000


class ParseError(ValueError):
    """The text is not in the grammar (or exceeds a bound)."""


# --------------------------------------------------------------------------------------------- tokens

_NUMBER = (r"(?:0[xX](?:_?[0-9a-fA-F])+|0[oO](?:_?[0-7])+|0[bB](?:_?[01])+"
           r"|(?:[0-9](?:_?[0-9])*)?\.[0-9](?:_?[0-9])*(?:[eE][+-]?[0-9](?:_?[0-9])*)?"
           r"|[0-9](?:_?[0-9])*\.?(?:[eE][+-]?[0-9](?:_?[0-9])*)?)")
_TOKEN = re.compile(
    r"(?P<ws>[ \t\r\n]+)"
    rf"|(?P<num>{_NUMBER})"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<str>'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\")"
    r"|(?P<op>\*\*|<<|>>|[-+*/()\[\],])"
)


def tokenize(text: str) -> list[tuple[str, str]]:
    """``(kind, text)`` tokens of ``text`` (kinds ``num``, ``name``, ``str``, ``op``); whitespace dropped.

    Raises:
        ParseError: on a character no grammar uses, or text longer than :data:`MAX_CHARS`.

    """
    if not isinstance(text, str):
        raise ParseError(f"expected a string, got {type(text).__name__}")
    if len(text) > MAX_CHARS:
        raise ParseError(f"longer than {MAX_CHARS} characters")
    out: list[tuple[str, str]] = []
    pos, n = 0, len(text)
    while pos < n:
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ParseError(f"unexpected character {text[pos]!r} at {pos}")
        kind = m.lastgroup
        if kind != "ws":
            out.append((kind, m.group()))
        pos = m.end()
    return out


def _int_literal(tok: str) -> int:
    """Python's integer literal rules: base prefixes, underscores, no leading zeros in decimal."""
    digits = tok.replace("_", "")
    if len(digits) > MAX_INT_DIGITS:
        raise ParseError(f"integer literal longer than {MAX_INT_DIGITS} digits")
    if len(digits) > 1 and digits[0] == "0" and digits[1] not in "xXoObB":
        if digits.strip("0"):
            raise ParseError(f"leading zeros in decimal integer literal {tok!r}")
        return 0
    return int(digits, 0)


def _is_float_literal(tok: str) -> bool:
    return tok[:2].lower() not in ("0x", "0o", "0b") and ("." in tok or "e" in tok or "E" in tok)


def _check_float_exponent(tok: str) -> None:
    m = re.search(r"[eE]([+-]?[0-9_]+)$", tok)
    if m and (len(m.group(1)) > 6 or abs(int(m.group(1).replace("_", ""))) > 100_000):
        raise ParseError(f"float exponent out of range in {tok!r}")


class _Cursor:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.toks = tokens
        self.i = 0

    def peek(self, k: int = 0) -> tuple[str, str] | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def at(self, text: str) -> bool:
        t = self.peek()
        return t is not None and t[0] == "op" and t[1] == text

    def take(self) -> tuple[str, str]:
        t = self.peek()
        if t is None:
            raise ParseError("unexpected end of input")
        self.i += 1
        return t

    def expect(self, text: str) -> None:
        t = self.take()
        if t != ("op", text):
            raise ParseError(f"expected {text!r}, got {t[1]!r}")

    def done(self) -> bool:
        return self.i >= len(self.toks)


def _depth(depth: int) -> int:
    if depth > MAX_DEPTH:
        raise ParseError(f"nested deeper than {MAX_DEPTH} levels")
    return depth + 1


# ------------------------------------------------------------------------------------ python literals

_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r", "0": "\0", "a": "\a",
            "b": "\b", "f": "\f", "v": "\v", "\n": ""}


def _string_literal(tok: str) -> str:
    body, out, i = tok[1:-1], [], 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        e = body[i + 1]
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 2
        elif e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            hexd = body[i + 2:i + 2 + width]
            if len(hexd) != width or not all(h in "0123456789abcdefABCDEF" for h in hexd):
                raise ParseError(f"bad \\{e} escape")
            code = int(hexd, 16)
            if code > 0x10FFFF:
                raise ParseError("escape out of range")
            out.append(chr(code))
            i += 2 + width
        else:  # Python keeps unknown escapes verbatim
            out.append("\\" + e)
            i += 2
    return "".join(out)


def parse_literal(text: str) -> Any:
    """The value of a Python literal: what ``eval`` returns for literal-only text, with no code path.

    Grammar: lists ``[...]``, tuples ``(...)`` (and a bare top-level ``a, b`` which ``eval`` also reads
    as a tuple), quoted strings (no prefixes; the usual escapes), int and float literals with any
    number of unary ``+``/``-``, ``True``, ``False``, ``None``. Anything else (names, calls,
    operators, dicts, sets, comprehensions) raises :class:`ParseError`: where the original scorer
    would have run it, the answer here is simply not in list form.
    """
    cur = _Cursor(tokenize(text))
    if cur.done():
        raise ParseError("empty")
    value = _literal_sequence(cur, top=True, depth=0)
    if not cur.done():
        raise ParseError(f"unexpected {cur.peek()[1]!r}")
    return value


def _literal_sequence(cur: _Cursor, top: bool, depth: int) -> Any:
    first = _literal_value(cur, depth)
    if not (top and cur.at(",")):
        return first
    items = [first]
    while cur.at(","):
        cur.take()
        if cur.done():
            break
        items.append(_literal_value(cur, depth))
    return tuple(items)


def _literal_items(cur: _Cursor, close: str, depth: int) -> tuple[list[Any], bool]:
    items: list[Any] = []
    comma = False
    while not cur.at(close):
        items.append(_literal_value(cur, depth))
        if cur.at(","):
            cur.take()
            comma = True
        elif not cur.at(close):
            raise ParseError(f"expected ',' or {close!r}")
    cur.take()
    return items, comma


def _literal_value(cur: _Cursor, depth: int) -> Any:
    depth = _depth(depth)
    kind, tok = cur.take()
    if kind == "op" and tok == "[":
        return _literal_items(cur, "]", depth)[0]
    if kind == "op" and tok == "(":
        items, comma = _literal_items(cur, ")", depth)
        return items[0] if len(items) == 1 and not comma else tuple(items)
    if kind == "str":
        value = _string_literal(tok)
        while cur.peek() is not None and cur.peek()[0] == "str":  # implicit concatenation
            value += _string_literal(cur.take()[1])
        return value
    if kind == "name" and tok in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[tok]
    if kind == "op" and tok in "+-":
        value = _literal_value(cur, depth)
        if not isinstance(value, (int, float)):  # bool is an int, as for eval: -True == -1
            raise ParseError("unary sign on a non-number")
        return -value if tok == "-" else +value
    if kind == "num":
        if _is_float_literal(tok):
            _check_float_exponent(tok)
            return float(tok.replace("_", ""))
        return _int_literal(tok)
    raise ParseError(f"{tok!r} is not a literal")


# ---------------------------------------------------------------------------------- exact arithmetic


def _power(base: Fraction | int, exp: Fraction | int) -> Fraction | int:
    if isinstance(exp, Fraction):
        if exp.denominator != 1:
            raise ParseError("non-integer exponent")
        exp = exp.numerator
    if abs(exp) > MAX_EXPONENT and abs(base) not in (0, 1):
        raise ParseError(f"exponent {exp} out of range")
    size = max(Fraction(base).numerator.bit_length(), Fraction(base).denominator.bit_length())
    if size * abs(exp) > MAX_POWER_BITS:
        raise ParseError("power too large")
    if base == 0 and exp < 0:
        raise ZeroDivisionError("0 to a negative power")
    return Fraction(base) ** exp


def eval_arithmetic(text: str) -> Fraction:
    """The exact value of an arithmetic expression over numbers, ``+ - * / **``, parentheses.

    Numbers are decimal integers and decimals (``1.5``, ``2e3``; read exactly as fractions). Operator
    precedence and associativity are Python's: ``**`` binds tighter than a unary sign on its left and
    associates to the right (``-2**2 == -4``, ``2**3**2 == 512``).

    Raises:
        ParseError: outside the grammar or a bound; ``ZeroDivisionError`` on a division by zero.

    """
    cur = _Cursor(tokenize(text))
    value = _arith_sum(cur, 0, False)
    if not cur.done():
        raise ParseError(f"unexpected {cur.peek()[1]!r}")
    return value


def _arith_shift(cur: _Cursor, depth: int, ints: bool) -> Fraction:
    value = _arith_sum(cur, depth, ints)
    while ints and (cur.at("<<") or cur.at(">>")):
        op = cur.take()[1]
        rhs = _arith_sum(cur, depth, ints)
        if rhs < 0 or rhs > MAX_SHIFT or (op == "<<" and abs(int(value)).bit_length() + rhs > MAX_POWER_BITS):
            raise ParseError("shift out of range")
        value = Fraction(int(value) << int(rhs) if op == "<<" else int(value) >> int(rhs))
    return value


def _arith_sum(cur: _Cursor, depth: int, ints: bool) -> Fraction:
    value = _arith_term(cur, depth, ints)
    while cur.at("+") or cur.at("-"):
        op = cur.take()[1]
        rhs = _arith_term(cur, depth, ints)
        value = value + rhs if op == "+" else value - rhs
    return value


def _arith_term(cur: _Cursor, depth: int, ints: bool) -> Fraction:
    value = _arith_unary(cur, depth, ints)
    while cur.at("*") or (cur.at("/") and not ints):
        op = cur.take()[1]
        rhs = _arith_unary(cur, depth, ints)
        value = value * rhs if op == "*" else value / rhs
    return value


def _arith_unary(cur: _Cursor, depth: int, ints: bool) -> Fraction:
    depth = _depth(depth)
    if cur.at("-") or cur.at("+"):
        op = cur.take()[1]
        value = _arith_unary(cur, depth, ints)
        return -value if op == "-" else value
    return _arith_power(cur, depth, ints)


def _arith_power(cur: _Cursor, depth: int, ints: bool) -> Fraction:
    base = _arith_atom(cur, depth, ints)
    if cur.at("**") and not ints:
        cur.take()
        return _power(base, _arith_unary(cur, depth, ints))
    return base


def _arith_atom(cur: _Cursor, depth: int, ints: bool) -> Fraction:
    kind, tok = cur.take()
    if kind == "op" and tok == "(":
        value = _arith_shift(cur, depth, ints) if ints else _arith_sum(cur, depth, ints)
        cur.expect(")")
        return value
    if kind == "num":
        if ints:
            if _is_float_literal(tok):
                raise ParseError("decimal in an integer expression")
            return Fraction(_int_literal(tok))
        if tok[:2].lower() in ("0x", "0o", "0b"):
            raise ParseError("non-decimal literal")
        if _is_float_literal(tok):
            _check_float_exponent(tok)
            return Fraction(tok.replace("_", ""))
        return Fraction(_int_literal(tok))
    raise ParseError(f"unexpected {tok!r}")


def eval_integer_expression(text: str) -> int:
    """An integer expression with ``+ - * << >>`` over literals in any base (``0x..``), exactly.

    The grammar of reasoning-gym's ``bitwise_arithmetic`` problems, with Python's precedence (shifts
    bind looser than ``+``/``-``). Shifts are bounded by :data:`MAX_SHIFT` and :data:`MAX_POWER_BITS`.
    """
    cur = _Cursor(tokenize(text))
    value = _arith_shift(cur, 0, True)
    if not cur.done():
        raise ParseError(f"unexpected {cur.peek()[1]!r}")
    return int(value)


# ------------------------------------------------------------------------------------ sympy builder

#: names a sympy expression may call, as in sympy's own namespace (``ln`` is sympy's alias of ``log``)
SYMPY_FUNCTIONS: tuple[str, ...] = (
    "sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "acot", "asec", "acsc",
    "sinh", "cosh", "tanh", "coth", "sech", "csch", "asinh", "acosh", "atanh", "acoth",
    "exp", "log", "ln", "sqrt", "Abs", "sign", "Integral",
)
#: sympy constants by name
SYMPY_CONSTANTS: tuple[str, ...] = ("E", "pi", "I", "oo")

_SYMPY_NAMESPACE: set[str] = set()  # filled on first use (module globals never change after import)


def _sympy_namespace() -> set[str]:
    if not _SYMPY_NAMESPACE:
        import sympy

        _SYMPY_NAMESPACE.update(getattr(sympy, "__all__", dir(sympy)))
    return _SYMPY_NAMESPACE


def parse_sympy(text: str, local: dict[str, Any] | None = None) -> Any:
    """A sympy expression built from ``text`` the way ``sympy.parse_expr(text, local_dict=local)`` would.

    ``parse_expr`` with its default transformations rewrites the text (names to ``Symbol('name')``,
    numbers to ``Integer``/``Float``) and then *evaluates it with Python*; the result is the value of
    Python's operators applied to sympy objects. This parser applies the same operators, with Python's
    precedence and associativity, to the same objects, so the result is the same sympy expression
    (compared structurally, ``==``), without ever evaluating text:

    * numbers: integer literals -> ``Integer``, literals with ``.`` or an exponent -> ``Float(text)``;
    * names: ``local`` first, then :data:`SYMPY_CONSTANTS`, then :data:`SYMPY_FUNCTIONS` (only when
      called), then any other identifier that is not a sympy or Python name -> ``Symbol(name)``
      (``parse_expr``'s ``auto_symbol``). Other sympy names (``Lambda``, ``sympify``, ``N``...) are
      refused;
    * operators ``+ - * / **``, unary ``+``/``-``, parentheses, calls with 1 or 2 arguments.

    Refused (``ParseError``): attribute access, indexing, strings, keywords, ``^`` (a bitwise xor to
    ``parse_expr``), ``!``, ``=``, implicit multiplication, and the bounds of the module docstring.
    """
    import sympy

    cur = _Cursor(tokenize(text))
    if cur.done():
        raise ParseError("empty")
    builder = _SympyBuilder(sympy, dict(local or {}))
    value = builder.sum(cur, 0)
    if not cur.done():
        raise ParseError(f"unexpected {cur.peek()[1]!r}")
    return value


class _SympyBuilder:
    def __init__(self, sympy: Any, local: dict[str, Any]) -> None:
        self.sp = sympy
        self.local = local

    def sum(self, cur: _Cursor, depth: int) -> Any:
        value = self.term(cur, depth)
        while cur.at("+") or cur.at("-"):
            op = cur.take()[1]
            rhs = self.term(cur, depth)
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self, cur: _Cursor, depth: int) -> Any:
        value = self.unary(cur, depth)
        while cur.at("*") or cur.at("/"):
            op = cur.take()[1]
            rhs = self.unary(cur, depth)
            value = value * rhs if op == "*" else value / rhs
        return value

    def unary(self, cur: _Cursor, depth: int) -> Any:
        depth = _depth(depth)
        if cur.at("-") or cur.at("+"):
            op = cur.take()[1]
            value = self.unary(cur, depth)
            return -value if op == "-" else +value
        return self.power(cur, depth)

    def power(self, cur: _Cursor, depth: int) -> Any:
        base = self.atom(cur, depth)
        if cur.at("**"):
            cur.take()
            exp = self.unary(cur, depth)
            self._check_power(base, exp)
            return base ** exp
        return base

    def _check_power(self, base: Any, exp: Any) -> None:
        sp = self.sp
        if not isinstance(exp, sp.Number):
            return
        if not exp.is_finite:
            raise ParseError("infinite exponent")
        if abs(exp) > MAX_EXPONENT and not (isinstance(base, sp.Number) and abs(base) in (0, 1)):
            raise ParseError(f"exponent {exp} out of range")
        if isinstance(base, sp.Rational) and isinstance(exp, sp.Rational):
            size = max(int(base.p).bit_length(), int(base.q).bit_length())
            if size * abs(exp) > MAX_POWER_BITS:
                raise ParseError("power too large")

    def atom(self, cur: _Cursor, depth: int) -> Any:
        sp = self.sp
        kind, tok = cur.take()
        if kind == "op" and tok == "(":
            value = self.sum(cur, depth)
            cur.expect(")")
            return value
        if kind == "num":
            if tok[:2].lower() in ("0x", "0o", "0b"):
                return sp.Integer(_int_literal(tok))
            if _is_float_literal(tok):
                _check_float_exponent(tok)
                return sp.Float(tok.replace("_", ""))
            return sp.Integer(_int_literal(tok))
        if kind != "name":
            raise ParseError(f"unexpected {tok!r}")
        called = cur.at("(")
        if tok in self.local and not called:
            return self.local[tok]
        if tok in SYMPY_CONSTANTS and not called:
            return {"E": sp.E, "pi": sp.pi, "I": sp.I, "oo": sp.oo}[tok]
        if tok in SYMPY_FUNCTIONS and called:
            return self.call(tok, cur, depth)
        if called or keyword.iskeyword(tok) or tok in ("True", "False", "None") \
                or tok in _sympy_namespace() or tok in self.local or tok.startswith("__"):
            raise ParseError(f"name {tok!r} is not allowed here")
        return sp.Symbol(tok)

    def call(self, name: str, cur: _Cursor, depth: int) -> Any:
        sp = self.sp
        cur.expect("(")
        args = [self.sum(cur, depth)]
        while cur.at(","):
            cur.take()
            args.append(self.sum(cur, depth))
        cur.expect(")")
        if name == "Integral":
            if len(args) != 2 or not isinstance(args[1], sp.Symbol):
                raise ParseError("Integral takes an expression and a symbol")
            return sp.Integral(args[0], args[1])
        if len(args) != 1 and not (name == "log" and len(args) == 2):
            raise ParseError(f"{name} takes one argument")
        fn = sp.log if name == "ln" else getattr(sp, name)
        return fn(*args)
