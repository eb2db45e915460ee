"""The package as a cluster user gets it: a built wheel, installed apart from the checkout.

A container does ``pip install .`` (not ``-e``), so the code runs from ``site-packages`` and nothing of
the source tree is beside it. Recipes (``nemo_prorl/conf``) and the demo's base model, tokenizer and
data (``nemo_prorl/assets/demo``) must therefore be package data, found relative to the installed
module. This test builds the wheel from a copy of the sources (so the checkout gets no ``build/``),
installs it with ``pip install --no-deps --target`` into a temporary folder (the shared virtual
environment stays untouched; its dependencies are reused), and from a working directory outside the
repository, with only that folder on ``PYTHONPATH``:

* runs the embedded default for two steps (``python -m nemo_prorl.cli train``) and checks the metrics,
* composes and validates the paper recipe ``prorl_1p5b`` with a model path relative to the cwd,
* checks that every import came from the installed copy, never from the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

# DeepSeek-R1-Distill-Qwen-1.5B's architecture (Qwen2 1.5B shapes); only config.json is read when a
# recipe is validated, so no weights are needed.
QWEN2_1P5B_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 1536,
    "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
    "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 131072,
    "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "hidden_act": "silu",
    "torch_dtype": "bfloat16",
}

TWO_STEPS = ["trainer.max_steps=2", "trainer.prompts_per_step=4", "trainer.mini_batch_prompts=2",
             "rollout.n=4", "trainer.val_interval=0", "final_eval.enabled=false", "checkpoint.interval=0",
             "trainer.progress_bar=false", "logging.plots=false", "logging.tensorboard=false",
             "reset.at_steps=[]", "reset.on_val_plateau=false"]


def _sources(dst: Path) -> Path:
    """Copy what a wheel build reads (the package, setup.py, pyproject.toml, README.md) to ``dst``."""
    dst.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dst / name)
    shutil.copytree(REPO / "nemo_prorl", dst / "nemo_prorl",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    return dst


def _env(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONDONTWRITEBYTECODE="1")
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"{cmd[:4]}... exited {proc.returncode}\n{tail}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources, installed into its own ``site`` folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = _sources(tmp / "src")
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir",
          "-q", "-w", str(dist), str(src)], cwd=tmp, env=dict(os.environ), timeout=300)
    wheels = sorted(dist.glob("nemo_prorl-*.whl"))
    assert len(wheels) == 1, wheels
    site = tmp / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-cache-dir", "-q", "--target", str(site),
          str(wheels[0])], cwd=tmp, env=dict(os.environ), timeout=300)
    shutil.rmtree(src)  # nothing of the sources is left to fall back on
    return site


def test_wheel_ships_the_recipes_and_demo_assets(installed):
    pkg = installed / "nemo_prorl"
    assert {p.name for p in (pkg / "conf").glob("*.yaml")} >= {"demo.yaml", "prorl_1p5b.yaml"}
    demo = pkg / "assets" / "demo"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "train.jsonl", "val.jsonl"):
        assert (demo / name).is_file() and (demo / name).stat().st_size > 0, name
    # byte-identical to the checkout's copies
    shipped = REPO / "nemo_prorl" / "assets" / "demo" / "model.safetensors"
    assert (demo / "model.safetensors").read_bytes() == shipped.read_bytes()


def test_installed_wheel_trains_the_embedded_default_for_two_steps(installed, tmp_path):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = _env(installed)
    where = _run([sys.executable, "-c", "import nemo_prorl, nemo_prorl.trainer.config as c; "
                  "print(nemo_prorl.__file__); print(c.CONF_DIR); print(c.ASSETS['demo'])"],
                 cwd=cwd, env=env, timeout=120).stdout.split()
    for path in where:
        assert Path(path).resolve().is_relative_to(installed.resolve()), (path, installed)
        assert not Path(path).resolve().is_relative_to(REPO), path

    run = cwd / "run"
    proc = _run([sys.executable, "-m", "nemo_prorl.cli", "train", *TWO_STEPS, "run_dir=run"],
                cwd=cwd, env=env, timeout=600)
    assert "2 steps" in proc.stdout
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "event" not in r and "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert 0.0 <= r["reward/mean"] <= 1.0 and r["entropy"] > 0.0 and r["response_length/mean"] > 0
    # run_dir=run is relative to the working directory, the demo model to the package
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"] == "demo" and cfg["trainer"]["max_steps"] == 2
    assert all(Path(f).resolve().is_relative_to(installed.resolve()) for f in cfg["data"]["train_files"])
    assert not (REPO / "run").exists()


def test_installed_wheel_composes_the_paper_recipe(installed, tmp_path):
    cwd = tmp_path / "elsewhere"
    (cwd / "models" / "r1-1.5b").mkdir(parents=True)
    (cwd / "models" / "r1-1.5b" / "config.json").write_text(json.dumps(QWEN2_1P5B_CONFIG))
    # a user's own recipe directory (``--config-path``), relative to the working directory
    (cwd / "my_conf").mkdir()
    shipped = (installed / "nemo_prorl" / "conf" / "demo.yaml").read_text()
    (cwd / "my_conf" / "mine.yaml").write_text(shipped.replace("max_steps: 1000", "max_steps: 7"))
    code = (
        "import json, nemo_prorl\n"
        "from nemo_prorl.trainer.config import load_config\n"
        "cfg = load_config('prorl_1p5b', ['model=models/r1-1.5b', 'run_dir=runs/p'])\n"
        "mine = load_config('mine', [], 'my_conf')\n"
        "print(json.dumps({'module': nemo_prorl.__file__, 'model_dir': str(cfg.model_dir.resolve()),\n"
        "                  'phases': [p.name for p in cfg.phases], 'backend': cfg.rollout.backend,\n"
        "                  'train_files': cfg.data.train_files, 'dtype': cfg.policy.params_dtype,\n"
        "                  'mine_steps': mine.trainer.max_steps, 'mine_model': str(mine.model_dir)}))\n"
    )
    out = json.loads(_run([sys.executable, "-c", code], cwd=cwd, env=_env(installed), timeout=120)
                     .stdout.strip().splitlines()[-1])
    assert Path(out["module"]).resolve().is_relative_to(installed.resolve())
    # user-given relative paths stay relative to the working directory
    assert out["model_dir"] == str((cwd / "models" / "r1-1.5b").resolve())
    assert out["train_files"][0] == "data/prorl/math.jsonl"
    assert out["backend"] == "vllm" and out["dtype"] == "bf16"
    assert len(out["phases"]) == 8 and out["phases"][-1] == "run8_16k"
    assert out["mine_steps"] == 7  # the user's copy, not the shipped demo.yaml
    assert Path(out["mine_model"]).resolve().is_relative_to(installed.resolve())


def test_installed_wheel_dry_run_plans_the_paper_recipe(installed, tmp_path):
    """``train --dry-run`` from the wheel: validates every phase of prorl_1p5b, trains and writes nothing."""
    env = _env(installed)
    out = _run([sys.executable, "-m", "nemo_prorl.cli", "train", "--dry-run", "--config-name", "prorl_1p5b",
                "run_dir=run", "--world-size", "32"], cwd=tmp_path, env=env, timeout=300).stdout
    assert "checks: passed for 8 phase(s)" in out and "configured: policy.recompute = selective" in out
    assert not (tmp_path / "run").exists()
