"""Rollout and policy backends resolve by name through their registries; a package adds one by entry point.

The registry mechanics are checked on a private :class:`BackendRegistry`; the built-in tables (``hf``,
``vllm``, ``megatron``) and the import-cost promise (naming or validating a backend imports no engine,
and ``nemo_prorl.trainer.trainer`` imports no megatron-core) in fresh interpreters. The plug-in package
is written here, installed by pip into a target directory (a real ``.dist-info`` with
``entry_points.txt``) and then picked by ``nemo-prorl train`` from the config alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nemo_prorl.backend_registry import BackendRegistry
from nemo_prorl.config_schema import ConfigError
from nemo_prorl.rollout.registry import (
    get_rollout_backend,
    register_rollout_backend,
    registered_rollout_backends,
    rollout_placement,
)
from nemo_prorl.trainer.config import ProRLConfig, build_config

ROOT = Path(__file__).resolve().parents[3]

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "prorl-backends"
version = "0.1.0"

[tool.setuptools]
packages = ["prorl_backends"]

[project.entry-points."nemo_prorl.policy_backends"]
counting = "prorl_backends:CountingPolicy"

[project.entry-points."nemo_prorl.rollout_backends"]
small_batch_hf = "prorl_backends:build_small_batch_hf"
"""

MODULE = '''\
"""The megatron engine counting its updates, and the hf engine decoding at most two sequences at once."""
import dataclasses

from nemo_prorl.policy.megatron.engine import MegatronPolicy
from nemo_prorl.rollout.hf_engine import build_hf_engine
from nemo_prorl.rollout.registry import register_rollout_backend


class CountingPolicy(MegatronPolicy):  # not registered here: the entry point's name is used
    def __init__(self, model_dir, config):
        super().__init__(model_dir, config)
        self.updates = 0
        print("counting policy built with policy.backend =", config.backend, flush=True)

    def train_step(self, *args, **kwargs):
        self.updates += 1
        print("counting policy update", self.updates, flush=True)
        return super().train_step(*args, **kwargs)


@register_rollout_backend("small_batch_hf", placement="rank0")  # registers itself, under the same name
def build_small_batch_hf(config, model_dir_or_state, tokenizer=None):
    engine = build_hf_engine(dataclasses.replace(config, max_batch_size=2), model_dir_or_state, tokenizer)
    print("small_batch_hf engine built, max_batch_size =", engine.max_batch_size, flush=True)
    return engine
'''


def _python(code: str, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([str(extra_path)] if extra_path else []))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=120)


# ----------------------------------------------------------------------------- the registry mechanics
def test_registry_register_meta_duplicates_and_unknown_names():
    reg = BackendRegistry("widget backend", "nemo_prorl.test_widgets_none", {})

    @reg.register("a", placement="every_rank")
    def build_a():
        return "a"

    assert reg.names() == ["a"]
    assert reg.get("a", "widget.backend") is build_a
    assert reg.meta("a", "widget.backend") == {"placement": "every_rank"}
    assert reg.register("a")(build_a) is build_a  # the same object again is fine
    with pytest.raises(ValueError, match="'a' is already registered by .*build_a"):
        reg.register("a")(lambda: "other")
    with pytest.raises(ValueError, match="non-empty string"):
        reg.register("")
    with pytest.raises(ConfigError) as err:
        reg.get("b", "widget.backend")
    assert err.value.key == "widget.backend"
    assert "unknown widget backend 'b'; registered: a" in err.value.message
    assert "'nemo_prorl.test_widgets_none' entry-point group" in err.value.message
    with pytest.raises(ConfigError, match="registered: a"):
        reg.check(3, "widget.backend")  # not a string


def test_builtin_is_imported_only_when_its_name_is_asked_for(tmp_path, monkeypatch):
    (tmp_path / "lazy_widget_mod.py").write_text(
        "from tests_registry_holder import REG\n\n@REG.register('lazy')\ndef build():\n    return 1\n")
    (tmp_path / "silent_widget_mod.py").write_text("X = 1\n")
    (tmp_path / "tests_registry_holder.py").write_text(
        "from nemo_prorl.backend_registry import BackendRegistry\n"
        "REG = BackendRegistry('widget backend', 'nemo_prorl.test_widgets_none',\n"
        "                      {'lazy': 'lazy_widget_mod', 'silent': 'silent_widget_mod'})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from tests_registry_holder import REG

    assert REG.names() == ["lazy", "silent"]
    REG.check("lazy", "widget.backend")
    assert "lazy_widget_mod" not in sys.modules  # naming and checking import nothing
    assert REG.get("lazy", "widget.backend")() == 1
    assert "lazy_widget_mod" in sys.modules
    with pytest.raises(ConfigError, match="its module 'silent_widget_mod' did not register it"):
        REG.get("silent", "widget.backend")


# ----------------------------------------------------------------------------------- the built-ins
def test_builtin_rollout_backends_and_placements():
    from nemo_prorl.rollout.hf_engine import build_hf_engine
    from nemo_prorl.rollout.vllm_engine import build_vllm_engine

    assert {"hf", "vllm"} <= set(registered_rollout_backends())
    assert get_rollout_backend("hf") is build_hf_engine
    assert get_rollout_backend("vllm") is build_vllm_engine
    assert rollout_placement("hf") == "rank0"
    assert rollout_placement("vllm") == "every_rank"
    with pytest.raises(ValueError, match="placement must be one of"):
        register_rollout_backend("x", placement="everywhere")


@pytest.mark.parametrize("section,key", [("rollout", "rollout.backend"), ("policy", "policy.backend")])
def test_unknown_backend_is_a_config_error_naming_key_and_names(section, key):
    with pytest.raises(ConfigError) as err:
        build_config({section: {"backend": "sglang"}}, require_model=False)
    assert err.value.key == key
    names = "hf, vllm" if section == "rollout" else "megatron"
    assert f"registered: {names}" in err.value.message


def test_default_policy_backend_is_megatron():
    cfg = ProRLConfig()
    assert cfg.policy.backend == "megatron"
    assert cfg.rollout.backend == "hf"


def test_trainer_module_imports_no_engine():
    """Importing the trainer, naming backends and validating configs import neither megatron nor vLLM."""
    run = _python("""
        import sys
        import nemo_prorl.trainer.trainer
        from nemo_prorl.policy.registry import registered_policy_backends
        from nemo_prorl.rollout.registry import registered_rollout_backends
        from nemo_prorl.policy.megatron.config import MegatronPolicyConfig
        from nemo_prorl.rollout.config import RolloutConfig
        assert registered_policy_backends() == ["megatron"], registered_policy_backends()
        assert registered_rollout_backends() == ["hf", "vllm"], registered_rollout_backends()
        RolloutConfig(backend="vllm").validate()
        MegatronPolicyConfig(backend="megatron")
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("megatron", "vllm", "transformer_engine")
                     or m in ("nemo_prorl.policy.megatron.engine", "nemo_prorl.rollout.vllm_engine"))
        print(bad)
    """)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "[]"


# ----------------------------------------------------------------------------------- a plug-in package
@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    (src / "prorl_backends").mkdir()
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "prorl_backends" / "__init__.py").write_text(MODULE)
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(src)], check=True, timeout=120)
    assert (target / "prorl_backends-0.1.0.dist-info" / "entry_points.txt").exists()
    return target


def test_plugin_names_are_listed_without_loading_the_plugin(plugin_dir):
    run = _python("""
        import sys
        from nemo_prorl.policy.megatron.config import MegatronPolicyConfig
        from nemo_prorl.rollout.config import RolloutConfig
        from nemo_prorl.rollout.registry import rollout_placement
        from nemo_prorl.trainer.config import build_config
        try:
            build_config({"policy": {"backend": "fsdp"}}, require_model=False)
        except ValueError as exc:
            print(exc)
        MegatronPolicyConfig(backend="counting")
        RolloutConfig(backend="small_batch_hf").validate()
        print("loaded:", "prorl_backends" in sys.modules)
        print("placement:", rollout_placement("small_batch_hf"), "loaded:", "prorl_backends" in sys.modules)
    """, plugin_dir)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert lines[0].startswith("policy.backend: unknown policy backend 'fsdp'; "
                               "registered: counting, megatron")
    assert lines[1:] == ["loaded: False", "placement: rank0 loaded: True"]


def test_plugin_backends_train_in_the_cli_run(plugin_dir, tmp_path):
    """``nemo-prorl train`` on the demo model with ``policy.backend`` and ``rollout.backend`` naming the
    plug-in's entries: the trainer builds both by name (1 step, ~20 s)."""
    run_dir = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), str(plugin_dir)]))
    run = subprocess.run([
        sys.executable, "-m", "nemo_prorl.cli", "train", "--config-name", "demo",
        "policy.backend=counting", "rollout.backend=small_batch_hf", "trainer.max_steps=1",
        "trainer.prompts_per_step=4", "trainer.mini_batch_prompts=2", "rollout.n=2", "trainer.val_interval=0",
        "trainer.val_at_start=false", "reset.on_val_plateau=false", "final_eval.enabled=false",
        "checkpoint.interval=0", "trainer.progress_bar=false", "logging.plots=false", f"run_dir={run_dir}",
    ], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "counting policy built with policy.backend = counting" in run.stdout
    assert "small_batch_hf engine built, max_batch_size = 2" in run.stdout
    assert "counting policy update 2" in run.stdout  # 2 mini-batches of one step, through the plug-in
    steps = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "loss" in r] == [1]
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["policy"]["backend"] == "counting" and saved["rollout"]["backend"] == "small_batch_hf"
