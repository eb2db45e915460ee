"""The hand-written Llama-family decode step of ``HFRolloutEngine`` against the HF forward.

Both decoders (``decoder="llama"`` and ``decoder="hf"``) must sample the same tokens from the same
seeds and return the log-probs a full teacher-forced forward gives, for Qwen2 (q/k/v biases, tied or
untied head), Llama (no biases, llama3 rope scaling) and Qwen3 (per-head q/k RMSNorm), including
batches where rows finish at different steps (the batch and the KV buffers are then compacted).
"""

import pytest
import torch

from nemo_prorl.rollout.base import SamplingParams
from nemo_prorl.rollout.hf_engine import HFRolloutEngine, llama_decoder_unsupported, teacher_forced_logprobs
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


def _pair(tok, model, **kw):
    common = dict(max_prompt_tokens=32, max_response_tokens=40, **kw)
    fast = HFRolloutEngine(model, tok, decoder="llama", **common)
    return fast, HFRolloutEngine(model, tok, decoder="hf", **common)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("sp", [SamplingParams(temperature=1.0, max_tokens=24, seed=3),
                                SamplingParams(temperature=0.7, top_k=20, top_p=0.9, max_tokens=16, seed=4),
                                SamplingParams(temperature=0.0, max_tokens=12)])
def test_llama_decoder_matches_hf_forward(tok, prompts, name, sp):
    model = MODELS[name](tok)
    assert llama_decoder_unsupported(model) is None
    fast, ref = _pair(tok, model)
    a, b = fast.generate(prompts, 3, sp), ref.generate(prompts, 3, sp)
    assert [s.token_ids for s in a.samples] == [s.token_ids for s in b.samples]
    assert [s.finish_reason for s in a.samples] == [s.finish_reason for s in b.samples]
    for x, y in zip(a.samples, b.samples):
        assert torch.allclose(x.logprobs, y.logprobs, atol=1e-5, rtol=0)
        if sp.top_k == -1 and sp.top_p == 1.0:  # untruncated: equal to a full forward pass
            full = teacher_forced_logprobs(model, x.prompt_token_ids, x.token_ids, sp.temperature)
            assert torch.allclose(x.logprobs, full, atol=1e-5, rtol=0), (x.logprobs - full).abs().max()


def test_rows_finishing_early_compact_the_batch(tok, prompts):
    """Many EOS ids: rows end at different steps; the survivors must still match a full forward."""
    model = build_tiny_model(tok, seed=2)
    eos = list(range(40, 80))  # ~1/8 of the vocabulary ends a sample
    fast, ref = _pair(tok, model, eos_token_ids=eos)
    sp = SamplingParams(temperature=1.0, max_tokens=40, seed=7)
    a, b = fast.generate(prompts, 4, sp), ref.generate(prompts, 4, sp)
    lengths = [len(s.token_ids) for s in a.samples]
    assert len(set(lengths)) > 4 and min(lengths) < 10 and max(lengths) > 20  # compaction did happen
    assert [s.token_ids for s in a.samples] == [s.token_ids for s in b.samples]
    for s in a.samples:
        ended_by_eos = s.token_ids[-1] in eos
        assert s.finish_reason == ("stop" if ended_by_eos else "length")
        assert not any(t in eos for t in s.token_ids[:-1])
        full = teacher_forced_logprobs(model, s.prompt_token_ids, s.token_ids, 1.0)
        assert torch.allclose(s.logprobs, full, atol=1e-5, rtol=0)


def test_stop_strings_with_llama_decoder(tok, prompts):
    model = build_tiny_model(tok, seed=0)
    fast, ref = _pair(tok, model)
    free = fast.generate(prompts, 2, SamplingParams(temperature=1.0, max_tokens=24, seed=4))
    stop = next(s.text[k : k + 2] for s in free.samples for k in range(2, len(s.text) - 2)
                if "\ufffd" not in s.text[: k + 2])
    sp = SamplingParams(temperature=1.0, max_tokens=24, seed=4, stop=[stop])
    a, b = fast.generate(prompts, 2, sp), ref.generate(prompts, 2, sp)
    assert [(s.token_ids, s.text, s.finish_reason) for s in a.samples] == [
        (s.token_ids, s.text, s.finish_reason) for s in b.samples
    ]
    assert any(s.finish_reason == "stop" for s in a.samples)
    for s, f in zip(a.samples, free.samples):
        assert s.token_ids == f.token_ids[: len(s.token_ids)]  # same stream, cut before the stop
        assert stop not in s.text


def test_auto_falls_back_and_llama_refuses_unsupported(tok):
    sliding = build_tiny_model(tok, seed=0, use_sliding_window=True, sliding_window=8, max_window_layers=0)
    reason = llama_decoder_unsupported(sliding)
    assert reason is not None and "sliding" in reason
    with pytest.raises(ValueError, match="decoder='llama' cannot run this model: sliding"):
        HFRolloutEngine(sliding, tok, max_prompt_tokens=8, max_response_tokens=8, decoder="llama")
    auto = HFRolloutEngine(sliding, tok, max_prompt_tokens=8, max_response_tokens=8)
    assert auto._use_llama_decoder is False
    assert len(auto.generate([[5, 6]], 2, SamplingParams(max_tokens=4, seed=0)).samples) == 2
    with pytest.raises(ValueError, match="decoder must be 'auto', 'llama' or 'hf', got 'fast'"):
        HFRolloutEngine(build_tiny_model(tok), tok, max_prompt_tokens=8, max_response_tokens=8,
                        decoder="fast")


def test_bf16_llama_decoder_matches_hf_decoder(tok, prompts):
    """16-bit models attend through SDPA (fp32 softmax and P.V), like the HF forward's sdpa path."""
    model = build_tiny_model(tok, seed=0).to(torch.bfloat16)
    fast, ref = _pair(tok, model)
    for sp in (SamplingParams(temperature=0.0, max_tokens=12), SamplingParams(temperature=1.0, max_tokens=12,
                                                                              seed=1)):
        a, b = fast.generate(prompts, 2, sp), ref.generate(prompts, 2, sp)
        assert [s.token_ids for s in a.samples] == [s.token_ids for s in b.samples]
        for x, y in zip(a.samples, b.samples):
            assert torch.allclose(x.logprobs, y.logprobs, atol=1e-2, rtol=0)


@pytest.mark.parametrize("decoder", ["hf", "llama"])
def test_no_deprecated_cache_keyword(tok, prompts, decoder):
    """transformers 5.x renamed the forward's ``past_key_values`` to ``cache`` (the old name goes in 5.40):
    a generate call passes the cache under the name the installed model takes, so no deprecation warning
    is raised (turned into an error here) and the samples are those of the same call without the check."""
    import inspect
    import warnings

    from nemo_prorl.rollout.hf_engine import cache_kwarg

    model = build_tiny_model(tok, seed=0)
    takes_cache = "cache" in inspect.signature(model.forward).parameters
    assert list(cache_kwarg(model, None)) == (["cache"] if takes_cache else ["past_key_values"])
    eng = HFRolloutEngine(model, tok, max_prompt_tokens=32, max_response_tokens=8, decoder=decoder)
    sp = SamplingParams(temperature=1.0, max_tokens=8, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any FutureWarning/DeprecationWarning from the forward fails here
        out = eng.generate(prompts, 2, sp)
    assert [s.token_ids for s in out.samples] == [s.token_ids for s in eng.generate(prompts, 2, sp).samples]
