r"""The math fast path decides only what it can decide exactly (issue 16, items 4 and 5).

Hacks that the old fast path (three fixed sample points, letters as commuting products) accepted score 0
here; MATH-style separators, list references, decimal commas and spaced percents score 1; hostile sizes
(unclosed boxes, power towers, huge factorials) score within a small time bound with their status.
"""

import time
from fractions import Fraction

import pytest

from nemo_prorl.rewards.math import MathReward, numeric_limit_reason
from nemo_prorl.rewards.math_expr import (
    compare_text,
    compare_values,
    decimal_comma,
    fix_thousands,
    normalize,
    split_percent,
    squarefree_split,
)
from nemo_prorl.rewards.text import all_boxed, brace_pairs, last_boxed

R = MathReward()


def score(gold, pred_box):
    return R.score(f"so the answer is \\boxed{{{pred_box}}}", {"domain": "math", "answer": gold})


# Wrong answers that the old fast path (or math-verify behind it) accepted.
@pytest.mark.parametrize("gold,pred", [
    ("x^2", "(x-1)(x-2)(x-3)+x^2"),
    ("x^2", "(x-0.7315)(x-1.4142)(x-2.2361)+x^2"),      # roots at the old fixed sample points
    ("x^2", "x^2+(x-\\frac{7315}{10000})(y-\\frac{14142}{10000})"),
    ("dog", "god"),
    ("east", "seat"),
    ("\\text{east}", "\\text{seat}"),
    ("x", "X"),
    ("X", "x"),
    ("xy", "yx"),
    ("x", "\\sqrt{x^2}"),
    ("X^2", "x^2"),
    ("0", "((\\sqrt{2}-1)^{64})^{64}"),                 # 1e-1574: equal at 60 digits, not equal
    ("\\sqrt{2}", "\\sqrt{2}+(\\sqrt{2}-1)^{64}"),
    ("2", "2+2305843009213693951x-2305843009213693951x+10^{-30}"),
    ("\\frac{1}{3}", "0.33"),
    ("7", "7 \\text{ or } 8"),
    ("10000", "10,\\!001"),
    ("6", "6 \\text{ and } 8"),
    ("1, 2", "1 \\text{ or } 2"),                      # a list gold does not license alternatives
    ("6 \\text{ and } 8", "6 \\pm 8"),
    ("1", "9^{9^{9}}"),
    ("1", "1000000!"),
])
def test_hacks_score_zero(gold, pred):
    res = score(gold, pred)
    assert res.status == "ok" and res.score == 0.0, res


@pytest.mark.parametrize("gold,pred", [
    ("10000", "10,\\!000"),
    ("10,\\!000", "10000"),
    ("11111111100", "11,\\! 111,\\! 111,\\! 100"),
    ("1000", "1 000"),
    ("6 \\text{ and } 8", "6,8"),
    ("6,8", "6 \\text{ and } 8"),
    ("\\boxed{1} and \\boxed{-2}", "-2, 1"),
    ("0.111", "0,111"),
    ("0,111", "0.111"),
    ("1000.99", "1000,99"),
    ("20", "20 \\%"),
    ("20\\%", "20"),
    ("28\\%", "28 percent"),
    ("x^2+2rx+r^2", "(x+r)^2"),
    ("\\frac{x^2-1}{x-1}", "x+1"),
    ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}"),
    ("2\\sqrt{3}", "\\sqrt{12}"),
    ("\\frac{3\\pi}{4}", "\\frac{3}{4}\\pi"),
    ("\\sqrt{\\frac{1}{8}}", "\\frac{\\sqrt{2}}{4}"),
    ("(a+b)^3", "a^3+3a^2b+3ab^2+b^3"),
    ("X+Y", "Y+X"),
    ("\\text{East}", "East"),
    ("(C)", "C"),
    ("2^{100}", "1267650600228229401496703205376"),
])
def test_equal_forms_score_one(gold, pred):
    res = score(gold, pred)
    assert res.status == "ok" and res.score == 1.0, res


@pytest.mark.parametrize("gold,pred,expected", [
    ("x^2", "(x-1)(x-2)(x-3)+x^2", False),
    ("(x+1)^{20}", "(1+x)^{20}", True),
    ("(x+1)^{20}", "(1+x)^{20}+1", False),
    ("\\frac{1}{x}", "\\frac{2}{2x}", True),
    ("\\pi x", "x\\pi", True),
    ("\\sqrt{2}x", "\\sqrt{8}x/2", True),
    ("\\sqrt{x}", "x^{1/2}", None),            # roots of variables: math-verify decides
    ("\\frac{1}{1+\\sqrt{2}}", "\\sqrt{2}-1", None),  # rationalising: math-verify decides
    ("0.333333x", "\\frac{x}{3}", None),      # decimals with variables: math-verify's rounding
    ("\\pi", "3.14159", False),
    ("\\pi", "3.1415926", None),              # within math-verify's 6-place rounding
])
def test_compare_values_exact(gold, pred, expected):
    assert compare_values(normalize(gold)[0], normalize(pred)[0]) is expected


def test_percent_against_a_fraction_is_left_to_math_verify():
    res = score("0.2", "20\\%")
    assert res.info["path"] == "math_verify"
    assert score("20", "20\\%").info["path"] == "string"


def test_text_rules():
    assert compare_text("dog", "god") is False
    assert compare_text("x", "X") is False
    assert compare_text("\\text{Monday}", "Monday") is True
    assert compare_text("Monday", "monday") is True
    assert compare_text("XY", "xy") is False
    assert compare_text("xY", "XY") is False
    assert compare_text("Ab", "ab") is False
    assert compare_text("x", "2x") is None      # single letter vs an expression: the evaluator decides
    assert compare_text("ab", "a\\cdot b") is False  # a word is not a product
    assert compare_text("3", "4") is None


def test_helpers_by_hand():
    assert squarefree_split(12) == (2, 3)
    assert squarefree_split(2 * 3 * 5 * 7 * 49) == (7, 210)
    assert squarefree_split(10007**2) == (10007, 1)           # a prime square above the trial bound
    assert squarefree_split(10007 * 10009) == (1, 10007 * 10009)
    assert fix_thousands("10,\\!000") == "10000"
    assert fix_thousands("0,111") == "0,111"
    assert fix_thousands("1 234 567") == "1234567"
    assert decimal_comma("0.111", "0,111") == ("0.111", "0.111")
    assert decimal_comma("2,5", "2,5") == ("2,5", "2,5")     # a list stays a list
    assert split_percent("20 %") == ("20", True)
    assert split_percent("x") == ("x", False)
    assert brace_pairs("{a{b}}\\{") == {2: 4, 0: 5}
    assert all_boxed("\\boxed{1} and \\boxed{\\boxed{2}}") == ["1", "\\boxed{2}"]
    assert last_boxed("\\boxed{1} and \\boxed{\\boxed{2}}") == "2"
    assert MathReward.gold_text("\\boxed{1} no no no no no \\boxed{2}") == "2"
    assert MathReward.gold_text("$\\boxed{1}\\boxed{2}$") == "1, 2"
    assert Fraction(2) == Fraction(2)


@pytest.mark.parametrize("ans,limited", [
    ("9^{9^{9}}", True),
    ("9^{9^{9^{9}}}", True),
    ("2^{100000}", True),
    ("1000000!", True),
    ("(10^8)!", True),
    ("\\left(10^{8}\\right)!", True),
    ("2^{100}", False),
    ("10!", False),
    ("(2n)!", False),
    ("x^{100000}", True),                # any integer exponent past the bound, variables or not
    ("x^{n}", False),
    ("10,\\!000", False),
])
def test_numeric_limits(ans, limited):
    assert (numeric_limit_reason(ans) is not None) is limited


HOSTILE = {
    "20k unclosed boxes": "\\boxed{" * 20_000 + "7",
    "unclosed boxes then an answer": "\\boxed{7} " + "\\boxed{" * 10_000,
    "30k opening braces": "\\boxed{" + "{" * 30_000,
    "power tower": "\\boxed{9^{9^{9^{9}}}}",
    "factorial": "\\boxed{1000000!}",
    "long digits": "\\boxed{" + "9" * 900 + "}",
    "30k nested parens": "\\boxed{" + "(" * 15_000 + "1" + ")" * 15_000 + "}",
    "thinking never closed": "<think>" + "a" * 30_000,
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_inputs_score_fast(name):
    R.score("\\boxed{1}", {"answer": "1"})  # warm
    t = time.perf_counter()
    res = R.score(HOSTILE[name], {"domain": "math", "answer": "7"})
    assert time.perf_counter() - t < 1.0, name
    assert res.score == (1.0 if name == "unclosed boxes then an answer" else 0.0)
    assert res.status in ("ok", "no_answer")


def test_math_verify_fallback_never_evaluates_text(monkeypatch):
    """math-verify's plain-expression extraction calls sympy's ``parse_expr`` (math_verify/parser.py,
    ``parse_expr_cached``), which evaluates a string as Python. The reward asks math-verify for LaTeX
    extraction only (ANTLR grammar, no evaluation): with ``parse_expr`` made to fail, answers that go
    to math-verify score as before, and a Python payload scores 0 without being evaluated."""
    import math_verify.parser as mvp

    def refuse(*args, **kwargs):
        raise AssertionError("math-verify evaluated text with parse_expr")

    monkeypatch.setattr(mvp, "parse_expr", refuse)
    mvp.parse_expr_cached.cache_clear()
    r = MathReward()
    paths = []
    for gold, pred, want in [("\\sqrt[3]{8}", "2", 1.0), ("x\\sqrt{x}", "x^{3/2}", 1.0),
                             ("2", "__import__('os').system('true')", 0.0),
                             ("6", "(2*3)", 1.0)]:
        res = r.score(f"\\boxed{{{pred}}}", {"domain": "math", "answer": gold})
        assert res.score == want, (gold, pred, res)
        paths.append(res.info.get("path"))
    assert paths[:2] == ["math_verify", "math_verify"], paths
