r"""``nemo-prorl eval``: sample n per prompt for one or more checkpoints, score, and report pass@k.

::

    nemo-prorl eval --checkpoint base=HF_DIR --checkpoint final=MCORE_DIR --data aime24.jsonl gpqa.jsonl \\
        --n 16 --k 1,2,4,8,16 --out eval_out/

A checkpoint is a Hugging Face model directory (``config.json`` + safetensors) or a Megatron directory
written by ``nemo-prorl convert --to-megatron`` (converted to HF weights in memory). Samples are appended
to ``OUT/samples/<label>.jsonl`` as they are produced, one line per prompt; re-running the same command
skips prompts already there, so an interrupted evaluation resumes. Results: ``OUT/results.json``
(per checkpoint, overall and per domain and per benchmark file), ``OUT/results.md`` (a Markdown table)
and ``OUT/passk.png``. ProRL's evaluation settings are the defaults: temperature 0.6, top_p 0.95, n 16.
Binary domains (math, mcq) report pass@k on reward == 1; continuous ones (code, reasoning_gym, ifeval)
also report their mean reward.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from nemo_prorl.eval.cli import _parse_ks
from nemo_prorl.eval.sampling import sample_and_score, summarize


def _parse_checkpoint(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep:
        label, path = Path(text).name or text, text
    if not label:
        raise argparse.ArgumentTypeError(f"--checkpoint {text!r}: empty label")
    return label, Path(path)


def _hf_dir(path: Path, scratch: Path) -> Path:
    """An HF directory for ``path`` (converting a Megatron directory written by ``nemo-prorl convert``)."""
    if (path / "config.json").is_file():
        return path
    from nemo_prorl.policy.megatron.convert_cli import META_FILE
    from nemo_prorl.policy.megatron.convert_cli import main as convert_main

    if not (path / META_FILE).is_file():
        raise ValueError(f"{path}: neither an HF model directory (config.json) nor a Megatron directory "
                         f"written by `nemo-prorl convert --to-megatron` ({META_FILE})")
    out = scratch / path.name
    if convert_main(["--from-megatron", str(path), "--to-hf", str(out)]) != 0:
        raise ValueError(f"{path}: conversion to HF failed (see the messages above)")
    return out


def _done_ids(path: Path) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if path.exists():
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by an interruption is redone
                done[str(rec["id"])] = rec
    return done


def _markdown(results: dict[str, dict[str, float]], ks: list[int]) -> str:
    """One row per checkpoint and scope (all, each domain, each benchmark file)."""
    heads = ["reward"] + [f"pass@{k}" for k in ks]
    lines = ["| checkpoint | scope | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
    for label, m in results.items():
        domains = sorted({k.split("/", 1)[1] for k in m if k.startswith("pass@1/") and "group:" not in k})
        groups = sorted({k.split("/group:", 1)[1] for k in m if k.startswith("pass@1/group:")})
        benches = sorted({k.split("/pass@1", 1)[0] for k in m if k.endswith("/pass@1")})
        scopes = [("all", "reward/mean", lambda h: h)]
        scopes += [(f"domain {d}", f"reward/{d}", lambda h, d=d: f"{h}/{d}") for d in domains]
        scopes += [(f"file {b}", f"{b}/reward/mean", lambda h, b=b: f"{b}/{h}") for b in benches]
        scopes += [(f"group {g}", None, lambda h, g=g: f"{h}/group:{g}") for g in groups]
        for scope, reward_key, name in scopes:
            cells = [m.get(reward_key) if reward_key else None] + [m.get(name(f"pass@{k}")) for k in ks]
            shown = ["-" if v is None else f"{v:.4f}" for v in cells]
            lines.append(f"| {label} | {scope} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"


def _plot(results: dict[str, dict[str, float]], ks: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, m in results.items():
        xs = [k for k in ks if f"pass@{k}" in m]
        ax.plot(xs, [m[f"pass@{k}"] for k in xs], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("pass@k (unbiased estimator)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str]) -> int:
    """Run an evaluation; exit 0 on success, 2 on bad input."""
    ap = argparse.ArgumentParser(prog="nemo-prorl eval", description=__doc__.splitlines()[0])
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
    ap.add_argument("--max-tokens", type=int, default=1024, help="max response tokens")
    ap.add_argument("--max-prompt-tokens", type=int, default=None,
                    help="longest prompt (default: the model's context minus --max-tokens)")
    ap.add_argument("--max-prompts", type=int, default=None, help="use only the first N prompts of each file")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--workers", type=int, default=2, help="reward worker processes")
    ap.add_argument("--batch-prompts", type=int, default=32, help="prompts per generate call")
    ap.add_argument("--template", action="append", default=[], metavar="DOMAIN=FORMAT",
                    help="prompt template override, e.g. reasoning_gym='{prompt}\\n'")
    args = ap.parse_args(argv)
    ks = args.k or [2**i for i in range(0, 20) if 2**i <= args.n]
    if any(k > args.n for k in ks):
        print(f"nemo-prorl eval: --k {max(ks)} exceeds --n {args.n}", file=sys.stderr)
        return 2
    templates = {}
    for t in args.template:
        dom, sep, fmt = t.partition("=")
        if not sep:
            print(f"nemo-prorl eval: --template {t!r}: expected DOMAIN=FORMAT", file=sys.stderr)
            return 2
        templates[dom] = fmt.encode().decode("unicode_escape")

    from nemo_prorl.data.preflight import preflight

    rows_by_file: dict[str, list[dict]] = {}
    for f in args.data:
        rep = preflight([f], policy="skip", templates=templates)
        for issue in rep.issues[:20]:
            print(f"nemo-prorl eval: skipped {issue}", file=sys.stderr)
        rows = list(rep.rows)[: args.max_prompts] if args.max_prompts else list(rep.rows)
        if not rows:
            print(f"nemo-prorl eval: {f}: no valid rows", file=sys.stderr)
            return 2
        rows_by_file[Path(f).stem] = rows

    from transformers import AutoTokenizer

    from nemo_prorl.data.templates import tokenize_prompt
    from nemo_prorl.rewards.config import RewardsConfig
    from nemo_prorl.rewards.pool import RewardPool
    from nemo_prorl.rollout.base import SamplingParams
    from nemo_prorl.rollout.hf_engine import HFRolloutEngine

    out = Path(args.out)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, float]] = {}
    sampling = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                              seed=args.seed)
    with RewardPool(RewardsConfig(num_workers=args.workers)) as pool, \
            tempfile.TemporaryDirectory(prefix="nemo-prorl-eval-") as scratch:
        for label, path in args.checkpoint:
            try:
                hf_dir = _hf_dir(path, Path(scratch))
            except ValueError as exc:
                print(f"nemo-prorl eval: {exc}", file=sys.stderr)
                return 2
            tok = AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
            max_prompt = args.max_prompt_tokens
            if max_prompt is None:
                ctx = json.loads((hf_dir / "config.json").read_text()).get("max_position_embeddings", 4096)
                max_prompt = ctx - args.max_tokens
            if max_prompt < 1:
                print(f"nemo-prorl eval: {label}: --max-tokens {args.max_tokens} leaves no room for a prompt",
                      file=sys.stderr)
                return 2
            engine = HFRolloutEngine.from_pretrained(
                hf_dir, tok, max_prompt_tokens=max_prompt, max_response_tokens=args.max_tokens,
                overlong_prompt="skip",
            )
            samples_path = out / "samples" / f"{label}.jsonl"
            done = _done_ids(samples_path)
            records: list[dict[str, Any]] = []
            with open(samples_path, "a", encoding="utf-8") as fh:
                for bench, rows in rows_by_file.items():
                    todo = [r for r in rows if f"{bench}:{r['id']}" not in done]
                    prompts = [tokenize_prompt(r, tok, templates) for r in todo]

                    def save(batch: list[dict], bench: str = bench) -> None:
                        for rec in batch:
                            rec["id"] = f"{bench}:{rec['id']}"
                            rec["benchmark"] = bench
                            fh.write(json.dumps(rec) + "\n")
                        fh.flush()
                        os.fsync(fh.fileno())

                    if todo:
                        sample_and_score(engine, todo, prompts, n=args.n, sampling=sampling, score=pool.score,
                                         batch_prompts=args.batch_prompts, on_batch=save)
            records = list(_done_ids(samples_path).values())
            metrics = summarize(records, ks)
            for bench in rows_by_file:
                recs = [r for r in records if r.get("benchmark") == bench]
                for k, v in summarize(recs, ks, prefix=f"{bench}/").items():
                    if "/status/" not in k:
                        metrics[k] = v
            results[label] = metrics
            shown = ", ".join(f"pass@{k}={metrics.get(f'pass@{k}', float('nan')):.4f}" for k in ks)
            print(f"{label}: {shown}", flush=True)
    (out / "results.json").write_text(json.dumps({"ks": ks, "n": args.n, "temperature": args.temperature,
                                                  "top_p": args.top_p, "results": results}, indent=2))
    (out / "results.md").write_text(_markdown(results, ks))
    _plot(results, ks, out / "passk.png")
    print(f"results: {out}/results.json, {out}/results.md, {out}/passk.png")
    return 0
