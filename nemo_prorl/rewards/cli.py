"""``nemo-prorl score``: score model responses offline, JSONL in, JSONL out.

Every non-blank input line yields exactly one output line, in input order: the input object plus
``reward`` (float), ``status`` (``ok``/``no_answer``/``timeout``/``error``/``violation``) and
``reward_info``. A line that is not UTF-8, not JSON, not an object, misses a field, names an unknown
domain or carries bad ground truth gets ``status: error`` and ``error``: a reason naming the file, the
1-based line and the field. The exit code is the number of lines that failed validation (capped at
255); 0 when all were valid. The output is streamed to a temporary file next to ``--output`` and
renamed into place at the end, so a reader never sees half a file.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from nemo_prorl.rewards.config import RewardsConfig
from nemo_prorl.rewards.pool import RewardPool


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nemo-prorl score", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="JSONL file of scoring rows")
    p.add_argument("--output", required=True, help="JSONL file to write (replaced atomically)")
    p.add_argument("--workers", type=int, default=None, help="reward worker processes (default: config or 2)")
    p.add_argument("--timeout", type=float, default=None, help="per-sample deadline in seconds (default 10)")
    p.add_argument("--rewards-config", default=None,
                   help="YAML/JSON file with RewardsConfig fields (num_workers, timeout_s, domains, ...)")
    p.add_argument("--chunk", type=int, default=256, help="rows scored per batch (memory bound)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _load_config(args: argparse.Namespace) -> RewardsConfig:
    data: dict[str, Any] = {}
    if args.rewards_config:
        import yaml

        with open(args.rewards_config, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{args.rewards_config}: expected a mapping of RewardsConfig fields")
    if args.workers is not None:
        data["num_workers"] = args.workers
    if args.timeout is not None:
        data["timeout_s"] = args.timeout
    return RewardsConfig.from_dict(data)


def _read_rows(path: str) -> Iterator[tuple[int, Any, str | None]]:
    """Yield ``(line_number, decoded_object_or_None, error_or_None)`` for each non-blank line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield lineno, None, (f"<row>: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset "
                                     f"{exc.start})")
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield lineno, None, f"<row>: not valid JSON ({exc.msg} at column {exc.colno})"
                continue
            yield lineno, obj, None


def _count_lines(path: str) -> int:
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n


class _Summary:
    def __init__(self) -> None:
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.invalid = 0

    def add(self, domain: Any, status: str) -> None:
        self.counts[(domain if isinstance(domain, str) else "<invalid>", status)] += 1

    def table(self) -> str:
        statuses = ["ok", "no_answer", "timeout", "error", "violation"]
        domains = sorted({d for d, _ in self.counts})
        width = max([len("domain"), *map(len, domains)])
        lines = ["domain".ljust(width) + "".join(s.rjust(11) for s in statuses) + "total".rjust(9)]
        for d in domains:
            row = [self.counts[(d, s)] for s in statuses]
            lines.append(d.ljust(width) + "".join(str(c).rjust(11) for c in row) + str(sum(row)).rjust(9))
        total = [sum(self.counts[(d, s)] for d in domains) for s in statuses]
        cells = "".join(str(c).rjust(11) for c in total)
        lines.append("total".ljust(width) + cells + str(sum(total)).rjust(9))
        return "\n".join(lines)


def score_file(in_path: str, out_path: str, config: RewardsConfig, chunk: int = 256,
               progress: bool = True) -> _Summary:
    """Score ``in_path`` into ``out_path`` (atomically); returns the per-domain/status summary."""
    summary = _Summary()
    out_dir = os.path.dirname(os.path.abspath(out_path))
    fd, tmp_path = tempfile.mkstemp(prefix=".score-", suffix=".jsonl.tmp", dir=out_dir)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=_count_lines(in_path), unit="row", file=sys.stderr, desc="score",
                   disable=None, mininterval=0.5)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out, RewardPool(config) as pool:
            batch: list[tuple[int, Any, str | None]] = []

            def flush() -> None:
                scorable = [(k, obj) for k, (_, obj, err) in enumerate(batch) if err is None]
                scored = pool.score_detailed([obj for _, obj in scorable]) if scorable else []
                by_index = {k: s for (k, _), s in zip(scorable, scored)}
                for k, (lineno, obj, err) in enumerate(batch):
                    row = dict(obj) if isinstance(obj, dict) else {}
                    if err is not None:
                        row.update(line=lineno, reward=0.0, status="error", reward_info={},
                                   error=f"{in_path}:{lineno}: {err}")
                        summary.invalid += 1
                    else:
                        res = by_index[k]
                        row.update(reward=res.result.score, status=res.result.status,
                                   reward_info=res.result.info)
                        if not isinstance(obj, dict):
                            row["line"] = lineno
                        if res.problems:
                            summary.invalid += 1
                            row["error"] = "; ".join(f"{in_path}:{lineno}: field '{f}': {why}"
                                                     for f, why in res.problems)
                        elif res.result.status == "error":
                            reason = res.result.info.get("reason", "reward error")
                            row["error"] = f"{in_path}:{lineno}: {reason}"
                    summary.add(obj.get("domain") if isinstance(obj, dict) else None, row["status"])
                    out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                if bar is not None:
                    bar.update(batch[-1][0] - bar.n if batch else 0)
                batch.clear()

            for item in _read_rows(in_path):
                batch.append(item)
                if len(batch) >= chunk:
                    flush()
            flush()
        os.replace(tmp_path, out_path)
    except BaseException:
        try:
            os.unlink(tmp_path)
        except FileNotFoundError:
            pass
        raise
    finally:
        if bar is not None:
            bar.close()
    return summary


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``nemo-prorl score``; returns the number of invalid rows (max 255)."""
    args = _parser().parse_args(argv)
    if not os.path.isfile(args.input):
        print(f"nemo-prorl score: input file {args.input!r} does not exist", file=sys.stderr)
        return 2
    try:
        config = _load_config(args)
    except (OSError, ValueError, TypeError) as exc:
        print(f"nemo-prorl score: bad configuration: {exc}", file=sys.stderr)
        return 2
    summary = score_file(args.input, args.output, config, chunk=max(1, args.chunk),
                         progress=not args.no_progress)
    print(summary.table(), file=sys.stderr)
    if summary.invalid:
        print(f"{summary.invalid} row(s) failed validation; see the 'error' field in {args.output}",
              file=sys.stderr)
    return min(summary.invalid, 255)


if __name__ == "__main__":
    sys.exit(main())
