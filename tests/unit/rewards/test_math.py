import pytest

from nemo_prorl.rewards.math import MathReward, hedge_reason
from nemo_prorl.rewards.math_expr import compare_values, fix_thousands, normalize
from nemo_prorl.rewards.text import answer_region, last_boxed

R = MathReward()


def score(gold, response):
    return R.score(response, {"domain": "math", "answer": gold})


@pytest.mark.parametrize("gold,pred", [
    ("\\frac{3}{4}", "0.75"),
    ("0.75", "\\dfrac{3}{4}"),
    ("\\frac{1}{2}", "\\dfrac{4}{8}"),
    ("871408", "871{,}408"),
    ("1000", "1\\,000"),
    ("1000000", "1,000,000"),
    ("x^2+2rx+r^2", "(x+r)^2"),
    ("2\\sqrt{3}", "\\sqrt{12}"),
    ("\\frac{3\\pi}{4}", "\\frac{3}{4}\\pi"),
    ("[0,1)", "[0, 1)"),
    ("(-\\infty, 2]", "(-\\infty,2]"),
    ("5", "5\\text{ cm}"),
    ("30", "30^\\circ"),
    ("7", "7."),
    ("2", "x=2"),
    ("\\frac{1}{3}", "0.333333"),
    ("2.5", "2\\frac{1}{2}"),
    ("-3", "\\left(-3\\right)"),
    ("12", "\\boxed{12}"),
    (12, "12"),
    (0.5, "\\frac12"),
])
def test_equivalent_forms_score_one(gold, pred):
    res = score(gold, f"Work... so the answer is $\\boxed{{{pred}}}$")
    assert res.status == "ok" and res.score == 1.0, res


@pytest.mark.parametrize("gold,pred", [
    ("0", "1\\,000"),          # math-verify alone reads 1\,000 as 1*0
    ("7", "7 \\text{ or } 8"),  # hedge
    ("7", "7 or 8"),
    ("7", "7, 8"),
    ("3", "\\pm 3"),
    ("12", "1 2"),
    ("871408", "871{,}409"),
    ("[0,1)", "[0,1]"),
    ("x^2+2rx+r^2", "(x+r+1)^2"),
    ("\\frac{1}{3}", "0.33"),
    ("\\frac{\\pi}{6}", "30^\\circ"),
    ("5", "6"),
    ("1000001", "1000000"),
])
def test_wrong_answers_score_zero(gold, pred):
    res = score(gold, f"\\boxed{{{pred}}}")
    assert res.status == "ok" and res.score == 0.0, res


def test_hedge_allowed_when_gold_has_alternatives():
    assert score("2 \\text{ or } 3", "\\boxed{2 \\text{ or } 3}").score == 1.0
    assert score("1, 2", "\\boxed{1, 2}").score == 1.0


def test_last_box_after_think_wins():
    resp = "<think>maybe \\boxed{5}</think> first \\boxed{3}, wait, actually \\boxed{5}"
    assert score("5", resp).score == 1.0
    assert score("3", resp).score == 0.0
    # the box inside the think block never counts
    assert score("7", "<think>\\boxed{7}</think> I give up").status == "no_answer"


def test_no_answer_cases():
    assert score("7", "The answer is 7").status == "no_answer"
    assert score("7", "<think>\\boxed{7} and then the output was cut").status == "no_answer"
    assert score("7", "\\boxed{}").status == "no_answer"
    assert score("7", "").status == "no_answer"


def test_fbox_and_truncated_last_box():
    assert score("4", "\\fbox{4}").score == 1.0
    assert score("4", "\\boxed{4} then \\boxed{5").score == 1.0


def test_limits_reject_monsters_fast():
    res = score("1", "\\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}")
    assert res.score == 0.0 and res.info["path"] == "limits"
    res = score("1", "\\boxed{" + "{" * 20000 + "1" + "}" * 20000 + "}")
    assert res.score == 0.0 and res.info["path"] == "limits"


def test_helpers():
    assert fix_thousands("1\\,000") == "1000"
    assert fix_thousands("871{,}408") == "871408"
    assert fix_thousands("1,5") == "1,5"  # not a thousands separator
    assert fix_thousands("1\\,00") == "1\\,00"
    assert normalize("\\left( 3 \\right).")[0] == "(3)"
    assert normalize("90^{\\circ}") == ("90", True)
    assert normalize("5 \\text{ or } 6")[0] != "5"
    assert last_boxed("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"
    assert last_boxed("\\boxed 5$") == "5"
    assert answer_region("a</think>b</think>c") == "c"
    assert answer_region("<think>a") is None
    assert hedge_reason("7", "7 \\lor 8") is not None
    assert hedge_reason("(1,2)", "(1,2)") is None


@pytest.mark.parametrize("gold,pred,expected", [
    ("\\frac{1}{2}", "0.5", True),
    ("2", "2.0", True),
    ("5", "6", False),
    ("1000000", "1000001", False),   # rationals compare exactly
    ("\\frac{1}{3}", "0.333333", None),  # math-verify's rounding decides
    ("x^2-1", "(x-1)(x+1)", True),
    ("x", "y", False),              # different variables: decided by the identity test
    ("\\sqrt{8}", "2\\sqrt{2}", True),
    ("\\pi", "3.14", False),
    ("2\\frac{1}{2}", "2.5", None),   # mixed number left to math-verify
    ("1 2", "12", None),
    ("9^{9^{9^9}}", "1", None),       # too large: left to math-verify (and the pool deadline)
    ("e", "2.718", None),
])
def test_compare_values(gold, pred, expected):
    assert compare_values(normalize(gold)[0], normalize(pred)[0]) is expected


def test_math_verify_disabled_leaves_undecided_at_zero():
    r = MathReward(use_math_verify=False)
    res = r.score("\\boxed{30^\\circ}", {"answer": "30"})
    assert res.score == 0.0 and res.info["path"] == "undecided"


def test_validate_empty_answer():
    assert R.validate({"answer": "  "})[0].field == "answer"
    assert R.validate({"answer": "3"}) == []


def test_scoring_off_main_thread_does_not_raise():
    import threading

    out = []
    t = threading.Thread(target=lambda: out.append(score("30", "\\boxed{30^\\circ}")))
    t.start()
    t.join()
    assert out[0].status == "ok" and out[0].score == 1.0
