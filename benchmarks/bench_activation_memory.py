"""Activation memory per token per layer of MegatronPolicy.train_step, by ``policy.recompute`` (CPU).

Checks docs/scaling.md §3's arithmetic against what megatron-core actually keeps for backward, on
layers of the exact R1-Distill-Qwen-1.5B shape (hidden 1,536, SwiGLU 8,960, 12 heads / 2 KV heads of
128) with a small vocabulary, through the real engine (``MegatronPolicy.train_step``, local layer spec,
fp32 on CPU).

Method: every tensor autograd saves during the step's forward passes through a
``torch.autograd.graph.saved_tensors_hooks`` pack hook; parameters are skipped and tensors sharing a
storage are counted once. The count is read when the ``loss_fn`` is called (the forward is over, no
backward has run yet). Running the same step with 1 and 2 decoder layers and subtracting leaves one
layer's activations (embedding and log-prob head cancel). Two sequence lengths separate the part linear
in tokens from the local spec's ``s x s`` attention scores (``per_layer(S) = a*S + b*S^2``); Transformer
Engine's fused attention on GPU stores no ``s x s`` term, so ``a`` is what docs/scaling.md tabulates.
fp32 bytes are halved to give the bf16 figure of a GPU run.

Usage::

    .venv/bin/python benchmarks/bench_activation_memory.py --out benchmarks/results/activation_memory.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine_info, stamp  # noqa: E402

HIDDEN, FFN, HEADS, KV_HEADS = 1536, 8960, 12, 2
MODES = {
    "none": {},
    "selective_mlp": {"recompute": "selective"},
    "selective_core_attn_mlp": {"recompute": "selective", "recompute_modules": ["core_attn", "mlp"]},
    "full": {"recompute": "full"},
}
#: docs/scaling.md §3 (bf16, flash attention): bytes per token per layer for the 1.5B shape
DOC = {"none": 91136, "selective_mlp": 19456, "full": 2 * HIDDEN}


def saved_bytes(policy, seq: int) -> int:
    """Bytes autograd holds for backward at the end of one train step's forward (1 row of ``seq`` tokens)."""
    from nemo_prorl.policy.interface import TokenBatch

    params = {p.untyped_storage().data_ptr() for p in policy.model.parameters()}
    seen: dict[int, int] = {}
    at_loss: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in seen:
            seen[ptr] = storage.nbytes()
        return t

    def loss_fn(lp, ent, micro, norm):
        at_loss.append(sum(seen.values()))
        m = micro["response_mask"].float()
        return -(lp * m).sum() / norm["num_tokens"], {}

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 320, (1, seq), generator=g)
    mask = torch.zeros(1, seq)
    mask[0, 1:] = 1
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        policy.train_step(TokenBatch(ids, mask), loss_fn)
    return at_loss[0]


def main() -> None:
    from nemo_prorl.policy.megatron import parallel
    from nemo_prorl.policy.megatron.config import MegatronPolicyConfig
    from nemo_prorl.policy.megatron.engine import MegatronPolicy
    from nemo_prorl.policy.megatron.testing import make_tiny_hf_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", type=int, nargs=2, default=[128, 256])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    s1, s2 = args.seqs
    tmp = Path(tempfile.mkdtemp(prefix="actmem"))
    dirs = {
        n: make_tiny_hf_model(tmp / f"l{n}", "qwen2", seed=0, hidden_size=HIDDEN, num_layers=n,
                              num_heads=HEADS, num_kv_heads=KV_HEADS, intermediate_size=FFN)
        for n in (1, 2)
    }
    raw: dict[str, dict[str, int]] = {}
    for mode, kw in MODES.items():
        for layers, hf in dirs.items():
            policy = MegatronPolicy(hf, MegatronPolicyConfig(micro_batch_size=1, clip_grad=0.0, **kw))
            for seq in (s1, s2):
                raw.setdefault(mode, {})[f"layers{layers}_seq{seq}"] = saved_bytes(policy, seq)
            del policy
    results = {}
    for mode, r in raw.items():
        per_layer = {s: r[f"layers2_seq{s}"] - r[f"layers1_seq{s}"] for s in (s1, s2)}
        quad = (per_layer[s2] / s2 - per_layer[s1] / s1) / (s2 - s1)
        linear = per_layer[s1] / s1 - quad * s1
        results[mode] = {
            "fp32_bytes_per_layer": per_layer,
            "linear_fp32_bytes_per_token_layer": round(linear, 1),
            "quadratic_fp32_bytes_per_token2_layer": round(quad, 3),
            "bf16_bytes_per_token_layer": round(linear / 2, 1),
            "docs_scaling_md": DOC.get(mode),
        }
        print(f"{mode:26s} bf16 {linear / 2:10.1f} B/token/layer (docs: {DOC.get(mode)}), "
              f"s x s term {quad:.2f} fp32 B/token^2/layer")
    parallel.destroy_parallel()
    if args.out:
        payload = {"benchmark": "activation_memory", "time": stamp(), "machine": machine_info(),
                   "settings": {"hidden": HIDDEN, "ffn": FFN, "heads": HEADS, "kv_heads": KV_HEADS,
                                "seqs": [s1, s2], "dtype": "fp32", "spec": "local"},
                   "raw_saved_bytes": raw, "results": results}
        args.out.write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
