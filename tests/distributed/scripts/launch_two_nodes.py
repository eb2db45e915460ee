"""One "node" of the simulated two-node Slurm job: rendezvous from Slurm variables, then gloo collectives.

usage: python launch_two_nodes.py OUT_DIR
Writes OUT_DIR/rank{R}.json with the resolved layout and the collective results.
"""

import datetime
import json
import os
import signal
import sys
import time

import torch
import torch.distributed as dist

from nemo_prorl.launch import PreemptionHandler, setup_distributed_env


def main() -> int:
    out_dir = sys.argv[1]
    env = setup_distributed_env()
    dist.init_process_group("gloo", init_method="env://", timeout=datetime.timedelta(seconds=60))
    assert dist.get_rank() == env.rank and dist.get_world_size() == env.world_size

    value = torch.tensor([float(env.rank + 1)])
    dist.all_reduce(value)

    with PreemptionHandler(["SIGUSR1"]) as handler:
        before = handler.requested_on_any_rank()
        dist.barrier()
        if env.rank == env.world_size - 1:
            os.kill(os.getpid(), signal.SIGUSR1)
            deadline = time.monotonic() + 10
            while not handler.requested and time.monotonic() < deadline:
                time.sleep(0.01)
        after = handler.requested_on_any_rank()
        name = handler.signal_name

    result = {
        "dist_env": env.as_dict(),
        "exported": {
            k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
        },
        "sum": value.item(),
        "preempt_before": before,
        "preempt_after": after,
        "signal_name": name,
    }
    with open(os.path.join(out_dir, f"rank{env.rank}.json"), "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
