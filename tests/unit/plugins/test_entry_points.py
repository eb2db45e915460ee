"""A third-party package plugs a reward, a policy loss and a trainer callback in by entry point alone.

The package is written here (``pyproject.toml`` + a module), built and installed by pip
(``pip install --no-deps --no-build-isolation --target DIR``: a real ``.dist-info`` with an
``entry_points.txt``), and everything runs in fresh interpreters with ``DIR`` on ``PYTHONPATH``, as after
``pip install`` of the package: nothing of nemo_prorl is told its name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "prorl-wordcount"
version = "0.1.0"

[tool.setuptools]
packages = ["prorl_wordcount"]

[project.entry-points."nemo_prorl.rewards"]
wordcount = "prorl_wordcount:WordCount"

[project.entry-points."nemo_prorl.losses"]
sign_pg = "prorl_wordcount:sign_pg_loss"

[project.entry-points."nemo_prorl.callbacks"]
reset_log = "prorl_wordcount:ResetLog"
"""

MODULE = '''\
"""Score 1 when the response has exactly ``words`` words."""
import torch

from nemo_prorl.rewards import Reward, RewardResult
from nemo_prorl.schema import Problem
from nemo_prorl.trainer.callbacks import Callback


class WordCount(Reward):
    def __init__(self, ignore_punctuation: bool = True):
        self.ignore_punctuation = ignore_punctuation

    def validate(self, row):
        w = row.get("words")
        return [] if isinstance(w, int) and w > 0 else [Problem("words", "expected a positive integer")]

    def score(self, response, row):
        words = response.split()
        if self.ignore_punctuation:
            words = [w for w in words if any(ch.isalnum() for ch in w)]
        return RewardResult(float(len(words) == row["words"]), "ok", {"words": len(words)})


def sign_pg_loss(logprobs, old_logprobs, advantages, mask, cfg):
    keep = mask.bool()
    lp = torch.where(keep, logprobs, torch.zeros_like(logprobs))
    adv = advantages if advantages.dim() == 2 else advantages[:, None].expand_as(lp)
    loss = torch.where(keep, -torch.sign(adv) * lp, torch.zeros_like(lp))
    return loss, {"sign_pg/mean_adv_sign": torch.sign(adv[keep]).mean().detach()}


class ResetLog(Callback):
    def on_reset(self, step, cause):
        print("reset", step, cause)
'''


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    (src / "prorl_wordcount").mkdir()
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "prorl_wordcount" / "__init__.py").write_text(MODULE)
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(src)], check=True, timeout=120)
    assert (target / "prorl_wordcount-0.1.0.dist-info" / "entry_points.txt").exists()
    return target


def _env(plugin: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(plugin)])
    return env


def _run(plugin: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=_env(plugin),
                          capture_output=True, text=True, timeout=120)


def test_plugin_registries_row_checks_mixture_config(plugin_dir):
    out = _run(plugin_dir, """
        import json
        import torch
        from nemo_prorl.algorithms.registry import get_policy_loss
        from nemo_prorl.data.config import check_weights
        from nemo_prorl.data.templates import build_messages
        from nemo_prorl.schema import check_training_row, known_domains
        from nemo_prorl.trainer.callbacks import build_callbacks
        from nemo_prorl.trainer.config import load_config

        row = {"id": 1, "domain": "wordcount", "prompt": "Say three words.", "words": 3}
        lp = torch.tensor([[-1.0, -2.0, float("-inf")], [-0.5, -0.25, -4.0]])
        mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
        loss, metrics = get_policy_loss("sign_pg")(lp, lp, torch.tensor([1.0, -2.0]), mask, None)
        from nemo_prorl.eval.sampling import scoring_row
        from nemo_prorl.rewards import RewardPool, RewardsConfig

        import tempfile
        from nemo_prorl.data.preflight import preflight

        with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
            f.write(json.dumps(row) + "\\n" + json.dumps({**row, "id": 2, "words": 0}) + "\\n")
        rep = preflight([f.name], check_rewards=True)
        srow = scoring_row(row, "one two three")
        with RewardPool(RewardsConfig(num_workers=1)) as pool:
            res = pool.score([srow, scoring_row(row, "one two")])
        cfg = load_config("demo", ["trainer.callbacks=[reset_log]", "data.mixture={math: 1, wordcount: 2}",
                                   "algorithm.loss.name=sign_pg"])
        print(json.dumps({
            "domains": list(known_domains()),
            "problems": [str(p) for p in check_training_row(row)],
            "bad": [str(p) for p in check_training_row({**row, "domain": "wordcnt"})],
            "weights": check_weights({"math": 1, "wordcount": 3}),
            "messages": build_messages(row),
            "loss": loss.tolist(),
            "loss_sign": float(metrics["sign_pg/mean_adv_sign"]),
            "loss_name": cfg.algorithm.loss.name,
            "callbacks": [type(c).__name__ for c in build_callbacks(cfg.trainer.callbacks)],
            "mixture": dict(cfg.data.mixture),
            "scoring_row": srow,
            "preflight": [dict(rep.read_by_domain), len(rep.rows), [i.field for i in rep.issues]],
            "trainer_scores": [(r.score, r.status) for r in res],
        }))
    """)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["domains"] == ["math", "code", "mcq", "reasoning_gym", "ifeval", "reward_model", "wordcount"]
    assert got["problems"] == []
    assert got["bad"] and "unknown domain 'wordcnt'" in got["bad"][0] and "wordcount" in got["bad"][0]
    assert got["weights"] == {"math": 1.0, "wordcount": 3.0}
    assert got["messages"] == [{"role": "user", "content": "Say three words."}]
    # -sign(A) * logprob per valid token, 0 at the masked (-inf) one; 2 of 5 valid tokens have A > 0
    assert got["loss"] == [[1.0, 2.0, 0.0], [-0.5, -0.25, -4.0]]
    assert got["loss_sign"] == pytest.approx(-0.2) and got["loss_name"] == "sign_pg"
    assert got["callbacks"] == ["ResetLog"]
    assert got["mixture"] == {"math": 1, "wordcount": 2}
    # the trainer's scoring row of a plug-in domain carries the row's own fields (its ground truth)
    assert got["scoring_row"] == {"domain": "wordcount", "prompt": "Say three words.", "words": 3,
                                  "response": "one two three"}
    assert got["trainer_scores"] == [[1.0, "ok"], [0.0, "ok"]]
    # `nemo-prorl data check` counts the plug-in domain and runs its reward's validate()
    assert got["preflight"] == [{"wordcount": 2}, 1, ["words"]]


def test_plugin_domain_scores_through_cli(plugin_dir, tmp_path):
    rows = [{"domain": "wordcount", "response": "one two three", "words": 3},
            {"domain": "wordcount", "response": "one two !", "words": 3},  # "!" is a word: option off
            {"domain": "wordcount", "response": "x", "words": "three"},  # the plug-in's validate() rejects
            {"domain": "math", "response": "\\boxed{4}", "answer": "4"}]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    conf = tmp_path / "rewards.json"
    conf.write_text(json.dumps({"domains": {"wordcount": {"ignore_punctuation": False}}}))
    run = subprocess.run([sys.executable, "-m", "nemo_prorl.cli", "score", "--input", str(src), "--output",
                          str(dst), "--workers", "1", "--no-progress", "--rewards-config", str(conf)],
                         env=_env(plugin_dir),
                         capture_output=True, text=True, timeout=120)
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    got = [(o["reward"], o["status"]) for o in out]
    assert got == [(1.0, "ok"), (1.0, "ok"), (0.0, "error"), (1.0, "ok")]
    assert out[0]["reward_info"] == {"words": 3}
    assert "'words'" in out[2]["error"] and "positive integer" in out[2]["error"]
    assert run.returncode == 1, run.stderr  # one row failed validation (the plug-in's own check)


def test_without_the_package_the_domain_is_unknown():
    from nemo_prorl.schema import check_scoring_row

    problems = check_scoring_row({"domain": "wordcount", "response": "a", "words": 1})
    assert [(p.field, p.reason) for p in problems] == [
        ("domain", "unknown domain 'wordcount' (known: math, code, mcq, reasoning_gym, ifeval, "
                   "reward_model)")]


def test_plugin_trains_in_the_cli_run(plugin_dir, tmp_path):
    """``nemo-prorl train`` on the demo model: a plug-in domain in the mixture, the plug-in loss, and the
    plug-in callback seeing the scheduled reset; the plug-in rows score without errors (2 steps, ~20 s)."""
    rows = tmp_path / "wordcount.jsonl"
    rows.write_text("".join(json.dumps({"id": i, "domain": "wordcount", "prompt": f"Say {w} words.",
                                        "words": w}) + "\n" for i, w in enumerate([1, 2, 3, 4])))
    run_dir = tmp_path / "run"
    run = subprocess.run([
        sys.executable, "-m", "nemo_prorl.cli", "train", "--config-name", "demo",
        f"data.train_files=[{rows},demo:train.jsonl]", "data.mixture={reasoning_gym: 1, wordcount: 1}",
        "algorithm.loss.name=sign_pg", "trainer.callbacks=[reset_log]", "trainer.max_steps=2",
        "reset.at_steps=[1]", "reset.on_val_plateau=false", "trainer.prompts_per_step=4",
        "trainer.mini_batch_prompts=2", "rollout.n=4", "trainer.val_interval=0", "final_eval.enabled=false",
        "checkpoint.interval=0", "trainer.progress_bar=false", "logging.plots=false", f"run_dir={run_dir}",
    ], env={**_env(plugin_dir), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "reset 1 scheduled (reset.at_steps contains 1)" in run.stdout  # printed by the plug-in callback
    steps = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all("sign_pg/mean_adv_sign" in r for r in steps)  # the plug-in loss's own metric
    assert all(r["reward/error_rate"] == 0.0 for r in steps)  # wordcount rows scored, none rejected
