"""Rollout drivers in one process: sharding arithmetic, merging, and both drivers over a real tiny hf engine.

The multi-rank behaviour (followers, gather, filler requests, aborts) is covered under torchrun in
tests/integration/test_trainer_distributed.py, and with vLLM in tests/integration/test_trainer_vllm.py.
"""

from __future__ import annotations

import pytest
import torch

from nemo_prorl.rollout import (
    HFRolloutEngine,
    PromptTooLongError,
    RolloutConfig,
    RolloutEngine,
    SamplingParams,
)
from nemo_prorl.rollout.base import GenerationOutput, Sample
from nemo_prorl.rollout.tiny import build_tiny_model, build_tiny_tokenizer, save_tiny_model_dir
from nemo_prorl.trainer.rollout_driver import (
    ColocatedDriver,
    RankZeroDriver,
    build_rollout_driver,
    merge_outputs,
    shard_bounds,
)


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def _engine(tok, **kw):
    model = build_tiny_model(tok, seed=0)
    return HFRolloutEngine(model, tok, max_prompt_tokens=16, max_response_tokens=6, **kw)


def _ids(out):
    return [(s.prompt_index, s.token_ids) for s in out.samples]


def test_shard_bounds_hand_values():
    assert shard_bounds(5, 2) == [(0, 3), (3, 5)]
    assert shard_bounds(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert shard_bounds(1, 2) == [(0, 1), (1, 1)]  # replica 1 gets nothing (filler request)
    assert shard_bounds(0, 3) == [(0, 0), (0, 0), (0, 0)]
    assert shard_bounds(4, 1) == [(0, 4)]
    with pytest.raises(ValueError, match="num_shards"):
        shard_bounds(3, 0)


def test_merge_outputs_timings_and_order():
    def sample(i, k):
        return Sample(i, [1], list(range(k)), "x", None, "stop")

    a = GenerationOutput([sample(0, 2), sample(1, 4)], timings={"generate_s": 2.0})
    b = GenerationOutput([sample(2, 3)], timings={"generate_s": 3.0})
    out = merge_outputs([a, None, b, None], skipped=[5])
    assert [s.prompt_index for s in out.samples] == [0, 1, 2]
    # replicas run concurrently: the slowest sets the time; 9 tokens / 3 s
    assert out.timings["generate_s"] == 3.0 and out.timings["tokens"] == 9.0
    assert out.timings["tokens_per_s"] == pytest.approx(3.0)
    assert out.timings["replicas"] == 2.0
    assert out.skipped_prompts == [5]


def test_rank_zero_driver_is_the_engine(tok):
    eng = _engine(tok)
    drv = RankZeroDriver(eng)
    assert isinstance(drv, RolloutEngine)
    prompts = [tok.encode("1 + 2 ="), tok.encode("def f(x):")]
    sp = SamplingParams(temperature=1.0, max_tokens=6, seed=3)
    ref = eng.generate(prompts, 2, sp)
    assert _ids(drv.on_rank0(lambda: drv.generate(prompts, 2, sp))) == _ids(ref)
    assert _ids(drv.generate_collective(prompts, 2, sp, to_all=True)) == _ids(ref)
    assert drv.on_rank0(lambda: 7, default=0) == 7
    with pytest.raises(ValueError, match="must host the engine"):
        RankZeroDriver(None)


def test_colocated_driver_single_process(tok):
    eng = _engine(tok, overlong_prompt="skip")
    drv = ColocatedDriver(eng, sleep_between=True)
    assert (drv.dp_size, drv.tp_size) == (1, 1)
    sp = SamplingParams(temperature=1.0, max_tokens=6, seed=5)
    prompts = [tok.encode("1 + 2 ="), list(range(3, 3 + 17)), tok.encode("def f(x):")]
    # asleep outside sessions: the engine refuses to generate
    with pytest.raises(RuntimeError, match="asleep"):
        eng.generate(prompts[:1], 1, sp)
    out = drv.on_rank0(lambda: drv.generate(prompts, 2, sp))
    # the overlong prompt is dropped up front and reported with its index in the caller's list
    assert out.skipped_prompts == [1]
    assert [s.prompt_index for s in out.samples] == [0, 0, 2, 2]
    eng.wake()
    ref = eng.generate([prompts[0], prompts[2]], 2, sp)
    eng.sleep()
    assert [s.token_ids for s in out.samples] == [s.token_ids for s in ref.samples]
    assert all(s.prompt_token_ids == prompts[s.prompt_index] for s in out.samples)
    with pytest.raises(RuntimeError, match="asleep"):
        eng.generate(prompts[:1], 1, sp)
    # a single process may also call generate without a session
    assert _ids(drv.generate([prompts[0], prompts[2]], 2, sp))[0][1] == ref.samples[0].token_ids
    # seed None: one base seed is drawn for the call (n samples of a prompt still differ)
    free = drv.generate([prompts[0]], 4, SamplingParams(temperature=1.0, max_tokens=6, seed=None))
    assert len(free.samples) == 4
    # a bad request fails on the leader before any engine sees it
    with pytest.raises(ValueError, match="max_tokens"):
        drv.generate([prompts[0]], 1, SamplingParams(max_tokens=7))
    assert drv.on_rank0(lambda: 3) == 3


def test_colocated_driver_error_mode_and_weights(tok):
    eng = _engine(tok)
    drv = ColocatedDriver(eng, sleep_between=False)
    with pytest.raises(PromptTooLongError):
        drv.generate([list(range(3, 3 + 17))], 1, SamplingParams(max_tokens=2))
    # update_weights reaches the engine: zero lm_head -> uniform log-probs over the vocabulary
    sd = {k: v.clone() for k, v in eng.model.state_dict().items()}
    sd["lm_head.weight"] = torch.zeros_like(sd["lm_head.weight"])
    drv.update_weights(sd)
    out = drv.generate([tok.encode("1 + 2 =")], 1, SamplingParams(temperature=1.0, max_tokens=3, seed=0))
    lp = out.samples[0].logprobs
    assert torch.allclose(lp, torch.full_like(lp, -torch.log(torch.tensor(float(eng.vocab_size)))), atol=1e-5)


def test_build_rollout_driver_hf(tmp_path, tok):
    path = save_tiny_model_dir(tmp_path / "m", seed=0)
    drv = build_rollout_driver(RolloutConfig(backend="hf", max_prompt_tokens=16, max_response_tokens=6), path)
    assert isinstance(drv, RankZeroDriver) and isinstance(drv.engine, HFRolloutEngine)


def test_drivers_take_a_weight_stream(tok):
    """A lazy stream (``MegatronPolicy.iter_hf_weights``) reaches an engine that takes only mappings whole."""
    for make in (lambda e: RankZeroDriver(e), lambda e: ColocatedDriver(e, sleep_between=False)):
        eng = _engine(tok)
        drv = make(eng)
        sd = {k: v.clone() for k, v in eng.model.state_dict().items()}
        sd["lm_head.weight"] = torch.zeros_like(sd["lm_head.weight"])
        drv.update_weights(iter(sd.items()))
        assert torch.equal(eng.model.state_dict()["lm_head.weight"], sd["lm_head.weight"])
