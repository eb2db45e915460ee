import math

import pytest
import torch

from nemo_prorl.rollout.base import RolloutEngine, SamplingParams
from nemo_prorl.rollout.hf_engine import HFRolloutEngine, teacher_forced_logprobs
from nemo_prorl.rollout.limits import PromptTooLongError
from nemo_prorl.rollout.tiny import build_tiny_model, build_tiny_tokenizer, save_tiny_model_dir


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture
def engine(tok):
    return HFRolloutEngine(build_tiny_model(tok, seed=0), tok, max_prompt_tokens=32, max_response_tokens=24)


@pytest.fixture(scope="module")
def prompts(tok):
    return [tok.encode(t) for t in ("What is 12 + 7?", "def add(a, b):", "Let x = 5. Then")]


def ids(out):
    return [s.token_ids for s in out.samples]


def test_protocol(engine):
    assert isinstance(engine, RolloutEngine)


def test_seeded_sampling_is_reproducible_and_seed_dependent(engine, prompts):
    sp = SamplingParams(temperature=1.0, max_tokens=16, seed=11)
    a, b = engine.generate(prompts, 3, sp), engine.generate(prompts, 3, sp)
    assert ids(a) == ids(b)
    assert all(torch.equal(x.logprobs, y.logprobs) for x, y in zip(a.samples, b.samples))
    c = engine.generate(prompts, 3, SamplingParams(temperature=1.0, max_tokens=16, seed=12))
    assert ids(a) != ids(c)
    # the n samples of one prompt are different draws
    assert len({tuple(t) for t in ids(a)[:3]}) == 3
    assert [s.prompt_index for s in a.samples] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_samples_do_not_depend_on_batch_composition(tok, engine, prompts):
    sp = SamplingParams(temperature=1.0, max_tokens=16, seed=5)
    full = engine.generate(prompts, 2, sp)
    small = HFRolloutEngine(engine.model, tok, max_prompt_tokens=32, max_response_tokens=24, max_batch_size=2)
    assert ids(small.generate(prompts, 2, sp)) == ids(full)
    # sample j of prompt i is keyed by (seed, i, j): the same prompt at another index draws differently
    swapped = engine.generate([prompts[1], prompts[0]], 2, sp)
    assert ids(swapped)[:2] != ids(full)[2:4]


def test_greedy_equals_argmax_decoding(engine, prompts):
    out = engine.generate(prompts, 2, SamplingParams(temperature=0.0, max_tokens=12, seed=None))
    for s in out.samples:
        seq = list(s.prompt_token_ids)
        expected = []
        with torch.no_grad():
            for _ in range(12):
                nxt = int(engine.model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
                expected.append(nxt)
                seq.append(nxt)
                if nxt in engine.eos_token_ids:
                    break
        assert s.token_ids == expected
    assert ids(out)[0] == ids(out)[1]  # greedy ignores the seed


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_logprobs_match_teacher_forced_forward(engine, prompts, temperature):
    out = engine.generate(prompts, 2, SamplingParams(temperature=temperature, max_tokens=20, seed=3))
    for s in out.samples:
        ref = teacher_forced_logprobs(engine.model, s.prompt_token_ids, s.token_ids, temperature)
        assert s.logprobs.shape == (len(s.token_ids),)
        assert torch.allclose(s.logprobs, ref, atol=1e-5, rtol=0), (s.logprobs - ref).abs().max()


def test_top_k_top_p_logprobs_are_from_truncated_distribution(engine, prompts):
    sp = SamplingParams(temperature=0.8, top_k=5, top_p=0.9, max_tokens=10, seed=2)
    out = engine.generate(prompts[:1], 2, sp)
    for s in out.samples:
        seq = torch.tensor([s.prompt_token_ids + s.token_ids])
        with torch.no_grad():
            logits = engine.model(input_ids=seq).logits[0, len(s.prompt_token_ids) - 1 : -1] / 0.8
        for t, tok_id in enumerate(s.token_ids):
            top5 = torch.topk(logits[t], 5)
            assert tok_id in top5.indices.tolist()
            probs = torch.softmax(top5.values, -1)
            order = torch.argsort(probs, descending=True)
            # nucleus over the top-5: smallest prefix whose mass reaches 0.9
            keep, mass = [], 0.0
            for k in order.tolist():
                keep.append(k)
                mass += probs[k].item()
                if mass >= 0.9:
                    break
            kept_vals = top5.values[keep]
            kept_ids = top5.indices[keep].tolist()
            assert tok_id in kept_ids
            expected = kept_vals[kept_ids.index(tok_id)] - torch.logsumexp(kept_vals, 0)
            assert s.logprobs[t].item() == pytest.approx(expected.item(), abs=1e-5)


def test_top_k_one_is_greedy(engine, prompts):
    greedy = engine.generate(prompts, 1, SamplingParams(temperature=0.0, max_tokens=10))
    topk1 = engine.generate(prompts, 1, SamplingParams(temperature=1.3, top_k=1, max_tokens=10, seed=9))
    assert ids(greedy) == ids(topk1)
    assert all(torch.allclose(s.logprobs, torch.zeros_like(s.logprobs)) for s in topk1.samples)


def test_update_weights_changes_next_generation(tok, engine, prompts):
    sp = SamplingParams(temperature=1.0, max_tokens=8, seed=1)
    before = engine.generate(prompts, 2, sp)
    sd = {k: v.clone() for k, v in engine.model.state_dict().items()}
    sd["lm_head.weight"].zero_()  # logits all 0 -> uniform distribution
    engine.update_weights(sd)
    after = engine.generate(prompts, 2, sp)
    uniform = -math.log(engine.vocab_size)
    for s in after.samples:
        assert torch.allclose(s.logprobs, torch.full_like(s.logprobs, uniform), atol=1e-6)
    assert not any(torch.allclose(s.logprobs, torch.full_like(s.logprobs, uniform)) for s in before.samples)
    assert engine.weights_version == 1


def test_update_weights_is_strict_and_atomic(engine):
    good = {k: v.clone() for k, v in engine.model.state_dict().items()}
    snapshot = engine.model.lm_head.weight.clone()
    bad_unknown = dict(good, **{"model.extra.weight": torch.zeros(2)})
    with pytest.raises(KeyError, match="model.extra.weight"):
        engine.update_weights(bad_unknown)
    missing = {k: v for k, v in good.items() if k != "model.norm.weight"}
    with pytest.raises(KeyError, match="missing parameter names.*model.norm.weight"):
        engine.update_weights(missing)
    wrong_shape = dict(good, **{"model.norm.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match="shape mismatch for model.norm.weight"):
        engine.update_weights(wrong_shape)
    nan = dict(good, **{"lm_head.weight": torch.full_like(good["lm_head.weight"], float("nan"))})
    with pytest.raises(ValueError, match="lm_head.weight contains NaN"):
        engine.update_weights(nan)
    assert torch.equal(engine.model.lm_head.weight, snapshot)  # nothing copied on failure
    assert engine.weights_version == 0


def test_tied_embeddings_lm_head_optional(tok):
    model = build_tiny_model(tok, seed=1, tie_word_embeddings=True)
    eng = HFRolloutEngine(model, tok, max_prompt_tokens=8, max_response_tokens=8)
    sd = {k: v.clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    sd["model.embed_tokens.weight"].mul_(2.0)
    eng.update_weights(sd)
    assert torch.equal(model.lm_head.weight, sd["model.embed_tokens.weight"])
    sd["lm_head.weight"] = torch.zeros_like(sd["model.embed_tokens.weight"])
    with pytest.raises(ValueError, match="ties them"):
        eng.update_weights(sd)


def test_length_limit_and_finish_reason(engine, prompts):
    out = engine.generate(prompts, 2, SamplingParams(temperature=1.0, max_tokens=5, seed=0))
    for s in out.samples:
        assert s.finish_reason == "length"
        assert len(s.token_ids) == 5 == s.logprobs.numel()
        assert s.text == engine.tokenizer.decode(s.token_ids, skip_special_tokens=True)


def test_eos_finishes_with_stop(tok, engine, prompts):
    first = engine.generate(prompts[:1], 1, SamplingParams(temperature=0.0, max_tokens=4)).samples[0]
    eos_eng = HFRolloutEngine(
        engine.model, tok, max_prompt_tokens=32, max_response_tokens=24, eos_token_ids=[first.token_ids[1]]
    )
    s = eos_eng.generate(prompts[:1], 1, SamplingParams(temperature=0.0, max_tokens=4)).samples[0]
    assert s.finish_reason == "stop"
    assert s.token_ids == first.token_ids[:2]  # EOS included


def test_stop_strings_cut_text_before_stop(engine, prompts):
    sp = SamplingParams(temperature=1.0, max_tokens=24, seed=4)
    free = engine.generate(prompts, 2, sp)
    # pick a sample and a 2-character stop string from the middle of its text (clean UTF-8 before it)
    r, stop = next(
        (r, s.text[k : k + 2])
        for r, s in enumerate(free.samples)
        for k in range(1, len(s.text) - 2)
        if "\ufffd" not in s.text[: k + 2]
    )
    ref = free.samples[r]
    text = ref.text
    cut = engine.generate(prompts, 2, SamplingParams(temperature=1.0, max_tokens=24, seed=4, stop=[stop]))
    s = cut.samples[r]
    pos = text.find(stop)
    assert s.finish_reason == "stop"
    assert s.text == text[:pos]
    assert stop not in s.text
    assert s.token_ids == ref.token_ids[: len(s.token_ids)]  # same random stream, truncated
    decoded = engine.tokenizer.decode(s.token_ids, skip_special_tokens=True)
    assert decoded.startswith(s.text) and len(decoded) < pos + len(stop)
    assert torch.equal(s.logprobs, ref.logprobs[: len(s.token_ids)])


def test_prompt_limits_enforced_before_generation(tok, engine):
    long_prompt = list(range(3, 3 + 33))
    with pytest.raises(PromptTooLongError, match="prompt 1 has 33 tokens"):
        engine.generate([[5, 6], long_prompt], 1, SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match="prompt 0, position 1: token id 9999 is outside"):
        engine.generate([[5, 9999]], 1, SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate([[5], []], 1, SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match="max_tokens=25 exceeds"):
        engine.generate([[5]], 1, SamplingParams(max_tokens=25))
    skip = HFRolloutEngine(
        engine.model, tok, max_prompt_tokens=32, max_response_tokens=24, overlong_prompt="skip"
    )
    out = skip.generate([[5, 6], long_prompt, [7]], 2, SamplingParams(max_tokens=3, seed=0))
    assert out.skipped_prompts == [1]
    assert [s.prompt_index for s in out.samples] == [0, 0, 2, 2]
    with pytest.raises(ValueError, match="max_position_embeddings"):
        HFRolloutEngine(engine.model, tok, max_prompt_tokens=500, max_response_tokens=100)


def test_sleep_blocks_generation_until_wake(engine, prompts):
    engine.sleep()
    with pytest.raises(RuntimeError, match="asleep"):
        engine.generate(prompts, 1, SamplingParams(max_tokens=2))
    engine.wake()
    assert len(engine.generate(prompts, 1, SamplingParams(max_tokens=2)).samples) == 3


def test_from_pretrained_and_from_state_dict_agree(tmp_path, tok, prompts):
    path = save_tiny_model_dir(tmp_path / "m", seed=3)
    a = HFRolloutEngine.from_pretrained(path, max_prompt_tokens=32, max_response_tokens=16)
    ref_model = build_tiny_model(tok, seed=3)
    b = HFRolloutEngine.from_state_dict(
        ref_model.config, ref_model.state_dict(), tok, max_prompt_tokens=32, max_response_tokens=16
    )
    sp = SamplingParams(temperature=1.0, max_tokens=10, seed=8)
    oa, ob = a.generate(prompts, 2, sp), b.generate(prompts, 2, sp)
    assert ids(oa) == ids(ob)
    assert all(torch.allclose(x.logprobs, y.logprobs, atol=1e-6) for x, y in zip(oa.samples, ob.samples))
