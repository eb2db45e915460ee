"""``load_policy_weights`` (the reset to the best policy) under TP=2 and PP=2.

Usage (pytest drives it, see tests/distributed/test_best_reset_parallel.py)::

    python best_reset_parallel.py --mode tp1 --hf HF_DIR --work WORK     # 1 process: a TP=1 checkpoint
    torchrun --nproc_per_node 2 best_reset_parallel.py --mode tp --hf HF_DIR --work WORK
    torchrun --nproc_per_node 2 best_reset_parallel.py --mode pp --hf HF_DIR --work WORK

Each run trains a step, exports the full (TP/PP-gathered) HF weights of that "best" policy and saves a
checkpoint; trains a second step; then loads the checkpoint's policy weights into the reference only
(the policy keeps its step-2 weights), then into the policy too. Every comparison is bit for bit on the
gathered weights. The 2-process modes also load the TP=1 checkpoint (resharded on load). Prints
``BEST_OK <mode> rank=R``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

ROWS, LENGTH, VOCAB = 8, 16, 320


def _batch(seed: int):
    from nemo_prorl.policy.interface import TokenBatch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (ROWS, LENGTH), generator=g)
    mask = torch.zeros(ROWS, LENGTH)
    mask[:, 6:] = 1
    return TokenBatch(ids, mask, extras={"advantages": torch.randn(ROWS, generator=g)})


def _loss(lp, ent, micro, norm):
    m = micro["response_mask"].float()
    return -(lp * m * micro["advantages"][:, None]).sum() / norm["num_tokens"], {}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def main() -> None:
    from safetensors.torch import load_file, save_file

    from nemo_prorl.policy.megatron import convert, parallel
    from nemo_prorl.policy.megatron.config import MegatronPolicyConfig
    from nemo_prorl.policy.megatron.engine import MegatronPolicy

    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", required=True, choices=["tp1", "tp", "pp"])
    ap.add_argument("--hf", required=True)
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    work, mode = Path(args.work), args.mode
    cfg = MegatronPolicyConfig(tensor_model_parallel_size=2 if mode == "tp" else 1,
                               pipeline_model_parallel_size=2 if mode == "pp" else 1,
                               micro_batch_size=2, lr=1e-3)
    policy = MegatronPolicy(args.hf, cfg)
    rank = parallel.global_rank()

    def ref() -> dict[str, torch.Tensor]:
        return convert.export_hf_state_dict(policy.ref_model, policy.hf_config)

    policy.train_step(_batch(1), _loss)
    best = policy.export_hf_state_dict()
    ckpt = policy.save_checkpoint(work / f"ckpt_{mode}", {"step": 1})
    policy.train_step(_batch(2), _loss)
    moved = policy.export_hf_state_dict()
    assert not _equal(moved, best) and not _equal(ref(), best)
    if mode == "tp1":
        save_file({k: v.contiguous() for k, v in best.items()}, str(work / "best_tp1.safetensors"))
        print(f"BEST_OK {mode} rank={rank}")
        parallel.destroy_parallel()
        return

    policy.load_policy_weights(ckpt)  # reference only
    assert _equal(ref(), best), (mode, rank, "reference")
    assert _equal(policy.export_hf_state_dict(), moved), (mode, rank, "policy must not change")
    policy.train_step(_batch(3), _loss)
    policy.load_policy_weights(ckpt, into_policy=True)
    assert _equal(policy.export_hf_state_dict(), best) and _equal(ref(), best), (mode, rank, "policy_to_best")
    # a checkpoint written at TP=1 PP=1 loads into this layout (megatron reshards the ShardedTensors)
    best_tp1 = load_file(str(work / "best_tp1.safetensors"))
    policy.load_policy_weights(work / "ckpt_tp1", into_policy=True)
    assert _equal(policy.export_hf_state_dict(), best_tp1) and _equal(ref(), best_tp1), (mode, rank, "tp1")
    print(f"BEST_OK {mode} rank={rank}")
    parallel.destroy_parallel()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
