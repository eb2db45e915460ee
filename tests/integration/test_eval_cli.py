"""End-to-end `nemo-prorl eval` of a tiny checkpoint on CPU (HF and Megatron formats), and resume."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "nemo_prorl" / "assets" / "demo"


def _run(args, cwd):
    return subprocess.run([sys.executable, "-m", "nemo_prorl.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_eval_hf_and_megatron_checkpoints_and_resume(tmp_path):
    data = tmp_path / "val.jsonl"
    data.write_text("".join(open(DEMO / "val.jsonl").readlines()[:6]))
    mcore = tmp_path / "mcore"
    conv = _run(["convert", "--from-hf", str(DEMO), "--to-megatron", str(mcore)], tmp_path)
    assert conv.returncode == 0, conv.stderr[-2000:]
    out = tmp_path / "out"
    args = ["eval", "--checkpoint", f"base={DEMO}", "--checkpoint", f"mcore={mcore}", "--data", str(data),
            "--n", "4", "--k", "1,2,4", "--temperature", "1.0", "--top-p", "1.0", "--max-tokens", "12",
            "--template", "reasoning_gym={prompt}\\n", "--out", str(out), "--workers", "1"]
    res = _run(args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    base, conv_m = results["results"]["base"], results["results"]["mcore"]
    for m in (base, conv_m):
        assert 0.0 <= m["pass@1"] <= m["pass@2"] <= m["pass@4"] <= 1.0
        assert "pass@4/reasoning_gym" in m and "val/reward/mean" in m and "val/pass@4" in m
    # same weights (the Megatron round trip is exact), same seeds -> identical samples and numbers
    assert base["pass@1"] == conv_m["pass@1"] and base["pass@4"] == conv_m["pass@4"]
    lines = (out / "samples" / "base.jsonl").read_text().splitlines()
    assert len(lines) == 6 and all(len(json.loads(x)["rewards"]) == 4 for x in lines)
    assert (out / "passk.png").stat().st_size > 1000
    md = (out / "results.md").read_text()
    assert "| base | all |" in md and "| base | domain reasoning_gym |" in md and "| mcore | file val |" in md
    # resume: nothing left to sample, same results
    res2 = _run(args, tmp_path)
    assert res2.returncode == 0
    assert len((out / "samples" / "base.jsonl").read_text().splitlines()) == 6
    assert json.loads((out / "results.json").read_text())["results"] == results["results"]


def test_eval_rejects_bad_checkpoint(tmp_path):
    data = tmp_path / "val.jsonl"
    data.write_text(open(DEMO / "val.jsonl").readline())
    res = _run(["eval", "--checkpoint", f"x={tmp_path}", "--data", str(data), "--n", "2", "--out",
                str(tmp_path / "o"), "--workers", "1"], tmp_path)
    assert res.returncode == 2
    assert "neither an HF model directory" in res.stderr


def test_eval_defaults_fit_the_demo_model(tmp_path):
    """The README's quick-tour command without --max-tokens: the demo model has 128 positions, so the
    default response budget is derived from them (it used to be a fixed 1024 and the command failed)."""
    data = tmp_path / "val.jsonl"
    data.write_text("".join(open(DEMO / "val.jsonl").readlines()[:2]))
    res = _run(["eval", "--checkpoint", f"base={DEMO}", "--data", str(data), "--n", "2", "--k", "1,2",
                "--template", "reasoning_gym={prompt}\\n", "--out", str(tmp_path / "o"), "--workers", "1"],
               tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    said = res.stdout + res.stderr  # the note is part of the run's log (stdout)
    assert "base: --max-tokens not given: using 1" in said  # 128 minus a few prompt tokens
    assert "(the model's 128 positions minus the longest prompt" in said
    assert "pass@1" in json.dumps(json.loads((tmp_path / "o" / "results.json").read_text()))
