"""The evaluator's engine choice: backend resolution, the rollout config it builds, engine reuse across
checkpoints (same architecture -> weights loaded into the live engine), and the CLI's parsing.

The end-to-end run (HF + Megatron checkpoints, resume) is tests/integration/test_eval_cli.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nemo_prorl.eval.cli import build_eval_parser
from nemo_prorl.eval.runner import (
    EvalError,
    EvalSpec,
    engine_signature,
    iter_safetensors,
    load_weights,
    resolve_backend,
    rollout_config,
)


def _spec(**kw):
    return EvalSpec(checkpoints=[], data=[], out=Path("o"), **kw)


def test_resolve_backend():
    assert resolve_backend("auto", cuda=True, vllm=True) == "vllm"
    assert resolve_backend("auto", cuda=True, vllm=False) == "hf"
    assert resolve_backend("auto", cuda=False, vllm=True) == "hf"
    assert resolve_backend("hf", cuda=True, vllm=True) == "hf"
    assert resolve_backend("vllm", cuda=False, vllm=False) == "vllm"  # explicit: the factory decides


def test_rollout_config_from_spec():
    cfg = rollout_config(_spec(backend="hf", n=4, temperature=0.6, top_p=0.95, max_tokens=64, seed=9,
                               rollout={"max_batch_size": 8, "dtype": "bfloat16"}), max_prompt_tokens=100)
    assert (cfg.backend, cfg.n, cfg.temperature, cfg.top_p, cfg.seed) == ("hf", 4, 0.6, 0.95, 9)
    assert (cfg.max_prompt_tokens, cfg.max_response_tokens, cfg.overlong_prompt) == (100, 64, "skip")
    assert (cfg.max_batch_size, cfg.dtype, cfg.enable_sleep_mode) == (8, "bfloat16", False)
    assert cfg.gpu_memory_utilization == 0.8
    lower = rollout_config(_spec(backend="hf", rollout={"gpu_memory_utilization": 0.5}), 10)
    assert lower.gpu_memory_utilization == 0.5
    with pytest.raises(EvalError, match=r"--rollout \['n'\]: set by the eval options"):
        rollout_config(_spec(backend="hf", rollout={"n": 2}), 100)
    with pytest.raises(EvalError, match="--rollout.gpu_memory_utilization"):
        rollout_config(_spec(backend="hf", rollout={"gpu_memory_utilization": 2.0}), 100)
    with pytest.raises(EvalError, match="unknown key"):
        rollout_config(_spec(backend="hf", rollout={"tensor_parallel": 2}), 100)
    with pytest.raises(EvalError, match="exceeds --n"):
        _spec(n=4, ks=[1, 8]).k_values()
    assert _spec(n=16).k_values() == [1, 2, 4, 8, 16]


class _Tok:
    def __init__(self, vocab):
        self.vocab = vocab

    def get_vocab(self):
        return dict(self.vocab)


def test_engine_signature_ignores_names_not_architecture(tmp_path):
    cfg = rollout_config(_spec(backend="hf"), 100)
    a, b, c = (tmp_path / x for x in "abc")
    for d, extra in ((a, {"_name_or_path": "a", "transformers_version": "4"}),
                     (b, {"_name_or_path": "b", "transformers_version": "5", "torch_dtype": "bfloat16"}),
                     (c, {"hidden_size": 64})):
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 32, **extra}))
    tok = _Tok({"a": 0, "b": 1})
    assert engine_signature(a, tok, cfg) == engine_signature(b, tok, cfg)
    assert engine_signature(a, tok, cfg) != engine_signature(c, tok, cfg)  # another architecture
    assert engine_signature(a, tok, cfg) != engine_signature(a, _Tok({"a": 0, "c": 1}), cfg)
    assert engine_signature(a, tok, cfg) != engine_signature(a, tok, rollout_config(_spec(backend="hf"), 99))


def test_load_weights_into_a_live_engine(tmp_path):
    """The second checkpoint of the same architecture goes into the live hf engine; samples follow it."""
    from nemo_prorl.rollout import RolloutConfig, SamplingParams
    from nemo_prorl.rollout.factory import build_rollout_engine
    from nemo_prorl.rollout.tiny import build_tiny_tokenizer, save_tiny_model_dir

    first = save_tiny_model_dir(tmp_path / "m0", seed=0)
    second = save_tiny_model_dir(tmp_path / "m1", seed=1)
    assert dict(iter_safetensors(first)).keys() == dict(iter_safetensors(second)).keys()
    tok = build_tiny_tokenizer()
    config = RolloutConfig(backend="hf", max_prompt_tokens=16, max_response_tokens=6)
    engine = build_rollout_engine(config, first, tok)
    fresh = build_rollout_engine(config, second, tok)
    sp = SamplingParams(temperature=1.0, max_tokens=6, seed=4)
    prompts = [tok.encode("1 + 2 =")]
    load_weights(engine, second)
    got, want = engine.generate(prompts, 3, sp), fresh.generate(prompts, 3, sp)
    assert [s.token_ids for s in got.samples] == [s.token_ids for s in want.samples]
    assert all(torch.equal(a, b) for a, b in zip(got.samples[0].logprobs, want.samples[0].logprobs))
    with pytest.raises(EvalError, match="no \\*.safetensors"):
        list(iter_safetensors(tmp_path))


def test_cli_parses_backend_and_rollout_settings():
    args = build_eval_parser().parse_args([
        "--checkpoint", "base=/m", "--data", "a.jsonl", "--out", "o", "--backend", "vllm",
        "--rollout", "tensor_parallel_size=2", "--rollout", "enforce_eager=true",
        "--rollout", "dtype=bfloat16"])
    assert args.backend == "vllm" and args.checkpoint == [("base", Path("/m"))]
    assert dict(args.rollout) == {"tensor_parallel_size": 2, "enforce_eager": True, "dtype": "bfloat16"}
    assert args.batch_prompts is None
