"""Record nltk Punkt's English sentence spans as the reference for ``nemo_prorl.rewards.sentences``.

Texts: the 541 responses and 541 prompts of the IFEval data next to this file (referenced by index),
10 hand-written cases and 1,000 generated ones (seeded; words, abbreviations, initials, numbers, list
markers, straight and curly quotes, brackets, ellipses, line breaks) stored inline. For each text the
line holds Punkt's ``span_tokenize`` output. Needs nltk (3.10.4 was used) and its ``punkt_tab`` English
data reachable through ``NLTK_DATA``:

    NLTK_DATA=... python tests/data/ifeval/make_punkt_reference.py > tests/data/ifeval/punkt_reference.jsonl
"""

import json
import random
import sys
from pathlib import Path

import nltk

HERE = Path(__file__).resolve().parent
HAND = [
    "Dr. Smith went to Washington D.C. yesterday. He said \"Hi.\" Then left!",
    "1. First item\n2. Second item\n3. Third.",
    "Mr. J. R. R. Tolkien wrote books... Many books! Really?! Yes.",
    "(This is a test.) And another (test!). 'Quoted.' Next",
    "e.g. this one. i.e. that one. U.S. Army. The end",
    "Wait... what? No!!! Ok.",
    "Version 2.0. Released 3.5.2021. Done",
    "He paid $5.00. Then he left. A. B. C. D.",
    "St. Louis is nice. Jan. 5 is a date. Inc. Ltd. Co.",
    "word.\n\nNext para.\n- bullet.\n* star. x",
]
TOKENS = ["Dr.", "Mr.", "e.g.", "i.e.", "U.S.", "J.", "A.", "1.", "2.", "10.", "3.5", "etc.", "The", "the",
          "he", "He", "However", "however", "First", "first", "item", "word", "words.", "end.", "end!",
          "end?", "?!", "...", "..", "--", '"', "'", "\u201c", "\u201d", "(", ")", "[", "]", "Hello.", "ok:",
          "x;", "St.", "Inc.", "Jan.", "no.", "No.", "a", "I", "*", "-", "#", "**Bold.**", "list:",
          "Summary:", "\xab", "\xbb", "\u2019", "\u2018", "\xbf", "\xa1", "\u0964", "\u3002"]
SEPS = [" ", " ", " ", " ", "\n", "\n\n", "  ", "\t", ""]


def main() -> int:
    tok = nltk.data.load("nltk:tokenizers/punkt/english.pickle")
    responses = [json.loads(x)["response"] for x in
                 (HERE / "input_response_data_gpt4_20231107_145030.jsonl").read_text().splitlines()]
    prompts = [json.loads(x)["prompt"] for x in (HERE / "input_data.jsonl").read_text().splitlines()]
    rng = random.Random(5)
    generated = ["".join(rng.choice(TOKENS) + rng.choice(SEPS) for _ in range(rng.randint(1, 25)))
                 for _ in range(1000)]
    for name, texts in (("response", responses), ("prompt", prompts)):
        for i, text in enumerate(texts):
            print(json.dumps({"ref": [name, i], "spans": [list(s) for s in tok.span_tokenize(text)]}))
    for text in HAND + generated:
        spans = [list(s) for s in tok.span_tokenize(text)]
        print(json.dumps({"text": text, "spans": spans}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
