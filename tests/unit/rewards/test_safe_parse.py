"""The eval-free parsers: values by hand, ``ast.literal_eval`` as the reference for literals, bounds."""

import ast
import time
from fractions import Fraction

import pytest

from nemo_prorl.rewards.safe_parse import (
    MAX_DEPTH,
    ParseError,
    eval_arithmetic,
    eval_integer_expression,
    parse_literal,
    parse_sympy,
)

LITERALS = [
    "[1, 2, 3]", "(1, 2)", "(1,)", "()", "[]", "[[1, 0], [0, 1]]", "['a', 'b', \"c\"]", "'abc'",
    "[-1, +2, -0.5, 1e3, 1_000, 0x1F, 0o17, 0b101]", "[True, False, None]", "('Q', '_')",
    "['a\\nb', 'it\\'s', '\\x41\\u00e9']", "[1.5, -2.25e-3]", "'ab' 'cd'", "[1, 2,]", "((1, 2), [3])",
    "00",
]


@pytest.mark.parametrize("text", LITERALS)
def test_literals_match_ast_literal_eval(text):
    assert parse_literal(text) == ast.literal_eval(text)
    assert type(parse_literal(text)) is type(ast.literal_eval(text))


def test_repeated_signs_as_eval_reads_them():
    # eval accepts any number of unary signs, on bools too (literal_eval does not): by hand
    assert parse_literal("[--3, -+-2, -True, +False]") == [3, 2, -1, 0]


def test_bare_top_level_tuple_as_eval_reads_it():
    # eval("1, 2, 3") is a tuple; literal_eval agrees; a trailing comma too
    assert parse_literal("1, 2, 3") == (1, 2, 3) == ast.literal_eval("1, 2, 3")
    assert parse_literal("1,") == (1,)


@pytest.mark.parametrize("text", [
    "__import__('os').system('true')", "[1]*3", "list('abc')", "x", "[x]", "{1: 2}", "{1, 2}",
    "[1 for _ in ()]", "f'{1}'", "b'x'", "1 + 2", "[1, 2", "'unterminated", "(1)(2)", "07", "1j",
    "().__class__", "[1] [0]", "lambda: 1", "-'a'",
])
def test_non_literals_are_refused(text):
    with pytest.raises(ParseError):
        parse_literal(text)


@pytest.mark.parametrize("text,value", [
    ("94*4 - 61 - 6", 309), ("42*(30 - 4 - 23)", 126), ("9*3*8/9", 24), ("8/3*9", 24),
    ("1/3 + 1/6", Fraction(1, 2)), ("-2**2", -4), ("2**3**2", 512), ("(-2)**2", 4), ("2**-1", Fraction(1, 2)),
    ("--5", 5), ("1.5 * 4", 6), ("2e3/1000", 2), (" ( 7 ) ", 7),
])
def test_arithmetic_exact_values(text, value):
    assert eval_arithmetic(text) == value


@pytest.mark.parametrize("text", ["2^3", "x + 1", "2(3)", "1 = 1", "0x10 + 1", "3!", "1 //2", "'1'", "",
                                  "(1"])
def test_arithmetic_refuses_everything_else(text):
    with pytest.raises(ParseError):
        eval_arithmetic(text)


def test_division_by_zero_is_an_arithmetic_error():
    with pytest.raises(ZeroDivisionError):
        eval_arithmetic("1/(2-2)")


@pytest.mark.parametrize("text", ["9**9**9", "10**10**10", "2**100001", "(10**4300)**1000", "9" * 5000])
def test_huge_powers_are_refused_at_once(text):
    parse_sympy("1")  # import sympy outside the timing
    t0 = time.perf_counter()
    with pytest.raises(ParseError):
        eval_arithmetic(text)
    with pytest.raises(ParseError):
        parse_sympy(text)
    assert time.perf_counter() - t0 < 0.5


def test_nesting_and_length_bounds():
    deep = "(" * (MAX_DEPTH + 5) + "1" + ")" * (MAX_DEPTH + 5)
    for parse in (eval_arithmetic, parse_literal, parse_sympy):
        with pytest.raises(ParseError, match="nested"):
            parse(deep)
        with pytest.raises(ParseError, match="longer"):
            parse("1+" * 20000 + "1")
    ok = "(" * 50 + "1" + ")" * 50
    assert eval_arithmetic(ok) == 1 and parse_literal(ok) == 1


def test_integer_expressions_of_bitwise_arithmetic():
    # reasoning-gym bitwise_arithmetic problems, values computed by hand
    assert eval_integer_expression("((0x7a5b >> 0x0) >> 0x1)") == 0x3D2D
    assert eval_integer_expression("((0x28ac << 0x0) + (0xebff >> 0x0))") == 0x114AB
    assert eval_integer_expression("((0x86c >> 0x3) * (0xa723 - 0xe46))") == (0x86C >> 3) * (0xA723 - 0xE46)
    assert eval_integer_expression("1 + 2 << 3") == 24  # shifts bind looser than +, as in Python
    for bad in ("1 << 100000000", "1 / 2", "1.5", "__import__('os')"):
        with pytest.raises(ParseError):
            eval_integer_expression(bad)


def test_sympy_builder_matches_sympy_objects():
    sp = pytest.importorskip("sympy")
    x, C = sp.Symbol("x"), sp.Symbol("C")
    assert parse_sympy("2240*x**3 + 3584*x**2 - 896*x") == 2240 * x**3 + 3584 * x**2 - 896 * x
    assert parse_sympy("-4*(-2*x - 8)**(3/2)/3 + C", {"x": x, "C": C}) == (
        -4 * (-2 * x - 8) ** sp.Rational(3, 2) / 3 + C)
    assert parse_sympy("sin(x)*exp(2*x) + ln(x) + sqrt(x) + atan(x)") == (
        sp.sin(x) * sp.exp(2 * x) + sp.log(x) + sp.sqrt(x) + sp.atan(x))
    assert parse_sympy("3*Integral(x**3*cos(3*x), x)") == 3 * sp.Integral(x**3 * sp.cos(3 * x), x)
    assert parse_sympy("0.5*x") == sp.Float("0.5") * x and parse_sympy("E + pi") == sp.E + sp.pi
    assert parse_sympy("-x**2") == -(x**2)
    assert parse_sympy("(x + 1)*(x + 2)") != sp.expand((x + 1) * (x + 2))  # structural, as parse_expr


@pytest.mark.parametrize("text", [
    "__import__('os').system('true')", "x.__class__", "Symbol('x')", "sympify('x')", "Lambda(x, x)",
    "x^2", "x!", "lambda: 1", "[x]", "x = 1", "2 x", "N(x)", "__import__", "open('f')", "x(1)",
    "__builtins__",
])
def test_sympy_builder_refuses_code(text):
    pytest.importorskip("sympy")
    with pytest.raises(ParseError):
        parse_sympy(text)
