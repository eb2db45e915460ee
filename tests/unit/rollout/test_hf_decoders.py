"""``HFRolloutEngine``'s decode loop against a full teacher-forced forward of the same model.

Samples from the same seeds must return the log-probs a full forward gives, for Qwen2 (q/k/v biases,
tied or untied head), Llama (no biases, llama3 rope scaling) and Qwen3 (per-head q/k RMSNorm), including
batches where rows finish at different steps (the batch and the KV cache are then compacted). The
hand-written Llama decode step these tests once compared with was removed (no speed-up on the demo);
``decoder="llama"`` is refused with that reason.
"""

import pytest
import torch

from nemo_prorl.rollout.base import SamplingParams
from nemo_prorl.rollout.hf_engine import HFRolloutEngine, teacher_forced_logprobs
from nemo_prorl.rollout.tiny import build_tiny_model, build_tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def prompts(tok):
    return [tok.encode(t) for t in ("What is 12 + 7?", "def add(a, b):", "Let x = 5. Then", "Q")]


def _random_init(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2) if p.dim() == 2 else p.uniform_(0.5, 1.5)
    return model.eval()


def _llama(tok, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return _random_init(LlamaForCausalLM(cfg), seed)


def _qwen3(tok, seed=0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=1, head_dim=24, max_position_embeddings=256,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return _random_init(Qwen3ForCausalLM(cfg), seed)


MODELS = {
    "qwen2": lambda tok: build_tiny_model(tok, seed=0),
    "qwen2_tied_gqa4": lambda tok: build_tiny_model(tok, seed=1, tie_word_embeddings=True,
                                                    num_attention_heads=4, num_key_value_heads=1),
    "llama": _llama,
    "qwen3": _qwen3,
}


def _engine(tok, model, **kw):
    return HFRolloutEngine(model, tok, max_prompt_tokens=32, max_response_tokens=40, **kw)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("sp", [SamplingParams(temperature=1.0, max_tokens=24, seed=3),
                                SamplingParams(temperature=0.7, top_k=20, top_p=0.9, max_tokens=16, seed=4),
                                SamplingParams(temperature=0.0, max_tokens=12)])
def test_decode_loop_matches_the_full_forward(tok, prompts, name, sp):
    model = MODELS[name](tok)
    eng = _engine(tok, model)
    a = eng.generate(prompts, 3, sp)
    assert [s.token_ids for s in a.samples] == [s.token_ids for s in eng.generate(prompts, 3, sp).samples]
    for x in a.samples:
        full = teacher_forced_logprobs(model, x.prompt_token_ids, x.token_ids, sp.temperature)
        if sp.temperature == 0.0:  # greedy: every token is the full forward's argmax
            ids = torch.tensor([x.prompt_token_ids + x.token_ids])
            logits = model(input_ids=ids).logits[0, len(x.prompt_token_ids) - 1 : -1]
            assert logits.argmax(-1).tolist() == x.token_ids
        if sp.top_k == -1 and sp.top_p == 1.0:  # untruncated: equal to a full forward pass
            assert torch.allclose(x.logprobs, full, atol=1e-5, rtol=0), (x.logprobs - full).abs().max()


def test_rows_finishing_early_compact_the_batch(tok, prompts):
    """Many EOS ids: rows end at different steps; the survivors must still match a full forward."""
    model = build_tiny_model(tok, seed=2)
    eos = list(range(40, 80))  # ~1/8 of the vocabulary ends a sample
    eng = _engine(tok, model, eos_token_ids=eos)
    sp = SamplingParams(temperature=1.0, max_tokens=40, seed=7)
    a = eng.generate(prompts, 4, sp)
    lengths = [len(s.token_ids) for s in a.samples]
    assert len(set(lengths)) > 4 and min(lengths) < 10 and max(lengths) > 20  # compaction did happen
    for s in a.samples:
        ended_by_eos = s.token_ids[-1] in eos
        assert s.finish_reason == ("stop" if ended_by_eos else "length")
        assert not any(t in eos for t in s.token_ids[:-1])
        full = teacher_forced_logprobs(model, s.prompt_token_ids, s.token_ids, 1.0)
        assert torch.allclose(s.logprobs, full, atol=1e-5, rtol=0)


def test_stop_strings(tok, prompts):
    model = build_tiny_model(tok, seed=0)
    eng = _engine(tok, model)
    free = eng.generate(prompts, 2, SamplingParams(temperature=1.0, max_tokens=24, seed=4))
    stop = next(s.text[k : k + 2] for s in free.samples for k in range(2, len(s.text) - 2)
                if "\ufffd" not in s.text[: k + 2])
    a = eng.generate(prompts, 2, SamplingParams(temperature=1.0, max_tokens=24, seed=4, stop=[stop]))
    assert any(s.finish_reason == "stop" for s in a.samples)
    for s, f in zip(a.samples, free.samples):
        assert s.token_ids == f.token_ids[: len(s.token_ids)]  # same stream, cut before the stop
        assert stop not in s.text


def test_removed_llama_decoder_is_refused_with_the_reason(tok):
    model = build_tiny_model(tok)
    with pytest.raises(ValueError, match=r"decoder='llama' was removed \(on the demo it ran at 0.86x-1.06x"):
        HFRolloutEngine(model, tok, max_prompt_tokens=8, max_response_tokens=8, decoder="llama")
    with pytest.raises(ValueError, match="decoder must be 'auto' or 'hf', got 'fast'"):
        HFRolloutEngine(model, tok, max_prompt_tokens=8, max_response_tokens=8, decoder="fast")
    a = HFRolloutEngine(model, tok, max_prompt_tokens=8, max_response_tokens=8, decoder="auto")
    b = HFRolloutEngine(model, tok, max_prompt_tokens=8, max_response_tokens=8, decoder="hf")
    sp = SamplingParams(max_tokens=4, seed=0)
    assert [s.token_ids for s in a.generate([[5, 6]], 2, sp).samples] == \
        [s.token_ids for s in b.generate([[5, 6]], 2, sp).samples]


def test_no_deprecated_cache_keyword(tok, prompts):
    """transformers 5.x renamed the forward's ``past_key_values`` to ``cache`` (the old name goes in 5.40):
    a generate call passes the cache under the name the installed model takes, so no deprecation warning
    is raised (turned into an error here) and the samples are those of the same call without the check."""
    import inspect
    import warnings

    from nemo_prorl.rollout.hf_engine import cache_kwarg

    model = build_tiny_model(tok, seed=0)
    takes_cache = "cache" in inspect.signature(model.forward).parameters
    assert list(cache_kwarg(model, None)) == (["cache"] if takes_cache else ["past_key_values"])
    eng = HFRolloutEngine(model, tok, max_prompt_tokens=32, max_response_tokens=8)
    sp = SamplingParams(temperature=1.0, max_tokens=8, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any FutureWarning/DeprecationWarning from the forward fails here
        out = eng.generate(prompts, 2, sp)
    assert [s.token_ids for s in out.samples] == [s.token_ids for s in eng.generate(prompts, 2, sp).samples]


def test_compiled_decode_matches_the_full_forward_and_follows_weight_updates(tok, prompts):
    """``compile_decode=True``: the same samples as the eager loop, log-probs of a full forward.

    Rows end at different steps (many EOS ids), so the compiled step sees changing batch sizes and cache
    lengths (dynamic shapes, the compaction recompile); after ``update_weights`` the compiled step must use
    the new values (parameters are inputs of the compiled graph, not constants folded into it).
    Tolerance 1e-4: inductor fuses and reorders float32 reductions.
    """
    model = build_tiny_model(tok, seed=2)
    eos = list(range(40, 80))
    eager = _engine(tok, build_tiny_model(tok, seed=2), eos_token_ids=eos)
    comp = _engine(tok, model, eos_token_ids=eos, compile_decode=True)
    sp = SamplingParams(temperature=1.0, max_tokens=40, seed=7)
    a, b = eager.generate(prompts, 4, sp), comp.generate(prompts, 4, sp)
    assert comp._compiled is not None and comp._compile_checked
    assert [s.token_ids for s in b.samples] == [s.token_ids for s in a.samples]
    assert len({len(s.token_ids) for s in b.samples}) > 4  # rows finished at different steps
    for s, e in zip(b.samples, a.samples):
        full = teacher_forced_logprobs(model, s.prompt_token_ids, s.token_ids, 1.0)
        assert torch.allclose(s.logprobs, full, atol=1e-4, rtol=0), (s.logprobs - full).abs().max()
        assert torch.allclose(s.logprobs, e.logprobs, atol=1e-4, rtol=0)
    new = {k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()}
    comp.update_weights(new)
    c = comp.generate(prompts, 2, SamplingParams(temperature=1.0, max_tokens=16, seed=8))
    for s in c.samples:
        full = teacher_forced_logprobs(model, s.prompt_token_ids, s.token_ids, 1.0)
        assert torch.allclose(s.logprobs, full, atol=1e-4, rtol=0), (s.logprobs - full).abs().max()


def test_compile_failure_is_an_error_naming_the_key(tok, prompts, monkeypatch):
    """A compile that fails at the first decode step (no C++ compiler, an unsupported model) stops the
    call with an error naming ``rollout.compile`` and the fix; nothing is decoded half-compiled."""

    def broken_compile(model, **kw):  # stands in for inductor failing when the first step compiles
        def run(*a, **k):
            raise OSError("no working C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    eng = _engine(tok, build_tiny_model(tok, seed=0), compile_decode=True)
    want = (r"rollout.compile: torch.compile of the decode step failed \(OSError: no working C\+\+ compiler "
            r"found\); set rollout.compile=false")
    with pytest.raises(RuntimeError, match=want):
        eng.generate(prompts, 2, SamplingParams(max_tokens=4, seed=0))
