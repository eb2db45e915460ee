"""Vocab-parallel log-probs over 2 gloo ranks equal the naive full-vocabulary computation.

Run by pytest, which launches this same file under torchrun; the ``__main__`` block is the worker.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CASES = [
    # (tokens, hidden, vocab sizes per rank, chunk, temperature, seed)
    (37, 8, (12, 11), 5, 1.0, 0),
    (64, 16, (50, 50), 64, 1.2, 1),
    (9, 4, (3, 30), 2, 0.6, 2),
]


def _worker() -> None:
    import torch
    import torch.distributed as dist

    from nemo_prorl.algorithms import naive_logprobs, vocab_parallel_logprobs

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2, world
    for t, h, sizes, chunk, temperature, seed in CASES:
        g = torch.Generator().manual_seed(seed)
        vocab = sum(sizes)
        hidden = torch.randn(t, h, generator=g)
        weight = torch.randn(vocab, h, generator=g) / h**0.5
        labels = torch.randint(0, vocab, (t,), generator=g)
        g_lp = torch.randn(t, generator=g)
        g_ent = torch.randn(t, generator=g)
        start = sum(sizes[:rank])
        shard = weight[start : start + sizes[rank]].clone()

        h_ref = hidden.clone().requires_grad_(True)
        w_ref = weight.clone().requires_grad_(True)
        lp_ref, ent_ref = naive_logprobs(h_ref, w_ref, labels, temperature=temperature)
        (lp_ref * g_lp + ent_ref * g_ent).sum().backward()

        h_par = hidden.clone().requires_grad_(True)
        w_par = shard.clone().requires_grad_(True)
        lp, ent = vocab_parallel_logprobs(
            h_par,
            w_par,
            labels,
            vocab_start=start,
            group=dist.group.WORLD,
            chunk_size=chunk,
            temperature=temperature,
            with_entropy=True,
        )
        (lp * g_lp + ent * g_ent).sum().backward()
        tol = {"atol": 1e-5, "rtol": 1e-5}
        torch.testing.assert_close(lp, lp_ref.detach(), **tol)
        torch.testing.assert_close(ent, ent_ref.detach(), **tol)
        torch.testing.assert_close(h_par.grad, h_ref.grad, **tol)
        torch.testing.assert_close(w_par.grad, w_ref.grad[start : start + sizes[rank]], **tol)

        # log-probs only: no entropy gradient path
        h2 = hidden.clone().requires_grad_(True)
        lp2, ent2 = vocab_parallel_logprobs(
            h2,
            shard,
            labels,
            vocab_start=start,
            group=dist.group.WORLD,
            chunk_size=chunk,
            temperature=temperature,
        )
        assert ent2 is None
        (lp2 * g_lp).sum().backward()
        h3 = hidden.clone().requires_grad_(True)
        (naive_logprobs(h3, weight, labels, temperature=temperature)[0] * g_lp).sum().backward()
        torch.testing.assert_close(h2.grad, h3.grad, **tol)
    # a label outside the global vocabulary is owned by no shard: clear error on every rank
    try:
        vocab_parallel_logprobs(
            torch.zeros(2, 4),
            torch.zeros(5, 4),
            torch.tensor([3, 10]),
            vocab_start=5 * rank,
            group=dist.group.WORLD,
        )
    except ValueError as exc:
        assert "token indices [1]" in str(exc), exc
    else:
        raise AssertionError("label 10 with a vocabulary of 10 was accepted")
    dist.barrier()
    print(f"rank {rank}: vocab-parallel logprobs OK", flush=True)
    dist.destroy_process_group()


@pytest.mark.distributed
def test_vocab_parallel_matches_naive_two_ranks():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "rank 0: vocab-parallel logprobs OK" in out and "rank 1: vocab-parallel logprobs OK" in out, out[
        -4000:
    ]


if __name__ == "__main__":
    _worker()
