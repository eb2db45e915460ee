"""``fit_lengths``: the default prompt/response budgets of ``nemo-prorl eval`` fit the model given."""

import pytest

from nemo_prorl.eval.sampling import DEFAULT_MAX_TOKENS, fit_lengths


def test_neither_given_response_gets_what_the_longest_prompt_leaves():
    # the demo model: 128 positions, 8-token prompts -> 120 response tokens (the old fixed 1024 did not fit)
    prompt, tokens, note = fit_lengths(128, 8)
    assert (prompt, tokens) == (8, 120)
    assert note == "--max-tokens not given: using 120 (the model's 128 positions minus the longest prompt, " \
                   "8 tokens, at most 1024)"
    # a long-context model: capped at the old default
    assert fit_lengths(32768, 700)[:2] == (700, DEFAULT_MAX_TOKENS) == (700, 1024)


def test_one_given_the_other_gets_the_rest():
    assert fit_lengths(128, 8, max_prompt_tokens=100)[:2] == (100, 28)
    prompt, tokens, note = fit_lengths(128, 8, max_tokens=100)
    assert (prompt, tokens) == (28, 100) and "using 28" in note and "skipped" not in note
    prompt, tokens, note = fit_lengths(128, 40, max_tokens=100)
    assert (prompt, tokens) == (28, 100) and "prompts longer are skipped (the longest has 40 tokens)" in note
    assert fit_lengths(128, 8, max_tokens=5, max_prompt_tokens=7) == (7, 5, None)  # both: as given


def test_no_room_names_the_flag_and_what_fits():
    with pytest.raises(ValueError, match=r"--max-tokens 1024 leaves no room for a prompt in the model's 128 "
                                         r"positions; --max-tokens 120 or less fits the longest prompt"):
        fit_lengths(128, 8, max_tokens=1024)
    with pytest.raises(ValueError, match=r"the longest prompt \(130 tokens\) leaves no room for a response"):
        fit_lengths(128, 130)
    with pytest.raises(ValueError, match=r"--max-prompt-tokens \(128 tokens\) leaves no room"):
        fit_lengths(128, 8, max_prompt_tokens=128)
