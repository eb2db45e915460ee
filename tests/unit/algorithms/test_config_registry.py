import sys
import textwrap

import pytest
import torch
from omegaconf import OmegaConf

import nemo_prorl.algorithms.registry as registry
from nemo_prorl.algorithms import (
    AlgorithmConfig,
    get_advantage_estimator,
    get_policy_loss,
    register_policy_loss,
    registered_policy_losses,
)
from nemo_prorl.config_schema import ConfigError, check, check_batch_divisible, load


def algorithm_config_from_dict(raw):
    return load(AlgorithmConfig, raw, "algorithm")


def _expect(key, mutate):
    cfg = AlgorithmConfig()
    mutate(cfg)
    with pytest.raises(ConfigError) as info:
        check(cfg, "algorithm")
    assert str(info.value).startswith(key + ":"), str(info.value)
    assert info.value.key == key
    assert isinstance(info.value, ValueError)


def test_defaults_are_prorl_and_valid():
    cfg = algorithm_config_from_dict({})
    assert (cfg.loss.clip_low, cfg.loss.clip_high, cfg.loss.agg, cfg.loss.dual_clip) == (
        0.2,
        0.4,
        "token-mean",
        None,
    )
    assert (cfg.kl.coef, cfg.kl.estimator, cfg.kl.where) == (1e-4, "k3", "loss")
    assert (cfg.kl.input_clamp, cfg.kl.output_clamp) == (20.0, 10.0)
    assert cfg.advantage.norm_std and not cfg.advantage.leave_one_out and cfg.advantage.eps == 1e-6
    assert cfg.entropy.coef == 0.0 and cfg.dynamic_sampling.enable and cfg.dynamic_sampling.max_rounds == 10


@pytest.mark.parametrize(
    "key,mutate",
    [
        ("algorithm.loss.clip_low", lambda c: setattr(c.loss, "clip_low", -0.1)),
        ("algorithm.loss.clip_low", lambda c: setattr(c.loss, "clip_low", 1.0)),
        ("algorithm.loss.clip_high", lambda c: setattr(c.loss, "clip_high", -0.1)),
        ("algorithm.loss.dual_clip", lambda c: setattr(c.loss, "dual_clip", 1.0)),
        ("algorithm.loss.agg", lambda c: setattr(c.loss, "agg", "mean")),
        ("algorithm.loss.name", lambda c: setattr(c.loss, "name", "nope")),
        ("algorithm.kl.estimator", lambda c: setattr(c.kl, "estimator", "k4")),
        ("algorithm.kl.where", lambda c: setattr(c.kl, "where", "both")),
        ("algorithm.kl.coef", lambda c: setattr(c.kl, "coef", -1e-4)),
        ("algorithm.kl.output_clamp", lambda c: setattr(c.kl, "output_clamp", 0.0)),
        ("algorithm.entropy.coef", lambda c: setattr(c.entropy, "coef", -0.01)),
        ("algorithm.advantage.estimator", lambda c: setattr(c.advantage, "estimator", "ppo")),
        ("algorithm.advantage.eps", lambda c: setattr(c.advantage, "eps", 0.0)),
        ("algorithm.dynamic_sampling.max_rounds", lambda c: setattr(c.dynamic_sampling, "max_rounds", 0)),
        ("algorithm.dynamic_sampling.oversample", lambda c: setattr(c.dynamic_sampling, "oversample", 0.5)),
        ("algorithm.dynamic_sampling.on_exhausted",
         lambda c: setattr(c.dynamic_sampling, "on_exhausted", "skip")),
        (
            "algorithm.reward_shaping.stop_properly_penalty_coef",
            lambda c: setattr(c.reward_shaping, "stop_properly_penalty_coef", -1.0),
        ),
        (
            "algorithm.reward_shaping.max_response_len",
            lambda c: (setattr(c.reward_shaping, "overlong_enable", True),
                       setattr(c.reward_shaping, "max_response_len", 4096)),
        ),
        ("algorithm.loss.clip_high", lambda c: setattr(c.loss, "clip_high", float("nan"))),
    ],
)
def test_validate_rejects_nonsense(key, mutate):
    _expect(key, mutate)


def test_check_batch_divisible():
    assert check_batch_divisible("trainer.mini_batch_size", 256, 64) == 4
    with pytest.raises(
        ConfigError, match=r"^trainer.mini_batch_size: batch size 10 is not divisible by mini"
    ):
        check_batch_divisible("trainer.mini_batch_size", 10, 4)
    with pytest.raises(ConfigError, match=r"^x: sizes must be >= 1"):
        check_batch_divisible("x", 10, 0)


def test_load_and_hydra_structured_config():
    cfg = algorithm_config_from_dict(
        {"loss": {"clip_high": 0.28, "dual_clip": 3.0}, "kl": {"estimator": "k2"}}
    )
    assert cfg.loss.clip_high == 0.28 and cfg.loss.dual_clip == 3.0 and cfg.kl.estimator == "k2"
    with pytest.raises(ConfigError, match=r"^algorithm.loss.clip: unknown key"):
        algorithm_config_from_dict({"loss": {"clip": 0.2}})
    with pytest.raises(ConfigError, match=r"^algorithm.optim: unknown key"):
        algorithm_config_from_dict({"optim": {}})
    with pytest.raises(ConfigError, match=r"^algorithm.loss.clip_low"):
        algorithm_config_from_dict({"loss": {"clip_low": 2.0}})

    node = OmegaConf.structured(AlgorithmConfig)
    merged = OmegaConf.merge(node, OmegaConf.from_dotlist(["loss.agg=seq-mean-token-mean", "kl.coef=0.001"]))
    obj = OmegaConf.to_object(merged)
    assert isinstance(obj, AlgorithmConfig)
    check(obj, "algorithm")
    assert obj.loss.agg == "seq-mean-token-mean" and obj.kl.coef == 0.001
    with pytest.raises(Exception, match="dual_clip"):
        OmegaConf.merge(node, OmegaConf.from_dotlist(["loss.dual_clip=abc"]))


def test_registry_lookup_errors_and_custom_loss(monkeypatch):
    registered_policy_losses()  # load built-ins and entry points before isolating the table
    monkeypatch.setattr(registry, "_POLICY_LOSSES", dict(registry._POLICY_LOSSES))
    with pytest.raises(KeyError, match="unknown policy loss 'nope'; registered: .*clipped"):
        get_policy_loss("nope")
    with pytest.raises(KeyError, match="unknown advantage estimator 'x'; registered: grpo"):
        get_advantage_estimator("x")

    @register_policy_loss("test_reinforce")
    def reinforce(logprobs, old_logprobs, advantages, mask, cfg):
        return -advantages[:, None] * logprobs * mask, {}

    cfg = AlgorithmConfig()
    cfg.loss.name = "test_reinforce"
    check(cfg, "algorithm")
    assert get_policy_loss("test_reinforce") is reinforce
    with pytest.raises(ValueError, match="already registered"):
        register_policy_loss("test_reinforce")(lambda *a: None)
    from nemo_prorl.algorithms import prorl_loss

    lp = torch.tensor([[-1.0, -2.0]])
    cfg.kl.coef = 0.0
    out = prorl_loss(lp, lp, torch.tensor([2.0]), torch.ones(1, 2), cfg)
    assert out.loss.item() == pytest.approx(3.0)


def test_entry_point_group_is_loaded(tmp_path, monkeypatch):
    pkg = tmp_path / "prorl_ext_mod.py"
    pkg.write_text(
        textwrap.dedent(
            """
            def sign_loss(logprobs, old_logprobs, advantages, mask, cfg):
                return -advantages.sign()[:, None] * logprobs * mask, {}
            """
        )
    )
    dist = tmp_path / "prorl_ext-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: prorl-ext\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[nemo_prorl.losses]\nsign = prorl_ext_mod:sign_loss\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_ENTRY_POINTS_LOADED", False)
    monkeypatch.setattr(registry, "_POLICY_LOSSES", dict(registry._POLICY_LOSSES))
    losses = registered_policy_losses()
    assert "sign" in losses and losses["sign"] is sys.modules["prorl_ext_mod"].sign_loss


def test_broken_entry_point_names_itself(tmp_path, monkeypatch):
    dist = tmp_path / "prorl_broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: prorl-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[nemo_prorl.losses]\nbroken = prorl_no_such_module_xyz:f\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_ENTRY_POINTS_LOADED", False)
    with pytest.raises(ImportError, match="cannot load entry point 'broken'"):
        get_policy_loss("clipped")
