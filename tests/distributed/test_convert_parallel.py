"""TP=2 / PP=2 conversion and logits under torchrun (2 gloo ranks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nemo_prorl.policy.megatron.testing import make_tiny_hf_model

SCRIPT = Path(__file__).parent / "scripts" / "convert_check.py"
# TP=2 splits the row-parallel matmuls into two partial sums added by an all-reduce, so the last
# bits may differ from TP=1; measured max |diff| is ~1e-7 on logits of magnitude ~1.
ATOL = 1e-5

pytestmark = pytest.mark.distributed


def _torchrun(*args: str, timeout: int = 240) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--standalone", str(SCRIPT), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def _logits(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))["logits"]


@pytest.mark.parametrize("arch,tied", [("qwen2", False), ("llama", True)])
def test_tp2_pp2_logits_and_export_match_tp1(tmp_path, arch, tied):
    hf = make_tiny_hf_model(tmp_path / "hf", arch=arch, tied=tied, seed=11, num_layers=4, num_kv_heads=2)
    out = tmp_path / "out"
    out.mkdir()
    _torchrun("logits", str(hf), str(out))
    ref = _logits(out / "tp1.safetensors")
    torch.testing.assert_close(_logits(out / "tp2.safetensors"), ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(_logits(out / "pp2.safetensors"), ref, atol=ATOL, rtol=0)
    for rank_report in json.loads((out / "report.json").read_text()):
        assert rank_report == {"tp1_export_equal": True, "tp2_export_equal": True, "pp2_export_equal": True}


def test_checkpoint_written_at_tp2_loads_at_tp1(tmp_path):
    hf = make_tiny_hf_model(tmp_path / "hf", arch="qwen2", tied=True, seed=12, num_layers=2)
    out = tmp_path / "out"
    out.mkdir()
    _torchrun("ckpt", str(hf), str(out))
    torch.testing.assert_close(
        _logits(out / "loaded_tp1.safetensors"), _logits(out / "written_tp2.safetensors"), atol=ATOL, rtol=0
    )
    assert json.loads((out / "report.json").read_text()) == [{"tp1_export_equal": True}] * 2


def test_cli_under_torchrun_tp2_then_back_at_tp1(tmp_path):
    from nemo_prorl.policy.megatron import convert, convert_cli

    hf = make_tiny_hf_model(tmp_path / "hf", arch="llama", tied=False, seed=13, num_layers=2)
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "nemo_prorl.cli", "convert", "--from-hf", str(hf), "--to-megatron", str(tmp_path / "mc"),
           "--tp", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert json.loads((tmp_path / "mc" / convert_cli.META_FILE).read_text())["written_at_tp"] == 2
    assert convert_cli.main(["--from-megatron", str(tmp_path / "mc"), "--to-hf", str(tmp_path / "back")]) == 0
    original, back = convert.read_hf_state_dict(hf), convert.read_hf_state_dict(tmp_path / "back")
    assert set(original) == set(back) and all(torch.equal(original[k], back[k]) for k in original)
