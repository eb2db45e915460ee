"""Sample n responses per prompt with a rollout engine, score them, summarise per domain.

Used by validation inside training (so the reset callback's plateau trigger reads the same numbers a user
evaluates with) and by ``nemo-prorl eval``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from nemo_prorl.eval.passk import pass_at_k, pass_at_k_by_group
from nemo_prorl.rollout.base import RolloutEngine, SamplingParams
from nemo_prorl.schema import DOMAINS

#: domains whose reward is binary (pass@k is defined on "reward == 1")
BINARY_DOMAINS = frozenset({"math", "mcq"})
GROUND_TRUTH_KEYS = ("domain", "answer", "options", "tests", "entry_point", "task", "entry", "instructions")


def scoring_row(row: Mapping[str, Any], response: str) -> dict[str, Any]:
    """The row a reward scores: the ground-truth fields of ``row`` plus ``response``.

    A built-in domain's fields are :data:`GROUND_TRUTH_KEYS`; a plug-in domain (a reward from the
    ``nemo_prorl.rewards`` entry points, ``docs/plugins.md``) declares none, so its reward gets every
    field of the row but ``id`` (its ground truth may use any names; ``prompt`` included).
    """
    if row.get("domain") in DOMAINS:
        out = {k: row[k] for k in GROUND_TRUTH_KEYS if k in row}
    else:
        out = {k: v for k, v in row.items() if k != "id"}
    out["response"] = response
    return out


def sample_and_score(
    engine: RolloutEngine,
    rows: Sequence[Mapping[str, Any]],
    prompt_ids: Sequence[list[int]],
    *,
    n: int,
    sampling: SamplingParams,
    score: Callable[[list[dict]], list[Any]],
    batch_prompts: int = 64,
    on_batch: Callable[[list[dict]], None] | None = None,
) -> list[dict[str, Any]]:
    """Generate ``n`` samples for each row and score them.

    Args:
        engine: the rollout engine.
        rows: validated rows (``id``, ``domain`` and ground truth).
        prompt_ids: tokenized prompts, one per row.
        n: samples per prompt.
        sampling: sampling parameters (its seed makes the run reproducible).
        score: ``rows -> list[RewardResult]`` (e.g. ``RewardPool.score``).
        batch_prompts: prompts per generate call.
        on_batch: called with each batch's per-row records as soon as they exist (for resumable output).

    Returns:
        One record per row: ``{"id", "domain", "rewards": [n floats], "statuses": [n], "correct": [n bools],
        "lengths": [n ints], "finish_reasons": [n], "responses": [n str]}``, plus the row's difficulty
        ``group`` when it has one.

    """
    records: list[dict[str, Any]] = []
    for start in range(0, len(rows), batch_prompts):
        chunk = rows[start:start + batch_prompts]
        out = engine.generate(list(prompt_ids[start:start + batch_prompts]), n, sampling)
        by_prompt: dict[int, list[Any]] = defaultdict(list)
        for s in out.samples:
            by_prompt[s.prompt_index].append(s)
        flat_rows, owners = [], []
        for i, row in enumerate(chunk):
            for s in by_prompt.get(i, []):
                flat_rows.append(scoring_row(row, s.text))
                owners.append((i, s))
        results = score(flat_rows)
        batch_records = []
        for row in chunk:
            batch_records.append({"id": row.get("id"), "domain": row["domain"], "rewards": [], "statuses": [],
                                  "correct": [], "lengths": [], "finish_reasons": [], "responses": []})
            if row.get("group") is not None:
                batch_records[-1]["group"] = row["group"]
        for (i, s), res in zip(owners, results):
            rec = batch_records[i]
            rec["rewards"].append(float(res.score))
            rec["statuses"].append(res.status)
            rec["correct"].append(bool(res.status == "ok" and res.score >= 1.0))
            rec["lengths"].append(len(s.token_ids))
            rec["finish_reasons"].append(s.finish_reason)
            rec["responses"].append(s.text)
        if on_batch is not None:
            on_batch(batch_records)
        records.extend(batch_records)
    return records


def summarize(
    records: Sequence[Mapping[str, Any]], ks: Sequence[int] = (1,), prefix: str = ""
) -> dict[str, float]:
    """Per-domain and overall numbers from :func:`sample_and_score` records.

    ``reward/mean`` is the mean reward over all samples (pass@1 for binary domains, the mean continuous
    reward otherwise, as ProRL reports); ``pass@k`` uses the unbiased estimator on ``reward == 1``.
    Keys: ``{prefix}reward/mean``, ``{prefix}reward/<domain>``, ``{prefix}pass@K``,
    ``{prefix}pass@K/<domain>``, ``{prefix}response_length/mean``, ``{prefix}status/<status>``; records with
    a difficulty ``group`` add ``{prefix}pass@K/group:<group>`` and ``{prefix}problems/group:<group>``
    (:func:`nemo_prorl.eval.passk.pass_at_k_by_group`).
    """
    out: dict[str, float] = {}
    if not records:
        return out
    by_domain: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        by_domain[r["domain"]].append(r)

    def block(recs: Sequence[Mapping[str, Any]], suffix: str) -> None:
        rewards = [x for r in recs for x in r["rewards"]]
        if not rewards:
            return
        out[f"{prefix}reward/{'mean' if not suffix else suffix[1:]}"] = math.fsum(rewards) / len(rewards)
        for k in ks:
            vals = [pass_at_k(len(r["correct"]), sum(r["correct"]), k)
                    for r in recs if len(r["correct"]) >= k]
            if vals:
                out[f"{prefix}pass@{k}{suffix}"] = math.fsum(vals) / len(vals)

    block(records, "")
    for dom, recs in sorted(by_domain.items()):
        block(recs, f"/{dom}")
    for key, value in pass_at_k_by_group(records, ks).items():
        out[f"{prefix}{key}"] = value
    lengths = [x for r in records for x in r["lengths"]]
    if lengths:
        out[f"{prefix}response_length/mean"] = sum(lengths) / len(lengths)
    statuses: dict[str, int] = defaultdict(int)
    for r in records:
        for s in r["statuses"]:
            statuses[s] += 1
    total = sum(statuses.values())
    for s, c in statuses.items():
        out[f"{prefix}status/{s}"] = c / total
    return out


#: ``nemo-prorl eval``'s response budget when neither it nor the prompt budget is given (if the model fits it)
DEFAULT_MAX_TOKENS = 1024


def fit_lengths(positions: int, longest_prompt: int, max_tokens: int | None = None,
                max_prompt_tokens: int | None = None) -> tuple[int, int, str | None]:
    """Split a model's ``positions`` between prompt and response: ``(max_prompt, max_tokens, note)``.

    The rule (``nemo-prorl eval``, the flags ``--max-tokens`` / ``--max-prompt-tokens``):

    * both given: used as given;
    * only ``max_prompt_tokens``: the response gets the rest, ``positions - max_prompt_tokens``;
    * only ``max_tokens``: the prompt gets the rest, ``positions - max_tokens``;
    * neither: the prompt budget is the longest prompt of the data, the response gets
      ``min(DEFAULT_MAX_TOKENS, positions - longest_prompt)``.

    ``note`` says what was derived (``None`` when both were given). Raises ``ValueError`` naming the
    flag to change when no room is left for a prompt or a response.

    Example: the demo model (128 positions) with 8-token prompts and no flags -> ``(8, 120, note)``.
    """
    if positions < 2:
        raise ValueError(f"the model has {positions} position(s): no room for a prompt and a response")
    if max_tokens is not None and max_prompt_tokens is not None:
        return max_prompt_tokens, max_tokens, None
    if max_tokens is None:
        prompt = longest_prompt if max_prompt_tokens is None else max_prompt_tokens
        room = positions - prompt
        if room < 1:
            flag = "--max-prompt-tokens" if max_prompt_tokens is not None else "the longest prompt"
            raise ValueError(f"{flag} ({prompt} tokens) leaves no room for a response in the model's "
                             f"{positions} positions; shorten the prompts or use a model with more positions")
        tokens = room if max_prompt_tokens is not None else min(DEFAULT_MAX_TOKENS, room)
        src = (f"--max-prompt-tokens {prompt}" if max_prompt_tokens is not None
               else f"the longest prompt, {prompt} tokens")
        cap = "" if max_prompt_tokens is not None else f", at most {DEFAULT_MAX_TOKENS}"
        return prompt, tokens, (f"--max-tokens not given: using {tokens} (the model's {positions} positions "
                                f"minus {src}{cap})")
    room = positions - max_tokens
    fits = positions - longest_prompt
    if room < 1:
        hint = (f"--max-tokens {fits} or less fits the longest prompt ({longest_prompt} tokens)" if fits >= 1
                else f"the longest prompt ({longest_prompt} tokens) alone fills them")
        raise ValueError(f"--max-tokens {max_tokens} leaves no room for a prompt in the model's {positions} "
                         f"positions; {hint}")
    note = (f"--max-prompt-tokens not given: using {room} (the model's {positions} positions minus "
            f"--max-tokens {max_tokens})")
    if room < longest_prompt:
        note += f"; prompts longer are skipped (the longest has {longest_prompt} tokens)"
    return room, max_tokens, note
