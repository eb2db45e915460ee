"""Shared fixtures for the data tests: a tiny character-level tokenizer built here (no downloads)."""

from __future__ import annotations

import string

import pytest

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_char_tokenizer(chat_template: str | None = CHAT_TEMPLATE):
    """One token per character (unknown characters map to [UNK]); BOS/EOS specials."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2}
    for ch in string.printable:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), "isolated")  # (?m): dot matches newline
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>")
    if chat_template:
        fast.chat_template = chat_template
    return fast


@pytest.fixture(scope="session")
def char_tokenizer():
    return make_char_tokenizer()


@pytest.fixture(scope="session")
def raw_tokenizer():
    return make_char_tokenizer(chat_template=None)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, char_tokenizer):
    path = tmp_path_factory.mktemp("tok")
    char_tokenizer.save_pretrained(str(path))
    return str(path)
