import pytest
import torch

from nemo_prorl.rollout import HFRolloutEngine, RolloutConfig, SamplingParams, build_rollout_engine
from nemo_prorl.rollout.tiny import build_tiny_model, build_tiny_tokenizer, save_tiny_model_dir


def test_defaults_validate_and_sampling_params():
    cfg = RolloutConfig(n=4, temperature=1.2, stop=["</answer>"], max_response_tokens=64, seed=3)
    cfg.validate()
    sp = cfg.sampling_params()
    assert sp == SamplingParams(
        temperature=1.2, top_p=1.0, top_k=-1, max_tokens=64, stop=["</answer>"], seed=3
    )
    assert cfg.sampling_params(temperature=0.6).temperature == 0.6


@pytest.mark.parametrize(
    "key,value",
    [
        ("backend", "sglang"),
        ("n", 0),
        ("n", True),
        ("temperature", -0.1),
        ("temperature", float("inf")),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", 0),
        ("max_prompt_tokens", 0),
        ("max_response_tokens", 1.5),
        ("stop", "</answer>"),
        ("stop", [""]),
        ("seed", 1.0),
        ("overlong_prompt", "truncate"),
        ("dtype", "fp8"),
        ("attn_implementation", "flash"),
        ("tensor_parallel_size", 0),
        ("gpu_memory_utilization", 0.0),
        ("gpu_memory_utilization", 1.2),
        ("enforce_eager", "yes"),
        ("distributed_executor_backend", "mp"),
        ("max_model_len", 16),
        ("logprobs_mode", "raw_logits"),
        ("compile", "yes"),
    ],
)
def test_validate_names_the_key(key, value):
    cfg = RolloutConfig(**{key: value})
    with pytest.raises(ValueError, match=rf"^rollout\.{key}(\[\d+\])?:"):
        cfg.validate()


def test_compile_is_for_the_hf_backend_and_reaches_its_engine(tmp_path):
    with pytest.raises(ValueError, match=r"^rollout\.compile: only the hf backend compiles its decode step "
                                         r"\(backend is 'vllm'\); vllm captures CUDA graphs unless "
                                         r"rollout\.enforce_eager is true"):
        RolloutConfig(backend="vllm", compile=True).validate()
    path = save_tiny_model_dir(tmp_path / "m", seed=2)
    cfg = RolloutConfig(backend="hf", max_prompt_tokens=16, max_response_tokens=8, compile=True)
    cfg.validate()
    assert build_rollout_engine(cfg, path).compile_decode  # compiled at its first decode step, not here
    eager = RolloutConfig(max_prompt_tokens=16, max_response_tokens=8)
    assert not build_rollout_engine(eager, path).compile_decode


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"^policy\.rollout\.temprature: unknown key; did you mean 'temp"):
        RolloutConfig.from_dict({"temprature": 1.0}, where="policy.rollout")
    cfg = RolloutConfig.from_dict({"n": 2, "stop": ("a",)})
    assert cfg.n == 2 and cfg.stop == ["a"]
    with pytest.raises(ValueError, match=r"rollout\.n:"):
        RolloutConfig.from_dict({"n": -1})


def test_factory_hf_from_dir_and_from_state(tmp_path):
    path = save_tiny_model_dir(tmp_path / "m", seed=2)
    cfg = RolloutConfig(backend="hf", max_prompt_tokens=16, max_response_tokens=8, max_batch_size=4)
    eng = build_rollout_engine(cfg, path)
    assert isinstance(eng, HFRolloutEngine)
    assert eng.max_prompt_tokens == 16 and eng.max_batch_size == 4
    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok, seed=2)
    eng2 = build_rollout_engine(cfg, (model.config, model.state_dict()), tok)
    prompt = [tok.encode("What is 1 + 1?")]
    sp = cfg.sampling_params(max_tokens=6)
    a, b = eng.generate(prompt, 2, sp), eng2.generate(prompt, 2, sp)
    assert [s.token_ids for s in a.samples] == [s.token_ids for s in b.samples]
    assert torch.allclose(a.samples[0].logprobs, b.samples[0].logprobs, atol=1e-6)
    with pytest.raises(ValueError, match="tokenizer is required"):
        build_rollout_engine(cfg, (model.config, model.state_dict()))
    with pytest.raises(ValueError, match=r"rollout\.backend"):
        build_rollout_engine(RolloutConfig(backend="x"), path)
