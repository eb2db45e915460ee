"""torchrun worker for tests/distributed/test_weight_stream_parallel.py (2 ranks, gloo).

``HF_DIR OUT_DIR``: at TP=2 and at PP=2 (buckets of 4 KiB, so every stage sends several), every rank
streams ``iter_hf_weights`` and compares each tensor with the HF weights it was built from, bit for bit,
and checks the stream's order is layer by layer. Writes OUT_DIR/report.json (one dict per rank).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def _check(hf_dir: Path, tp: int, pp: int) -> dict:
    from megatron.core import parallel_state
    from transformers import AutoConfig

    from nemo_prorl.policy.megatron import convert, parallel
    from nemo_prorl.policy.megatron.model import build_gpt_model

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel.init_parallel(tp=tp, pp=pp)
    cfg = AutoConfig.from_pretrained(hf_dir)
    model = build_gpt_model(cfg, parallel_output=False)
    convert.load_hf_weights(model, hf_dir, cfg)
    original = convert.read_hf_state_dict(hf_dir)
    if cfg.tie_word_embeddings:
        original.pop("lm_head.weight", None)
    names, equal = [], True
    for name, tensor in convert.iter_hf_weights(model, cfg, bucket_bytes=4096):
        names.append(name)
        equal = equal and torch.equal(tensor.cpu(), original[name])
    layers = [int(n.split(".")[2]) for n in names if n.startswith("model.layers.")]
    return {"equal": bool(equal), "complete": sorted(names) == sorted(original), "unique": len(set(names)) ==
            len(names), "layer_order": layers == sorted(layers)}


def main() -> int:
    hf_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    from nemo_prorl.policy.megatron import parallel

    report = {f"tp{tp}_pp{pp}": _check(hf_dir, tp, pp) for tp, pp in ((2, 1), (1, 2))}
    gathered: list[dict | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, report)
    if dist.get_rank() == 0:
        (out_dir / "report.json").write_text(json.dumps(gathered))
    parallel.destroy_parallel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
