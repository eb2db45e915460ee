"""``python -m nemo_prorl.launch``: check the launch environment, or export it and run a command.

* ``python -m nemo_prorl.launch check`` prints this process's resolved layout as one JSON line and exits
  0, or prints the inconsistency and exits 2. Run it under ``srun`` before a long job to see that every
  task agrees on rank, world size and rendezvous (seconds, no GPU, no torch import).
* ``python -m nemo_prorl.launch exec -- CMD [ARGS...]`` resolves the layout, exports ``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``, and replaces
  itself with ``CMD`` (``os.execvp``), so the command sees torchrun-style variables under srun and
  receives the scheduler's signals directly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from nemo_prorl.launch.env import DistEnvError, resolve_dist_env, setup_distributed_env


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (``exec`` does not return on success)."""
    parser = argparse.ArgumentParser(prog="python -m nemo_prorl.launch", description=__doc__.splitlines()[0])
    parser.add_argument("--master-addr", default=None, help="rendezvous host override (default: derived)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="print the resolved layout as JSON")
    run = sub.add_parser("exec", help="export the layout and exec a command")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="the command (after --)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    try:
        if args.command == "check":
            env = resolve_dist_env(master_addr=args.master_addr)
            print(json.dumps(env.as_dict(), sort_keys=True), flush=True)
            return 0
        cmd = list(args.cmd)
        if cmd and cmd[0] == "--":
            cmd = cmd[1:]
        if not cmd:
            parser.error("exec needs a command, e.g. `exec -- nemo-prorl train ...`")
        setup_distributed_env(master_addr=args.master_addr)
    except DistEnvError as err:
        print(f"nemo_prorl.launch: {err}", file=sys.stderr, flush=True)
        return 2
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(cmd[0], cmd)
    except OSError as err:
        print(f"nemo_prorl.launch: cannot run {cmd[0]!r}: {err}", file=sys.stderr, flush=True)
        return 127
    return 0  # pragma: no cover - execvp does not return


if __name__ == "__main__":
    sys.exit(main())
