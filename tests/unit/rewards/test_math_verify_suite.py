r"""Differential test against math-verify's own test suite (answer form).

Data: ``tests/data/math_verify_cases.jsonl``, the parametrised ``(gold, pred, expected)`` cases of
``huggingface/Math-Verify`` at commit 5d148cfaaf99214c2e4ffb4bc497ab042c592a7a (``tests/test_all.py``,
``test_boxed.py``, ``test_numina_cases.py``, ``test_open_thoughts.py``, ``test_strict.py``,
``test_yujianll.py``), extracted by ``tests/data/extract_math_verify_cases.py`` (see
``tests/data/README.md``).

Both graders see the same inputs: the reference string as the row's answer, and the prediction as the
response (wrapped in ``\boxed{}`` when it holds no box, after dropping one pair of math delimiters).
math-verify is called as its README shows, ``verify(parse(gold), parse(response))``.

Targets (issue 16): no false positive, and agreement with the suite at least math-verify's on the same
inputs, apart from the documented last-box rule: a prediction that puts its answer in several boxes
(``\boxed{(2, 2)} \text{ and } \boxed{(6, 2)}``) is graded on its last box only here, so those cases are
listed as exceptions (:data:`LAST_BOX_EXCEPTIONS`) -- a deliberate choice that keeps self-corrections
(``\boxed{5}`` ... ``wait, actually \boxed{7}``) from counting as a set of answers.
"""

import json
import logging
from pathlib import Path

import pytest

from nemo_prorl.rewards.math import MathReward
from nemo_prorl.rewards.text import all_boxed, answer_region

DATA = Path(__file__).resolve().parents[2] / "data" / "math_verify_cases.jsonl"
CASES = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]

# Cases whose prediction boxes its answer in several places (the last-box rule decides otherwise).
LAST_BOX_EXCEPTIONS = 13


def response_for(pred: str) -> str:
    s = pred.strip()
    if "\\boxed" in s or "\\fbox" in s:
        return s
    for a, b in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(a) and s.endswith(b) and len(s) > len(a) + len(b):
            s = s[len(a):-len(b)].strip()
            break
    return "\\boxed{" + s + "}"


def is_multi_box(response: str) -> bool:
    region = answer_region(response)
    return region is not None and len(all_boxed(region)) > 1


def test_fixture_shape():
    assert len(CASES) == 213
    assert sum(c["expected"] for c in CASES) == 182
    assert {c["file"] for c in CASES} >= {"tests/test_all.py", "tests/test_numina_cases.py"}


@pytest.mark.slow
def test_differential_against_math_verify():
    math_verify = pytest.importorskip("math_verify")
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    logging.getLogger("latex2sympy2_extended").setLevel(logging.CRITICAL)
    reward = MathReward()
    ours_ok = mv_ok = 0
    false_pos, exceptions = [], []
    for case in CASES:
        resp = response_for(case["pred"])
        ours = int(reward.score(resp, {"domain": "math", "answer": case["gold"]}).score == 1.0)
        mv = int(bool(math_verify.verify(math_verify.parse(case["gold"]), math_verify.parse(resp))))
        if ours and not case["expected"]:
            false_pos.append(case)
        if ours != case["expected"] and is_multi_box(resp):
            exceptions.append(case)
            continue
        ours_ok += ours == case["expected"]
        mv_ok += mv == case["expected"]
    assert false_pos == []
    assert len(exceptions) == LAST_BOX_EXCEPTIONS, [c["pred"][-120:] for c in exceptions]
    assert all(c["expected"] == 1 for c in exceptions)
    assert ours_ok >= mv_ok, (ours_ok, mv_ok)
