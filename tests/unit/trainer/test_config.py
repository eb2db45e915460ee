"""ProRLConfig composition and validation: every error names the offending key."""

from __future__ import annotations

import pytest

from nemo_prorl.config_schema import ConfigError
from nemo_prorl.trainer.config import (
    PhaseConfig,
    ProRLConfig,
    build_config,
    compose,
    load_config,
)


def _key_of(overrides: list[str], **kw) -> str:
    with pytest.raises(ConfigError) as ei:
        load_config(None, overrides, **kw)
    return ei.value.key


def test_embedded_default_composes_and_validates():
    cfg = load_config()
    assert cfg.model == "demo"
    assert cfg.model_dir.joinpath("config.json").is_file()
    assert cfg.trainer.prompts_per_step % cfg.trainer.mini_batch_prompts == 0
    assert cfg.rollout.n >= 2
    assert all(f.endswith("train.jsonl") for f in cfg.data.train_files)


def test_paper_recipe_composes_and_validates():
    # the GPU recipe names a model directory this machine does not have; everything else validates
    raw = compose("prorl_1p5b", [])
    assert raw["trainer"]["prompts_per_step"] == 256
    assert raw["rollout"]["n"] == 16
    with pytest.raises(ConfigError) as ei:
        build_config(raw)
    assert ei.value.key == "model"
    # the demo model has 128 positions: the recipe's first phase (1024 + 8192 tokens) cannot run on it
    raw["model"] = "demo"
    with pytest.raises(ConfigError) as ei:
        build_config(raw)
    assert ei.value.key == "rollout.max_response_tokens"
    assert "max_position_embeddings 128" in str(ei.value)
    # the dry run reads the 1.5B architecture from the built-in table (no weights on this machine)
    raw["model"] = "checkpoints/DeepSeek-R1-Distill-Qwen-1.5B"
    cfg = build_config(raw, require_model=False)
    assert cfg.algorithm.loss.dual_clip == pytest.approx(3.0)
    assert cfg.algorithm.dynamic_sampling.oversample == pytest.approx(1.5)
    assert cfg.algorithm.loss.clip_low == pytest.approx(0.2)
    assert cfg.algorithm.loss.clip_high == pytest.approx(0.4)
    assert cfg.rollout.temperature == pytest.approx(1.2)
    assert sum(p.steps for p in cfg.phases) >= cfg.trainer.max_steps


def test_overrides_reach_schema_fields_absent_from_the_yaml():
    # demo.yaml does not list trainer.progress_bar or logging.plots; plain key=value still works
    cfg = load_config(None, ["trainer.progress_bar=false", "logging.plots=false", "trainer.max_steps=3",
                             "reset.at_steps=[1,2]"])
    assert cfg.trainer.progress_bar is False
    assert cfg.logging.plots is False
    assert cfg.trainer.max_steps == 3
    assert cfg.reset.at_steps == [1, 2]


def test_unknown_top_level_key():
    assert _key_of(["+trainr.max_steps=3"]) == "trainr"
    raw = compose(None, [])
    raw["bogus"] = 1
    with pytest.raises(ConfigError) as ei:
        build_config(raw)
    assert ei.value.key == "bogus"


def test_unknown_section_key_is_named():
    assert _key_of(["+trainer.max_stepz=3"]) == "trainer.max_stepz"
    assert _key_of(["+reset.every=3"]) == "reset.every"


def test_mini_batch_must_divide_prompts_per_step():
    key = _key_of(["trainer.prompts_per_step=8", "trainer.mini_batch_prompts=3"])
    assert key == "trainer.mini_batch_prompts"
    with pytest.raises(ConfigError, match="3 does not divide trainer.prompts_per_step=8"):
        load_config(None, ["trainer.prompts_per_step=8", "trainer.mini_batch_prompts=3"])


def test_phases_shorter_than_max_steps():
    with pytest.raises(ConfigError, match="phases add up to 3 steps, fewer than trainer.max_steps=5") as ei:
        load_config(None, ["trainer.max_steps=5", "phases=[{name: a, steps: 1}, {name: b, steps: 2}]"])
    assert ei.value.key == "phases"


def test_unknown_phase_key_and_reward_shaping_key():
    assert _key_of(["trainer.max_steps=2", "phases=[{name: a, steps: 2, temp: 1.0}]"]) == "phases[0].temp"
    key = _key_of(["trainer.max_steps=2",
                   "phases=[{name: a, steps: 1}, {name: b, steps: 1, reward_shaping: {bogus: 1}}]"])
    assert key == "phases[1].reward_shaping.bogus"


def test_phase_must_be_a_mapping():
    raw = compose(None, ["trainer.max_steps=2"])
    raw["phases"] = ["oops"]
    with pytest.raises(ConfigError) as ei:
        build_config(raw)
    assert ei.value.key == "phases[0]"


def test_target_is_rejected_in_overrides_and_in_yaml(tmp_path):
    with pytest.raises(ConfigError) as ei:
        compose(None, ["+rewards._target_=os.system"])
    assert ei.value.key == "_target_"
    (tmp_path / "evil.yaml").write_text(
        "model: demo\ndata:\n  train_files: ['demo:train.jsonl']\n"
        "algorithm:\n  loss:\n    _target_: builtins.eval\n")
    with pytest.raises(ConfigError) as ei:
        load_config("evil", [], str(tmp_path))
    assert ei.value.key == "_target_"
    # also inside a list
    (tmp_path / "evil2.yaml").write_text("phases:\n  - {name: a, steps: 1, _target_: os.system}\n")
    with pytest.raises(ConfigError) as ei:
        compose("evil2", [], str(tmp_path))
    assert ei.value.key == "_target_"


def test_unknown_config_name_lists_the_available_ones():
    with pytest.raises(ConfigError, match="available: .*demo") as ei:
        compose("no_such_recipe", [])
    assert ei.value.key == "--config-name"


def test_missing_model_directory(tmp_path):
    with pytest.raises(ConfigError, match="not an HF model directory") as ei:
        load_config(None, [f"model={tmp_path / 'nope'}"])
    assert ei.value.key == "model"


def test_final_eval_k_above_n():
    with pytest.raises(ConfigError, match="k=8 exceeds final_eval.n=4") as ei:
        load_config(None, ["final_eval.n=4", "final_eval.ks=[1,2,8]"])
    assert ei.value.key == "final_eval.ks"


def test_grpo_needs_two_rollouts_in_every_phase():
    assert _key_of(["rollout.n=1"]) == "rollout.n"
    # a phase with its own n=1
    assert _key_of(["trainer.max_steps=2", "phases=[{name: a, steps: 1}, {name: b, steps: 1, n: 1}]"]) \
        == "phases[1].n"
    # rollout.n=1 is fine when every phase sets its own n >= 2 ...
    cfg = load_config(None, ["rollout.n=1", "trainer.max_steps=2", "phases=[{name: a, steps: 2, n: 4}]"])
    assert cfg.phases[0].n == 4
    # ... but not when one phase falls back to it
    assert _key_of(["rollout.n=1", "trainer.max_steps=2",
                    "phases=[{name: a, steps: 1, n: 4}, {name: b, steps: 1}]"]) == "rollout.n"


@pytest.mark.parametrize("override,key", [
    ("trainer.max_steps=0", "trainer.max_steps"),
    ("trainer.val_interval=-1", "trainer.val_interval"),
    ("reset.at_steps=[3,0]", "reset.at_steps[1]"),
    ("reset.kl_above=-0.5", "reset.kl_above"),
    ("checkpoint.keep_last=0", "checkpoint.keep_last"),
    ("checkpoint.save_on_signals=[SIGKILL]", "checkpoint.save_on_signals[0]"),
    ("seed=-3", "seed"),
    ("run_dir=''", "run_dir"),
])
def test_bad_values_name_their_key(override, key):
    assert _key_of([override]) == key


def test_phase_at_and_phase_start():
    cfg = ProRLConfig(phases=[PhaseConfig("a", 2), PhaseConfig("b", 3), PhaseConfig("c", 1)])
    got = [(i, ph.name) for i, ph in (cfg.phase_at(s) for s in range(8))]
    assert got == [(0, "a"), (0, "a"), (1, "b"), (1, "b"), (1, "b"), (2, "c"), (2, "c"), (2, "c")]
    assert [cfg.phase_start(i) for i in range(3)] == [0, 2, 5]
    assert ProRLConfig().phase_at(0) == (-1, None)
    assert ProRLConfig().phase_at(100) == (-1, None)


def test_phase_mixture_temperature_and_phase_mixture_names_are_checked():
    two = "trainer.max_steps=2"
    key = _key_of([two, "phases=[{name: a, steps: 2, mixture: {math: 1, poetry: 2}}]"])
    assert key == "phases[0].mixture.poetry"
    assert _key_of([two, "phases=[{name: a, steps: 2, mixture: {math: 0}}]"]) == "phases[0].mixture"
    assert _key_of([two, "phases=[{name: a, steps: 2, temperature: -1}]"]) == "phases[0].temperature"
    assert _key_of([two, "phases=[{name: a, steps: 2}]", "data.phase_mixtures={b: {math: 1}}"]) \
        == "data.phase_mixtures.b"
    cfg = load_config(None, [two, "phases=[{name: a, steps: 2, mixture: {reasoning_gym: 1}}]",
                             "data.phase_mixtures={a: {reasoning_gym: 1}}"])
    assert cfg.phases[0].mixture == {"reasoning_gym": 1}


def test_val_plateau_trigger_needs_validation():
    # the demo turns the plateau trigger on; with validation off it could never fire, so it is an error
    assert _key_of(["trainer.val_interval=0"]) == "reset.on_val_plateau"
    assert _key_of(["data.val_files=[]"]) == "reset.on_val_plateau"
    cfg = load_config(None, ["trainer.val_interval=0", "reset.on_val_plateau=false"])
    assert cfg.reset.on_val_plateau is False


def test_reset_to_best_policy_options_are_validated():
    assert _key_of(["reset.reference=latest"]) == "reset.reference"
    assert _key_of(["reset.policy_to_best=true"]) == "reset.policy_to_best"  # needs reference=best
    # the best checkpoint is picked by validation: without validation there is none
    assert _key_of(["reset.reference=best", "trainer.val_interval=0", "reset.on_val_plateau=false"]) \
        == "reset.reference"
    with pytest.raises(ConfigError, match="trainer.val_interval > 0 and data.val_files"):
        load_config(None, ["reset.reference=best", "data.val_files=[]", "reset.on_val_plateau=false"])
    cfg = load_config(None, ["reset.reference=best", "reset.policy_to_best=true"])
    assert (cfg.reset.reference, cfg.reset.policy_to_best) == ("best", True)
    assert (load_config(None, []).reset.reference, load_config(None, []).reset.policy_to_best) == \
        ("current", False)
