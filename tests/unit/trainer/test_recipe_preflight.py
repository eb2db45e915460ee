"""Start-up checks of a recipe, phase by phase (nemo_prorl.trainer.preflight)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nemo_prorl.algorithms.advantages import group_advantages
from nemo_prorl.algorithms.config import RewardShapingConfig
from nemo_prorl.algorithms.dynamic_sampling import DynamicSamplingBuffer, prompts_per_round
from nemo_prorl.algorithms.reward_shaping import shape_rewards
from nemo_prorl.config_schema import ConfigError
from nemo_prorl.trainer import preflight
from nemo_prorl.trainer.config import build_config, compose, validate

R1_15B = "DeepSeek-R1-Distill-Qwen-1.5B"


def _model_dir(tmp_path: Path, **changes) -> Path:
    """A model directory holding only the 1.5B config.json (with ``changes``): all a dry run reads."""
    d = tmp_path / R1_15B
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps({**preflight.KNOWN_ARCHS[R1_15B.lower()], **changes}))
    return d


def _recipe(model: Path | str, *overrides: str, world_size: int | None = None):
    cfg = build_config(compose("prorl_1p5b", [f"model={model}", *overrides]), require_model=False)
    if world_size is not None:  # as under a launch with WORLD_SIZE set
        validate(cfg, require_model=False, world_size=world_size)
    return cfg


def _error(model, *overrides: str, world_size: int | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        _recipe(model, *overrides, world_size=world_size)
    return ei.value


# ----------------------------------------------------------------------------------- architecture
def test_parameter_count_of_the_15b_model_by_hand():
    arch = preflight.arch_from_hf_config(preflight.KNOWN_ARCHS[R1_15B.lower()])
    # docs/scaling.md: q,o = h*h; k,v = h*256 (2 KV heads x 128); q/k/v biases; gate/up/down; two norms
    per_layer = 2 * 1536**2 + 2 * 1536 * 256 + (1536 + 2 * 256) + 3 * 1536 * 8960 + 2 * 1536
    assert per_layer == 46_797_824
    assert arch.params_per_layer == per_layer
    assert arch.head_dim == 128 and arch.kv_dim == 256
    # untied embedding and LM head, final norm
    assert arch.num_params == 28 * per_layer + 2 * 151936 * 1536 + 1536 == 1_777_088_000


def test_arch_from_config_json_and_from_the_built_in_table(tmp_path):
    demo = preflight.load_model_arch(Path(__file__).resolve().parents[3] / "nemo_prorl/assets/demo")
    assert (demo.hidden_size, demo.num_layers, demo.num_heads, demo.num_kv_heads) == (256, 2, 4, 2)
    assert demo.tied_embeddings and demo.max_position_embeddings == 128 and "config.json" in demo.source
    known = preflight.load_model_arch(tmp_path / "nowhere" / R1_15B)
    assert known.max_position_embeddings == 131072 and "built-in table" in known.source
    assert preflight.load_model_arch(tmp_path / "unknown-model") is None
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        preflight.arch_from_hf_config({"hidden_size": 0})


# ---------------------------------------------------------------------------------------- phases
def test_phase_plans_and_the_engine_sized_for_the_largest_phase(tmp_path):
    cfg = _recipe(_model_dir(tmp_path))
    plans = preflight.phase_plans(cfg)
    assert [p.name for p in plans] == ["run1", "run2", "run3_add_if", "run4_stop_penalty", "run5",
                                       "run6_n32", "run7_n32", "run8_16k"]
    assert [p.start for p in plans] == [0, 500, 800, 1100, 1350, 1600, 1800, 2000]
    assert [p.n for p in plans] == [16] * 5 + [32, 32, 16]
    assert [p.max_response_tokens for p in plans] == [8192] * 7 + [16384]
    assert plans[-1].steps == 200 and sum(p.steps for p in plans) == cfg.trainer.max_steps
    eng = preflight.engine_rollout_config(cfg)
    assert eng.max_response_tokens == 16384 and cfg.rollout.max_response_tokens == 8192
    assert preflight.engine_context(eng) == 1024 + 16384
    assert plans[-1].key("max_response_tokens") == "phases[7].max_response_tokens"
    assert plans[0].key("max_response_tokens") == "rollout.max_response_tokens"  # run1 inherits it


def test_a_phase_past_the_model_positions_is_refused_naming_the_phase(tmp_path):
    err = _error(_model_dir(tmp_path, max_position_embeddings=16384))
    assert err.key == "phases[7].max_response_tokens"
    assert str(err).startswith("phases[7].max_response_tokens: 16384 + rollout.max_prompt_tokens 1024 = "
                               "17408 tokens (phase 'run8_16k') exceed the model's max_position_embeddings "
                               "16384")
    assert "lower phases[7].max_response_tokens" in str(err)


def test_a_phase_past_an_explicit_engine_context_is_refused(tmp_path):
    err = _error(_model_dir(tmp_path), "rollout.max_model_len=9216")
    assert err.key == "phases[7].max_response_tokens"
    assert "exceed rollout.max_model_len=9216" in str(err) and "at least 17408" in str(err)


def test_overlong_shaping_follows_each_phase_or_is_refused(tmp_path):
    model = _model_dir(tmp_path)
    cfg = _recipe(model, "algorithm.reward_shaping.overlong_enable=true")
    lens = [p.shaping.max_response_len for p in preflight.phase_plans(cfg)]
    assert lens == [8192] * 7 + [16384]
    err = _error(model, "algorithm.reward_shaping.overlong_enable=true",
                 "algorithm.reward_shaping.max_response_len=8192")
    assert err.key == "algorithm.reward_shaping.max_response_len"
    assert "differs from phases[7].max_response_tokens=16384 in phase 'run8_16k'" in str(err)
    # a ramp longer than a phase's responses
    err = _error(model, "algorithm.reward_shaping.overlong_enable=true",
                 "algorithm.reward_shaping.overlong_buffer_len=9000")
    assert err.key == "algorithm.reward_shaping.overlong_buffer_len"
    assert "9000 must be below rollout.max_response_tokens=8192 (phase 'run1')" in str(err)


def test_shaping_for_phase_fills_only_an_unset_length():
    base = RewardShapingConfig(overlong_enable=True, overlong_buffer_len=4)
    assert preflight.shaping_for_phase(base, {}, 32).max_response_len == 32
    assert preflight.shaping_for_phase(base, {"max_response_len": 16}, 32).max_response_len == 16
    assert preflight.shaping_for_phase(base, {"stop_properly_penalty_coef": 0.0}, 64) == RewardShapingConfig(
        overlong_enable=True, overlong_buffer_len=4, max_response_len=64, stop_properly_penalty_coef=0.0)


def test_batch_divisibility_over_data_parallel_ranks(tmp_path):
    model = _model_dir(tmp_path)
    assert _recipe(model, world_size=32).trainer.mini_batch_prompts == 64  # 64 x 16 = 1024 over 32 ranks
    # 64 prompts x 16 = 1024 sequences do not split over 48 ranks (run1 inherits rollout.n)
    err = _error(model, world_size=48)
    assert err.key == "rollout.n" and "1024 sequences does not split over 48" in str(err)
    # only the n=3 phase breaks it (64 x 3 = 192 over 128 ranks)
    err = _error(model, "phases.5.n=3", world_size=128)
    assert err.key == "phases[5].n" and "phase 'run6_n32'" in str(err)
    err = _error(model, "policy.tensor_model_parallel_size=3", world_size=32)
    assert err.key == "policy.tensor_model_parallel_size"
    # PP does not need whole micro-batches per rank (the engine pads the last one): 32 rows, micro-batch 5
    assert _recipe(model, "policy.pipeline_model_parallel_size=2", "policy.micro_batch_size=5",
                   world_size=64).policy.micro_batch_size == 5


def test_world_size_from_env():
    assert preflight.world_size_from_env({}) is None
    assert preflight.world_size_from_env({"WORLD_SIZE": "8"}) == 8
    assert preflight.world_size_from_env({"SLURM_NTASKS": "32"}) == 32


# ------------------------------------------------------------------------------- ignored keys
def test_kl_in_reward_is_refused_and_loss_is_accepted(tmp_path):
    model = _model_dir(tmp_path)
    err = _error(model, "algorithm.kl.where=reward")
    assert err.key == "algorithm.kl.where" and "use algorithm.kl.where=loss" in str(err)
    assert _recipe(model, "algorithm.kl.where=reward", "algorithm.kl.coef=0").algorithm.kl.coef == 0


def test_data_prompt_limit_above_the_engine_is_refused(tmp_path):
    model = _model_dir(tmp_path)
    err = _error(model, "data.max_prompt_tokens=2048")
    assert err.key == "data.max_prompt_tokens" and "exceeds rollout.max_prompt_tokens=1024" in str(err)
    assert _recipe(model, "data.max_prompt_tokens=512").data.max_prompt_tokens == 512


def test_oversample_sets_the_prompts_per_round_and_excludes_generation_prompts(tmp_path):
    assert prompts_per_round(256, 1.5) == 384
    assert prompts_per_round(10, 1.1) == 11        # 1.1 * 10 = 11.000000000000002 in floats
    assert prompts_per_round(7, 1.0) == 7
    assert prompts_per_round(3, 1.2) == 4          # ceil(3.6)
    with pytest.raises(ValueError, match="oversample must be >= 1"):
        prompts_per_round(8, 0.5)
    err = _error(_model_dir(tmp_path), "trainer.generation_prompts=300")
    assert err.key == "algorithm.dynamic_sampling.oversample"


def test_groups_are_filtered_on_shaped_rewards_hand_computed():
    """Stop-properly coefficient 0 (ProRL runs 4-8): truncated responses score 0 whatever their reward.

    Group A: task rewards [1, 0, 1, 0], every response truncated -> shaped [0, 0, 0, 0]: the raw rewards
    vary, but every advantage would be 0, so the group is dropped.
    Group B: task rewards [1, 1, 1, 1], the third truncated -> shaped [1, 1, 0, 1]: the raw rewards are
    equal, but the shaped ones carry the "finish your answer" signal, so the group is kept.
    B's advantages: mean 0.75, unbiased std sqrt(0.25) = 0.5 -> (r - 0.75) / (0.5 + 1e-6).
    """
    shaping = RewardShapingConfig(stop_properly_penalty_coef=0.0)
    raw_a, trunc_a = torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([True] * 4)
    raw_b, trunc_b = torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([False, False, True, False])
    shaped_a = shape_rewards(raw_a, shaping, truncated=trunc_a)
    shaped_b = shape_rewards(raw_b, shaping, truncated=trunc_b)
    assert shaped_a.tolist() == [0.0, 0.0, 0.0, 0.0] and shaped_b.tolist() == [1.0, 1.0, 0.0, 1.0]
    buf = DynamicSamplingBuffer(target_groups=1, max_rounds=1)
    assert buf.add(["A", "B"], [shaped_a.tolist(), shaped_b.tolist()]) == 1
    batch, stats = buf.pop_batch()
    assert batch == ["B"] and stats.groups_dropped == 1
    adv = group_advantages(shaped_b, group_size=4)
    expected = torch.tensor([0.25, 0.25, -0.75, 0.25]) / (0.5 + 1e-6)
    torch.testing.assert_close(adv, expected, atol=1e-6, rtol=0)
    assert adv.abs().sum() > 0
    # tol: a range of 0.5 is "zero variance" below tol 0.6 and informative above tol 0.4
    for tol, kept in ((0.6, 0), (0.4, 1)):
        b = DynamicSamplingBuffer(target_groups=1, max_rounds=2, tol=tol)
        assert b.add(["C"], [[0.5, 1.0, 1.0]]) == kept
