"""Replacements for the reasoning-gym scorers that evaluate the answer (or the gold) as Python.

reasoning-gym 0.1.25 reads answers with ``eval`` in ``string_insertion``, ``spiral_matrix``,
``binary_matrix`` and ``n_queens`` (a "python list" form worth partial credit), and with sympy's
``parse_expr`` (``eval`` of rewritten text) in ``countdown``, ``puzzle24``,
``polynomial_multiplication``, ``simple_integration`` and ``intermediate_integration``. It evaluates
the *row's* data with ``eval`` in ``number_sorting`` (the gold list) and ``bitwise_arithmetic`` (the
problem). Each function below reimplements one ``<Dataset>.score_answer`` of that version (named in
its docstring) with the parsers of :mod:`nemo_prorl.rewards.safe_parse`: the same scores on every
answer those parsers read, with these documented differences:

* an answer that is Python *code* rather than a literal or an arithmetic expression (``[1]*3``,
  ``list("abc")``, ``__import__(...)``) is not run: it is treated as the original treated an answer
  that ``eval`` rejects;
* bounds: powers whose result exceeds ``safe_parse.MAX_POWER_BITS`` bits, exponents above
  ``safe_parse.MAX_EXPONENT``, nesting deeper than ``safe_parse.MAX_DEPTH`` and answers longer than
  ``safe_parse.MAX_CHARS`` are not in the grammar (``9**9**9`` no longer stalls the worker);
* ``puzzle24`` requires the value to be exactly 24 (the original truncates with ``int()``, so
  ``49/2`` counted as 24);
* a gold answer, integrand or problem that the parsers cannot read raises :class:`GoldParseError`
  (a grader fault, status ``error``) where the original silently scored 0.

``tests/unit/rewards/test_rgym_safe.py`` checks agreement with the original scorers on each task's own
generated answers and on wrong variants of them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from nemo_prorl.rewards.safe_parse import (
    ParseError,
    eval_arithmetic,
    eval_integer_expression,
    parse_literal,
    parse_sympy,
)

_INTS = re.compile(r"\b\d+\b")


class GoldParseError(ValueError):
    """The row's own data (gold answer, integrand, problem) is outside the parser's grammar."""


def _gold(parse: Callable[..., Any], text: Any, *args: Any) -> Any:
    try:
        return parse(text, *args)
    except (ParseError, TypeError) as exc:
        raise GoldParseError(f"cannot read the row's reference {str(text)[:80]!r}: {exc}") from exc


# ----------------------------------------------------------------------------- "python list" partial credit


def score_string_insertion(answer: str, entry: dict) -> float:
    """``StringInsertionDataset.score_answer``: 1.0 exact; 0.1 for a literal whose ``"".join`` matches."""
    oracle = entry["answer"]
    if not isinstance(answer, str):
        return 0.0
    if answer == oracle:
        return 1.0
    try:
        return 0.1 if "".join(parse_literal(answer)) == oracle else 0.0
    except (ParseError, TypeError):
        return 0.0


def score_spiral_matrix(answer: str, entry: dict) -> float:
    """``SpiralMatrixDataset.score_answer``: 1.0 exact (stripped); 0.1 for a literal list of the values."""
    oracle = entry["answer"].strip()
    if not answer:
        return 0.0
    answer = answer.strip()
    if answer == oracle:
        return 1.0
    try:
        return 0.1 if " ".join(str(item) for item in parse_literal(answer)) == oracle else 0.0
    except (ParseError, TypeError):
        return 0.0


def score_binary_matrix(answer: str, entry: dict) -> float:
    """``BinaryMatrixDataset.score_answer``: 1.0 exact; 0.1 for a literal list of rows printing the same."""
    oracle = entry["answer"]
    if answer is None:
        return 0.0
    if answer == oracle:
        return 1.0
    try:
        matrix = parse_literal(answer)
        text = "\n".join(" ".join(str(x) for x in row) for row in matrix)
        return 0.1 if text == oracle else 0.0
    except (ParseError, TypeError):
        return 0.0


def score_n_queens(answer: str, entry: dict) -> float:
    """``NQueensDataset.score_answer``: 1.0 for a listed solution; 0.5 for it as a literal list of rows."""
    if not isinstance(answer, str):
        return 0.0
    valid = entry["metadata"]["valid_answers"]
    if answer in valid:
        return 1.0
    try:
        board = "\n".join(" ".join(x for x in row) for row in parse_literal(answer))
        return 0.5 if board in valid else 0.0
    except (ParseError, TypeError):
        return 0.0


def score_number_sorting(answer: str, entry: dict) -> float:
    """``NumberSortingDataset.score_answer`` (the gold list, a Python literal, is read without ``eval``)."""
    if answer is None:
        return 0.0
    try:
        try:
            user = json.loads(answer.replace("'", '"'))
        except json.JSONDecodeError:
            return 0.0
        if not isinstance(user, list):
            return 0.0
        try:
            expected = json.loads(entry["answer"])
        except json.JSONDecodeError:
            expected = _gold(parse_literal, entry["answer"])
        if len(user) != len(expected):
            return 0.0
        user_f = [float(v) for v in user]
        expected_f = [float(v) for v in expected]
        ascending = entry["metadata"]["direction"] == "ascending"
        if user_f != sorted(user_f, reverse=not ascending):
            return 0.0
        return 0.0 if any(abs(u - e) > 1 for u, e in zip(user_f, expected_f)) else 1.0
    except GoldParseError:
        raise
    except Exception:
        return 0.0


# ------------------------------------------------------------------------------------------ arithmetic


def score_countdown(answer: str, entry: dict) -> float:
    """``CountdownDataset.score_answer``: 0.01 unreadable, 0.05 wrong numbers or value, 1.0 correct.

    The value is exact (fractions); it matches the target as ``numpy.isclose(value, target,
    atol=1e-6)`` does (relative tolerance 1e-5), like the original.
    """
    if answer is None or not answer.strip():
        return 0.01
    try:
        value = float(eval_arithmetic(answer))
    except (ParseError, ArithmeticError):
        return 0.01
    if sorted(int(m) for m in _INTS.findall(answer)) != sorted(entry["metadata"]["numbers"]):
        return 0.05
    target = float(entry["metadata"]["target"])
    return 1.0 if abs(value - target) <= 1e-6 + 1e-5 * abs(target) else 0.05


def score_puzzle24(answer: str, entry: dict, min_value: int = 1, max_value: int = 10) -> float:
    """``Puzzle24Dataset.score_answer`` with its default config (numbers 1..10): 1.0 or 0.01.

    The value must be exactly 24 (the original truncates with ``int()``).
    """
    if answer is None:
        return 0.01
    answer = answer.strip()
    try:
        value = eval_arithmetic(answer)
    except (ParseError, ArithmeticError):
        return 0.01
    used = [int(n) for n in _INTS.findall(answer)]
    if len(used) != 4 or any(n > max_value or n < min_value for n in used):
        return 0.01
    return 1.0 if value == 24 else 0.01


def score_bitwise_arithmetic(answer: str, entry: dict) -> float:
    """``BitwiseArithmeticDataset.score_answer``: 1.0 when ``int(answer, 0)`` equals the problem's value."""
    if not isinstance(answer, str):
        return 0.0
    correct = _gold(eval_integer_expression, entry["metadata"]["problem"])
    try:
        return 1.0 if int(answer, 0) == correct else 0.0
    except ValueError:
        return 0.0


# ----------------------------------------------------------------------------------------------- sympy


def score_polynomial_multiplication(answer: str, entry: dict) -> float:
    """``PolynomialMultiplicationDataset.score_answer``: 1.0 when the parsed answer ``==`` the parsed gold.

    ``==`` is sympy's structural equality after automatic evaluation, as in the original (an
    unexpanded product does not equal its expansion).
    """
    if answer is None:
        return 0.0
    try:
        predicted = parse_sympy(answer)
    except Exception:
        return 0.0
    target = _gold(parse_sympy, entry["answer"])
    return 1.0 if predicted == target else 0.0


def score_integration(answer: str, entry: dict) -> float:
    """``SimpleIntegrationDataset.score_answer`` and ``IntermediateIntegrationDataset.score_answer``.

    1.0 when ``simplify(d(answer)/dx - integrand) == 0``; ``C`` (and any other free name) is a constant.
    """
    import sympy

    if not isinstance(answer, str):
        return 0.0
    metadata = entry["metadata"]
    var = metadata["variable"]
    x = sympy.Symbol(var)
    try:
        user = parse_sympy(answer, {var: x, "C": sympy.Symbol("C")})
    except Exception:
        return 0.0
    integrand = _gold(parse_sympy, metadata["integrand"], {var: x})
    try:
        if _clearly_not_antiderivative(user, integrand, x):
            return 0.0
        return 1.0 if sympy.simplify(sympy.diff(user, x) - integrand) == 0 else 0.0
    except Exception:
        return 0.0


#: points where a candidate antiderivative is checked numerically before ``simplify`` is tried
_PROBES = (0.3183098861837907, 0.7390851332151607, 1.4142135623730951, 2.718281828459045)


def _clearly_not_antiderivative(user: Any, integrand: Any, x: Any) -> bool:
    """Whether ``d(user)/dx`` differs from ``integrand`` at one of a few points (central differences).

    ``simplify`` on a wrong hostile answer can take minutes (``Abs(x)/sinh(x)/atan(x)**2`` took 180 s);
    a clear numerical difference at one point decides "not an antiderivative" in milliseconds, as
    ``simplify(diff(user) - integrand) == 0`` would: a function whose derivative differs from the
    integrand at a point is not an antiderivative. The answer is evaluated to 60 digits at ``p +- h``
    with ``h = 1e-15`` (truncation error about ``h**2``), and a difference must exceed
    ``1e-6 * (1 + |integrand|)``. Points where either side is undefined, infinite or not a number,
    and answers holding an unevaluated ``Integral``, decide nothing; then, and for every correct
    answer, ``simplify`` decides as before.
    """
    import sympy

    if user.has(sympy.Integral):  # evalf would integrate numerically: not the antiderivative's value
        return False
    others = sorted(user.free_symbols - {x}, key=str)
    h = sympy.Float("1e-15", 80)
    for k, p in enumerate(_PROBES):
        point = sympy.Float(p, 80)
        fixed = {sym: sympy.Float(p + 0.1 * (j + 1) + 0.01 * k, 80) for j, sym in enumerate(others)}
        hi = user.evalf(60, subs={**fixed, x: point + h})
        lo = user.evalf(60, subs={**fixed, x: point - h})
        want = integrand.evalf(60, subs={x: point})
        values = (hi, lo, want)
        if not all(v.is_number and not v.has(sympy.nan, sympy.zoo, sympy.oo, -sympy.oo) for v in values):
            continue
        gap = complex((hi - lo) / (2 * h) - want)
        if abs(gap) > 1e-6 * (1 + abs(complex(want))):
            return True
    return False


#: task -> scorer that reads the answer without evaluating it
SAFE_SCORERS: dict[str, Callable[[str, dict], float]] = {
    "string_insertion": score_string_insertion,
    "spiral_matrix": score_spiral_matrix,
    "binary_matrix": score_binary_matrix,
    "n_queens": score_n_queens,
    "number_sorting": score_number_sorting,
    "countdown": score_countdown,
    "puzzle24": score_puzzle24,
    "bitwise_arithmetic": score_bitwise_arithmetic,
    "polynomial_multiplication": score_polynomial_multiplication,
    "simple_integration": score_integration,
    "intermediate_integration": score_integration,
}
