import pytest

from nemo_prorl.rewards.ifeval import INSTRUCTIONS, IFEvalReward, count_words, split_sentences, word_tokens

R = IFEvalReward()


def check(iid, text, **kwargs):
    res = R.score(text, {"domain": "ifeval", "instructions": [{"id": iid, "kwargs": kwargs}]})
    assert res.status == "ok", res
    return res.score == 1.0


def test_all_25_ids_registered():
    assert len(INSTRUCTIONS) == 25


CASES = [
    ("keywords:existence", "I love Python and rust.", {"keywords": ["python", "Rust"]}, "I love Python.", {}),
    (
        "keywords:frequency",
        "cat cat cat",
        {"keyword": "cat", "frequency": 3, "relation": "at least"},
        "cat cat",
        {},
    ),
    ("keywords:frequency", "cat", {"keyword": "cat", "frequency": 2, "relation": "less than"}, "cat cat", {}),
    ("keywords:forbidden_words", "A fine day.", {"forbidden_words": ["bad"]}, "A Bad day.", {}),
    (
        "keywords:letter_frequency",
        "aaa b",
        {"letter": "a", "let_frequency": 3, "let_relation": "at least"},
        "aa b",
        {},
    ),
    (
        "language:response_language",
        "Das ist ein kurzer deutscher Satz über das Wetter heute.",
        {"language": "de"},
        "This is a short English sentence about the weather today.",
        {},
    ),
    (
        "length_constraints:number_sentences",
        "One. Two! Three?",
        {"num_sentences": 3, "relation": "at least"},
        "One. Two.",
        {},
    ),
    (
        "length_constraints:number_sentences",
        "Dr. Smith paid $3.50 today. Then he left.",
        {"num_sentences": 3, "relation": "less than"},
        "One. Two. Three. Four.",
        {},
    ),
    (
        "length_constraints:number_paragraphs",
        "p1\n***\np2\n***\np3",
        {"num_paragraphs": 3},
        "p1\n***\n\n***\np3",
        {},
    ),
    (
        "length_constraints:number_words",
        "one two three four",
        {"num_words": 4, "relation": "at least"},
        "one two three",
        {},
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        'Intro here.\n\n"Second, para.',
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "second"},
        "Intro.\n\nThird para.",
        {},
    ),
    (
        "detectable_content:number_placeholders",
        "Hi [name], at [address].",
        {"num_placeholders": 2},
        "Hi [name].",
        {},
    ),
    ("detectable_content:postscript", "Body.\nP.S. see you", {"postscript_marker": "P.S."}, "Body only.", {}),
    (
        "detectable_content:postscript",
        "Body.\nP.P.S later",
        {"postscript_marker": "P.P.S"},
        "Body. P.S. x",
        {},
    ),
    ("detectable_format:number_bullet_lists", "* a\n* b\n- c", {"num_bullets": 3}, "* a\n* b", {}),
    ("detectable_format:constrained_response", "My answer is yes.", {}, "Yes.", {}),
    (
        "detectable_format:number_highlighted_sections",
        "*one* and **two**",
        {"num_highlights": 2},
        "*one*",
        {},
    ),
    (
        "detectable_format:multiple_sections",
        "SECTION 1\na\nSECTION 2\nb",
        {"section_spliter": "SECTION", "num_sections": 2},
        "SECTION 1\na",
        {},
    ),
    ("detectable_format:json_format", '```json\n{"a": 1}\n```', {}, "{a: 1}", {}),
    ("detectable_format:title", "<<My Title>>\ntext", {}, "<< >> text", {}),
    ("combination:two_responses", "first\n******\nsecond", {}, "same\n******\nsame", {}),
    (
        "combination:repeat_prompt",
        "Write a poem. Here it is.",
        {"prompt_to_repeat": "Write a poem."},
        "Here: Write a poem.",
        {},
    ),
    (
        "startend:end_checker",
        "... Is there anything else I can help with?",
        {"end_phrase": "Is there anything else I can help with?"},
        "Bye.",
        {},
    ),
    ("startend:quotation", '"quoted"', {}, '"half', {}),
    (
        "change_case:capital_word_frequency",
        "THIS IS LOUD",
        {"capital_frequency": 3, "capital_relation": "at least"},
        "THIS is quiet",
        {},
    ),
    (
        "change_case:english_capital",
        "THIS IS AN ENGLISH SENTENCE ABOUT THE WEATHER.",
        {},
        "This is an English sentence about the weather.",
        {},
    ),
    (
        "change_case:english_lowercase",
        "this is an english sentence about the weather.",
        {},
        "This is an English sentence about the weather.",
        {},
    ),
    ("punctuation:no_comma", "no commas here", {}, "a, b", {}),
]


@pytest.mark.parametrize("iid,good,kwargs,bad,_", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_instruction_true_and_false(iid, good, kwargs, bad, _):
    assert check(iid, good, **kwargs), (iid, good)
    assert not check(iid, bad, **kwargs), (iid, bad)


def test_every_id_has_a_case():
    assert {c[0] for c in CASES} == set(INSTRUCTIONS)


def test_fraction_and_think_region():
    row = {
        "instructions": [
            {"id": "punctuation:no_comma", "kwargs": {}},
            {"id": "length_constraints:number_words", "kwargs": {"num_words": 50, "relation": "at least"}},
            {"id": "startend:quotation", "kwargs": None},
        ]
    }
    res = R.score('<think>a, b, c</think>"short text"', row)
    assert res.status == "ok" and res.score == pytest.approx(2 / 3)
    assert res.info["followed"] == [True, False, True]
    assert IFEvalReward(all_or_nothing=True).score('"x"', row).score == 0.0
    assert R.score("<think>never closed", row).status == "no_answer"


def test_null_kwargs_ignored_like_public_ifeval_file():
    row = {"instructions": [{"id": "punctuation:no_comma", "kwargs": {"num_words": None, "relation": None}}]}
    assert R.validate(row) == [] and R.score("fine", row).score == 1.0


def test_loose_mode():
    row = {"instructions": [{"id": "startend:quotation", "kwargs": {}}]}
    assert R.score('Sure:\n"quoted"', row).score == 0.0
    assert IFEvalReward(loose=True).score('Sure:\n"quoted"', row).score == 1.0


def test_validation_errors_name_the_field():
    row = {
        "instructions": [
            {"id": "bogus:id"},
            {"id": "length_constraints:number_words", "kwargs": {"relation": "about"}},
            {
                "id": "keywords:letter_frequency",
                "kwargs": {"letter": "ab", "let_frequency": "3", "let_relation": "at least"},
            },
        ]
    }
    fields = {p.field for p in R.validate(row)}
    assert {
        "instructions[0].id",
        "instructions[1].kwargs.num_words",
        "instructions[1].kwargs.relation",
        "instructions[2].kwargs.letter",
        "instructions[2].kwargs.let_frequency",
    } <= fields
    res = R.score("x", row)
    assert res.status == "error" and "bogus:id" in res.info["reason"]


def test_text_utilities():
    assert split_sentences("Mr. Smith went to Washington. He arrived at 3.30 p.m. today! Did he? Yes...") == [
        "Mr. Smith went to Washington.",
        "He arrived at 3.30 p.m. today!",
        "Did he?",
        "Yes...",
    ]
    # As the reference (nltk Punkt): a line break never ends a sentence, a heading joins the next one.
    assert split_sentences("Title\n\nBody text here. More") == ["Title\n\nBody text here.", "More"]
    assert count_words("It's a well-known fact, 42 times.") == 8
    assert word_tokens("I don't know.") == ["I", "do", "n't", "know", "."]
