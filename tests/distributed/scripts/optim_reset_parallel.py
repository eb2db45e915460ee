"""ProRL reset and exact resume under TP=2, PP=2 and DP=2 (distributed optimizer), 2 gloo ranks.

Usage (pytest drives it, see tests/distributed/test_optim_reset_parallel.py)::

    torchrun --nproc_per_node 2 optim_reset_parallel.py --check reset --layout tp --hf HF --work WORK
    torchrun --nproc_per_node 2 optim_reset_parallel.py --check resume --layout dp --adam fused ...

``--check reset``: train two steps, ``reset_reference`` + ``reset_optimizer``; the KL between policy
and reference is then exactly 0 on every rank; the exported weights go to an HF directory, from which a
second, freshly built policy (same layout, brand-new optimizer) is loaded; one update on each with the
same batch must give identical weights, loss and grad norm, bit for bit.

``--check resume``: train two steps, save, train two more (the uninterrupted run); a second policy
built from the initial weights loads the checkpoint and trains the same two steps: identical weights
and metrics, bit for bit.

``--adam fused`` builds TE FusedAdam's state layout
(:func:`nemo_prorl.policy.megatron.fused_adam_emulation.megatron_builds_fused_adam_emulation`).
Prints ``OPTIM_OK <check> <layout> <adam> rank=R`` on success.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
from pathlib import Path

import torch

ROWS, LENGTH, VOCAB = 8, 16, 320


def _batch(seed: int, layout: str):
    from nemo_prorl.policy.interface import TokenBatch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (ROWS, LENGTH), generator=g)
    mask = torch.zeros(ROWS, LENGTH)
    for r in range(ROWS):
        mask[r, 4 + r % 4 : LENGTH - (r % 3)] = 1
    batch = TokenBatch(ids, mask, extras={"advantages": torch.randn(ROWS, generator=g)})
    if layout != "dp":
        return batch
    rank = torch.distributed.get_rank()
    return batch.slice(rank * ROWS // 2, (rank + 1) * ROWS // 2)


def _loss(lp, ent, micro, norm):
    m = micro["response_mask"].float()
    return -(lp * m * micro["advantages"][:, None]).sum() / norm["num_tokens"], {}


def _config(layout: str):
    from nemo_prorl.policy.megatron.config import MegatronPolicyConfig

    return MegatronPolicyConfig(
        tensor_model_parallel_size=2 if layout == "tp" else 1,
        pipeline_model_parallel_size=2 if layout == "pp" else 1,
        micro_batch_size=2,
        lr=1e-3,
        clip_grad=1.0,
        use_distributed_optimizer=layout == "dp",
    )


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _counters(policy) -> set[float]:
    from nemo_prorl.policy.megatron.engine import _torch_optimizers

    out = set()
    for opt in _torch_optimizers(policy.optimizer):
        out |= {float(s["step"]) for s in opt.state.values() if "step" in s}
        out |= {float(g["step"]) for g in opt.param_groups if g.get("step") is not None}
    return out


def _write_hf(policy, src: Path, dst: Path) -> None:
    """An HF directory with ``src``'s config/tokenizer and the policy's current weights (collective)."""
    from safetensors.torch import save_file

    weights = policy.export_hf_state_dict()
    if torch.distributed.get_rank() == 0:
        shutil.copytree(src, dst)
        save_file({k: v.contiguous() for k, v in weights.items()}, str(dst / "model.safetensors"))
    torch.distributed.barrier()


def check_reset(args, policy, build) -> None:
    for i in range(2):
        policy.train_step(_batch(10 + i, args.layout), _loss)
    assert _counters(policy) == {2.0}, _counters(policy)
    policy.reset_reference()
    policy.reset_optimizer()
    assert _counters(policy) == {0.0}, _counters(policy)
    probe = _batch(20, args.layout)
    lp, _ = policy.logprobs(probe)
    ref, _ = policy.logprobs(probe, reference=True)
    kl = torch.exp(ref - lp) - (ref - lp) - 1
    assert torch.equal(lp, ref) and float(kl.abs().max()) == 0.0

    fresh_dir = Path(args.work) / f"fresh_{args.layout}_{args.adam}"
    _write_hf(policy, Path(args.hf), fresh_dir)
    fresh = build(fresh_dir)
    assert _same(fresh.export_hf_state_dict(), policy.export_hf_state_dict())
    step = _batch(21, args.layout)
    m_reset = policy.train_step(step, _loss)
    m_fresh = fresh.train_step(step, _loss)
    for key in ("loss", "grad_norm", "lr"):
        assert m_reset[key] == m_fresh[key], (key, m_reset[key], m_fresh[key])
    after_reset, after_fresh = policy.export_hf_state_dict(), fresh.export_hf_state_dict()
    assert _same(after_reset, after_fresh)
    assert _counters(policy) == _counters(fresh) == {1.0}


def check_resume(args, policy, build) -> None:
    for i in range(2):
        policy.train_step(_batch(30 + i, args.layout), _loss)
    ckpt = policy.save_checkpoint(Path(args.work) / f"ckpt_{args.layout}_{args.adam}", {"step": 2})
    cont = [policy.train_step(_batch(40 + i, args.layout), _loss) for i in range(2)]
    weights_cont = policy.export_hf_state_dict()

    resumed = build(Path(args.hf))
    assert resumed.load_checkpoint(ckpt) == {"step": 2}
    assert _counters(resumed) == {2.0}, _counters(resumed)
    again = [resumed.train_step(_batch(40 + i, args.layout), _loss) for i in range(2)]
    for a, b in zip(cont, again, strict=True):
        for key in ("loss", "grad_norm", "lr"):
            assert a[key] == b[key], (key, a[key], b[key])
    assert _same(resumed.export_hf_state_dict(), weights_cont)


def main() -> None:
    from nemo_prorl.policy.megatron import parallel
    from nemo_prorl.policy.megatron.engine import MegatronPolicy
    from nemo_prorl.policy.megatron.fused_adam_emulation import megatron_builds_fused_adam_emulation

    ap = argparse.ArgumentParser()
    ap.add_argument("--check", required=True, choices=["reset", "resume"])
    ap.add_argument("--layout", required=True, choices=["tp", "pp", "dp"])
    ap.add_argument("--adam", default="torch", choices=["torch", "fused"])
    ap.add_argument("--hf", required=True)
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)

    ctx = megatron_builds_fused_adam_emulation() if args.adam == "fused" else contextlib.nullcontext()
    with ctx:
        def build(hf_dir: Path) -> MegatronPolicy:
            return MegatronPolicy(hf_dir, _config(args.layout))

        policy = build(Path(args.hf))
        {"reset": check_reset, "resume": check_resume}[args.check](args, policy, build)
    print(f"OPTIM_OK {args.check} {args.layout} {args.adam} rank={parallel.global_rank()}", flush=True)
    parallel.destroy_parallel()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
