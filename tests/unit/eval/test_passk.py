import json
import math
from fractions import Fraction
from math import comb

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_prorl.eval.cli import passk_main
from nemo_prorl.eval.passk import pass_at_k, pass_at_k_curve


def exact(n, c, k):
    return 1 - Fraction(comb(n - c, k), comb(n, k))


def test_hand_computed():
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5, abs=1e-15)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3, abs=1e-15)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0  # n - c = 2 < k
    assert pass_at_k(1, 1, 1) == 1.0


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_matches_exact_rational(nck):
    n, c, k = nck
    assert pass_at_k(n, c, k) == pytest.approx(float(exact(n, c, k)), rel=1e-12, abs=1e-13)


def test_large_n_is_exact_where_factorials_fail():
    for n, c, k in [(4000, 1, 2000), (4096, 7, 256), (2000, 1999, 1), (3000, 3, 2999)]:
        assert pass_at_k(n, c, k) == pytest.approx(float(exact(n, c, k)), rel=1e-11)
        assert math.isfinite(pass_at_k(n, c, k))


def test_errors():
    with pytest.raises(ValueError, match="k must be"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c must be"):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="no problems"):
        pass_at_k_curve([], [1])


def test_curve_means():
    curve = pass_at_k_curve([(4, 1), (4, 0), (4, 4)], [1, 2])
    assert curve["pass@1"] == pytest.approx((0.25 + 0 + 1) / 3)
    assert curve["pass@2"] == pytest.approx((0.5 + 0 + 1) / 3)


def test_cli(tmp_path, capsys):
    f = tmp_path / "s.jsonl"
    f.write_text(json.dumps({"id": "a", "correct": [True, False, False, False]}) + "\n"
                 + json.dumps({"id": "b", "n": 4, "c": 0}) + "\n")
    assert passk_main(["--input", str(f), "--k", "1,2,4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == pytest.approx({"pass@1": 0.125, "pass@2": 0.25, "pass@4": 0.5})


@pytest.mark.parametrize("line,needle", [
    ('{"id": "x", "correct": [true]}\n', "k=2 exceeds its n=1"),
    ('{"id": "x", "n": 2}\n', "s.jsonl:1:correct: missing"),
    ('{"id": "x", "n": 2, "c": 3}\n', "s.jsonl:1:c: must be in"),
    ('{"id": "x", "correct": [2]}\n', "s.jsonl:1:correct: entries"),
    ('{oops\n', "s.jsonl:1:<row>: broken JSON"),
])
def test_cli_errors_name_row_and_field(tmp_path, capsys, line, needle):
    f = tmp_path / "s.jsonl"
    f.write_text(line)
    assert passk_main(["--input", str(f), "--k", "2"]) == 2
    assert needle in capsys.readouterr().err
