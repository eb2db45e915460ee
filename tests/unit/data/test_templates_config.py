"""Prompt templates (hand-written expected strings) and DataConfig validation."""

from __future__ import annotations

import pytest

from nemo_prorl.data.config import DataConfig
from nemo_prorl.data.templates import build_messages, check_templates, format_prompt, tokenize_prompt

MATH = {"id": 1, "domain": "math", "prompt": "What is 2+3?", "answer": "5"}


def test_raw_text_per_domain():
    assert format_prompt(MATH) == (
        "What is 2+3?\nLet's think step by step and output the final answer within \\boxed{}."
    )
    rg = {"id": 2, "domain": "reasoning_gym", "prompt": "Spell 'cat' backwards.", "task": "t", "entry": {}}
    assert format_prompt(rg).startswith("Spell 'cat' backwards.\n\n")
    assert "<answer></answer>" in format_prompt(rg)
    ife = {"id": 3, "domain": "ifeval", "prompt": "Write a haiku.", "instructions": []}
    assert format_prompt(ife) == "Write a haiku."
    code = {"id": 4, "domain": "code", "prompt": "Sum two ints.", "tests": []}
    assert format_prompt(code).startswith("Sum two ints.\n\n") and "```python" in format_prompt(code)


def test_mcq_options_rendered():
    row = {"id": 5, "domain": "mcq", "prompt": "Pick one.", "options": ["red", "blue"], "answer": "B"}
    text = format_prompt(row, templates={"mcq": "{prompt}{options}\nAnswer in \\boxed{{}}."})
    assert text == "Pick one.\n\nA. red\nB. blue\nAnswer in \\boxed{}."
    row["options"] = {"X": "up", "Y": "down"}
    assert format_prompt(row, templates={"mcq": "{prompt}{options}"}) == "Pick one.\n\nX. up\nY. down"
    del row["options"]
    assert format_prompt(row, templates={"mcq": "{prompt}{options}"}) == "Pick one."


def test_chat_template_and_token_ids(char_tokenizer, raw_tokenizer):
    tmpl = {"math": "Q: {prompt}"}
    text = format_prompt(MATH, char_tokenizer, tmpl)
    assert text == "<|user|>Q: What is 2+3?<|end|><|assistant|>"
    ids = tokenize_prompt(MATH, char_tokenizer, tmpl)
    assert len(ids) == len(text)  # one token per character
    assert char_tokenizer.decode(ids) == text
    with_sys = format_prompt(MATH, char_tokenizer, tmpl, system_prompt="Be brief.")
    assert with_sys == "<|system|>Be brief.<|end|><|user|>Q: What is 2+3?<|end|><|assistant|>"
    # no chat template: raw text
    assert format_prompt(MATH, raw_tokenizer, tmpl) == "Q: What is 2+3?"
    assert len(tokenize_prompt(MATH, raw_tokenizer, tmpl)) == len("Q: What is 2+3?")


def test_chat_message_prompt_gets_template_on_last_user_turn(char_tokenizer):
    row = {
        "id": 6, "domain": "math", "answer": "4",
        "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
                   {"role": "assistant", "content": "b"}, {"role": "user", "content": "2+2?"}],
    }
    msgs = build_messages(row, {"math": "[{prompt}]"}, system_prompt="ignored: row has one")
    assert msgs == [{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"}, {"role": "user", "content": "[2+2?]"}]
    assert format_prompt(row, char_tokenizer, {"math": "[{prompt}]"}) == (
        "<|system|>S<|end|><|user|>a<|end|><|assistant|>b<|end|><|user|>[2+2?]<|end|><|assistant|>"
    )
    assert format_prompt(row, None, {"math": "[{prompt}]"}) == "S\n\na\n\nb\n\n[2+2?]"
    assert row["prompt"][-1]["content"] == "2+2?"  # the row itself is not modified


@pytest.mark.parametrize(
    "template, msg",
    [
        ("{prompt.__class__}", "not allowed"),
        ("{prompt!r}", "not allowed"),
        ("{answer} {prompt}", "not allowed"),
        ("no placeholder", "must contain"),
        ("{prompt", "not a valid format string"),
    ],
)
def test_bad_templates_rejected(template, msg):
    with pytest.raises(ValueError, match=msg):
        check_templates({"math": template})


def test_data_config_validation():
    cfg = DataConfig(train_files="a.jsonl", mixture={"math": 40, "code": 24},
                     phase_mixtures={"run3": {"math": 40, "code": 24, "ifeval": 10}})
    assert cfg.train_files == ["a.jsonl"]
    assert cfg.weights_for_phase("run3") == {"math": 40.0, "code": 24.0, "ifeval": 10.0}
    assert cfg.weights_for_phase("run1") == {"math": 40.0, "code": 24.0}
    assert DataConfig().weights_for_phase(None) is None
    for bad, msg in [
        ({"validation_policy": "warn"}, "validation_policy"),
        ({"max_prompt_tokens": 0}, "max_prompt_tokens"),
        ({"mixture": {"poetry": 1}}, "data.mixture.poetry: unknown domain"),
        ({"mixture": {"math": 0}}, "weight > 0"),
        ({"phase_mixtures": {"p": {"math": "x"}}}, "data.phase_mixtures.p.math"),
        ({"templates": {"math": "{x}"}}, "data.templates.math"),
        ({"seed": -1}, "seed"),
    ]:
        with pytest.raises(ValueError, match=msg):
            DataConfig(**bad)
    with pytest.raises(ValueError, match="^data.trust_remote_code: unknown key"):
        DataConfig.from_dict({"train_files": [], "trust_remote_code": True})
