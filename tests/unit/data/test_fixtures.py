"""The shipped fixtures: valid rows, correct reference solutions, reproducible reasoning-gym sample."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import nemo_prorl.data
from nemo_prorl.data import DataConfig, prepare_data
from nemo_prorl.data.preflight import preflight
from nemo_prorl.data.reasoning_gym_gen import generate_rows

FIXTURES = Path(nemo_prorl.data.__file__).parent / "fixtures"

# IFEval instruction ids used by the fixtures -> the kwargs names IFEval defines for them
IFEVAL_KWARGS = {
    "punctuation:no_comma": set(),
    "length_constraints:number_words": {"relation", "num_words"},
    "length_constraints:number_sentences": {"relation", "num_sentences"},
    "length_constraints:number_paragraphs": {"num_paragraphs"},
    "change_case:english_lowercase": set(),
    "change_case:english_capital": set(),
    "detectable_format:number_bullet_lists": {"num_bullets"},
    "detectable_format:title": set(),
    "detectable_format:json_format": set(),
    "detectable_format:multiple_sections": {"section_spliter", "num_sections"},
    "detectable_format:number_highlighted_sections": {"num_highlights"},
    "keywords:existence": {"keywords"},
    "keywords:forbidden_words": {"forbidden_words"},
    "keywords:letter_frequency": {"letter", "let_frequency", "let_relation"},
    "startend:end_checker": {"end_phrase"},
    "startend:quotation": set(),
    "detectable_content:postscript": {"postscript_marker"},
    "detectable_content:number_placeholders": {"num_placeholders"},
    "language:response_language": {"language"},
}


def load(name: str) -> list[dict]:
    return [json.loads(x) for x in (FIXTURES / name).read_text(encoding="utf-8").splitlines()]


def test_all_fixture_rows_pass_preflight():
    report = preflight([str(FIXTURES / "train"), str(FIXTURES / "eval")], policy="fail", check_rewards=False)
    assert report.kept == report.rows_read >= 100
    assert set(report.kept_by_domain) == {"math", "code", "mcq", "reasoning_gym", "ifeval"}


def test_prepare_data_on_fixtures(char_tokenizer):
    cfg = DataConfig(train_files=[str(FIXTURES / "train")], val_files=[str(FIXTURES / "eval")],
                     max_prompt_tokens=2000, validation_policy="fail", check_rewards=False)
    data = prepare_data(cfg, char_tokenizer)
    assert len(data.val_rows) == 10 and data.train_report.kept == 96
    assert len(data.sampler.next_batch(96)) == 96 and data.sampler.epoch == 1


def test_code_reference_solutions_pass_their_tests(tmp_path):
    solutions = {r["id"]: r["solution"] for r in load("reference/code_solutions.jsonl")}
    rows = load("train/code_train.jsonl")
    assert set(solutions) == {r["id"] for r in rows}
    for row in rows:
        sol = solutions[row["id"]]
        for case in row["tests"]:
            if "assert" in case:
                script = tmp_path / "check.py"
                script.write_text(sol + "\n" + case["assert"] + "\n")
                res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=9)
                assert res.returncode == 0, (row["id"], case, res.stderr)
            else:
                res = subprocess.run([sys.executable, "-c", sol], input=case["input"], capture_output=True,
                                     text=True, timeout=30)
                assert res.stdout == case["output"], (row["id"], case)


def test_math_answers_parse_with_math_verify():
    from math_verify import parse, verify

    for name in ("train/math_train.jsonl", "eval/math_eval.jsonl"):
        for row in load(name):
            gold = parse(f"${row['answer']}$")
            assert gold, row["id"]
            assert verify(gold, parse(f"\\boxed{{{row['answer']}}}")), row["id"]


def test_mcq_answers_are_option_letters():
    for row in load("train/mcq_train.jsonl"):
        assert row["answer"] in "ABCD"[: len(row["options"])]


def test_ifeval_instruction_ids_and_kwargs():
    for row in load("train/ifeval_train.jsonl"):
        for inst in row["instructions"]:
            assert inst["id"] in IFEVAL_KWARGS, inst["id"]
            assert set(inst["kwargs"]) == IFEVAL_KWARGS[inst["id"]], inst


@pytest.mark.parametrize("task", ["basic_arithmetic", "arc_1d"])
def test_reasoning_gym_fixture_is_reproducible(task):
    # README: nemo-prorl data reasoning-gym --tasks basic_arithmetic,chain_sum,letter_counting,
    #         spell_backward,countdown,arc_1d --size 4 --seed 2025
    shipped = [r for r in load("train/reasoning_gym_train.jsonl") if r["task"] == task]
    assert shipped == list(generate_rows([task], size=4, seed=2025))
