"""Child process for the preemption test: train "steps" until a signal, then save and exit 0.

usage: python preempt_child.py OUT_DIR SIGNAL[,SIGNAL...]
"""

import json
import os
import sys
import time

from nemo_prorl.launch import PreemptionHandler


def main() -> int:
    out_dir, signals = sys.argv[1], sys.argv[2].split(",")
    step = 0
    with PreemptionHandler(signals) as handler:
        with open(os.path.join(out_dir, "ready"), "w") as f:
            f.write(str(os.getpid()))
        deadline = time.monotonic() + 60
        while not handler.requested:
            if time.monotonic() > deadline:
                return 3
            time.sleep(0.01)  # one "training step"
            step += 1
        # the "checkpoint": written to a temporary name, then renamed, as the trainer does
        tmp = os.path.join(out_dir, "ckpt.json.tmp")
        with open(tmp, "w") as f:
            json.dump({"signal": handler.signal_name, "steps": step, "count": handler.count}, f)
        os.replace(tmp, os.path.join(out_dir, "ckpt.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
