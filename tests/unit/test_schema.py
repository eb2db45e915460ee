from nemo_prorl.schema import check_scoring_row, check_training_row, parse_tests


def fields(problems):
    return sorted(p.field for p in problems)


def test_good_rows_pass():
    assert check_training_row({"id": 1, "domain": "math", "prompt": "1+1?", "answer": "2"}) == []
    assert check_training_row({"id": "a", "domain": "code", "prompt": [{"role": "user", "content": "x"}],
                               "tests": '[{"input": "1", "output": "1"}]'}) == []
    assert check_scoring_row({"domain": "ifeval", "response": "hi",
                              "instructions": [{"id": "punctuation:no_comma", "kwargs": {}}]}) == []
    assert check_scoring_row({"domain": "reasoning_gym", "response": "x", "task": "chain_sum",
                              "entry": {"question": "1+1", "answer": "2", "metadata": {}}}) == []


def test_every_problem_is_named():
    assert fields(check_training_row({"domain": "math", "answer": "2"})) == ["id", "prompt"]
    assert fields(check_training_row({"id": None, "domain": "math", "prompt": "", "answer": None})) == [
        "answer", "id", "prompt"]
    assert fields(check_scoring_row({"domain": "bogus", "response": 3})) == ["domain", "response"]
    assert fields(check_scoring_row({"domain": "code", "response": "", "tests": "[{"})) == ["tests"]
    row = {"domain": "ifeval", "response": "", "instructions": [{"kwargs": 1}]}
    assert fields(check_scoring_row(row)) == ["instructions[0].id"]
    assert fields(check_scoring_row([1, 2])) == ["<row>"]
    assert "unknown domain" in check_scoring_row({"domain": "chem", "response": ""})[0].reason


def test_parse_tests_reasons():
    import pytest

    with pytest.raises(ValueError, match="not valid JSON"):
        parse_tests("{")
    with pytest.raises(ValueError, match="case 0"):
        parse_tests([{"input": "1"}])
    with pytest.raises(ValueError, match="empty"):
        parse_tests([])
    assert parse_tests([{"assert": "assert f(1) == 1"}]) == [{"assert": "assert f(1) == 1"}]
