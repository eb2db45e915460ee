"""``nemo-prorl data check``, ``import``, ``blend`` and ``reasoning-gym``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

from nemo_prorl.data.config import POLICIES

_USAGE = """usage: nemo-prorl data SUBCOMMAND [args...]

subcommands:
  check          validate data files (file:row:field report, skip/fail policy, long-prompt filter)
  import         convert a release (verl parquet, datasets folder/cache, CSV/JSONL) into checked rows
  blend          build a validation blend: N rows per file, seeded, disjoint from the training rows
  reasoning-gym  generate reasoning-gym tasks offline into training rows (JSONL); --preset prorl
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
    parser.add_argument("--tasks", default=None, help="comma-separated reasoning-gym dataset names")
    parser.add_argument("--preset", choices=("prorl",), default=None,
                        help="prorl: every registered task but ProRL's OOD ones (acre, boxnet, "
                             "game_of_life_halting) and composite")
    parser.add_argument("--exclude", default="", help="comma-separated tasks to drop from --preset")
    parser.add_argument("--size", type=int, required=True, help="items per task")
    parser.add_argument("--seed", type=int, required=True, help="generation seed (ids are task-seed-index)")
    parser.add_argument("--out", required=True, help="output JSONL file")
    parser.add_argument("--config-json", default=None,
                        help='per-task config, e.g. \'{"countdown": {"min_numbers": 3}}\'')
    parser.add_argument("--no-verify", action="store_true", help="skip the score round-trip check")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from nemo_prorl.data.reasoning_gym_gen import GenerationError, generate_rows, write_jsonl_atomic

    if (args.tasks is None) == (args.preset is None):
        parser.error("give exactly one of --tasks and --preset")
    if args.preset:
        from nemo_prorl.data.blend import PRESETS
        from nemo_prorl.data.reasoning_gym_gen import known_tasks

        drop = {t.strip() for t in args.exclude.split(",") if t.strip()}
        tasks = [t for t in PRESETS[args.preset](known_tasks()) if t not in drop]
    else:
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


def import_main(argv: list[str]) -> int:
    """``nemo-prorl data import SOURCE --format F --out FILE``: convert, validate, write the kept rows.

    Problems go to stderr as ``source:row:field: reason``, a JSON summary (read / written / skipped by
    reason / by domain) to stdout. Exit code: 0 when rows were written (1 with ``--policy fail`` if any
    record was skipped), 1 when none survived, 2 when the source cannot be opened.
    """
    from nemo_prorl.data.importers import CONVERTERS, SourceError, import_rows, iter_source

    parser = argparse.ArgumentParser(prog="nemo-prorl data import",
                                     description="Convert a public release into checked training rows.")
    parser.add_argument("sources", nargs="+",
                        help="data files / folders (parquet, jsonl, json, csv), save_to_disk folders, or "
                             "cached datasets names (never downloaded)")
    parser.add_argument("--format", required=True, choices=sorted(CONVERTERS),
                        help="verl (DeepScaleR/Eurus-2 parquet), math (problem/answer), scp (SCP-116K), "
                             "ifeval, gpqa")
    parser.add_argument("--out", required=True, help="output JSONL (written atomically)")
    parser.add_argument("--id-prefix", default=None, help="id prefix (default: the format name)")
    parser.add_argument("--split", default=None, help="split of a dataset with several")
    parser.add_argument("--config", default=None, help="configuration name of a cached dataset")
    parser.add_argument("--only-domain", default=None, help="keep only rows of this domain (e.g. code)")
    parser.add_argument("--only-source", default=None,
                        help="keep only records whose data_source column equals this (e.g. codeforces)")
    parser.add_argument("--seed", type=int, default=0, help="gpqa: option shuffle seed")
    parser.add_argument("--limit", type=int, default=None, help="read at most N records (a quick look)")
    parser.add_argument("--policy", choices=POLICIES, default="skip",
                        help="skip: write the good rows, exit 0; fail: exit 1 if any record was skipped")
    parser.add_argument("--no-reward-checks", action="store_true", help="skip the rewards' own validation")
    parser.add_argument("--max-issues", type=int, default=200, help="print at most this many problems")
    args = parser.parse_args(argv)

    conv = CONVERTERS[args.format]
    kw: dict[str, Any] = {"prefix": args.id_prefix or args.format}
    if args.format == "gpqa":
        kw["seed"] = args.seed

    from nemo_prorl.data.importers import SkipRow

    def convert(rec: Any, key: str) -> dict:
        if args.only_source is not None and rec.get("data_source") != args.only_source:
            raise SkipRow("data_source", f"{rec.get('data_source')!r} left out by --only-source "
                          f"{args.only_source}", f"not {args.only_source}")
        row = conv(rec, key, **kw)
        if args.only_domain and row["domain"] != args.only_domain:
            raise SkipRow("domain", f"{row['domain']!r} row left out by --only-domain {args.only_domain}",
                          f"not {args.only_domain}")
        return row

    def records():
        several = len(args.sources) > 1  # keep ids unique across sources: the source name joins the key
        for src in args.sources:
            name = os.path.splitext(os.path.basename(src.rstrip("/")))[0].replace("/", "_")
            for rec in iter_source(src, split=args.split, config=args.config):
                yield dataclasses.replace(rec, key=f"{name}-{rec.key}") if several else rec

    try:
        report = import_rows(records(), convert, check_rewards=not args.no_reward_checks, limit=args.limit)
    except SourceError as exc:
        print(f"nemo-prorl data import: {exc}", file=sys.stderr)
        return 2
    for line in report.problems[: args.max_issues]:
        print(line, file=sys.stderr)
    if len(report.problems) > args.max_issues:
        print(f"... and {len(report.problems) - args.max_issues} more problem(s)", file=sys.stderr)
    if report.rows:
        from nemo_prorl.data.reasoning_gym_gen import write_jsonl_atomic

        write_jsonl_atomic(report.rows, args.out)
    print(f"read {report.read}, wrote {len(report.rows)} to {args.out}, skipped {report.skipped}",
          file=sys.stderr)
    print(json.dumps(report.summary(), ensure_ascii=False))
    if not report.rows:
        return 1
    return 1 if args.policy == "fail" and report.skipped else 0


def blend_main(argv: list[str]) -> int:
    """``nemo-prorl data blend --val FILE[:N] ... --train FILE ... --seed S --out FILE``."""
    parser = argparse.ArgumentParser(
        prog="nemo-prorl data blend",
        description="Validation blend: N valid rows per file, seeded, disjoint from training (id, prompt).")
    parser.add_argument("--val", action="append", required=True, metavar="FILE[:N]",
                        help="a validation file and how many rows to take (default --n); repeatable")
    parser.add_argument("--n", type=int, default=100, help="rows per file when FILE has no :N (default 100)")
    parser.add_argument("--train", action="append", default=[], metavar="FILE",
                        help="training files/folders whose ids and prompts must not appear; repeatable")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output JSONL (written atomically)")
    args = parser.parse_args(argv)

    from nemo_prorl.data.blend import build_blend
    from nemo_prorl.data.preflight import preflight
    from nemo_prorl.data.reasoning_gym_gen import write_jsonl_atomic

    specs = []
    for spec in args.val:
        path, sep, num = spec.rpartition(":")
        if not sep or not num.isdigit():
            path, num = spec, str(args.n)
        specs.append((path, int(num)))
    try:
        train = preflight(args.train, policy="skip", check_rewards=False).rows if args.train else []
        sources = []
        for path, n in specs:
            pf = preflight([path], policy="skip")
            for issue in pf.issues:
                print(str(issue), file=sys.stderr)
            sources.append((path, pf.rows, n))
    except FileNotFoundError as exc:
        print(f"nemo-prorl data blend: {exc}", file=sys.stderr)
        return 2
    report = build_blend(sources, train, args.seed)
    for label, why in report.short.items():
        print(f"{label}: {why}", file=sys.stderr)
    n = write_jsonl_atomic(report.rows, args.out)
    print(f"wrote {n} rows to {args.out}", file=sys.stderr)
    print(json.dumps({"picked": report.picked, "overlapping_train": report.overlapping,
                      "short": report.short}, ensure_ascii=False))
    return 0 if n else 1


SUBCOMMANDS = {"check": check_main, "import": import_main, "blend": blend_main,
               "reasoning-gym": reasoning_gym_main}


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
