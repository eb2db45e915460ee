"""Token-budget micro-batches under PP=2 and DP=2 compared with the single-process fixed-count engine.

Usage (pytest drives it, see tests/distributed/test_token_budget_parallel.py)::

    python token_budget_parallel.py --mode ref --hf HF_DIR --work WORK    # 1 process, 2 rows per micro-batch
    torchrun --nproc_per_node 2 token_budget_parallel.py --mode pp ...  # PP=2, budget 40, full recompute
    torchrun --nproc_per_node 2 token_budget_parallel.py --mode dp ...  # DP=2, 20-token budget, selective

``pp``: the micro-batches have varying rows and lengths, so megatron's 1F1B schedule exchanges each
activation's shape before it (``config.variable_seq_lengths``; ``p2p_communication.P2PCommunicator.
_communicate_shapes``). ``dp``: the two ranks' halves bin into different numbers of micro-batches (3 and
4), which megatron's no-pipelining schedule allows (the DP all-reduce runs once, in
``finalize_model_grads``). ``pp`` also turns on full recompute and ``dp`` selective recompute (``mlp``),
which must not change the result either. Each run: log-probs, one train step, exported weights;
asserted against ``ref`` with the tolerances of tests/distributed/scripts/engine_parallel.py; prints
``BUDGET_OK <mode>``.

``pp_packed`` / ``dp_packed`` / ``tp_packed``: the same with ``policy.sequence_packing=on`` (packed rows
through the block-diagonal mask on the local spec; TP=2 for the last, heads and vocab split): under PP
each packed micro-batch is one ``[pack_len, 1, H]`` activation whose length varies, so the schedule
exchanges shapes as for ``pp``; no padding is computed.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

ROWS, LENGTH, VOCAB = 8, 24, 320
ENDS = [24, 7, 15, 10, 24, 6, 19, 12]
TOL = {"lp": 2e-5, "loss": 2e-5, "grad_norm": 1e-4, "params": 2e-5}
BUDGET = {"ref": None, "pp": 40, "dp": 20, "pp_packed": 40, "dp_packed": 20, "tp_packed": 40}
RECOMPUTE = {"ref": "none", "pp": "full", "dp": "selective", "pp_packed": "full", "dp_packed": "selective",
             "tp_packed": "none"}


def _batch():
    from nemo_prorl.policy.interface import TokenBatch

    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, VOCAB, (ROWS, LENGTH), generator=g)
    mask = torch.zeros(ROWS, LENGTH)
    for r, end in enumerate(ENDS):
        mask[r, 3 + r % 3 : end] = 1
    return TokenBatch(ids, mask, extras={"advantages": torch.randn(ROWS, generator=g)})


def _loss(lp, ent, micro, norm):
    m = micro["response_mask"].float()
    pg = -(lp * m * micro["advantages"][:, None]).sum() / norm["num_tokens"]
    ent_term = -(ent * m).sum() / norm["num_tokens"]
    return pg + 0.01 * ent_term, {"entropy": -ent_term}


def main() -> None:
    from safetensors.torch import load_file, save_file

    from nemo_prorl.policy.megatron import parallel
    from nemo_prorl.policy.megatron.config import MegatronPolicyConfig
    from nemo_prorl.policy.megatron.engine import MegatronPolicy

    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", required=True, choices=sorted(BUDGET))
    ap.add_argument("--hf", required=True)
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    work, mode = Path(args.work), args.mode
    packed = mode.endswith("_packed")
    config = MegatronPolicyConfig(
        sequence_packing="on" if packed else "off",
        pipeline_model_parallel_size=2 if mode.startswith("pp") else 1,
        tensor_model_parallel_size=2 if mode.startswith("tp") else 1,
        micro_batch_size=2,
        micro_batch_tokens=BUDGET[mode],
        recompute=RECOMPUTE[mode],
        lr=1e-3,
        adam_eps=1e-4,
        clip_grad=1.0,
        use_distributed_optimizer=mode.startswith("dp"),
    )
    policy = MegatronPolicy(args.hf, config)
    rank = parallel.global_rank()
    batch = _batch()
    rows = slice(0, ROWS)
    if mode.startswith("dp"):
        rows = slice(rank * ROWS // 2, (rank + 1) * ROWS // 2)
        batch = batch.slice(rows.start, rows.stop)
    lp, ent = policy.logprobs(batch, with_entropy=True)
    metrics = policy.train_step(batch, _loss, with_entropy=True)
    params = policy.export_hf_state_dict()

    if mode == "ref":
        out = work / "ref"
        out.mkdir(parents=True, exist_ok=True)
        save_file({"lp": lp, "ent": ent}, str(out / "tensors.safetensors"))
        save_file({k: v.contiguous().float() for k, v in params.items()}, str(out / "params.safetensors"))
        (out / "metrics.json").write_text(json.dumps(metrics))
        print("BUDGET_REF_WRITTEN")
        parallel.destroy_parallel()
        return

    ref_t = load_file(str(work / "ref" / "tensors.safetensors"))
    ref_p = load_file(str(work / "ref" / "params.safetensors"))
    ref_m = json.loads((work / "ref" / "metrics.json").read_text())
    diffs = {name: float((value - ref_t[name][rows]).abs().max())
             for name, value in (("lp", lp), ("ent", ent))}
    assert max(diffs.values()) <= TOL["lp"], (mode, rank, diffs)
    loss_tol = TOL["loss"] * max(1.0, abs(ref_m["loss"]))
    assert abs(metrics["loss"] - ref_m["loss"]) <= loss_tol, (metrics, ref_m)
    assert abs(metrics["grad_norm"] - ref_m["grad_norm"]) <= TOL["grad_norm"] * ref_m["grad_norm"]
    assert metrics["num_tokens"] == ref_m["num_tokens"] and metrics["num_seqs"] == ref_m["num_seqs"]
    # fewer padded positions than the fixed-count reference (8 rows x 24), summed over DP ranks
    assert metrics["perf/padding_fraction"] < ref_m["perf/padding_fraction"], (metrics, ref_m)
    if packed:
        assert policy.packing == "mask" and metrics["perf/padding_fraction"] == 0.0, metrics
    diffs["params"] = max(float((params[k].float() - ref_p[k]).abs().max()) for k in params)
    assert diffs["params"] <= TOL["params"], (mode, rank, diffs)
    diffs["padding_fraction"] = metrics["perf/padding_fraction"]
    print(f"BUDGET_OK {mode} rank={rank} {json.dumps(diffs, sort_keys=True)}")
    parallel.destroy_parallel()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
