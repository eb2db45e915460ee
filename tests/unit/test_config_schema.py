"""The one config mechanism (:mod:`nemo_prorl.config_schema`): every error names the dotted key.

Unknown keys list the close matches, wrong types name the expected type and the value (a bool is not an
int, a float must be finite), value rules come from field metadata, cross-field rules from ``problems``,
and the help of every field of every section is found.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import typing
from dataclasses import dataclass, field

import pytest
import yaml

from nemo_prorl.algorithms.config import AlgorithmConfig, LossConfig
from nemo_prorl.config_schema import ConfigError, check, describe_type, field_help, load
from nemo_prorl.data.config import DataConfig
from nemo_prorl.policy.megatron.config import MegatronPolicyConfig
from nemo_prorl.rewards.config import RewardsConfig
from nemo_prorl.rollout.config import RolloutConfig
from nemo_prorl.trainer.config import ProRLConfig, ResetConfig, TrainerConfig, load_config


def _err(cls, raw, key=""):
    with pytest.raises(ConfigError) as info:
        load(cls, raw, key)
    return info.value


def _sections(cls=ProRLConfig, seen=None):
    """Every section class reachable from ``cls`` (itself included)."""
    seen = [] if seen is None else seen
    if cls in seen:
        return seen
    seen.append(cls)
    for tp in typing.get_type_hints(cls).values():
        if typing.get_origin(tp) is list:
            (tp,) = typing.get_args(tp)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            _sections(tp, seen)
    return seen


def test_unknown_key_names_the_dotted_key_and_the_close_matches():
    err = _err(RolloutConfig, {"temprature": 1.0}, "rollout")
    assert err.key == "rollout.temprature"
    assert err.message.startswith("unknown key; did you mean 'temperature'? known: attn_implementation, ")
    err = _err(AlgorithmConfig, {"loss": {"clip_hihg": 0.3}}, "algorithm")
    assert err.key == "algorithm.loss.clip_hihg"
    assert err.message.startswith("unknown key; did you mean 'clip_high'? known: agg, clip_high, clip_low,")
    err = _err(ProRLConfig, {"trainr": {}})
    assert err.key == "trainr"
    assert err.message.startswith("unknown key; did you mean 'trainer'? known: algorithm, checkpoint")
    # nothing close: the known keys only
    err = _err(ResetConfig, {"zzz": 1}, "reset")
    assert err.key == "reset.zzz" and "did you mean" not in err.message and "at_steps" in err.message
    assert str(err) == f"reset.zzz: {err.message}"


def test_wrong_type_names_key_expected_type_and_value():
    err = _err(TrainerConfig, {"max_steps": "10"}, "trainer")
    assert str(err) == "trainer.max_steps: expected int, got '10' (str)"
    err = _err(TrainerConfig, {"max_steps": True}, "trainer")
    assert str(err) == ("trainer.max_steps: expected int, got True (bool); a bool is not a number, "
                        "write the number")
    err = _err(LossConfig, {"clip_low": False}, "algorithm.loss")
    assert err.key == "algorithm.loss.clip_low" and "got False (bool)" in err.message
    assert str(_err(TrainerConfig, {"progress_bar": 1}, "trainer")) == \
        "trainer.progress_bar: expected bool, got 1 (int)"
    assert str(_err(RewardsConfig, {"worker_user": True}, "rewards")) == \
        "rewards.worker_user: expected str or int or null, got True (bool)"
    assert _err(RolloutConfig, {"stop": "</answer>"}, "rollout").message == \
        "expected list of str, got '</answer>' (str)"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_floats_must_be_finite(bad):
    assert _err(LossConfig, {"clip_high": bad}, "algorithm.loss").key == "algorithm.loss.clip_high"
    assert _err(DataConfig, {"mixture": {"math": bad}}, "data").key == "data.mixture.math"


def test_elements_and_mapping_values_are_named():
    assert _err(ResetConfig, {"at_steps": [3, "x"]}, "reset").key == "reset.at_steps[1]"
    assert _err(ResetConfig, {"at_steps": [3, 0]}, "reset").key == "reset.at_steps[1]"
    assert _err(ProRLConfig, {"phases": [{"steps": 2}, {"stepz": 2}]}).key == "phases[1].stepz"
    assert _err(ProRLConfig, {"phases": [{"steps": 2}, "run2"]}).key == "phases[1]"
    err = _err(RewardsConfig, {"domain_timeout_s": {"code": 0}}, "rewards")
    assert str(err) == "rewards.domain_timeout_s.code: must be > 0, got 0"
    assert _err(DataConfig, {"phase_mixtures": {"p": {"math": "x"}}}, "data").key == \
        "data.phase_mixtures.p.math"


def test_value_rules_from_metadata_with_close_matches_and_the_fix():
    err = _err(LossConfig, {"tis": "icepo"}, "algorithm.loss")
    assert str(err) == ("algorithm.loss.tis: unknown value 'icepo' (did you mean 'icepop'?); expected one "
                        "of: none, tis, icepop")
    assert str(_err(LossConfig, {"clip_low": 1.0}, "algorithm.loss")) == \
        "algorithm.loss.clip_low: must be >= 0 and < 1, got 1.0"
    err = _err(MegatronPolicyConfig, {"micro_batch_tokens": 1}, "policy")
    assert str(err).startswith("policy.micro_batch_tokens: must be >= 2, got 1; null (fixed micro_batch_size")
    err = _err(AlgorithmConfig, {"loss": {"name": "ppo2"}}, "algorithm")
    assert err.key == "algorithm.loss.name"
    assert "clipped" in err.message and "nemo_prorl.losses" in err.message


def test_cross_field_rules_and_checks_of_built_objects():
    err = _err(LossConfig, {"tis": "icepop"}, "algorithm.loss")
    assert str(err) == "algorithm.loss.tis_min: must be set when tis is 'icepop' (ProRL v2 uses 0.5)"
    cfg = AlgorithmConfig()
    cfg.loss.clip_low = True  # a built object is checked like a loaded one
    with pytest.raises(ConfigError, match=r"^algorithm\.loss\.clip_low: expected float, got True"):
        check(cfg, "algorithm")
    with pytest.raises(ConfigError, match=r"^policy\.use_distributed_optimizer: expected bool"):
        MegatronPolicyConfig(use_distributed_optimizer="yes")


def test_empty_sections_keep_defaults_and_a_section_must_be_a_mapping():
    assert load(ProRLConfig, {"rewards": None, "algorithm": {"kl": None}}).rewards == RewardsConfig()
    assert str(_err(ProRLConfig, {"trainer": 3})) == "trainer: expected mapping, got 3 (int)"
    assert _err(ProRLConfig, {"phases": {"name": "a"}}).key == "phases"


def test_loader_keeps_the_given_values_and_makes_tuples_lists():
    cfg = load(RolloutConfig, {"stop": ("a", "b"), "temperature": 1}, "rollout")
    assert cfg.stop == ["a", "b"] and cfg.temperature == 1 and type(cfg.temperature) is int
    assert load(DataConfig, {"train_files": "a.jsonl"}, "data").train_files == ["a.jsonl"]


def test_every_field_of_every_section_has_help():
    sections = _sections()
    assert {c.__name__ for c in sections} >= {
        "ProRLConfig", "MegatronPolicyConfig", "RolloutConfig", "DataConfig", "RewardsConfig",
        "AlgorithmConfig", "LossConfig", "RewardShapingConfig", "TrainerConfig", "PhaseConfig",
        "FinalEvalConfig"}
    missing = [f"{c.__name__}.{name}" for c in sections for name, text in field_help(c).items() if not text]
    assert missing == []


def test_help_sources_docstring_comment_and_metadata():
    @dataclass
    class Section:
        """A section.

        Attributes:
            a: first line
                continued.
            b: from the docstring.

        """

        a: int = 1
        #: a comment help
        #: on two lines.
        b: int = 2
        #: from the comment
        c: int = field(default=3, metadata={"help": "from metadata wins"})
        d: list[str] | None = None

    assert field_help(Section) == {"a": "first line continued.", "b": "from the docstring.",
                                   "c": "from metadata wins", "d": ""}
    assert describe_type(typing.get_type_hints(Section)["d"]) == "list of str or null"


def test_configs_cannot_name_code():
    """Values are data: a dotted path where a registered name belongs is refused, and nothing is imported."""
    for raw, key in [({"algorithm": {"loss": {"name": "os.system"}}}, "algorithm.loss.name"),
                     ({"algorithm": {"advantage": {"estimator": "builtins.eval"}}},
                      "algorithm.advantage.estimator"),
                     ({"rollout": {"backend": "subprocess.run"}}, "rollout.backend"),
                     ({"trainer": {"callbacks": ["shutil.rmtree"]}}, "trainer.callbacks[0]")]:
        assert _err(ProRLConfig, raw).key == key
    with pytest.raises(ConfigError, match="unknown domain 'os.system'"):
        load(RewardsConfig, {"domains": {"os.system": {}}}, "rewards")
    with pytest.raises(ConfigError) as info:
        load_config(None, ["+algorithm.loss._target_=os.system"])
    assert info.value.key == "_target_"


def test_algorithms_import_nothing_else_of_the_package():
    code = ("import sys, json, nemo_prorl.algorithms; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('nemo_prorl'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    mods = json.loads(out.stdout)
    assert [m for m in mods if m not in ("nemo_prorl", "nemo_prorl.collectives")
            and not m.startswith("nemo_prorl.algorithms")] == []


def test_cfg_job_prints_the_composed_config_and_round_trips(tmp_path, capsys):
    from nemo_prorl.trainer.cli import main

    assert main(["--cfg", "job", "trainer.max_steps=3", "rewards.domains.math.fast_path=false"]) == 0
    text = capsys.readouterr().out
    printed = yaml.safe_load(text)
    assert [f.name for f in dataclasses.fields(ProRLConfig)] == list(printed)
    assert printed["trainer"]["max_steps"] == 3 and printed["trainer"]["progress_bar"] is True
    assert printed["rewards"]["domains"] == {"math": {"fast_path": False}}
    # the printed config is a complete recipe: loading it gives the same run config
    (tmp_path / "job.yaml").write_text(text)
    again = load_config("job", [], str(tmp_path))
    want = load_config(None, ["trainer.max_steps=3", "rewards.domains.math.fast_path=false"])
    assert dataclasses.asdict(again) == dataclasses.asdict(want)
    assert main(["--config-name", "demo", "--cfg", "job"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["trainer"]["max_steps"] == 1000


def test_cli_reports_a_misspelt_override_with_the_close_matches(capsys):
    from nemo_prorl.trainer.cli import main

    assert main(["--cfg", "job", "trainer.max_stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "invalid config: trainer.max_stepz: unknown key; did you mean 'max_steps'?" in err
