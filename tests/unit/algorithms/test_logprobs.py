import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nemo_prorl.algorithms import chunked_logprobs, naive_logprobs, vocab_parallel_logprobs


def _inputs(t, h, v, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(t, h, generator=g, dtype=dtype)
    weight = torch.randn(v, h, generator=g, dtype=dtype) / h**0.5
    labels = torch.randint(0, v, (t,), generator=g)
    g_lp = torch.randn(t, generator=g, dtype=dtype)
    g_ent = torch.randn(t, generator=g, dtype=dtype)
    return hidden, weight, labels, g_lp, g_ent


def _values_and_grads(fn, hidden, weight, g_lp, g_ent):
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    lp, ent = fn(h, w)
    (lp * g_lp + ent * g_ent).sum().backward()
    return lp.detach(), ent.detach(), h.grad, w.grad


def _compare(t, h, v, chunk, temperature, seed, atol=1e-5):
    hidden, weight, labels, g_lp, g_ent = _inputs(t, h, v, seed)
    ref = _values_and_grads(
        lambda a, b: naive_logprobs(a, b, labels, temperature=temperature), hidden, weight, g_lp, g_ent
    )
    got = _values_and_grads(
        lambda a, b: chunked_logprobs(
            a, b, labels, chunk_size=chunk, temperature=temperature, with_entropy=True
        ),
        hidden,
        weight,
        g_lp,
        g_ent,
    )
    for name, r, x in zip(("logprobs", "entropy", "grad_hidden", "grad_weight"), ref, got):
        torch.testing.assert_close(x, r, atol=atol, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    t=st.integers(1, 40),
    h=st.integers(1, 16),
    v=st.integers(1, 70),
    chunk=st.integers(1, 50),
    temperature=st.sampled_from([1.0, 0.6, 1.2]),
    seed=st.integers(0, 2**16),
)
def test_chunked_matches_naive_property(t, h, v, chunk, temperature, seed):
    _compare(t, h, v, chunk, temperature, seed)


def test_chunked_matches_naive_larger_vocab():
    _compare(300, 32, 1000, 128, 1.2, 0)


def test_logprobs_only_gradient_matches_naive():
    hidden, weight, labels, g_lp, _ = _inputs(13, 5, 17, 3)
    h1, w1 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    lp, ent = chunked_logprobs(h1, w1, labels, chunk_size=4)
    assert ent is None
    (lp * g_lp).sum().backward()
    h2, w2 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    (naive_logprobs(h2, w2, labels)[0] * g_lp).sum().backward()
    torch.testing.assert_close(lp, naive_logprobs(hidden, weight, labels)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h1.grad, h2.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w1.grad, w2.grad, atol=1e-5, rtol=1e-5)


def test_entropy_only_gradient_and_single_input_grad():
    hidden, weight, labels, _, g_ent = _inputs(9, 4, 11, 4)
    h1 = hidden.clone().requires_grad_(True)
    _, ent = chunked_logprobs(h1, weight, labels, chunk_size=2, with_entropy=True)
    (ent * g_ent).sum().backward()
    h2 = hidden.clone().requires_grad_(True)
    (naive_logprobs(h2, weight, labels)[1] * g_ent).sum().backward()
    torch.testing.assert_close(h1.grad, h2.grad, atol=1e-5, rtol=1e-5)


def test_gradcheck_float64():
    hidden, weight, labels, _, _ = _inputs(5, 3, 7, 5, dtype=torch.float64)
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    for temperature in (1.0, 0.7):
        assert torch.autograd.gradcheck(
            lambda a, b, tt=temperature: chunked_logprobs(
                a, b, labels, chunk_size=2, temperature=tt, with_entropy=True
            ),
            (hidden, weight),
        )
        assert torch.autograd.gradcheck(
            lambda a, b, tt=temperature: vocab_parallel_logprobs(
                a, b, labels, vocab_start=0, chunk_size=3, temperature=tt
            )[0],
            (hidden, weight),
        )


def test_bf16_inputs_compute_in_fp32_and_keep_dtype():
    hidden, weight, labels, _, _ = _inputs(8, 16, 40, 6)
    hb, wb = hidden.bfloat16().requires_grad_(True), weight.bfloat16().requires_grad_(True)
    lp, ent = chunked_logprobs(hb, wb, labels, chunk_size=3, with_entropy=True)
    assert lp.dtype == torch.bfloat16 and ent.dtype == torch.bfloat16
    ref, ref_ent = naive_logprobs(hb.detach().float(), wb.detach().float(), labels)
    torch.testing.assert_close(lp.float(), ref, atol=2e-2, rtol=1e-2)
    (lp.float().sum() + ent.float().sum()).backward()
    assert hb.grad.dtype == torch.bfloat16 and wb.grad.dtype == torch.bfloat16


def test_empty_and_invalid_inputs():
    lp, ent = chunked_logprobs(torch.zeros(0, 4), torch.zeros(5, 4), torch.zeros(0, dtype=torch.long))
    assert lp.shape == (0,) and ent is None
    h, w = torch.zeros(3, 4), torch.zeros(5, 4)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 5\)"):
        chunked_logprobs(h, w, torch.tensor([0, 5, 1]))
    with pytest.raises(ValueError, match="labels must be an integer"):
        chunked_logprobs(h, w, torch.zeros(3))
    with pytest.raises(ValueError, match="weight must be"):
        chunked_logprobs(h, torch.zeros(5, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_logprobs(h, w, torch.zeros(3, dtype=torch.long), chunk_size=0)
    with pytest.raises(ValueError, match="temperature"):
        chunked_logprobs(h, w, torch.zeros(3, dtype=torch.long), temperature=0.0)
    with pytest.raises(ValueError, match="labels must be >= 0"):
        vocab_parallel_logprobs(h, w, torch.tensor([0, -1, 1]), vocab_start=0)


def test_uniform_logits_hand_computed():
    # zero weight -> uniform distribution over V: logprob = -log V, entropy = log V
    lp, ent = chunked_logprobs(
        torch.randn(4, 3), torch.zeros(6, 3), torch.tensor([0, 1, 2, 5]), with_entropy=True
    )
    torch.testing.assert_close(lp, torch.full((4,), -torch.log(torch.tensor(6.0)).item()))
    torch.testing.assert_close(ent, torch.full((4,), torch.log(torch.tensor(6.0)).item()))


def test_bf16_without_entropy_and_labels_outside_a_lone_shard():
    hidden, weight, labels, _, _ = _inputs(6, 8, 10, 7)
    hb = hidden.bfloat16().requires_grad_(True)
    lp, ent = chunked_logprobs(hb, weight.bfloat16(), labels, chunk_size=4)
    assert ent is None
    lp.float().sum().backward()
    assert hb.grad is not None and hb.grad.dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"outside the vocabulary \[5, 15\)"):
        vocab_parallel_logprobs(hidden, weight, torch.tensor([5, 6, 7, 8, 9, 2]), vocab_start=5)
