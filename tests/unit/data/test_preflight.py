"""Preflight: every message with its exact file:row:field, skip vs fail, long prompts, formats."""

from __future__ import annotations

import json

import pytest

from nemo_prorl.data.preflight import DataValidationError, expand_paths, preflight
from nemo_prorl.rewards import base as reward_base
from nemo_prorl.schema import Problem

GOOD_MATH = {"id": "a", "domain": "math", "prompt": "What is 1+1?", "answer": "2"}
GOOD_CODE = {"id": "n", "domain": "code", "prompt": "Print 1.", "tests": [{"input": "", "output": "1\n"}]}

MALFORMED_LINES: list[bytes] = [
    json.dumps(GOOD_MATH).encode(),                                                   # 1 ok
    b'{"id": "b", "domain": "math"',                                                  # 2 broken JSON
    b'{"id": "c", "domain": "math", "prompt": "\xff\xfe", "answer": "1"}',            # 3 non-UTF-8
    b'{"id": "d", "domain": "math", "prompt": "p"}',                                  # 4 missing answer
    b'{"id": "e", "domain": "math", "prompt": null, "answer": "1"}',                  # 5 null prompt
    b'{"id": "f", "domain": "math", "prompt": "p", "answer": [1]}',                   # 6 wrong type
    b'{"id": "g", "domain": "poetry", "prompt": "p"}',                                # 7 unknown domain
    b'{"id": "h", "domain": "code", "prompt": "p", "tests": "[{\\"input\\": 1"}',     # 8 unparsable tests
    json.dumps(GOOD_MATH).encode(),                                                   # 9 duplicate id
    b"   ",                                                                           # 10 blank: ignored
    b'{"domain": "math", "prompt": "p", "answer": "1"}',                              # 11 missing id
    b"[1, 2]",                                                                        # 12 not an object
    b'{"id": "m", "domain": null, "prompt": "p", "answer": "1"}',                     # 13 null domain
    json.dumps(GOOD_CODE).encode(),                                                   # 14 ok
    b'{"id": "o", "domain": "code", "prompt": "p", "tests": [{"input": "1"}]}',       # 15 bad test case
]


@pytest.fixture()
def malformed(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(MALFORMED_LINES) + b"\n")
    return str(path)


def expected_messages(f: str) -> list[str]:
    return [
        f"{f}:2:<row>: broken JSON (Expecting ',' delimiter at char 29)",
        f"{f}:3:<row>: not valid UTF-8 (invalid start byte at byte 41)",
        f"{f}:4:answer: missing (required for domain 'math')",
        f"{f}:5:prompt: null",
        f"{f}:6:answer: expected a string or number, got list",
        f"{f}:7:domain: unknown domain 'poetry' "
        "(known: math, code, mcq, reasoning_gym, ifeval, reward_model)",
        f"{f}:8:tests: not valid JSON (Expecting ',' delimiter at char 12)",
        f"{f}:9:id: duplicate id 'a' (first at {f}:1)",
        f"{f}:11:id: missing",
        f"{f}:12:<row>: expected a JSON object, got list",
        f"{f}:13:domain: null",
        f"{f}:15:tests: case 0: needs 'input' and 'output', or 'assert'",
    ]


def test_every_message_has_exact_file_row_field(malformed):
    report = preflight([malformed], policy="skip", check_rewards=False)
    assert [str(i) for i in report.issues] == expected_messages(malformed)
    assert [r["id"] for r in report.rows] == ["a", "n"]
    assert report.rows_read == 14  # the blank line is not a row
    assert report.kept == 2 and report.skipped == 12
    assert dict(report.skipped_by_reason) == {
        "broken JSON": 1, "non-UTF-8": 1, "missing": 2, "null": 2, "wrong type": 2,
        "unknown domain": 1, "unparsable tests": 2, "duplicate id": 1,
    }
    assert dict(report.kept_by_domain) == {"math": 1, "code": 1}
    assert dict(report.read_by_domain) == {"math": 6, "code": 3, "<unknown>": 5}
    summary = report.summary()
    json.dumps(summary)
    assert summary["problems"] == 12 and summary["kept"] == 2


def test_fail_policy_raises_with_report(malformed):
    with pytest.raises(DataValidationError) as err:
        preflight([malformed], policy="fail", check_rewards=False)
    assert err.value.report.kept == 2
    text = str(err.value)
    assert text.startswith("12 data problem(s) (policy 'fail'):")
    assert f"{malformed}:5:prompt: null" in text


def test_fail_policy_passes_clean_file(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps(GOOD_MATH) + "\n" + json.dumps(GOOD_CODE) + "\n")
    report = preflight([str(path)], policy="fail", check_rewards=False)
    assert report.ok and report.kept == 2


def test_bad_policy_and_missing_tokenizer(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps(GOOD_MATH) + "\n")
    with pytest.raises(ValueError, match="policy"):
        preflight([str(path)], policy="ignore")
    with pytest.raises(ValueError, match="tokenizer"):
        preflight([str(path)], max_prompt_tokens=10)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        preflight([str(tmp_path / "nope.jsonl")])


def test_long_prompts_filtered_after_template(tmp_path, char_tokenizer):
    # char-level tokenizer: tokens == characters of the chat-templated text
    suffix = "\nLet's think step by step and output the final answer within \\boxed{}."
    overhead = len("<|user|>") + len(suffix) + len("<|end|><|assistant|>")
    rows = [
        {"id": "short", "domain": "math", "prompt": "x" * 10, "answer": "1"},
        {"id": "edge", "domain": "math", "prompt": "x" * 20, "answer": "1"},
        {"id": "long", "domain": "math", "prompt": "x" * 21, "answer": "1"},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    limit = overhead + 20
    report = preflight([str(path)], tokenizer=char_tokenizer, max_prompt_tokens=limit, check_rewards=False)
    assert [r["id"] for r in report.rows] == ["short", "edge"]
    assert report.too_long == [(str(path), 3, "long", overhead + 21)]
    assert report.summary()["too_long_ids"] == ["long"]
    assert report.skipped_by_reason["prompt too long"] == 1
    assert report.ok  # filtering long prompts is not a data error
    # under "fail" long prompts are still filtered, not fatal
    report = preflight([str(path)], policy="fail", tokenizer=char_tokenizer, max_prompt_tokens=overhead + 20,
                       check_rewards=False)
    assert report.kept == 2


def test_json_array_parquet_and_directory(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    no_answer = {"id": "z", "domain": "math", "prompt": "q"}
    (shard_dir / "part-0.json").write_text(json.dumps([GOOD_MATH, no_answer]))
    rows = [
        {"id": "p1", "domain": "math", "prompt": "2+2?", "answer": "4"},
        {"id": "p2", "domain": "math", "prompt": None, "answer": "4"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), str(shard_dir / "part-1.parquet"))
    (shard_dir / "README.txt").write_text("not data")
    assert [p.rsplit("/", 1)[-1] for p in expand_paths([str(shard_dir)])] == ["part-0.json", "part-1.parquet"]
    report = preflight([str(shard_dir)], check_rewards=False)
    j, p = str(shard_dir / "part-0.json"), str(shard_dir / "part-1.parquet")
    assert [str(i) for i in report.issues] == [
        f"{j}:2:answer: missing (required for domain 'math')",
        f"{p}:2:prompt: null",
    ]
    assert [r["id"] for r in report.rows] == ["a", "p1"]


def test_broken_json_array_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"id": 1,}]')
    report = preflight([str(path)], check_rewards=False)
    assert [str(i) for i in report.issues] == [
        f"{path}:0:<file>: broken JSON (line 1 col 11: Expecting property name enclosed in double quotes)"
    ]
    assert report.kept == 0


def test_reward_validate_is_consulted(tmp_path, monkeypatch):
    class StrictMath(reward_base.Reward):
        def validate(self, row):
            return [] if str(row["answer"]).strip() else [Problem("answer", "empty reference answer")]

        def score(self, response, row):
            return reward_base.RewardResult(0.0)

    monkeypatch.setattr(reward_base, "_REGISTRY", {"math": StrictMath})
    monkeypatch.setattr(reward_base, "_ENTRY_POINTS_LOADED", True)
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(GOOD_MATH) + "\n" + json.dumps({**GOOD_MATH, "id": "b", "answer": " "}) + "\n")
    report = preflight([str(path)])
    assert [str(i) for i in report.issues] == [f"{path}:2:answer: empty reference answer"]
    assert report.skipped_by_reason == {"ground truth": 1}
    # disabled: the row passes the structural check only
    assert preflight([str(path)], check_rewards=False).kept == 2
