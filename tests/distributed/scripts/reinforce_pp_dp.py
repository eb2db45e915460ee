"""Worker of tests/distributed/test_reinforce_pp_parallel.py: REINFORCE++-baseline at DP=2 vs DP=1.

Every rank builds the same doubled batch (seeded), computes the DP=1 advantages of the whole of it
locally, then its own half with the global statistics all-reduced over the world group, and checks
that its half equals its slice of the DP=1 result. Prints ``RPP_OK <rank>``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from nemo_prorl.algorithms import AdvantageConfig, compute_advantages


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(11)
    n, groups = 4, 6  # 6 groups of 4 samples: 3 whole groups per rank
    rewards = (torch.rand(n * groups, generator=g) > 0.5).to(torch.float32) + 0.1 * torch.rand(n * groups,
                                                                                                generator=g)
    gid = torch.arange(n * groups) // n
    ntok = torch.randint(1, 50, (n * groups,), generator=g)
    for name in ("reinforce_pp_baseline", "reinforce_pp"):
        cfg = AdvantageConfig(estimator=name)
        full = compute_advantages(rewards.double(), gid, cfg, num_tokens=ntok)  # DP=1, the doubled batch
        per = rewards.numel() // world
        lo, hi = rank * per, (rank + 1) * per
        mine = compute_advantages(rewards[lo:hi].double(), gid[lo:hi], cfg, num_tokens=ntok[lo:hi],
                                  dp_group=dist.group.WORLD)
        torch.testing.assert_close(mine, full[lo:hi], rtol=0, atol=1e-12)
        # without the reduction the halves are whitened on their own statistics: different values
        alone = compute_advantages(rewards[lo:hi].double(), gid[lo:hi], cfg, num_tokens=ntok[lo:hi])
        assert not torch.allclose(alone, full[lo:hi]), name
    print(f"RPP_OK {rank}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
