"""The rollout batch as tensors, not pickles: rank 0 -> every rank (groups), replicas -> rank 0 (samples).

Rank 0 generates and scores; every rank then needs the batch to build its token batch. Pickling the
groups (``broadcast_object_list``) serialises every token id as a Python int inside nested objects on
the host, and on NCCL stages the pickle through the GPU byte by byte. Here the bulk travels as a few flat
tensors through :func:`nemo_prorl.collectives.broadcast` (on NCCL: on the current GPU), and only the
small per-group metadata the other ranks use (row id and domain, reward statuses, finish reasons, which
samples have log-probs) plus the step's scalar metrics travel as UTF-8 JSON in a byte tensor -- JSON, so
nothing executable is ever decoded.

Wire format (``G`` groups, ``S`` samples, every tensor 1-D):

* ``sizes`` int64 ``[5]``: header bytes, G, S, total prompt+response tokens, total response tokens;
* ``header`` uint8 ``[sizes[0]]``: JSON ``{"metrics", "groups": [{"id", "domain", "statuses", "finish",
  "has_lp"}] | null}``;
* ``counts`` int64 ``[2G + S]``: per group (prompt length, samples), then each sample's response length;
* ``tokens`` int64: per group its prompt ids, then its samples' response ids, in order;
* ``rewards`` float64 ``[2S]``: raw rewards then shaped rewards;
* ``logprobs`` float32 ``[total response tokens]`` (zeros where a sample has none).

Receiving ranks get groups whose rows hold only ``id`` and ``domain`` and whose samples have empty
``text`` (rank 0 alone logs texts); everything the update and the metrics read is exact.

The colocated driver's gather of each replica's samples to rank 0 uses the same idea
(:func:`gather_outputs`: a JSON header with the texts, the token ids and the log-probs as tensors).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import torch

from nemo_prorl import collectives
from nemo_prorl.rollout.base import GenerationOutput, Sample


def pack_groups(groups: Sequence[Any] | None, metrics: dict[str, Any]) -> list[torch.Tensor]:
    """Rank 0: the tensors of the wire format (see the module docstring).

    Args:
        groups: objects with ``row``, ``prompt_ids``, ``samples``, ``rewards``, ``shaped``, ``statuses``
            (the trainer's ``Group``); ``None`` when the step was abandoned.
        metrics: the rollout metrics (JSON-able scalars and strings).

    Returns:
        ``[sizes, header, counts, tokens, rewards, logprobs]``.

    """
    meta: list[dict[str, Any]] = []
    counts: list[int] = []
    lengths: list[int] = []
    tokens: list[int] = []
    raw: list[float] = []
    shaped: list[float] = []
    lps: list[torch.Tensor] = []
    for g in groups or []:
        counts += [len(g.prompt_ids), len(g.samples)]
        tokens += [int(t) for t in g.prompt_ids]
        for s in g.samples:
            n = len(s.token_ids)
            lengths.append(n)
            tokens += [int(t) for t in s.token_ids]
            lps.append(torch.zeros(n) if s.logprobs is None
                       else s.logprobs.detach().float().reshape(-1)[:n].cpu())
        meta.append({"id": g.row.get("id"), "domain": g.row.get("domain"), "statuses": list(g.statuses),
                     "finish": [s.finish_reason for s in g.samples],
                     "has_lp": [s.logprobs is not None for s in g.samples]})
        raw += [float(r) for r in g.rewards]
        shaped += [float(r) for r in g.shaped]
    header = json.dumps({"metrics": metrics, "groups": None if groups is None else meta},
                        default=str).encode("utf-8")
    logprobs = torch.cat(lps) if lps else torch.zeros(0)
    sizes = torch.tensor([len(header), len(meta), len(lengths), len(tokens), logprobs.numel()],
                         dtype=torch.int64)
    return [sizes, torch.frombuffer(bytearray(header), dtype=torch.uint8),
            torch.tensor(counts + lengths, dtype=torch.int64), torch.tensor(tokens, dtype=torch.int64),
            torch.tensor(raw + shaped, dtype=torch.float64), logprobs.to(torch.float32)]


def unpack_groups(tensors: Sequence[torch.Tensor], make_group: Callable[..., Any]) -> tuple[Any, dict]:
    """Other ranks: ``(groups or None, metrics)`` from :func:`pack_groups`'s tensors.

    Args:
        tensors: ``[sizes, header, counts, tokens, rewards, logprobs]``.
        make_group: ``make_group(row, prompt_ids, samples, rewards, shaped, statuses)`` (the trainer's
            ``Group``).

    """
    sizes, header, counts, tokens, rewards, logprobs = tensors
    doc = json.loads(bytes(header.cpu().numpy().tobytes()).decode("utf-8"))
    if doc["groups"] is None:
        return None, doc["metrics"]
    n_groups, n_samples = int(sizes[1]), int(sizes[2])
    counts_l, tokens_l = counts.tolist(), tokens.tolist()
    lengths = counts_l[2 * n_groups:]
    raw, shaped = rewards[:n_samples].tolist(), rewards[n_samples:].tolist()
    groups, tok_at, lp_at, s_at = [], 0, 0, 0
    for gi, meta in enumerate(doc["groups"]):
        p_len, n = counts_l[2 * gi], counts_l[2 * gi + 1]
        prompt = tokens_l[tok_at:tok_at + p_len]
        tok_at += p_len
        samples = []
        for j in range(n):
            r_len = lengths[s_at + j]
            lp = logprobs[lp_at:lp_at + r_len].clone() if meta["has_lp"][j] else None
            samples.append(Sample(prompt_index=gi, prompt_token_ids=prompt,
                                  token_ids=tokens_l[tok_at:tok_at + r_len], text="", logprobs=lp,
                                  finish_reason=meta["finish"][j]))
            tok_at += r_len
            lp_at += r_len
        groups.append(make_group({"id": meta["id"], "domain": meta["domain"]}, prompt, samples,
                                 raw[s_at:s_at + n], shaped[s_at:s_at + n], list(meta["statuses"])))
        s_at += n
    return groups, doc["metrics"]


def broadcast_rollout_batch(
    groups: Sequence[Any] | None, metrics: dict[str, Any] | None, make_group: Callable[..., Any]
) -> tuple[Any, dict]:
    """Every rank: rank 0's ``(groups, metrics)`` everywhere, sent as tensors (collective).

    Rank 0 keeps its own objects (texts and full rows included); the other ranks get
    :func:`unpack_groups`'s reconstruction. Without a process group (or a world of one) it is the identity.
    """
    if collectives.world_size() == 1:
        return groups, metrics or {}
    import torch.distributed as dist

    if dist.get_rank() == 0:
        parts = pack_groups(groups, metrics or {})
        collectives.broadcast(parts[0], src=0)
        for t in parts[1:]:
            collectives.broadcast(t, src=0)
        return groups, metrics or {}
    sizes = collectives.broadcast(torch.zeros(5, dtype=torch.int64), src=0)
    h, g, s, t, r = (int(x) for x in sizes)
    shapes = [(torch.uint8, h), (torch.int64, 2 * g + s), (torch.int64, t), (torch.float64, 2 * s),
              (torch.float32, r)]
    parts = [sizes] + [collectives.broadcast(torch.empty(n, dtype=dt), src=0) for dt, n in shapes]
    return unpack_groups(parts, make_group)


# ------------------------------------------------------------------------------- replica outputs
def pack_output(out: GenerationOutput | None) -> list[torch.Tensor]:
    """One replica's generate output as ``[header uint8 (JSON), tokens int64, logprobs float32]``.

    Per sample the tokens are its prompt ids then its response ids; the header holds the prompt and
    response lengths, prompt index, text (JSON-escaped: model text is never evaluated), finish reason,
    whether it has log-probs, and the output's timings and skipped prompts. ``None`` packs as ``null``.
    """
    if out is None:
        return [torch.frombuffer(bytearray(b"null"), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64),
                torch.zeros(0, dtype=torch.float32)]
    meta, tokens, lps = [], [], []
    for s in out.samples:
        meta.append([len(s.prompt_token_ids), len(s.token_ids), s.prompt_index, s.text, s.finish_reason,
                     s.logprobs is not None])
        tokens += [int(t) for t in s.prompt_token_ids] + [int(t) for t in s.token_ids]
        if s.logprobs is not None:
            lps.append(s.logprobs.detach().float().reshape(-1)[: len(s.token_ids)].cpu())
    header = json.dumps({"samples": meta, "timings": out.timings, "skipped": list(out.skipped_prompts)})
    return [torch.frombuffer(bytearray(header.encode("utf-8")), dtype=torch.uint8),
            torch.tensor(tokens, dtype=torch.int64), torch.cat(lps) if lps else torch.zeros(0)]


def unpack_output(parts: Sequence[torch.Tensor]) -> GenerationOutput | None:
    """The inverse of :func:`pack_output`."""
    header, tokens, logprobs = parts
    doc = json.loads(bytes(header.cpu().numpy().tobytes()).decode("utf-8"))
    if doc is None:
        return None
    toks = tokens.tolist()
    samples, at, lp_at = [], 0, 0
    for p_len, r_len, index, text, finish, has_lp in doc["samples"]:
        lp = None
        if has_lp:
            lp = logprobs[lp_at:lp_at + r_len].clone()
            lp_at += r_len
        samples.append(Sample(prompt_index=index, prompt_token_ids=toks[at:at + p_len],
                              token_ids=toks[at + p_len:at + p_len + r_len], text=text, logprobs=lp,
                              finish_reason=finish))
        at += p_len + r_len
    return GenerationOutput(samples=samples, timings=doc["timings"], skipped_prompts=doc["skipped"])


def gather_outputs(
    out: GenerationOutput | None, group: Any, to_all: bool
) -> list[GenerationOutput | None] | None:
    """Every rank's output (group-rank order) on global rank 0, or everywhere with ``to_all``; else None.

    Sizes first, then each of the three tensors padded to the largest (``all_gather`` over ``group``; the
    driver's group is gloo, so this stays on the host).
    """
    import torch.distributed as dist

    parts = pack_output(out)
    sizes = torch.tensor([p.numel() for p in parts], dtype=torch.int64)
    all_sizes = [s.tolist() for s in collectives.all_gather(sizes, group=group)]
    gathered = []
    for k, p in enumerate(parts):
        padded = torch.zeros(max(s[k] for s in all_sizes), dtype=p.dtype)
        padded[: p.numel()] = p
        gathered.append(collectives.all_gather(padded, group=group))
    if not to_all and dist.get_rank() != 0:
        return None
    return [unpack_output([gathered[k][r][: all_sizes[r][k]] for k in range(3)])
            for r in range(len(all_sizes))]
