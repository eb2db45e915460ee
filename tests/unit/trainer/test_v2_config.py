"""Start-up checks of the ProRL v2 ingredients against the rest of the run config."""

import pytest

from nemo_prorl.config_schema import ConfigError
from nemo_prorl.trainer.config import build_config, compose

BASE = ["algorithm.loss.tis=icepop", "algorithm.loss.tis_min=0.5"]


def _build(*overrides):
    return build_config(compose("prorl_v2_1p5b", list(overrides)), require_model=False)


def test_tis_needs_the_untruncated_engine_distribution():
    assert _build(*BASE).algorithm.loss.tis == "icepop"
    for bad in ("rollout.top_p=0.9", "rollout.top_k=20", "rollout.logprobs_mode=raw_logprobs"):
        with pytest.raises(ConfigError, match="^algorithm.loss.tis: icepop needs rollout.top_p=1"):
            _build(*BASE, bad)


def test_group_baseline_needs_two_rollouts():
    with pytest.raises(ConfigError, match="^rollout.n: reinforce_pp_baseline needs at least 2"):
        _build("rollout.n=1")
