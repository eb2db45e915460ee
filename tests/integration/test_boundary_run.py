"""The second embedded run, `nemo-prorl train --config-name boundary` (docs/boundary.md), made tiny.

Checks what the run promises: the shipped assets have the splits the docs describe (held-out ``hard``
evaluation prompts disjoint from every training and dev prompt), the config composes, two steps train, and
the final pass@k is reported per difficulty group -- in ``passk.json`` (``pass@K/group:G``), in the
command's summary and as one curve per group in ``plots/passk.png``.
"""

from __future__ import annotations

import json

from nemo_prorl.cli import main as cli_main
from nemo_prorl.trainer.config import ASSETS, compose

TINY = ["trainer.prompts_per_step=4", "trainer.mini_batch_prompts=2", "rollout.n=4",
        "trainer.val_interval=0", "checkpoint.interval=0", "trainer.progress_bar=false",
        "logging.tensorboard=false", "reset.at_steps=[]", "reset.on_val_plateau=false",
        "trainer.max_steps=2", "final_eval.n=4", "final_eval.ks=[1,4]"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rows(name: str) -> list[dict]:
    with open(ASSETS["boundary"] / name, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_boundary_assets_hold_disjoint_grouped_splits():
    meta = json.loads((ASSETS["boundary"] / "boundary_meta.json").read_text())
    groups = list(meta["groups"])
    assert groups[-1] == "hard"
    train, val, held_out = _rows("train.jsonl"), _rows("val.jsonl"), _rows("eval.jsonl")
    for rows in (train, val, held_out):
        assert {r["group"] for r in rows} <= set(groups)
    assert {r["group"] for r in held_out} == set(groups)
    prompts = {name: {r["prompt"] for r in rows} for name, rows in
               (("train", train), ("val", val), ("eval", held_out))}
    assert not prompts["eval"] & prompts["train"] and not prompts["eval"] & prompts["val"]
    # a row's group matches its expression: hard rows have the hard group's terms and digits
    spec = meta["groups"]["hard"]
    for r in (r for r in held_out if r["group"] == "hard"):
        numbers = r["prompt"].rstrip(" =").split(" ")[::2]
        assert len(numbers) == spec["terms"] and all(len(n) == spec["digits"] for n in numbers)


def test_boundary_config_composes_and_runs_two_steps_with_per_group_passk(tmp_path, capsys):
    cfg = compose("boundary", [])
    assert cfg["model"] == "boundary" and cfg["final_eval"]["files"] == ["boundary:eval.jsonl"]
    # two held-out rows of each group, so the tiny final evaluation still covers every group
    per_group: dict[str, list[dict]] = {}
    for r in _rows("eval.jsonl"):
        if len(per_group.setdefault(r["group"], [])) < 2:
            per_group[r["group"]].append(r)
    small = tmp_path / "eval_small.jsonl"
    small.write_text("".join(json.dumps(r) + "\n" for rows in per_group.values() for r in rows))
    run = tmp_path / "run"
    argv = ["train", "--config-name", "boundary", *TINY, f"run_dir={run}", f"final_eval.files=[{small}]"]
    assert cli_main(argv) == 0, capsys.readouterr().err[-3000:]
    out = capsys.readouterr().out

    curves = json.loads((run / "passk.json").read_text())["curves"]
    for label in ("base", "final"):
        for group in per_group:
            assert curves[label][f"problems/group:{group}"] == 2.0
            for k in (1, 4):
                assert 0.0 <= curves[label][f"pass@{k}/group:{group}"] <= 1.0
        # the overall number is the mean over all problems, i.e. the groups' means weighted by size
        mean = sum(curves[label][f"pass@1/group:{g}"] for g in per_group) / len(per_group)
        assert abs(curves[label]["pass@1"] - mean) < 1e-9
    for group in per_group:
        assert f"pass@k final [{group}]" in out and f"pass@k base  [{group}]" in out
    assert (run / "plots" / "passk.png").read_bytes()[:8] == PNG_MAGIC
