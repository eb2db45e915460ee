"""``nemo-prorl passk`` and ``nemo-prorl eval``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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


def _parse_checkpoint(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep:
        label, path = Path(text).name or text, text
    if not label:
        raise argparse.ArgumentTypeError(f"--checkpoint {text!r}: empty label")
    return label, Path(path)


def _parse_setting(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (numbers, true/false, null), else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--rollout {text!r}: expected KEY=VALUE")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


EVAL_DOC = """Sample n responses per prompt for one or more checkpoints, score them, and report pass@k.

    nemo-prorl eval --checkpoint base=HF_DIR --checkpoint final=MCORE_DIR --data aime24.jsonl math500.jsonl \\
        --n 16 --k 1,2,4,8,16 --out eval_out/ [--backend auto|hf|vllm] [--rollout KEY=VALUE ...]

Generation goes through the rollout factory (--backend auto: vLLM where CUDA and vLLM exist, the
transformers engine otherwise); see nemo_prorl/eval/runner.py for outputs and resuming."""


def build_eval_parser() -> argparse.ArgumentParser:
    """The argument parser of ``nemo-prorl eval``."""
    ap = argparse.ArgumentParser(prog="nemo-prorl eval", description=EVAL_DOC,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", action="append", type=_parse_checkpoint, required=True,
                    help="LABEL=DIR (HF or Megatron directory); repeat to compare checkpoints")
    ap.add_argument("--data", nargs="+", required=True,
                    help="eval files in the row format (JSONL/JSON/parquet)")
    ap.add_argument("--out", required=True, help="output directory (samples, results.json/.md, passk.png)")
    ap.add_argument("--n", type=int, default=16,
                    help="samples per prompt (ProRL: 16; 256 for boundary curves)")
    ap.add_argument("--k", type=_parse_ks, default=None, help="k values (default: powers of 2 up to n)")
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--max-tokens", type=int, default=None,
                    help="max response tokens (default: the model's positions minus the longest prompt, "
                         "at most 1024; eval/sampling.py fit_lengths)")
    ap.add_argument("--max-prompt-tokens", type=int, default=None,
                    help="longest prompt (default: the longest prompt of --data, or the model's positions "
                         "minus --max-tokens when that is given)")
    ap.add_argument("--max-prompts", type=int, default=None, help="use only the first N prompts of each file")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--workers", type=int, default=2, help="reward worker processes")
    ap.add_argument("--batch-prompts", type=int, default=None,
                    help="prompts per generate call (default: 32 for hf, 512 for vllm)")
    ap.add_argument("--template", action="append", default=[], metavar="DOMAIN=FORMAT",
                    help="prompt template override, e.g. reasoning_gym='{prompt}\\n'")
    ap.add_argument("--backend", default="auto",
                    help="rollout backend: auto (vllm with CUDA + vLLM, else hf), hf, vllm, or a plug-in")
    ap.add_argument("--rollout", action="append", type=_parse_setting, default=[], metavar="KEY=VALUE",
                    help="a rollout.* setting, e.g. gpu_memory_utilization=0.85 enforce_eager=true "
                         "dtype=bfloat16 max_batch_size=16")
    return ap


def eval_main(argv: list[str]) -> int:
    """``nemo-prorl eval``: sample, score and report pass@k for checkpoints; 0 ok, 2 bad input."""
    from nemo_prorl.eval.runner import EvalError, EvalSpec, run_eval

    args = build_eval_parser().parse_args(argv)
    templates = {}
    for t in args.template:
        dom, sep, fmt = t.partition("=")
        if not sep:
            print(f"nemo-prorl eval: --template {t!r}: expected DOMAIN=FORMAT", file=sys.stderr)
            return 2
        templates[dom] = fmt.encode().decode("unicode_escape")
    spec = EvalSpec(
        checkpoints=list(args.checkpoint), data=list(args.data), out=Path(args.out), n=args.n, ks=args.k,
        temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
        max_prompt_tokens=args.max_prompt_tokens, max_prompts=args.max_prompts, seed=args.seed,
        workers=args.workers, batch_prompts=args.batch_prompts, templates=templates, backend=args.backend,
        rollout=dict(args.rollout),
    )
    try:
        run_eval(spec, log=lambda msg: print(msg, flush=True))
    except EvalError as exc:
        print(f"nemo-prorl eval: {exc}", file=sys.stderr)
        return 2
    out = spec.out
    print(f"results: {out}/results.json, {out}/results.md, {out}/passk.png")
    return 0
