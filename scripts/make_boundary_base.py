"""Build the boundary run's assets: a tokenizer, graded reasoning-gym data and a warm-started base model.

The boundary run (``nemo-prorl train --config-name boundary``, docs/boundary.md) asks whether ProRL moves
what a model can solve *at all*: held-out prompts of the hardest group, ``hard``, are ones the base
fails on regardless of how often it samples (pass@16 near 0), and the question is whether RL lifts them.

The task family is reasoning-gym ``chain_sum`` of 2-digit terms with graded difficulty (the number of
terms: a longer chain of the same operation); each row carries its ``group``:

* ``easy``: 2 terms (``42 - 25 =``), the embedded demo's task;
* ``medium``: 3 terms (``42 - 25 + 71 =``);
* ``long``: 4 terms;
* ``hard``: 6 terms -- never fine-tuned on.

The base starts from the demo base (``nemo_prorl/assets/demo``: its tokenizer and weights, which already
answer 2-term sums ~18% right) and is supervised-fine-tuned for a fixed ``--max-steps`` on gold answers
of the groups in ``--sft-weights`` (2, 3 and 4 terms). Per-group sampled accuracy is printed during
fine-tuning and the base's pass@16 per group (T 0.6, top_p 0.95, the evaluation protocol) on held-out
check prompts at the end.

Splits (all de-duplicated against each other by expression, from disjoint reasoning-gym seeds):

* SFT items (not shipped);
* ``train.jsonl``: RL prompts of the groups in ``--rl-groups``;
* ``val.jsonl``: the dev split -- validation during training (plateau resets) and every tuning decision;
* ``eval.jsonl``: the held-out evaluation split, used only for the final pass@k;
* a check set used only to decide when to stop fine-tuning (not shipped).

Everything is generated here, offline and deterministically (seeded). Usage:
``python scripts/make_boundary_base.py --out nemo_prorl/assets/boundary`` (about 5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path

import reasoning_gym
import torch
from make_demo_base import (  # same tokenizer and format
    PROMPT_TEMPLATE,
    bare_prompt,
    build_tokenizer,
    encode_pair,
    sft_batch,
)
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

TASK = "chain_sum"
#: group -> (terms, digits): every term of a chain_sum item has the same number of digits
GROUPS = {"easy": (2, 2), "medium": (3, 2), "long": (4, 2), "hard": (6, 2)}
#: reasoning-gym base seeds per split; item i of a split uses seed + i, so the bases are far apart
SPLIT_SEEDS = {"sft": 1, "train": 10_000_000, "val": 20_000_000, "eval": 30_000_000, "check": 40_000_000}


def generate_items(group: str, seed: int, size: int) -> list[dict]:
    """reasoning-gym chain_sum items of ``group`` (JSON-safe), each tagged with its group."""
    terms, digits = GROUPS[group]
    ds = reasoning_gym.create_dataset(TASK, size=size, seed=seed + 1_000_000 * list(GROUPS).index(group),
                                      min_terms=terms, max_terms=terms, min_digits=digits, max_digits=digits)
    items = [json.loads(json.dumps(ds[i], default=list)) for i in range(size)]
    for it in items:
        it["group"] = group
    return items


def unique(items: list[dict], seen: set[str], size: int, strict: bool = True) -> list[dict]:
    """The first ``size`` items whose expression is not in ``seen`` (nor repeated); ``seen`` is updated.

    ``strict=False`` returns fewer when the pool runs out (the SFT split of a small group).
    """
    out = []
    for it in items:
        expr = it["metadata"]["expression"]
        if expr in seen:
            continue
        seen.add(expr)
        out.append(it)
        if len(out) == size:
            return out
    if not strict:
        return out
    raise ValueError(f"only {len(out)} unique {items[0]['group']} items, {size} wanted: raise the pool size")


def to_row(item: dict, idx: str) -> dict:
    """A reasoning-gym item as a nemo_prorl row with its difficulty ``group``."""
    entry = {k: v for k, v in item.items() if k != "group"}
    return {"id": idx, "domain": "reasoning_gym", "prompt": bare_prompt(item), "task": TASK,
            "group": item["group"], "entry": entry}


@torch.no_grad()
def correct_counts(model, tok, items: list[dict], n: int, temperature: float, top_p: float) -> list[int]:
    """Per item, how many of ``n`` samples answer exactly ``<answer>GOLD</answer>``."""
    model.eval()
    prompts = [PROMPT_TEMPLATE.format(prompt=bare_prompt(it)) for it in items]
    enc = tok(prompts, return_tensors="pt", padding=True)
    out = model.generate(**enc, do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                         num_return_sequences=n, max_new_tokens=12, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    model.train()
    return [sum(texts[i * n + j].strip() == f"<answer>{it['answer']}</answer>" for j in range(n))
            for i, it in enumerate(items)]


def pass16(counts: list[int], n: int = 16) -> float:
    """Mean pass@n (all n samples) over items: the fraction with at least one correct sample."""
    return sum(c > 0 for c in counts) / len(counts) if n else math.nan


def parse_weights(text: str) -> dict[str, float]:
    """``easy=0.5,medium=0.5`` -> a dict over :data:`GROUPS` (missing groups weigh 0)."""
    out = dict.fromkeys(GROUPS, 0.0)
    for part in text.split(","):
        name, _, w = part.partition("=")
        if name not in GROUPS:
            raise SystemExit(f"--sft-weights: unknown group {name!r} (known: {', '.join(GROUPS)})")
        out[name] = float(w)
    return out


def main() -> None:
    """Generate data, build the tokenizer, SFT until the target sampled accuracy, save everything."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="nemo_prorl/assets/boundary")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--groups", default=None, help="override GROUPS: easy=TERMSxDIGITS,medium=...,hard=...")
    ap.add_argument("--sft-weights", default="easy=0.3,medium=0.35,long=0.35",
                    help="SFT mixture over groups (hard is never fine-tuned on)")
    ap.add_argument("--sft-items", type=int, default=6000, help="SFT items per group with weight > 0")
    ap.add_argument("--rl-groups", default="easy,medium,long,hard")
    ap.add_argument("--rl-items", type=int, default=1000, help="RL prompts per group")
    ap.add_argument("--val-items", type=int, default=48, help="dev prompts per group")
    ap.add_argument("--eval-items", type=int, default=96, help="held-out evaluation prompts per group")
    ap.add_argument("--stop-group", default="medium")
    ap.add_argument("--target-acc", type=float, default=None,
                    help="stop once the stop group's sampled accuracy reaches this (default: all steps)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--check-every", type=int, default=50)
    ap.add_argument("--max-steps", type=int, default=400)
    ap.add_argument("--pass16-every", type=int, default=100, help="print pass@16 per group every N steps")
    ap.add_argument("--save-every-check", action="store_true", help="exploration: keep each pass@16 model")
    ap.add_argument("--init-from", default="nemo_prorl/assets/demo",
                    help="start from this base (its tokenizer and weights); '' for a random model")
    ap.add_argument("--hidden", type=int, default=256, help="hidden size (4 heads, 2 KV heads, MLP 4x)")
    ap.add_argument("--layers", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if args.groups:
        GROUPS.clear()
        for part in args.groups.split(","):
            name, _, spec = part.partition("=")
            terms, _, digits = spec.partition("x")
            GROUPS[name] = (int(terms), int(digits))
    weights = parse_weights(args.sft_weights)
    rl_groups = args.rl_groups.split(",")

    # every split from its own seed range, de-duplicated by expression against all earlier splits
    seen: set[str] = set()
    split: dict[str, dict[str, list[dict]]] = {s: {} for s in SPLIT_SEEDS}
    sizes = {"sft": args.sft_items, "train": args.rl_items, "val": args.val_items, "eval": args.eval_items,
             "check": 128}
    for name in ("eval", "val", "check", "train", "sft"):  # held-out sets first: they are never cut short
        for g in GROUPS:
            if name == "sft" and weights[g] <= 0 or name == "train" and g not in rl_groups:
                continue
            pool = generate_items(g, SPLIT_SEEDS[name], 2 * sizes[name] + 64)
            split[name][g] = unique(pool, seen, sizes[name], strict=name != "sft")

    sft_all = [it for g in GROUPS for it in split["sft"].get(g, [])]
    if args.init_from:  # the demo base: its tokenizer (single-digit tokens) and its weights
        tok = PreTrainedTokenizerFast.from_pretrained(args.init_from)
        tok.padding_side = "left"
    else:
        tok = build_tokenizer([PROMPT_TEMPLATE.format(prompt=bare_prompt(it))
                               + f"<answer>{it['answer']}</answer>" for it in sft_all[::3]])
    tok.save_pretrained(out)
    for name in ("train", "val", "eval"):
        # groups interleaved round-robin, so any prefix (trainer.val_max_prompts, final_eval.max_prompts)
        # holds every group in the same proportion as the whole file
        rows = [(i, g, it) for g, items in split[name].items() for i, it in enumerate(items)]
        rows.sort(key=lambda r: (r[0] / len(split[name][r[1]]), list(GROUPS).index(r[1])))
        with open(out / f"{name}.jsonl", "w") as fh:
            for i, g, it in rows:
                fh.write(json.dumps(to_row(it, f"{g}-{name}-{i}")) + "\n")

    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, torch_dtype="float32",
    )
    model = Qwen2ForCausalLM.from_pretrained(args.init_from) if args.init_from else Qwen2ForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    pairs = {g: [encode_pair(tok, it) for it in items] for g, items in split["sft"].items()}
    names = list(pairs)
    probs = [weights[g] for g in names]
    batch = 128
    accs: dict[str, float] = {}
    step = 0
    for step in range(1, args.max_steps + 1):
        for group in opt.param_groups:  # linear warm-up, then constant
            group["lr"] = args.lr * min(1.0, step / max(1, args.warmup))
        chunk = [random.choice(pairs[g]) for g in random.choices(names, probs, k=batch)]
        ids, attn, labels = sft_batch(chunk, tok.pad_token_id)
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.check_every == 0:
            accs = {g: sum(correct_counts(model, tok, split["check"][g], 2, 1.0, 1.0)) / 256 for g in GROUPS}
            shown = " ".join(f"{g} {a:.3f}" for g, a in accs.items())
            print(f"step {step} loss {loss.item():.3f} sampled acc {shown} ({time.time() - t0:.0f}s)",
                  flush=True)
            if args.pass16_every and step % args.pass16_every == 0:
                p16 = {g: pass16(correct_counts(model, tok, split["check"][g][:64], 16, 0.6, 0.95))
                       for g in GROUPS}
                print(f"step {step} pass@16 (T 0.6) " + " ".join(f"{g} {v:.3f}" for g, v in p16.items()),
                      flush=True)
                if args.save_every_check:
                    model.save_pretrained(out / f"step{step}", safe_serialization=True)
            if args.target_acc is not None and accs[args.stop_group] >= args.target_acc:
                break
    model.save_pretrained(out, safe_serialization=True)
    # the base's pass@16 per group on the check set, at the evaluation protocol (T 0.6, top_p 0.95)
    base_pass16 = {g: pass16(correct_counts(model, tok, split["check"][g], 16, 0.6, 0.95)) for g in GROUPS}
    print("base pass@16 on the check set (T 0.6, top_p 0.95): "
          + " ".join(f"{g} {v:.3f}" for g, v in base_pass16.items()), flush=True)
    meta = {"task": TASK, "groups": {g: {"terms": t, "digits": d} for g, (t, d) in GROUPS.items()},
            "sft_weights": weights, "rl_groups": rl_groups, "prompt_template": PROMPT_TEMPLATE,
            "sft_steps": step, "sft_sampled_acc_check": accs, "stop_group": args.stop_group,
            "target_acc": args.target_acc, "base_pass16_check": base_pass16, "sft_lr": args.lr,
            "sft_warmup": args.warmup, "hidden": args.hidden, "layers": args.layers, "seed": args.seed,
            "rows": {s: {g: len(v) for g, v in split[s].items()} for s in ("train", "val", "eval")},
            "made_by": "scripts/make_boundary_base.py"}
    (out / "boundary_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta), f"{time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
