"""The rewards-only install of docs/plugins-verl-nemo-rl.md works: no torch, no megatron-core.

The documented recipe is ``pip install --no-deps nemo_prorl`` then
``pip install math-verify mpmath langdetect reasoning-gym``. This test builds that environment offline: a
fresh virtual environment (``python -m venv --without-pip``: nothing of the shared environment is
visible) whose ``site-packages`` holds only the ``nemo_prorl`` package and the distributions pip would
install for those four names -- their dependency closure read from the installed metadata (``Requires-Dist``
with markers evaluated, extras off), each linked by the top-level entries of its ``RECORD``. In it, the
verl adapter scores math, mcq, ifeval and reasoning_gym rows through the reward pool, and torch,
megatron-core and transformers are neither imported nor importable. (The wheel's own contents are
checked by tests/integration/test_wheel_install.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[3]
RECIPE = ("math-verify", "mpmath", "langdetect", "reasoning-gym")


def dependency_closure(names: tuple[str, ...]) -> dict[str, object]:
    """Canonical name -> installed distribution for ``names`` and everything they require (no extras)."""
    todo, seen = list(names), {}
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        dist = distribution(name)
        seen[name] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


@pytest.fixture(scope="module")
def rewards_venv(tmp_path_factory) -> Path:
    try:
        dists = dependency_closure(RECIPE)
    except PackageNotFoundError as exc:
        pytest.skip(f"the recipe's packages are not all installed here: {exc}")
    venv = tmp_path_factory.mktemp("rewards_only") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = _site_packages(venv)
    for dist in dists.values():
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops - {"__pycache__"}:
            src = Path(dist.locate_file(top))
            if src.exists() and not (site / top).exists():
                (site / top).symlink_to(src)
    (site / "nemo_prorl").symlink_to(ROOT / "nemo_prorl")
    (venv / "closure.json").write_text(json.dumps(sorted(dists)))
    return venv


def test_dependency_closure_has_no_training_stack(rewards_venv):
    closure = set(json.loads((rewards_venv / "closure.json").read_text()))
    assert {"math-verify", "latex2sympy2-extended", "sympy", "mpmath", "langdetect"} <= closure
    assert not closure & {"torch", "megatron-core", "transformers", "vllm", "transformer-engine"}, closure


def test_rewards_only_venv_scores_rows_without_torch(rewards_venv):
    code = textwrap.dedent("""
        import importlib.util, json, sys
        from nemo_prorl.integrations.verl import compute_score_batch
        import nemo_prorl.rewards
        import reasoning_gym
        entry = reasoning_gym.create_dataset("basic_arithmetic", size=1, seed=3)[0]
        rows = [
            ("openai/gsm8k", "so the answer is \\\\boxed{72}", "72", None),
            ("math", "\\\\boxed{\\\\frac{1}{2}}", "0.5", None),
            ("math", "\\\\boxed{3}", "4", None),
            ("q", "\\\\boxed{blue}", "B", {"domain": "mcq", "options": ["red", "blue"]}),
            ("ifeval", "all lower case", [{"id": "change_case:english_lowercase", "kwargs": {}}],
             {"domain": "ifeval"}),
            ("rg", "<answer>" + str(entry["answer"]) + "</answer>",
             {"task": "basic_arithmetic", "entry": entry}, {"domain": "reasoning_gym"}),
        ]
        out = compute_score_batch(*map(list, zip(*rows)), rewards={"num_workers": 1})
        heavy = ("torch", "megatron", "transformers", "transformer_engine", "vllm")
        print(json.dumps({
            "scores": [o["score"] for o in out], "status": [o["status"] for o in out],
            "imported": sorted(m for m in sys.modules if m.split(".")[0] in heavy),
            "findable": [m for m in heavy if importlib.util.find_spec(m) is not None],
            "prefix": sys.prefix,
        }))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run([str(rewards_venv / "bin" / "python"), "-c", code], env=env, capture_output=True,
                          text=True, timeout=120, cwd=rewards_venv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["prefix"] == str(rewards_venv)
    assert res["findable"] == [] and res["imported"] == []
    assert res["status"] == ["ok"] * 6, res
    assert res["scores"] == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0], res
