"""A minimal stand-in for `srun` (Slurm is not installed here) used to run the example sbatch scripts.

It reads the allocation from SLURM_NNODES / SLURM_NTASKS_PER_NODE, starts one process per task with
the per-task variables srun sets (block distribution), writes each task's output to the `--output`
pattern (%x job name, %j job id, %t task id), forwards SIGUSR1/SIGTERM to every task, and exits with the
first non-zero task status. Every invocation is appended to $FAKE_SLURM_LOG.
"""

import os
import signal
import subprocess
import sys


def main() -> int:
    argv = sys.argv[1:]
    opts = []
    while argv and argv[0].startswith("-"):
        opts.append(argv.pop(0))
    cmd = argv
    output = None
    for opt in opts:
        if opt.startswith("--output="):
            output = opt.split("=", 1)[1]
    with open(os.environ["FAKE_SLURM_LOG"], "a") as f:
        f.write("srun " + " ".join(opts + cmd) + "\n")
    nnodes = int(os.environ["SLURM_NNODES"])
    per_node = int(os.environ["SLURM_NTASKS_PER_NODE"])
    procs = []
    for task in range(nnodes * per_node):
        env = dict(
            os.environ,
            SLURM_PROCID=str(task),
            SLURM_LOCALID=str(task % per_node),
            SLURM_NODEID=str(task // per_node),
            SLURM_NTASKS=str(nnodes * per_node),
            SLURM_TASKS_PER_NODE=f"{per_node}(x{nnodes})" if nnodes > 1 else str(per_node),
            SLURM_STEP_ID="0",
        )
        out = subprocess.DEVNULL
        if output:
            path = (output.replace("%x", os.environ.get("SLURM_JOB_NAME", "job"))
                    .replace("%j", os.environ["SLURM_JOB_ID"]).replace("%t", str(task)))
            out = open(path, "w")  # noqa: SIM115 - closed when the task ends
        procs.append((subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT), out))

    def forward(signum, frame):
        for p, _ in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGUSR1, forward)
    signal.signal(signal.SIGTERM, forward)
    rc = 0
    for p, out in procs:
        code = p.wait()
        if out is not subprocess.DEVNULL:
            out.close()
        if code and not rc:
            rc = code
    return rc


if __name__ == "__main__":
    sys.exit(main())
