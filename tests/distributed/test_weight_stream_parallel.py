"""The rollout sync's weight stream at TP=2 and PP=2 under torchrun (2 gloo ranks), against the HF weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_prorl.policy.megatron.testing import make_tiny_hf_model

SCRIPT = Path(__file__).parent / "scripts" / "weight_stream_check.py"

pytestmark = pytest.mark.distributed


@pytest.mark.parametrize("arch,tied", [("qwen2", False), ("llama", True)])
def test_stream_tp2_and_pp2_bit_exact(tmp_path, arch, tied):
    hf = make_tiny_hf_model(tmp_path / "hf", arch=arch, tied=tied, seed=13, num_layers=4, num_kv_heads=2)
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(SCRIPT), str(hf), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    expected = {"equal": True, "complete": True, "unique": True, "layer_order": True}
    for rank_report in json.loads((out / "report.json").read_text()):
        assert rank_report == {"tp2_pp1": expected, "tp1_pp2": expected}
