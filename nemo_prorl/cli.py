"""The ``nemo-prorl`` console script.

Each subcommand lives in the package that owns it and is imported only when used, so
``nemo-prorl score`` never pays for megatron-core and ``nemo-prorl passk`` never imports torch.
Every handler takes the remaining argv and returns a process exit code.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("nemo_prorl.trainer.cli", "main", "run ProRL training (Hydra config + key=value overrides)"),
    "score": ("nemo_prorl.rewards.cli", "main", "score model responses offline (JSONL in, JSONL out)"),
    "data": ("nemo_prorl.data.cli", "main", "check data files, generate reasoning-gym rows"),
    "eval": ("nemo_prorl.eval.cli", "eval_main", "sample + score checkpoints, pass@k curves"),
    "passk": ("nemo_prorl.eval.cli", "passk_main", "pass@k from per-sample correctness"),
    "convert": ("nemo_prorl.policy.megatron.convert_cli", "main", "convert HF <-> Megatron checkpoints"),
    "plot": ("nemo_prorl.trainer.plotting", "main", "plot a run directory's metrics as PNGs"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: nemo-prorl COMMAND [args...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "`nemo-prorl COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand; returns its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"nemo-prorl: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name, _ = COMMANDS[name]
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
