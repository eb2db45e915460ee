"""The rollout batch broadcast as tensors: exact round trip in one process and across 2 gloo ranks.

On NCCL the same tensors go through :func:`nemo_prorl.collectives.broadcast`, which stages them on the
current GPU (``tests/unit/test_collectives.py`` covers the placement); here gloo moves them on the host.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket

import torch
import torch.multiprocessing as mp

from nemo_prorl.rollout.base import GenerationOutput, Sample
from nemo_prorl.trainer.batch_broadcast import (
    broadcast_rollout_batch,
    gather_outputs,
    pack_groups,
    pack_output,
    unpack_groups,
    unpack_output,
)


@dataclasses.dataclass
class _Group:
    """The fields of ``nemo_prorl.trainer.trainer.Group`` (the spawned ranks skip importing the trainer)."""

    row: dict
    prompt_ids: list
    samples: list
    rewards: list
    shaped: list
    statuses: list


def _groups(Group=_Group) -> list:
    def sample(i, toks, lp, finish):
        lps = None if lp is None else torch.tensor(lp)
        return Sample(i, [5, 6, 7], toks, "text " + str(toks), lps, finish)

    return [
        Group({"id": "q1", "domain": "math", "prompt": "p", "answer": "3"}, [5, 6, 7],
              [sample(0, [9, 10], [-0.5, -1.25], "stop"), sample(0, [11], [-2.0], "length")],
              [1.0, 0.0], [0.75, -0.25], ["ok", "no_answer"]),
        Group({"id": 7, "domain": "code"}, [8],
              [sample(1, [], None, "stop"), sample(1, [12, 13, 14], None, "length")],
              [0.5, 0.25], [0.5, 0.25], ["ok", "timeout"]),
    ]


def _view(groups):
    return [(g.row["id"], g.row["domain"], list(g.prompt_ids), g.rewards, g.shaped, g.statuses,
             [(s.token_ids, None if s.logprobs is None else s.logprobs.tolist(), s.finish_reason)
              for s in g.samples]) for g in groups]


def test_pack_unpack_round_trip_hand_values():
    from nemo_prorl.trainer.trainer import Group

    assert [f.name for f in dataclasses.fields(Group)] == [f.name for f in dataclasses.fields(_Group)]
    groups = _groups(Group)
    metrics = {"time/generate": 1.5, "_failing": "[]", "reward/error_rate": float("nan")}
    parts = pack_groups(groups, metrics)
    sizes, header, counts, tokens, rewards, logprobs = parts
    # 2 groups, 4 samples, 3 + 2 + 1 + 1 + 0 + 3 tokens, 2 + 1 + 0 + 3 response tokens
    assert sizes.tolist()[1:] == [2, 4, 10, 6]
    assert counts.tolist() == [3, 2, 1, 2, 2, 1, 0, 3]
    assert tokens.tolist() == [5, 6, 7, 9, 10, 11, 8, 12, 13, 14]
    assert rewards.tolist() == [1.0, 0.0, 0.5, 0.25, 0.75, -0.25, 0.5, 0.25]
    assert logprobs.tolist() == [-0.5, -1.25, -2.0, 0.0, 0.0, 0.0]
    assert header.dtype == torch.uint8 and b"\"answer\"" not in bytes(header.numpy().tobytes())
    got, got_metrics = unpack_groups(parts, Group)
    assert _view(got) == _view(groups)
    assert got_metrics["time/generate"] == 1.5 and got_metrics["reward/error_rate"] != 0.0  # NaN kept
    assert all(s.text == "" for g in got for s in g.samples)
    none, m = unpack_groups(pack_groups(None, {"_abandoned_after_rounds": 2}), Group)
    assert none is None and m == {"_abandoned_after_rounds": 2}


def _output(rank: int) -> GenerationOutput:
    """A replica's output; the texts hold what a pickle-free path must carry (quotes, newlines, non-ASCII)."""
    text = 'a "quoted"\nline \u00e9\ud83d'
    samples = [Sample(2 * rank, [1, 2], [3 + rank, 4], text, torch.tensor([-0.5, -1.5]), "stop"),
               Sample(2 * rank + 1, [7], [], "", None, "length")]
    return GenerationOutput(samples, timings={"generate_s": 1.0 + rank}, skipped_prompts=[9])


def _out_view(out):
    if out is None:
        return None
    return ([(s.prompt_index, s.prompt_token_ids, s.token_ids, s.text, s.finish_reason,
              None if s.logprobs is None else s.logprobs.tolist()) for s in out.samples],
            out.timings, out.skipped_prompts)


def test_pack_unpack_output_round_trip():
    out = _output(1)
    header, tokens, logprobs = pack_output(out)
    assert tokens.tolist() == [1, 2, 4, 4, 7] and logprobs.tolist() == [-0.5, -1.5]
    assert _out_view(unpack_output([header, tokens, logprobs])) == _out_view(out)
    assert unpack_output(pack_output(None)) is None


def _worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        for groups, metrics in ((_groups(), {"a": 1.0}), (None, {"_abandoned_after_rounds": 1})):
            got, m = broadcast_rollout_batch(groups if rank == 0 else None, metrics if rank == 0 else None,
                                             _Group)
            if rank == 1:
                with open(out, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"groups": None if got is None else _view(got), "metrics": m}) + "\n")
        # replica outputs to rank 0 (and to all); rank 1 has none in the first call
        got = gather_outputs(_output(rank) if rank == 0 else None, None, to_all=False)
        every = gather_outputs(_output(rank), None, to_all=True)
        with open(out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"rank": rank, "gather": None if got is None else [_out_view(o) for o in got],
                                 "all": [_out_view(o) for o in every]}) + "\n")
    finally:
        dist.destroy_process_group()


def test_broadcast_across_two_gloo_ranks(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "rank1.jsonl")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(port, out), nprocs=2, join=True)
    lines = [json.loads(x) for x in open(out, encoding="utf-8")]
    batches = [x for x in lines if "groups" in x]
    assert batches[0]["groups"] == json.loads(json.dumps(_view(_groups())))
    assert batches[0]["metrics"] == {"a": 1.0}
    assert batches[1] == {"groups": None, "metrics": {"_abandoned_after_rounds": 1}}
    gathers = {x["rank"]: x for x in lines if "gather" in x}
    want = json.loads(json.dumps([_out_view(_output(0)), _out_view(_output(1))]))
    assert gathers[0]["gather"] == [want[0], None] and gathers[1]["gather"] is None
    assert gathers[0]["all"] == want and gathers[1]["all"] == want
