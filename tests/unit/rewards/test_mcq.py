import pytest

from nemo_prorl.rewards.mcq import MCQReward, option_letters

R = MCQReward()
OPTS = ["london", "paris", "rome", "oslo"]


def score(resp, gold="B", options=OPTS):
    row = {"domain": "mcq", "answer": gold}
    if options is not None:
        row["options"] = options
    return R.score(resp, row)


@pytest.mark.parametrize(
    "resp",
    [
        "(B)",
        "B)",
        "B.",
        "B",
        "\\boxed{B}",
        "$\\boxed{\\text{B}}$",
        "Answer: B",
        "**Answer:** (B)",
        "**Answer: B**",
        "The answer is B",
        "The answer is (B).",
        "the correct answer is option (B): Paris",
        "Long reasoning...\nFinal answer: B",
        "Reasoning\n\n(B)",
        "So the answer is paris",
        "Answer: Paris.",
        "Let me see which answer is right. The answer is (B)",
        "<think>Answer: A</think>\nAnswer: B",
    ],
)
def test_correct_forms(resp):
    res = score(resp)
    assert res.status == "ok" and res.score == 1.0, res


@pytest.mark.parametrize(
    "resp",
    [
        "Answer: C",
        "(A)",
        "\\boxed{D}",
        "The answer is B or C",
        "Answer: B, C",
        "The answer is B and C.",
        "Answer: B/C",
        "Answer: B\nOn reflection, the answer is A",
        "\\boxed{B} hmm no \\boxed{C}",
        "Answer: rome",
    ],
)
def test_wrong_forms(resp):
    res = score(resp)
    assert res.score == 0.0, res


def test_last_answer_wins():
    assert score("Answer: A\nWait. Answer: B").score == 1.0
    assert score("Answer: B\nWait. Answer: A").score == 0.0


def test_two_letters_reason():
    res = score("The answer is B or C")
    assert res.status == "ok" and "several options" in res.info["reason"]


def test_no_answer():
    assert score("I cannot decide between these.").status == "no_answer"
    assert score("<think>Answer: B").status == "no_answer"


def test_gold_as_option_text_and_dict_options():
    assert score("Answer: B", gold="paris").score == 1.0
    assert score("Answer: (b)", gold="B", options={"A": "x", "B": "y"}).score == 1.0
    assert score("The answer is y", gold="B", options={"A": "x", "B": "y"}).score == 1.0


def test_without_options():
    assert score("Answer: D", gold="D", options=None).score == 1.0
    assert score("Answer: D", gold="(C)", options=None).score == 0.0


def test_prose_lowercase_letter_is_not_an_option():
    # "a" starting a sentence after "answer is" is prose, not option A
    assert score("The answer is a number we cannot know.", gold="A", options=None).score == 0.0


def test_validate():
    assert R.validate({"answer": "B", "options": OPTS}) == []
    probs = R.validate({"answer": "madrid", "options": OPTS})
    assert probs and probs[0].field == "answer"
    assert option_letters(["x", "y"]) == {"A": "x", "B": "y"}
