import math

import pytest
import torch

from nemo_prorl.rollout.sampling import (
    draw_tokens,
    find_stop,
    process_logits,
    sample_seed,
    select_next_tokens,
    tokens_covering,
)

LOGITS = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
NEG = float("-inf")


def test_temperature_only_scales():
    out = process_logits(LOGITS, temperature=2.0, top_k=-1, top_p=1.0)
    assert torch.equal(out, torch.tensor([[0.0, 0.5, 1.0, 1.5]]))


def test_top_k_keeps_k_largest():
    out = process_logits(LOGITS, temperature=1.0, top_k=2, top_p=1.0)
    assert torch.equal(out, torch.tensor([[NEG, NEG, 2.0, 3.0]]))


def test_top_k_keeps_ties():
    out = process_logits(torch.tensor([[1.0, 2.0, 2.0, 0.0]]), 1.0, top_k=2, top_p=1.0)
    assert torch.equal(out, torch.tensor([[NEG, 2.0, 2.0, NEG]]))


def test_top_p_hand_computed():
    # softmax([0,1,2,3]) = [0.0321, 0.0871, 0.2369, 0.6439]; ascending cumsum = [0.032, 0.119, 0.356, 1.0]
    out = process_logits(LOGITS, 1.0, top_k=-1, top_p=0.7)  # drop where cumsum <= 0.3 -> tokens 0, 1
    assert torch.equal(out, torch.tensor([[NEG, NEG, 2.0, 3.0]]))
    out = process_logits(LOGITS, 1.0, top_k=-1, top_p=0.5)  # drop where cumsum <= 0.5 -> tokens 0, 1, 2
    assert torch.equal(out, torch.tensor([[NEG, NEG, NEG, 3.0]]))
    out = process_logits(LOGITS, 1.0, top_k=-1, top_p=1e-6)  # most likely token always kept
    assert torch.equal(out, torch.tensor([[NEG, NEG, NEG, 3.0]]))


def test_top_p_is_permutation_invariant():
    perm = torch.tensor([2, 0, 3, 1])
    out = process_logits(LOGITS[:, perm], 1.0, top_k=-1, top_p=0.7)
    assert torch.equal(out, process_logits(LOGITS, 1.0, -1, 0.7)[:, perm])


def test_temperature_zero_rejected():
    with pytest.raises(ValueError, match="temperature"):
        process_logits(LOGITS, 0.0, -1, 1.0)


def test_draw_tokens_inverse_cdf():
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3]]).repeat(4, 1)
    u = torch.tensor([0.05, 0.1, 0.69, 0.75], dtype=torch.float64)
    # cdf = [0.1, 0.1, 0.7, 1.0]: first index whose cdf exceeds u
    assert draw_tokens(probs, u).tolist() == [0, 2, 2, 3]


def test_draw_tokens_never_returns_removed_token():
    probs = torch.tensor([[0.5, 0.5, 0.0]])
    for u in (0.0, 0.4999, 0.5, 0.999999999):
        assert draw_tokens(probs, torch.tensor([u], dtype=torch.float64)).item() in (0, 1)


def test_sample_seed_is_stable_and_distinct():
    assert sample_seed(3, 1, 2) == sample_seed(3, 1, 2)
    seeds = {sample_seed(3, i, j) for i in range(5) for j in range(5)}
    assert len(seeds) == 25
    assert sample_seed(3, 1, 2) != sample_seed(4, 1, 2)
    assert 0 <= sample_seed(3, 1, 2) < 2**63


def test_select_next_tokens_greedy_and_logprob():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [5.0, 0.0, 0.0, 0.0]])
    gens = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]
    tok, logp = select_next_tokens(logits, 0.0, -1, 1.0, gens)
    assert tok.tolist() == [3, 0]
    z0 = math.log(sum(math.exp(x) for x in (0, 1, 2, 3)))
    z1 = math.log(math.exp(5) + 3)
    assert logp.tolist() == pytest.approx([3 - z0, 5 - z1], abs=1e-6)


def test_select_next_tokens_logprob_is_from_processed_distribution():
    gens = [torch.Generator().manual_seed(7)]
    tok, logp = select_next_tokens(LOGITS, 2.0, top_k=2, top_p=1.0, generators=gens)
    assert tok.item() in (2, 3)
    # kept scaled logits 1.0 and 1.5 -> log-softmax over just those two
    z = math.log(math.exp(1.0) + math.exp(1.5))
    expected = {2: 1.0 - z, 3: 1.5 - z}[tok.item()]
    assert logp.item() == pytest.approx(expected, abs=1e-6)


def test_select_next_tokens_frequencies_match_distribution():
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    for _ in range(4000):
        tok, _ = select_next_tokens(logits, 1.0, -1, 1.0, [g])
        counts[tok.item()] += 1
    freq = counts / counts.sum()
    assert torch.allclose(freq, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.03)


def test_find_stop_earliest():
    assert find_stop("abc END xyz STOP", ["STOP", "END"]) == 4
    assert find_stop("abc", ["x"]) is None
    assert find_stop("ENDabcEND", ["END"], search_from=1) == 6


def test_tokens_covering():
    pieces = {1: "ab", 2: "c", 3: "de", 4: "f"}
    decode = lambda ids: "".join(pieces[i] for i in ids)
    ids = [1, 2, 3, 4]
    assert tokens_covering(ids, 0, decode) == 0
    assert tokens_covering(ids, 1, decode) == 1  # "a" lies inside token 1
    assert tokens_covering(ids, 3, decode) == 2
    assert tokens_covering(ids, 4, decode) == 3  # token 3 straddles: kept
    assert tokens_covering(ids, 6, decode) == 4
