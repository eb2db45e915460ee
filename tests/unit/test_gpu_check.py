"""benchmarks/gpu/gpu_check.py on CPU: its pure parts, its isolation of failures, and a --cpu-smoke run.

The GPU-only checks (bf16 engine, 1.5B step time, 16k log-prob head) are skipped here and recorded as
such; the reset, checkpoint and process-group checks run on gloo exactly as they do on NCCL.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc_mod():
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_flops_per_token_of_the_1p5b_shapes(gc_mod):
    """Hand count for Qwen2-1.5B at 4,096 tokens per sequence.

    kv = 2 heads x 128 = 256; per layer: q,o 2*1536^2 = 4,718,592; k,v 2*1536*256 = 786,432; qkv bias
    1536+512 = 2,048; MLP 3*1536*8960 = 41,287,680; norms 2*1536 = 3,072 -> 46,797,824; x 28 layers =
    1,310,339,072; head 151,936*1536 = 233,373,696. 6 x (sum) = 9,262,276,608; attention 6*28*1536*4096 =
    1,056,964,608; total 10,319,241,216 FLOPs per token.
    """
    cfg = types.SimpleNamespace(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                num_attention_heads=12, num_key_value_heads=2, vocab_size=151936)
    assert gc_mod.flops_per_token(cfg, 4096) == 10_319_241_216


def test_peak_tflops_by_device_name(gc_mod):
    assert gc_mod.peak_tflops("NVIDIA H100 80GB HBM3", None) == 989.0
    assert gc_mod.peak_tflops("NVIDIA H100 PCIe", None) == 756.0
    assert gc_mod.peak_tflops("NVIDIA H200", None) == 989.0
    assert gc_mod.peak_tflops("Some GPU", None) is None
    assert gc_mod.peak_tflops("NVIDIA H100 80GB HBM3", 500.0) == 500.0


class _GroupStepAdam(torch.optim.Optimizer):
    """Keeps Adam's step count per param group, as Transformer Engine's FusedAdam does.

    TE ``transformer_engine/pytorch/optimizers/fused_adam.py``, ``FusedAdam.step``: ``group["step"] += 1``
    once per group (no per-parameter ``state["step"]``); only the moments live in ``self.state[p]``.
    """

    def __init__(self, params):
        super().__init__(params, {"lr": 0.1})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            group["step"] = group.get("step", 0) + 1
            for p in group["params"]:
                st = self.state[p]
                st.setdefault("exp_avg", torch.zeros_like(p)).add_(p.grad)
                p.sub_(group["lr"] * st["exp_avg"])


def test_adam_step_counters_reads_both_layouts(gc_mod):
    w = torch.nn.Parameter(torch.ones(3))
    torch_adam = torch.optim.AdamW([w], lr=0.1)
    for _ in range(2):
        w.grad = torch.ones(3)
        torch_adam.step()
    v = torch.nn.Parameter(torch.ones(3))
    fused_like = _GroupStepAdam([v])
    for _ in range(3):
        v.grad = torch.ones(3)
        fused_like.step()
    # megatron's wrappers hold the torch optimizer as ``.optimizer``; a chain lists them
    chain = types.SimpleNamespace(chained_optimizers=[types.SimpleNamespace(optimizer=torch_adam),
                                                      types.SimpleNamespace(optimizer=fused_like)])
    assert gc_mod.adam_step_counters(chain) == {"per_param": [2.0], "per_group": [3.0]}


def test_a_failing_check_does_not_stop_the_others(gc_mod, tmp_path, monkeypatch):
    def boom(ctx, fig):
        fig["before_the_error"] = 1
        raise RuntimeError("NCCL said no")

    def fine(ctx, fig):
        fig["value"] = 2

    def skipped(ctx, fig):
        raise gc_mod.Skip("needs CUDA")

    monkeypatch.setattr(gc_mod, "CHECKS", [("a", boom), ("b", skipped), ("c", fine)])
    out = tmp_path / "r.json"
    rep = gc_mod.run_checks(["a", "b", "c"], {"args": types.SimpleNamespace(cpu_smoke=True)}, out)
    assert json.loads(out.read_text()) == json.loads(json.dumps(rep, default=str))
    by = {c["name"]: c for c in rep["checks"]}
    assert by["a"]["status"] == "fail" and "NCCL said no" in by["a"]["error"]
    assert by["a"]["figures"] == {"before_the_error": 1}
    assert by["b"]["status"] == "skipped" and by["b"]["reason"] == "needs CUDA"
    assert by["c"]["status"] == "pass" and by["c"]["figures"] == {"value": 2}
    assert rep["summary"] == {"pass": 1, "fail": 1, "skipped": 1}


def test_cpu_smoke_run_writes_a_complete_report(gc_mod, tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(out), "--tmp", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert rep["cpu_smoke"] is True
    names = [c["name"] for c in rep["checks"]]
    assert names == list(gc_mod.CPU_CHECKS)
    for c in rep["checks"]:
        assert set(c) >= {"name", "status", "figures", "seconds"} and c["seconds"] >= 0
        assert c["status"] in ("pass", "skipped"), c
    by = {c["name"]: c for c in rep["checks"]}
    for name in ("environment", "process_group", "optimizer_reset", "checkpoint_round_trip"):
        assert by[name]["status"] == "pass", by[name]
    assert by["process_group"]["figures"]["backend"] == "gloo"
    for variant in ("plain", "distributed"):
        reset = by["optimizer_reset"]["figures"][variant]
        assert reset["counters_before_reset"]["per_param"] == [3.0]
        assert set(reset["counters_after_reset"]["per_param"]) == {0.0}
        assert reset["bit_identical"] is True and reset["update_max_abs"] > 0
        assert reset["lr_reset"] == reset["lr_fresh"]  # the warm-up restarted with the reset
    assert "DistributedOptimizer" in str(by["optimizer_reset"]["figures"]["distributed"]["optimizer"])
    ck = by["checkpoint_round_trip"]["figures"]["fp32_plain"]
    assert ck["loss_resumed"] == pytest.approx(ck["loss_continued"], rel=1e-6)
    assert ck["counters_loaded"] == ck["counters_saved"]
    coll = by["collective_placement"]
    assert coll["status"] == "pass" or coll["reason"].startswith("not present")
    assert rep["summary"] == {"pass": sum(c["status"] == "pass" for c in rep["checks"]), "fail": 0,
                              "skipped": sum(c["status"] == "skipped" for c in rep["checks"])}
