"""``nemo-prorl passk`` and ``nemo-prorl eval``."""

from __future__ import annotations

import argparse
import json
import sys

from nemo_prorl.eval.passk import grouped_pass_at_k, pass_at_k_curve


class InputError(ValueError):
    """A problem with an input file, already phrased as ``file:row:field: reason``."""


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--k must be a comma-separated list of integers, got {text!r}"
        ) from None
    if not ks or any(k < 1 for k in ks):
        raise argparse.ArgumentTypeError(f"--k values must be >= 1, got {text!r}")
    return ks


def read_counts(path: str, groups: dict[str, str] | None = None) -> list[tuple[str, int, int]]:
    """Read ``(id, n, c)`` per row from a JSONL file of ``{"id", "correct": [...]}`` or ``{"id", "n", "c"}``.

    A row may carry a difficulty ``group`` (a string); when ``groups`` is given it is filled with id -> group.

    Raises:
        InputError: naming the file, 1-based row and field of the first problem.

    """
    rows: list[tuple[str, int, int]] = []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                reason = f"not valid UTF-8 ({exc.reason} at byte {exc.start})"
                raise InputError(f"{where}:<row>: {reason}") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}:<row>: broken JSON ({exc.msg} at char {exc.pos})") from None
            if not isinstance(row, dict):
                raise InputError(f"{where}:<row>: expected a JSON object")
            rid = str(row.get("id", lineno))
            if "correct" in row:
                corr = row["correct"]
                if not isinstance(corr, list) or not corr:
                    raise InputError(f"{where}:correct: expected a non-empty list of booleans")
                if not all(isinstance(x, (bool, int)) and x in (0, 1) for x in corr):
                    raise InputError(f"{where}:correct: entries must be true/false (or 0/1)")
                n, c = len(corr), int(sum(bool(x) for x in corr))
            elif "n" in row and "c" in row:
                n, c = row["n"], row["c"]
                for field, v in (("n", n), ("c", c)):
                    if not isinstance(v, int) or isinstance(v, bool):
                        raise InputError(f"{where}:{field}: expected an integer, got {v!r}")
                if n < 1:
                    raise InputError(f"{where}:n: must be >= 1, got {n}")
                if not 0 <= c <= n:
                    raise InputError(f"{where}:c: must be in [0, n={n}], got {c}")
            else:
                raise InputError(f"{where}:correct: missing (need 'correct', or 'n' and 'c')")
            if groups is not None and row.get("group") is not None:
                if not isinstance(row["group"], str) or not row["group"]:
                    raise InputError(f"{where}:group: expected a non-empty string, got {row['group']!r}")
                groups[rid] = row["group"]
            rows.append((rid, n, c))
    if not rows:
        raise InputError(f"{path}: no rows")
    return rows


def passk_main(argv: list[str]) -> int:
    """``nemo-prorl passk --input SAMPLES.jsonl --k 1,2,4``: print mean pass@k as JSON."""
    parser = argparse.ArgumentParser(prog="nemo-prorl passk", description=passk_main.__doc__)
    parser.add_argument("--input", required=True, help="JSONL rows {id, correct: [bool...]} or {id, n, c}")
    parser.add_argument("--k", type=_parse_ks, default=[1], help="comma-separated k values (default 1)")
    args = parser.parse_args(argv)
    groups: dict[str, str] = {}
    try:
        rows = read_counts(args.input, groups)
    except (InputError, OSError) as exc:
        print(f"nemo-prorl passk: {exc}", file=sys.stderr)
        return 2
    for rid, n, _ in rows:
        if max(args.k) > n:
            print(f"nemo-prorl passk: {args.input}: row id={rid}: k={max(args.k)} exceeds its n={n} samples",
                  file=sys.stderr)
            return 2
    result = pass_at_k_curve([(n, c) for _, n, c in rows], args.k)
    by_group: dict[str, list[tuple[int, int]]] = {}
    for rid, n, c in rows:  # rows with a difficulty group also count in their group: pass@K/group:G
        if rid in groups:
            by_group.setdefault(groups[rid], []).append((n, c))
    result.update(grouped_pass_at_k(by_group, args.k))
    print(json.dumps(result))
    return 0


def eval_main(argv: list[str]) -> int:
    """``nemo-prorl eval``: sample, score and report pass@k for checkpoints."""
    from nemo_prorl.eval.runner import main as run_eval

    return run_eval(argv)
