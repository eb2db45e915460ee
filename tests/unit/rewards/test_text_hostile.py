"""Linear-time scanning of hostile model text (issue 16, item 5).

Each single-pass helper is checked against the reference regex it replaces (IFEval's reference checker
``google-research/instruction_following_eval/instructions.py`` for placeholders, bullets, titles and
postscripts; the code reward's fence pattern) on random small texts, and every scorer is timed on 30k-
character adversarial inputs: under 1 s per row (generous for a shared CPU) with the right status.
"""

import random
import re
import time

import pytest

from nemo_prorl.rewards.ifeval import INSTRUCTIONS, IFEvalReward, count_line_items, count_placeholders
from nemo_prorl.rewards.mcq import MCQReward
from nemo_prorl.rewards.sentences import count_sentences
from nemo_prorl.rewards.text import fenced_blocks, last_boxed

FENCE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+.#-]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.M | re.S)


def _random_texts(alphabet, n=3000, seed=0, max_len=40):
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, max_len))) for _ in range(n)]


def test_placeholders_and_bullets_match_reference_regexes():
    for text in _random_texts(["[", "]", "a", "\n", " ", "*", "-", "\t", "x"]):
        assert count_placeholders(text) == len(re.findall(r"\[.*?\]", text)), repr(text)
        assert count_line_items(text, "*", not_followed_by="*") == len(
            re.findall(r"^\s*\*[^\*].*$", text, flags=re.MULTILINE)), repr(text)
        dashes = re.findall(r"^\s*-.*$", text, flags=re.MULTILINE)
        assert count_line_items(text, "-") == len(dashes), repr(text)


def test_title_and_postscript_match_reference_regexes():
    title = INSTRUCTIONS["detectable_format:title"].check
    post = INSTRUCTIONS["detectable_content:postscript"].check
    for text in _random_texts(["<", ">", "a", " ", "\n", "p", ".", "s", "P", "S"], seed=1):
        ref_title = any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", text))
        assert title(text, {}) == ref_title, repr(text)
        low = text.lower()
        assert post(text, {"postscript_marker": "P.P.S"}) == bool(
            re.findall(r"\s*p\.\s?p\.\s?s.*$", low, flags=re.MULTILINE)), repr(text)
        assert post(text, {"postscript_marker": "P.S."}) == bool(
            re.findall(r"\s*p\.\s?s\..*$", low, flags=re.MULTILINE)), repr(text)


def test_fenced_blocks_match_the_fence_regex():
    for text in _random_texts(["```", "```py", "```python x", "\n", " ", "a", "\t"], seed=2, max_len=14):
        assert fenced_blocks(text) == [(m.group(1), m.group(2)) for m in FENCE.finditer(text)], repr(text)


N = 30_000
IFEVAL_HOSTILE = {
    "unclosed placeholders": "[" * N,
    "bullet padding": "\n" * N + "x",
    "stars": "*" * N,
    "title openers": "<<" * (N // 2),
    "postscript spaces": " " * N + "q",
    "sentence marks": "?" * N,
    "abbreviations": "Dr. " * (N // 4),
    "one long word": "a" * N + ".",
    "json nesting": "[" * N + "]" * N,
    "section markers": "SECTION " * (N // 8),
}


@pytest.mark.parametrize("name", list(IFEVAL_HOSTILE))
def test_ifeval_checks_are_fast_on_hostile_text(name):
    text = IFEVAL_HOSTILE[name]
    reward = IFEvalReward()
    instructions = [
        {"id": "detectable_content:number_placeholders", "kwargs": {"num_placeholders": 3}},
        {"id": "detectable_format:number_bullet_lists", "kwargs": {"num_bullets": 3}},
        {"id": "detectable_format:number_highlighted_sections", "kwargs": {"num_highlights": 2}},
        {"id": "detectable_format:title", "kwargs": {}},
        {"id": "detectable_content:postscript", "kwargs": {"postscript_marker": "P.P.S"}},
        {"id": "length_constraints:number_sentences", "kwargs": {"num_sentences": 5, "relation": "at least"}},
        {"id": "length_constraints:number_words", "kwargs": {"num_words": 5, "relation": "at least"}},
        {"id": "detectable_format:json_format", "kwargs": {}},
        {"id": "detectable_format:multiple_sections",
         "kwargs": {"section_spliter": "SECTION", "num_sections": 2}},
        {"id": "length_constraints:nth_paragraph_first_word",
         "kwargs": {"num_paragraphs": 2, "nth_paragraph": 1, "first_word": "a"}},
        {"id": "change_case:capital_word_frequency",
         "kwargs": {"capital_frequency": 3, "capital_relation": "at least"}},
    ]
    reward.score("warm up.", {"instructions": instructions[:1]})
    t = time.perf_counter()
    res = reward.score(text, {"domain": "ifeval", "instructions": instructions})
    assert time.perf_counter() - t < 1.0, name
    assert res.status == "ok", res


def test_ifeval_length_cap():
    res = IFEvalReward(max_chars=1000).score("a " * 1000, {"instructions": [{"id": "punctuation:no_comma"}]})
    assert res.status == "ok" and res.score == 0.0 and res.info["path"] == "limits"


def test_sentence_counting_is_linear():
    t = time.perf_counter()
    assert count_sentences("Hi. " * 7_500) == 7_500  # 30k characters, one candidate end every 4
    assert time.perf_counter() - t < 1.0


MCQ_HOSTILE = {
    "unclosed boxes": "\\boxed{" * N,
    "answer words": "answer " * (N // 7),
    "marker padding": "(" * N + "B",
    "stars line": "*" * N + "\nB",
}


@pytest.mark.parametrize("name", list(MCQ_HOSTILE))
def test_mcq_is_fast_on_hostile_text(name):
    reward = MCQReward()
    t = time.perf_counter()
    res = reward.score(MCQ_HOSTILE[name], {"domain": "mcq", "answer": "B"})
    assert time.perf_counter() - t < 1.0, name
    assert res.status in ("ok", "no_answer")
    assert res.score == (1.0 if name == "stars line" else 0.0)


def test_mcq_length_cap():
    res = MCQReward(max_chars=100).score("B " * 100, {"answer": "B"})
    assert res.status == "ok" and res.score == 0.0 and res.info["path"] == "limits"


def test_last_boxed_many_unclosed_is_linear():
    text = "\\boxed{1} " + "\\boxed{" * N
    t = time.perf_counter()
    assert last_boxed(text) == "1"
    assert time.perf_counter() - t < 1.0


def test_fenced_blocks_linear_on_unclosed_fences():
    text = "```python x\n" * 10_000 + "print(1)\n"
    t = time.perf_counter()
    assert fenced_blocks(text) == []
    assert fenced_blocks("```py\nprint(1)\n```\n" + "```\n" * 3) == [("py", "print(1)\n"), ("", "")]
    assert time.perf_counter() - t < 1.0


def test_code_extraction_is_linear_on_unclosed_fences():
    """The code reward's extract_code goes through fenced_blocks: 10k unclosed fences (the old fence regex
    took ~2 minutes on this) and the last closed python block still wins."""
    import time

    from nemo_prorl.rewards.code import extract_code

    t0 = time.perf_counter()
    assert extract_code("```python x\n" * 10_000) is None
    assert time.perf_counter() - t0 < 1.0
    text = "```python\nprint(1)\n```\n```text\nnot code\n```\n```py\nprint(2)\n```\n" + "```python\n" * 5000
    assert extract_code(text) == "print(2)\n"
