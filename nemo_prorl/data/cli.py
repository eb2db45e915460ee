"""``nemo-prorl data check`` and ``nemo-prorl data reasoning-gym``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nemo_prorl.data.config import POLICIES

_USAGE = """usage: nemo-prorl data SUBCOMMAND [args...]

subcommands:
  check          validate data files (file:row:field report, skip/fail policy, long-prompt filter)
  reasoning-gym  generate reasoning-gym tasks offline into training rows (JSONL)
"""


def load_tokenizer(path: str) -> Any:
    """Load a Hugging Face tokenizer from a local directory (no download, no remote code)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)


def check_main(argv: list[str]) -> int:
    """``nemo-prorl data check FILE...``: print problems (stderr) and a JSON summary (stdout).

    Exit code: 0 when every row is well formed (or under ``skip`` when some rows were kept), 1 when
    problems were found under ``fail`` or no row survived, 2 for usage errors.
    """
    parser = argparse.ArgumentParser(
        prog="nemo-prorl data check", description="Validate training data files."
    )
    parser.add_argument("files", nargs="+", help="JSONL / JSON / parquet files or directories of shards")
    parser.add_argument("--policy", choices=POLICIES, default="skip",
                        help="skip: drop bad rows and exit 0; fail: exit 1 on any problem (default skip)")
    parser.add_argument("--max-prompt-tokens", type=int, default=None,
                        help="filter prompts longer than N tokens after the template (needs --tokenizer)")
    parser.add_argument("--tokenizer", default=None, help="local tokenizer directory (for token counts)")
    parser.add_argument("--templates-json", default=None,
                        help='per-domain template overrides as JSON, e.g. \'{"math": "{prompt}"}\'')
    parser.add_argument("--no-reward-checks", action="store_true",
                        help="skip the domain rewards' own ground-truth validation")
    parser.add_argument("--max-issues", type=int, default=200, help="print at most this many problems")
    parser.add_argument("--write-kept", default=None, metavar="OUT.jsonl",
                        help="also write the rows that passed to this JSONL file (atomically)")
    args = parser.parse_args(argv)

    from nemo_prorl.data.preflight import DataValidationError, preflight
    from nemo_prorl.data.templates import check_templates

    if args.max_prompt_tokens is not None and args.tokenizer is None:
        parser.error("--max-prompt-tokens needs --tokenizer DIR")
    if args.max_prompt_tokens is not None and args.max_prompt_tokens < 1:
        parser.error("--max-prompt-tokens must be >= 1")
    templates = None
    if args.templates_json:
        try:
            templates = json.loads(args.templates_json)
            if not isinstance(templates, dict):
                raise ValueError("expected a JSON object domain -> template")
            check_templates(templates, "--templates-json")
        except (json.JSONDecodeError, ValueError) as exc:
            parser.error(f"--templates-json: {exc}")
    tokenizer = None
    if args.tokenizer:
        try:
            tokenizer = load_tokenizer(args.tokenizer)
        except (OSError, ValueError) as exc:
            print(f"nemo-prorl data check: cannot load tokenizer {args.tokenizer}: {exc}", file=sys.stderr)
            return 2
    try:
        report = preflight(
            args.files, policy="skip", tokenizer=tokenizer, max_prompt_tokens=args.max_prompt_tokens,
            templates=templates, check_rewards=not args.no_reward_checks,
        )
    except FileNotFoundError as exc:
        print(f"nemo-prorl data check: {exc}", file=sys.stderr)
        return 2
    except DataValidationError as exc:  # pragma: no cover - policy is skip here
        report = exc.report
    report.policy = args.policy

    for issue in report.issues[: args.max_issues]:
        print(str(issue), file=sys.stderr)
    if len(report.issues) > args.max_issues:
        print(f"... and {len(report.issues) - args.max_issues} more problem(s)", file=sys.stderr)
    for path, row, rid, n in report.too_long:
        print(f"{path}:{row}:prompt: too long ({n} tokens > {args.max_prompt_tokens}); id {rid!r} filtered",
              file=sys.stderr)
    print(report.format_summary(), file=sys.stderr)
    print(json.dumps(report.summary(), ensure_ascii=False))

    if args.write_kept and (args.policy == "skip" or report.ok):
        from nemo_prorl.data.reasoning_gym_gen import write_jsonl_atomic

        write_jsonl_atomic(report.rows, args.write_kept)
    if args.policy == "fail" and not report.ok:
        return 1
    return 0 if report.kept else 1


def reasoning_gym_main(argv: list[str]) -> int:
    """``nemo-prorl data reasoning-gym --tasks a,b --size N --seed S --out FILE``."""
    parser = argparse.ArgumentParser(
        prog="nemo-prorl data reasoning-gym",
        description="Generate reasoning-gym items offline as training rows (JSONL, written atomically).",
    )
    parser.add_argument("--tasks", required=True, help="comma-separated reasoning-gym dataset names")
    parser.add_argument("--size", type=int, required=True, help="items per task")
    parser.add_argument("--seed", type=int, required=True, help="generation seed (ids are task-seed-index)")
    parser.add_argument("--out", required=True, help="output JSONL file")
    parser.add_argument("--config-json", default=None,
                        help='per-task config, e.g. \'{"countdown": {"min_numbers": 3}}\'')
    parser.add_argument("--no-verify", action="store_true", help="skip the score round-trip check")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from nemo_prorl.data.reasoning_gym_gen import GenerationError, generate_rows, write_jsonl_atomic

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        parser.error("--tasks: give at least one task name")
    config = None
    if args.config_json:
        try:
            config = json.loads(args.config_json)
        except json.JSONDecodeError as exc:
            parser.error(f"--config-json: not valid JSON ({exc.msg} at char {exc.pos})")
        if not isinstance(config, dict):
            parser.error("--config-json: expected an object task -> {config fields}")
    try:
        rows = generate_rows(tasks, args.size, args.seed, config, verify=not args.no_verify,
                             progress=not args.no_progress)
        n = write_jsonl_atomic(rows, args.out)
    except GenerationError as exc:
        print(f"nemo-prorl data reasoning-gym: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {n} rows to {args.out}", file=sys.stderr)
    return 0


SUBCOMMANDS = {"check": check_main, "reasoning-gym": reasoning_gym_main}


def main(argv: list[str]) -> int:
    """Dispatch ``nemo-prorl data SUBCOMMAND``."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_USAGE)
        return 0
    if argv[0] not in SUBCOMMANDS:
        print(f"nemo-prorl data: unknown subcommand {argv[0]!r}\n\n{_USAGE}", file=sys.stderr)
        return 2
    return SUBCOMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
