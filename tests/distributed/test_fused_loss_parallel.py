"""The fused head over 2 gloo ranks (vocabulary shards of unequal size) equals the same head at TP=1.

TP=2 vs TP=1 on the ProRL loss (token-mean and seq-mean-token-mean, KL k3, entropy, dual clip, TIS):
loss, log-probs, entropy, the full ``hidden`` gradient and each rank's weight-shard gradient. The
all-reduces (max, then the summed statistics, then the hidden gradient) go through
``nemo_prorl.collectives`` on gloo, standing in for NCCL's ``all_reduce`` under Megatron's TP group.

Run by pytest, which launches this same file under torchrun; the ``__main__`` block is the worker.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CASES = [
    # (rows, length, hidden, vocab sizes per rank, chunk, temperature, agg, seed)
    (4, 9, 8, (12, 11), 5, 1.0, "token-mean", 0),
    (3, 16, 16, (50, 50), 64, 1.2, "seq-mean-token-mean", 1),
    (5, 6, 4, (3, 30), 1, 0.6, "token-mean", 2),
]


def _worker() -> None:
    import torch
    import torch.distributed as dist

    from nemo_prorl.algorithms import AlgorithmConfig, prorl_loss
    from nemo_prorl.algorithms import logprobs as lp_mod
    from nemo_prorl.algorithms.logprobs import vocab_parallel_fused_loss
    from nemo_prorl.algorithms.policy_loss import loss_normalisers

    torch.set_num_threads(1)
    # narrow blocks: the logits walk merges its statistics across blocks on each shard before the shards
    # are rebased on the global max (with the default widths these vocabularies are one block)
    lp_mod._GEMM_BLOCK_ELEMS, lp_mod._BLOCK_ELEMS, lp_mod._MIN_BLOCK_COLUMNS = 16, 8, 2
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2, world
    for b, length, h, sizes, chunk, temperature, agg, seed in CASES:
        g = torch.Generator().manual_seed(seed)
        vocab = sum(sizes)
        hidden = torch.randn(b, length, h, generator=g)
        weight = torch.randn(vocab, h, generator=g) / h**0.5
        labels = torch.randint(0, vocab, (b, length), generator=g)
        mask = (torch.rand(b, length, generator=g) > 0.25).float()
        adv = torch.randn(b, generator=g)
        old = -3.0 + 0.4 * torch.randn(b, length, generator=g)
        ref = -3.0 + 0.4 * torch.randn(b, length, generator=g)
        roll = old + 0.3 * torch.randn(b, length, generator=g)
        cfg = AlgorithmConfig()
        cfg.loss.agg, cfg.loss.dual_clip, cfg.loss.tis = agg, 3.0, "tis"
        cfg.kl.coef, cfg.kl.estimator, cfg.entropy.coef = 0.1, "k3", 0.01
        norm = loss_normalisers(mask)

        def row_loss(r0, r1, lp, ent, cfg=cfg, adv=adv, old=old, ref=ref, roll=roll, mask=mask, norm=norm):
            return prorl_loss(lp, old[r0:r1], adv[r0:r1], mask[r0:r1], cfg, ref_logprobs=ref[r0:r1],
                              entropy=ent, num_tokens=norm["num_tokens"], num_seqs=norm["num_seqs"],
                              rollout_logprobs=roll[r0:r1]).loss

        start = sum(sizes[:rank])
        runs = {}
        for name, w, vstart, group in (("tp1", weight, 0, None),
                                       ("tp2", weight[start : start + sizes[rank]], start, dist.group.WORLD)):
            hh, ww = hidden.clone().requires_grad_(True), w.clone().requires_grad_(True)
            loss, lp, ent = vocab_parallel_fused_loss(hh, ww, labels, mask, row_loss, vocab_start=vstart,
                                                      group=group, chunk_size=chunk,
                                                      temperature=temperature, with_entropy=True)
            (loss * 0.5).backward()
            runs[name] = (loss.detach(), lp, ent, hh.grad, ww.grad)
        l1, lp1, ent1, gh1, gw1 = runs["tp1"]
        l2, lp2, ent2, gh2, gw2 = runs["tp2"]
        tol = {"atol": 1e-6, "rtol": 1e-5}
        assert abs(float(l1)) > 1e-3 and float(gh1.abs().max()) > 1e-4
        torch.testing.assert_close(l2, l1, **tol)
        torch.testing.assert_close(lp2, lp1, **tol)
        torch.testing.assert_close(ent2, ent1, **tol)
        torch.testing.assert_close(gh2, gh1, **tol)
        torch.testing.assert_close(gw2, gw1[start : start + sizes[rank]], **tol)
    # a label outside the global vocabulary is owned by no shard: clear error on every rank
    try:
        vocab_parallel_fused_loss(torch.zeros(1, 2, 4), torch.zeros(5, 4), torch.tensor([[3, 10]]),
                                  torch.ones(1, 2), lambda r0, r1, lp, ent: lp.sum(), vocab_start=5 * rank,
                                  group=dist.group.WORLD)
    except ValueError as exc:
        assert "not owned by exactly one vocabulary shard" in str(exc), exc
    else:
        raise AssertionError("label 10 with a vocabulary of 10 was accepted")
    dist.barrier()
    print(f"rank {rank}: vocab-parallel fused loss OK", flush=True)
    dist.destroy_process_group()


@pytest.mark.distributed
def test_vocab_parallel_fused_loss_tp2_equals_tp1():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for r in (0, 1):
        assert f"rank {r}: vocab-parallel fused loss OK" in out, out[-4000:]


if __name__ == "__main__":
    _worker()
