"""Every ``nemo-prorl`` command in README.md's code blocks runs.

The commands are extracted from the README itself (``bash`` code blocks, backslash continuations
joined, comments dropped, lines whose first word is ``nemo-prorl``). Each one must have a plan in
:data:`PLANS`, so a command added to the README without one fails
:func:`test_every_readme_command_has_a_plan`. A plan says how the command is checked:

* ``run``: for real, as written, with placeholders mapped to real files made here (``responses.jsonl``,
  ``samples.jsonl``, ``HF_DIR``, ``runs/demo`` ...) and tiny overrides appended where the README's
  values would take minutes (named in the plan: fewer steps, prompts, samples). Checked: exit code 0
  and what the command must produce.
* ``dry-run``: the training recipes that need a GPU cluster or a 1.5B model run with ``--dry-run``
  (every phase validated, the memory plan printed), which is what the README's own ``--dry-run`` line does.
* ``help``: only ``--help`` (the command exists and parses), for ``data import`` and ``data blend``, whose
  inputs are downloads (verl parquet, AIME/GPQA files) this test does not have.

The embedded default (``nemo-prorl train``, 1,000 steps) runs as 2 steps of the same config; a 2-step
run's output directory stands in for ``runs/demo`` (its ``hf`` export for ``runs/demo/hf``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DEMO = REPO / "nemo_prorl" / "assets" / "demo"

#: what every real training run here appends: 2 tiny steps, no validation / final eval / checkpoints
TINY_TRAIN = ["trainer.max_steps=2", "trainer.prompts_per_step=4", "trainer.mini_batch_prompts=2",
              "rollout.n=4", "trainer.val_interval=0", "reset.on_val_plateau=false",
              "final_eval.enabled=false", "checkpoint.interval=0", "trainer.progress_bar=false"]


def readme_commands(text: str) -> list[str]:
    """The ``nemo-prorl ...`` command lines of the README's bash code blocks, continuations joined."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "nemo-prorl":
                out.append(shlex.join(words))
    return out


#: README command (as extracted) -> (how, argument rewrites, extra arguments)
PLANS: dict[str, tuple[str, dict[str, str], list[str]]] = {
    "nemo-prorl train": ("run", {}, [*TINY_TRAIN, "run_dir=runs/default"]),  # not the fixture's runs/demo
    "nemo-prorl train trainer.max_steps=20 'reset.at_steps=[10]' run_dir=runs/short":
        ("run", {"trainer.max_steps=20": "trainer.max_steps=2", "reset.at_steps=[10]": "reset.at_steps=[1]"},
         [a for a in TINY_TRAIN if not a.startswith("trainer.max_steps")]),
    # the trainer end to end with the compiled decode step (compiles at the first rollout)
    "nemo-prorl train rollout.compile=true": ("run", {}, [*TINY_TRAIN, "run_dir=runs/compiled"]),
    "nemo-prorl train --config-name prorl_1p5b --dry-run --world-size 32": ("run", {}, []),
    "nemo-prorl train --config-name prorl_1p5b model=PATH/TO/DeepSeek-R1-Distill-Qwen-1.5B":
        ("dry-run", {}, ["--dry-run", "--world-size", "32"]),
    "nemo-prorl score --input responses.jsonl --output scored.jsonl": ("run", {}, ["--workers", "1"]),
    "nemo-prorl passk --input samples.jsonl --k 1,2,4,8,16": ("run", {}, []),
    "nemo-prorl eval --checkpoint base=nemo_prorl/assets/demo --checkpoint rl=runs/demo/hf --data "
    "nemo_prorl/assets/demo/val.jsonl --n 16 --template 'reasoning_gym={prompt}\\n' --out runs/eval":
        ("run", {"16": "2"}, ["--max-prompts", "3", "--k", "1,2", "--workers", "1"]),
    "nemo-prorl data check 'data/*.jsonl'": ("run", {}, []),
    "nemo-prorl data reasoning-gym --tasks chain_sum,graph_color --size 1000 --seed 1 --out rg.jsonl":
        ("run", {"1000": "10"}, []),
    # --size is per task: 385 x the preset's ~100 tasks takes many minutes; 2 per task here
    "nemo-prorl data reasoning-gym --preset prorl --size 385 --seed 1 --out rg.jsonl":
        ("run", {"385": "2"}, []),
    "nemo-prorl data import deepscaler/ --format verl --out math.jsonl": ("help", {}, []),
    "nemo-prorl data blend --val aime24.jsonl:30 --val gpqa.jsonl:198 --train data/prorl --seed 1 --out "
    "val.jsonl": ("help", {}, []),
    "nemo-prorl convert --from-hf HF_DIR --to-megatron MCORE_DIR": ("run", {"HF_DIR": str(DEMO)}, []),
    "nemo-prorl plot runs/demo": ("run", {}, []),
}


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(words: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # `nemo-prorl` is the console script of `nemo_prorl.cli:main`; run it from this checkout
    return subprocess.run([sys.executable, "-m", "nemo_prorl.cli", *words[1:]], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=900)


def test_every_readme_command_has_a_plan():
    found = readme_commands(README.read_text(encoding="utf-8"))
    assert len(found) >= 10, found
    missing = [c for c in found if c not in PLANS]
    stale = [c for c in PLANS if c not in found]
    assert not missing, f"README commands without a plan in {__file__}: {missing}"
    assert not stale, f"plans for commands no longer in the README: {stale}"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A working directory with the files the README's commands name, and a 2-step run as runs/demo."""
    cwd = tmp_path_factory.mktemp("readme")
    (cwd / "nemo_prorl").symlink_to(REPO / "nemo_prorl")  # the README's repo-relative paths
    (cwd / "responses.jsonl").write_text(
        json.dumps({"domain": "math", "response": "so \\boxed{4}", "answer": "4"}) + "\n"
        + json.dumps({"domain": "mcq", "response": "Answer: B", "answer": "C"}) + "\n")
    (cwd / "samples.jsonl").write_text("".join(
        json.dumps({"id": f"p{i}", "correct": [j < i for j in range(16)]}) + "\n" for i in range(4)))
    (cwd / "data").mkdir()
    for f in (REPO / "nemo_prorl" / "data" / "fixtures" / "train").glob("*.jsonl"):
        (cwd / "data" / f.name).write_text(f.read_text())
    res = _run(["nemo-prorl", "train", "run_dir=runs/demo", *TINY_TRAIN], cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (cwd / "runs" / "demo" / "hf" / "config.json").is_file()
    return cwd


def _expected_output(cmd: str, cwd: Path, res: subprocess.CompletedProcess) -> None:
    """What each real run must leave behind (beyond exit code 0)."""
    if cmd.startswith("nemo-prorl score"):
        rows = [json.loads(x) for x in (cwd / "scored.jsonl").read_text().splitlines()]
        assert [(r["status"], r["reward"]) for r in rows] == [("ok", 1.0), ("ok", 0.0)]
    elif cmd.startswith("nemo-prorl passk"):
        assert json.loads(res.stdout.strip().splitlines()[-1])["pass@1"] == pytest.approx(6 / 64)
    elif cmd.startswith("nemo-prorl eval"):
        results = json.loads((cwd / "runs" / "eval" / "results.json").read_text())["results"]
        assert set(results) == {"base", "rl"}
    elif cmd.startswith("nemo-prorl data reasoning-gym"):
        assert (cwd / "rg.jsonl").read_text().count("\n") >= 10
    elif cmd.startswith("nemo-prorl convert"):
        assert any((cwd / "MCORE_DIR").iterdir())
    elif cmd.startswith("nemo-prorl plot"):
        assert list((cwd / "runs" / "demo" / "plots").glob("*.png"))
    elif "--dry-run" in cmd:
        assert "run8_16k" in res.stdout + res.stderr  # the last phase of the paper's recipe was planned


@pytest.mark.slow
@pytest.mark.parametrize("cmd", list(PLANS))
def test_readme_command_runs(cmd, work):
    how, rewrites, extra = PLANS[cmd]
    words = [rewrites.get(w, w) for w in shlex.split(cmd)]
    words = [w.replace("runs/demo/hf", str(work / "runs" / "demo" / "hf")) for w in words]
    if how == "help":
        cut = 3 if words[1] == "data" else 2
        res = _run([*words[:cut], "--help"], work)
        assert res.returncode == 0 and "usage:" in res.stdout, res.stderr[-2000:]
        return
    if "data/*.jsonl" in words:  # the shell expands the glob
        words = [*words[:-1], *sorted(str(p) for p in (work / "data").glob("*.jsonl"))]
    res = _run([*words, *extra], work)
    assert res.returncode == 0, f"{shlex.join(words + extra)}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    _expected_output(cmd, work, res)
