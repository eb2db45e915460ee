"""Stand-in for `nemo-prorl` in the sbatch-script test: records what it was given, then "trains".

With FAKE_TRAIN_UNTIL_SIGNAL=1 it loops until a preemption signal, then writes a "saved" record, as the
trainer does before the job is requeued.
"""

import json
import os
import sys
import time

from nemo_prorl.launch import PreemptionHandler, resolve_dist_env


def main() -> int:
    args = sys.argv[1:]
    run_dir = next(a.split("=", 1)[1] for a in args if a.startswith("run_dir="))
    env = resolve_dist_env()
    record = {
        "args": args,
        "dist_env": env.as_dict(),
        "exported": {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                     "MASTER_PORT")},
    }
    with PreemptionHandler() as handler:
        with open(os.path.join(run_dir, f"train-rank{env.rank}.json"), "w") as f:
            json.dump(record, f)
        if os.environ.get("FAKE_TRAIN_UNTIL_SIGNAL") == "1":
            deadline = time.monotonic() + 60
            while not handler.requested and time.monotonic() < deadline:
                time.sleep(0.01)
            with open(os.path.join(run_dir, f"saved-rank{env.rank}.json"), "w") as f:
                json.dump({"signal": handler.signal_name}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
