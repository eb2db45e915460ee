r"""``nemo-prorl score``: score model responses offline, JSONL in, JSONL out.

Every non-blank input line yields exactly one output line, in input order: the input object plus
``reward`` (float), ``status`` (``ok``/``no_answer``/``timeout``/``error``/``violation``) and
``reward_info``. A line that is not UTF-8, not JSON (including JSON nested too deep or integers past
Python's digit limit), longer than ``--max-row-bytes``, not an object, misses a field, names an
unknown domain or carries bad ground truth gets ``status: error`` and ``error``: a reason naming the
file, the 1-based line and the field. Text must be valid Unicode: a string holding a lone surrogate
(JSON ``"\ud800"``, which no UTF-8 writer can write back) makes its row an error row, written back
with U+FFFD in its place. No row makes the command crash. The exit code is the number of lines that
failed validation (capped at 255); 0 when all were valid.

The output is written progressively to ``OUTPUT.partial`` (flushed after every ``--chunk`` rows) and
renamed to ``--output`` at the end, so a reader never sees half a file under the final name; if the
command is stopped (Ctrl-C, a crash), the rows scored so far stay in ``OUTPUT.partial`` and the message
says how many.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from nemo_prorl.rewards.config import RewardsConfig
from nemo_prorl.rewards.pool import RewardPool


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nemo-prorl score", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="JSONL file of scoring rows")
    p.add_argument("--output", required=True,
                   help="JSONL file to write (rows go to OUTPUT.partial as scored, renamed at the end)")
    p.add_argument("--workers", type=int, default=None, help="reward worker processes (default: config or 2)")
    p.add_argument("--timeout", type=float, default=None, help="per-sample deadline in seconds (default 10)")
    p.add_argument("--rewards-config", default=None,
                   help="YAML/JSON file with RewardsConfig fields (num_workers, timeout_s, domains, ...)")
    p.add_argument("--chunk", type=int, default=256, help="rows scored per batch (memory bound)")
    p.add_argument("--max-row-bytes", type=int, default=MAX_ROW_BYTES,
                   help="longer lines become error rows without being parsed (default 64 MiB)")
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


MAX_ROW_BYTES = 64 << 20


def _lines(f: Any, max_bytes: int) -> Iterator[tuple[bytes, bool]]:
    """``(line, too_long)`` for each line of a binary file; a line past ``max_bytes`` is skipped unread."""
    while True:
        raw = f.readline(max_bytes + 1)
        if not raw:
            return
        if len(raw) <= max_bytes or raw.endswith(b"\n"):
            yield raw, False
            continue
        while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
            pass
        yield raw[:64], True


def _is_surrogate(ch: str) -> bool:
    return "\ud800" <= ch <= "\udfff"


def _lone_surrogate(obj: Any) -> tuple[str, str, int] | None:
    r"""``(field path, character, offset)`` of the first string (or key) with a lone surrogate, else None.

    A JSON text may spell one with an escape (``"\ud800"``); Python decodes it into a str that no UTF-8
    writer accepts. Iterative, so a deeply nested row cannot exhaust the stack here.
    """
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            for i, ch in enumerate(value):
                if _is_surrogate(ch):
                    return path or "<row>", ch, i
        elif isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                sub = f"{path}.{key}" if path else str(key)
                if isinstance(key, str) and any(_is_surrogate(c) for c in key):
                    return f"{sub} (the key)", next(c for c in key if _is_surrogate(c)), 0
                stack.append((sub, item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(value))))
    return None


def _fix_text(text: str) -> str:
    return "".join("\ufffd" if _is_surrogate(c) else c for c in text)


def _replace_surrogates(obj: Any) -> Any:
    """``obj`` with every lone surrogate replaced by U+FFFD (what a UTF-8 writer can write)."""
    stack: list[Any] = []
    root: list[Any] = [obj]
    stack.append((root, 0))
    while stack:  # iterative, like _lone_surrogate
        parent, key = stack.pop()
        value = parent[key]
        if isinstance(value, str):
            parent[key] = _fix_text(value)
        elif isinstance(value, dict):
            fixed = {(_fix_text(k) if isinstance(k, str) else k): v for k, v in value.items()}
            parent[key] = fixed
            stack.extend((fixed, k) for k in fixed)
        elif isinstance(value, list):
            fixed_list = list(value)
            parent[key] = fixed_list
            stack.extend((fixed_list, i) for i in range(len(fixed_list)))
    return root[0]


def _decode_row(raw: bytes) -> tuple[Any, str | None]:
    """``(object, None)`` or ``(object_or_None, reason)`` for one line; never raises.

    A row whose text holds a lone surrogate comes back with the reason and with U+FFFD in place of each
    surrogate, so it can still be written back (as an error row).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"<row>: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
    try:
        obj = json.loads(text)
        bad = _lone_surrogate(obj)
        if bad is None:
            return obj, None
        field, ch, offset = bad
        return _replace_surrogates(obj), (
            f"field '{_fix_text(field)}': lone surrogate U+{ord(ch):04X} at character {offset}: not valid "
            "Unicode text (replaced by U+FFFD in this output row; not scored)")
    except json.JSONDecodeError as exc:
        return None, f"<row>: not valid JSON ({exc.msg} at column {exc.colno})"
    except RecursionError:
        return None, "<row>: JSON nested too deeply"
    except (ValueError, MemoryError) as exc:  # e.g. an integer past Python's digit limit
        return None, f"<row>: unreadable JSON ({type(exc).__name__}: {str(exc)[:200]})"


def _read_rows(path: str, max_bytes: int = MAX_ROW_BYTES) -> Iterator[tuple[int, Any, str | None]]:
    """Yield ``(line_number, decoded_object_or_None, error_or_None)`` for each non-blank line."""
    with open(path, "rb") as f:
        for lineno, (raw, too_long) in enumerate(_lines(f, max_bytes), start=1):
            if too_long:
                yield lineno, None, f"<row>: longer than {max_bytes} bytes (--max-row-bytes)"
                continue
            if not raw.strip():
                continue
            obj, err = _decode_row(raw)
            yield lineno, obj, err


def _dump_line(row: dict[str, Any], lineno: int) -> str:
    """One output line; a row that cannot be written back whole is replaced by its error fields."""
    try:
        text = json.dumps(row, ensure_ascii=False, default=str)
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # lone surrogates in a string: escape them
        return json.dumps(row, default=str)
    except (ValueError, TypeError, RecursionError) as exc:
        slim = {k: row[k] for k in ("reward", "status", "reward_info", "error") if k in row}
        slim["line"] = lineno
        slim.setdefault("error", f"row cannot be written back: {type(exc).__name__}")
        try:
            return json.dumps(slim, default=str)
        except (ValueError, TypeError, RecursionError):
            return json.dumps({"line": lineno, "reward": 0.0, "status": "error", "reward_info": {},
                               "error": "row cannot be written back"})


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


def _output_row(in_path: str, lineno: int, obj: Any, err: str | None, res: Any) -> dict[str, Any]:
    """The output row of one input line: the input object plus reward, status and, if any, error."""
    row = dict(obj) if isinstance(obj, dict) else {}
    if err is not None:
        row.update(line=lineno, reward=0.0, status="error", reward_info={},
                   error=f"{in_path}:{lineno}: {err}")
        return row
    row.update(reward=res.result.score, status=res.result.status, reward_info=res.result.info)
    if not isinstance(obj, dict):
        row["line"] = lineno
    if res.problems:
        row["error"] = "; ".join(f"{in_path}:{lineno}: field '{f}': {why}" for f, why in res.problems)
    elif res.result.status == "error":
        row["error"] = f"{in_path}:{lineno}: {res.result.info.get('reason', 'reward error')}"
    return row


def score_file(in_path: str, out_path: str, config: RewardsConfig, chunk: int = 256,
               progress: bool = True, max_row_bytes: int = MAX_ROW_BYTES) -> _Summary:
    """Score ``in_path`` into ``out_path``; returns the per-domain/status summary.

    Rows go to ``out_path + ".partial"`` as they are scored (flushed every ``chunk`` rows), renamed to
    ``out_path`` when every row is written. If scoring stops early (an exception, Ctrl-C) the partial
    file is kept and the exception re-raised after a message saying how many rows it holds.
    """
    summary = _Summary()
    partial = f"{out_path}.partial"
    written = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=_count_lines(in_path), unit="row", file=sys.stderr, desc="score",
                   disable=None, mininterval=0.5)
    try:
        with open(partial, "w", encoding="utf-8") as out, RewardPool(config) as pool:
            batch: list[tuple[int, Any, str | None]] = []

            def flush() -> None:
                nonlocal written
                scorable = [(k, obj) for k, (_, obj, err) in enumerate(batch) if err is None]
                scored = pool.score_detailed([obj for _, obj in scorable]) if scorable else []
                by_index = {k: s for (k, _), s in zip(scorable, scored)}
                for k, (lineno, obj, err) in enumerate(batch):
                    res = by_index.get(k)
                    try:
                        row = _output_row(in_path, lineno, obj, err, res)
                    except Exception as exc:  # a result that cannot be turned into a row: still one line
                        row = {"line": lineno, "reward": 0.0, "status": "error", "reward_info": {},
                               "error": f"{in_path}:{lineno}: cannot build the output row: "
                                        f"{type(exc).__name__}: {exc}"}
                    if err is not None or (res is not None and res.problems):
                        summary.invalid += 1
                    summary.add(obj.get("domain") if isinstance(obj, dict) else None, row["status"])
                    out.write(_dump_line(row, lineno) + "\n")
                    written += 1
                out.flush()  # what is scored is on disk: a crash later loses none of it
                if bar is not None:
                    bar.update(batch[-1][0] - bar.n if batch else 0)
                batch.clear()

            for item in _read_rows(in_path, max_row_bytes):
                batch.append(item)
                if len(batch) >= chunk:
                    flush()
            flush()
        os.replace(partial, out_path)
    except BaseException as exc:
        if bar is not None:  # close the bar first, so the message below is not drawn over
            bar.close()
            bar = None
        print(f"nemo-prorl score: stopped ({type(exc).__name__}) after {written} row(s); they are in "
              f"{partial}; the rest of {in_path} was not scored", file=sys.stderr)
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
                         progress=not args.no_progress, max_row_bytes=max(1, args.max_row_bytes))
    print(summary.table(), file=sys.stderr)
    if summary.invalid:
        print(f"{summary.invalid} row(s) failed validation; see the 'error' field in {args.output}",
              file=sys.stderr)
    return min(summary.invalid, 255)


if __name__ == "__main__":
    sys.exit(main())
