"""Build the embedded default's assets: a tokenizer, reasoning-gym data and a weakly warm-started base model.

The embedded default (``nemo-prorl train`` with no config) runs ProRL on reasoning-gym ``chain_sum``
(two 2-digit terms, e.g. ``42 - 25 =`` -> ``<answer>17</answer>``). RL needs a policy with *some*
competence, so this script supervised-fine-tunes a tiny random Qwen2 model on gold answers and stops
early, as soon as its sampled accuracy on held-out problems reaches ``--target-acc``: enough signal for
GRPO, lots of room to improve.

Three choices make the warm start a good RL starting point (measured, see docs/demo.md):

* the prompt is the bare expression (``42 - 25 =``); reasoning-gym's constant preamble ("State the final
  answer to the following arithmetic problem:") stays in the row's ``entry`` for the scorer. With the
  preamble the tiny model learns the task slowly and evenly; without it, supervised training shows a
  sharp rise (sampled accuracy about 0.1 -> 0.8 within a few hundred steps);
* SFT stops at the start of that rise, so RL continues a learning process that is under way instead of
  pushing a model stuck on a plateau;
* the model is wide and shallow (2 layers, hidden 256): a 4-layer, hidden-128 model sharpened its guesses
  under RL (pass@16 fell below the base's), the wider one learns the task and stays fast on CPU.

Everything is generated here, offline and deterministically (seeded):

* ``tokenizer``: byte-level BPE trained on task text, digits kept as single tokens;
* ``train.jsonl`` / ``val.jsonl``: rows in the nemo_prorl row format, with the held-out prompts
  de-duplicated against the SFT and RL prompts (``rg`` seeds item i with seed + i, so distinct base seeds
  far apart are used);
* ``model.safetensors`` + ``config.json``: the base policy.

Usage: ``python scripts/make_demo_base.py --out nemo_prorl/assets/demo`` (about 1-2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import reasoning_gym
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

TASK = "chain_sum"
TASK_CONFIG = {"min_terms": 2, "max_terms": 2, "min_digits": 2, "max_digits": 2}
PROMPT_TEMPLATE = "{prompt}\n"  # the demo config's reasoning_gym template: question, newline, answer
EOS = "<|endoftext|>"
PAD = "<|pad|>"


def generate_items(seed: int, size: int) -> list[dict]:
    """Generate reasoning-gym items (question, answer, JSON-safe metadata)."""
    ds = reasoning_gym.create_dataset(TASK, size=size, seed=seed, **TASK_CONFIG)
    return [json.loads(json.dumps(ds[i], default=list)) for i in range(size)]


def build_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """Byte-level BPE over the task text; single-digit tokens so numbers are spelled digit by digit."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=[PAD, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens(["<answer>", "</answer>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)
    fast.padding_side = "left"
    return fast


def bare_prompt(item: dict) -> str:
    """The expression of a chain_sum item as the prompt, e.g. ``42 - 25 =`` (preamble dropped)."""
    prompt = f"{item['metadata']['expression']} ="
    if not item["question"].endswith(prompt):
        raise ValueError(f"chain_sum item {item['metadata'].get('source_index')}: question "
                         f"{item['question']!r} does not end with its expression {prompt!r}")
    return prompt


def to_row(item: dict, idx: str) -> dict:
    """A reasoning-gym item as a nemo_prorl training row (the scorer reads ``entry``, unchanged)."""
    return {"id": idx, "domain": "reasoning_gym", "prompt": bare_prompt(item), "task": TASK, "entry": item}


def encode_pair(tok, item: dict) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids + EOS) of one SFT example."""
    prompt_ids = tok(PROMPT_TEMPLATE.format(prompt=bare_prompt(item)))["input_ids"]
    resp_ids = tok(f"<answer>{item['answer']}</answer>")["input_ids"] + [tok.eos_token_id]
    return prompt_ids, resp_ids


def sft_batch(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-padded ``[B, W]`` (input ids, attention mask, labels) of (prompt, response) id pairs.

    Labels are the response ids (-100 on the prompt and the padding): the loss is on the response only.
    """
    batch, width = len(pairs), max(len(p) + len(r) for p, r in pairs)
    ids = torch.full((batch, width), pad_id)
    labels = torch.full((batch, width), -100)
    attn = torch.zeros((batch, width), dtype=torch.long)
    for b, (p, r) in enumerate(pairs):
        seq = p + r
        ids[b, : len(seq)] = torch.tensor(seq)
        labels[b, len(p): len(seq)] = torch.tensor(r)
        attn[b, : len(seq)] = 1
    return ids, attn, labels


@torch.no_grad()
def sampled_accuracy(model, tok, items: list[dict], temperature: float = 1.0) -> float:
    """Fraction of items answered exactly right with one sample each at ``temperature``."""
    model.eval()
    prompts = [PROMPT_TEMPLATE.format(prompt=bare_prompt(it)) for it in items]
    enc = tok(prompts, return_tensors="pt", padding=True)
    out = model.generate(**enc, do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
                         max_new_tokens=12, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    model.train()
    return sum(t.strip() == f"<answer>{it['answer']}</answer>" for t, it in zip(texts, items)) / len(items)


def main() -> None:
    """Generate data, build the tokenizer, SFT until the target sampled accuracy, save everything."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="nemo_prorl/assets/demo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sft-items", type=int, default=8000)
    ap.add_argument("--rl-items", type=int, default=3000)
    ap.add_argument("--val-items", type=int, default=128)
    ap.add_argument("--target-acc", type=float, default=0.15)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--check-every", type=int, default=10)
    ap.add_argument("--max-steps", type=int, default=1500)
    ap.add_argument("--hidden", type=int, default=256, help="hidden size (4 heads, 2 KV heads, MLP 4x)")
    ap.add_argument("--layers", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    sft = generate_items(1, args.sft_items)
    rl = generate_items(1_000_000, args.rl_items)
    seen = {it["metadata"]["expression"] for it in sft + rl}
    val = [it for it in generate_items(5_000_000, args.val_items * 4)
           if it["metadata"]["expression"] not in seen]
    val = val[: args.val_items]
    # the early-stopping check: held-out problems, disjoint from SFT, RL and validation prompts
    seen |= {it["metadata"]["expression"] for it in val}
    check = [it for it in generate_items(9_000_000, 512) if it["metadata"]["expression"] not in seen][:128]

    tok = build_tokenizer([PROMPT_TEMPLATE.format(prompt=bare_prompt(it)) + f"<answer>{it['answer']}</answer>"
                           for it in sft[:2000]])
    tok.save_pretrained(out)

    with open(out / "train.jsonl", "w") as fh:
        for i, it in enumerate(rl):
            fh.write(json.dumps(to_row(it, f"chain_sum-train-{i}")) + "\n")
    with open(out / "val.jsonl", "w") as fh:
        for i, it in enumerate(val):
            fh.write(json.dumps(to_row(it, f"chain_sum-val-{i}")) + "\n")

    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, torch_dtype="float32",
    )
    model = Qwen2ForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    pairs = [encode_pair(tok, it) for it in sft]
    batch = 128
    acc = 0.0
    for step in range(1, args.max_steps + 1):
        for group in opt.param_groups:  # linear warm-up, then constant
            group["lr"] = args.lr * min(1.0, step / max(1, args.warmup))
        chunk = random.sample(pairs, batch)
        ids, attn, labels = sft_batch(chunk, tok.pad_token_id)
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.check_every == 0:
            acc = sum(sampled_accuracy(model, tok, check) for _ in range(2)) / 2  # 256 samples
            elapsed = time.time() - t0
            print(f"step {step} loss {loss.item():.3f} sampled acc {acc:.3f} ({elapsed:.0f}s)", flush=True)
            if acc >= args.target_acc:
                break
    model.save_pretrained(out, safe_serialization=True)
    meta = {"task": TASK, "task_config": TASK_CONFIG, "prompt_template": PROMPT_TEMPLATE, "sft_steps": step,
            "sft_sampled_acc_heldout": acc, "sft_check_prompts": len(check), "sft_lr": args.lr,
            "sft_warmup": args.warmup, "hidden": args.hidden, "layers": args.layers,
            "seed": args.seed, "rl_rows": len(rl), "val_rows": len(val),
            "made_by": "scripts/make_demo_base.py"}
    (out / "demo_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta), f"{time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
