import pytest

reasoning_gym = pytest.importorskip("reasoning_gym")

from nemo_prorl.rewards.rgym import ReasoningGymReward, parse_bool  # noqa: E402

R = ReasoningGymReward()

# Tasks that legitimately give partial credit above 0.05 to a wrong answer (see the module docstring).
PARTIAL_CREDIT_TASKS = {"figlet_font", "spell_backward", "rectangle_count"}
COMMON_TASKS = [
    "basic_arithmetic",
    "chain_sum",
    "leg_counting",
    "countdown",
    "propositional_logic",
    "game_of_life_halting",
    "spell_backward",
    "figlet_font",
    "word_sorting",
    "letter_counting",
    "gsm_symbolic",
    "course_schedule",
    "isomorphic_strings",
    "ransom_note",
    "advanced_geometry",
    "fraction_simplification",
    "number_sorting",
    "sentence_reordering",
    "prime_factorization",
    "arc_agi",
    "palindrome_generation",
    "coin_flip",
]


def rows(task, n=3, seed=1):
    ds = reasoning_gym.create_dataset(task, size=n, seed=seed)
    return [{"domain": "reasoning_gym", "task": task, "entry": ds[i]} for i in range(n)]


@pytest.mark.parametrize("task", COMMON_TASKS)
def test_garbage_probe(task):
    for row in rows(task):
        res = R.score("<answer>garbage</answer>", row)
        assert res.status in ("ok", "error")
        if task not in PARTIAL_CREDIT_TASKS:
            assert res.score <= 0.05, (task, res)
        empty = R.score("<answer> </answer>", row)
        assert empty.status == "no_answer" and empty.score == 0.0


@pytest.mark.parametrize("task", ["basic_arithmetic", "chain_sum", "word_sorting", "letter_counting"])
def test_oracle_answer_scores_one(task):
    for row in rows(task):
        res = R.score(
            f"<think>hmm <answer>wrong</answer></think> <answer>{row['entry']['answer']}</answer>", row
        )
        assert res.status == "ok" and res.score == 1.0, res


def test_game_of_life_halting_hole_fixed():
    for row in rows("game_of_life_halting", n=4):
        gold = row["entry"]["answer"]
        other = "False" if gold == "True" else "True"
        assert R.score(f"<answer>{gold}</answer>", row).score == 1.0
        assert R.score(f"<answer>{other}</answer>", row).score == 0.0
        assert R.score("<answer>banana</answer>", row).score == 0.0
    assert parse_bool(" TRUE. ") is True and parse_bool("no") is False and parse_bool("maybe") is None


def test_scorer_exception_on_a_wrong_answer_is_a_zero_not_an_error():
    # prime_factorization raises on "definitely wrong" but scores its own reference: the policy's answer
    # is wrong (status ok, 0), not a grader fault (see test_rgym_safe.py for a broken row)
    row = rows("prime_factorization", n=1)[0]
    res = R.score("<answer>definitely wrong</answer>", row)
    assert res.status == "ok" and res.score == 0.0 and "raised" in res.info["reason"]


def test_unknown_task_and_missing_tag():
    row = {"domain": "reasoning_gym", "task": "no_such_task", "entry": {"question": "q"}}
    assert R.validate(row)[0].field == "task"
    res = R.score("<answer>1</answer>", row)
    assert res.status == "error" and "no_such_task" in res.info["reason"]
    good = rows("basic_arithmetic", n=1)[0]
    assert R.score(str(good["entry"]["answer"]), good).status == "no_answer"
    loose = ReasoningGymReward(require_answer_tag=False)
    assert loose.score(str(good["entry"]["answer"]), good).score == 1.0


def test_partial_credit_switch():
    row = rows("spell_backward", n=1)[0]
    ans = row["entry"]["answer"]
    partial = R.score(f"<answer>{ans[:-1]}x</answer>", row)
    assert 0.0 < partial.score < 1.0
    binary = ReasoningGymReward(partial_credit=False).score(f"<answer>{ans[:-1]}x</answer>", row)
    assert binary.score == 0.0 and binary.info["raw_score"] == partial.score


def test_grid_tasks_score_correct_answers_after_json_roundtrip():
    """arc_agi compares tuples of tuples; rows read from JSON carry lists, restored before scoring."""
    import json

    import reasoning_gym

    from nemo_prorl.rewards.rgym import ReasoningGymReward

    ds = reasoning_gym.create_dataset("arc_agi", size=2, seed=3)
    reward = ReasoningGymReward()
    for item in ds:
        entry = json.loads(json.dumps(item, default=list))
        row = {"domain": "reasoning_gym", "task": "arc_agi", "entry": entry}
        res = reward.score(f"<answer>{item['answer']}</answer>", row)
        assert res.status == "ok" and res.score == 1.0
