"""reasoning-gym generation (JSON-safe, still scoreable), atomic writes, and the `data` CLI."""

from __future__ import annotations

import json
import os
from fractions import Fraction

import numpy as np
import pytest

from nemo_prorl.cli import main as nemo_main
from nemo_prorl.data.reasoning_gym_gen import (
    GenerationError,
    generate_rows,
    restore_entry,
    to_json_value,
    write_jsonl_atomic,
)
from nemo_prorl.schema import check_training_row

# tasks with tuples in metadata (basic_arithmetic), None answers (propositional_logic), grids (arc_1d, rearc)
TASKS = ["basic_arithmetic", "letter_counting", "propositional_logic", "arc_1d", "rearc"]


def test_to_json_value():
    value = {"t": (1, (2, 3)), "s": {3, 1}, 4: np.int64(7), "f": np.float32(0.5), "q": Fraction(1, 3),
             "nan": float("nan"), "arr": np.arange(3)}
    assert to_json_value(value) == {"t": [1, [2, 3]], "s": [1, 3], "4": 7, "f": 0.5, "q": "1/3",
                                    "nan": "nan", "arr": [0, 1, 2]}


def test_generated_rows_are_json_and_scoreable():
    import reasoning_gym

    rows = list(generate_rows(TASKS, size=3, seed=123))
    assert len(rows) == 3 * len(TASKS)
    assert rows[0]["id"] == "basic_arithmetic-123-0"
    for row in rows:
        line = json.dumps(row)  # JSON-serialisable as is
        back = json.loads(line)
        assert check_training_row(back) == []
        assert back["prompt"] == back["entry"]["question"]
        ds = reasoning_gym.create_dataset(back["task"], size=3, seed=123)
        entry = restore_entry(back["task"], back["entry"])
        if back["entry"]["answer"] is not None:
            assert ds.score_answer(back["entry"]["answer"], entry) == 1.0
        # a wrong answer still scores below 1 after the round trip
        assert ds.score_answer("definitely not it", entry) < 1.0


def test_restore_entry_needed_only_for_grid_tasks():
    import reasoning_gym

    row = next(generate_rows(["rearc"], size=1, seed=5))
    ds = reasoning_gym.create_dataset("rearc", size=1, seed=5)
    assert ds.score_answer(row["entry"]["answer"], row["entry"]) < 1.0  # plain JSON: lists != tuples
    assert ds.score_answer(row["entry"]["answer"], restore_entry("rearc", row["entry"])) == 1.0
    other = {"question": "q", "answer": "a", "metadata": {"x": [1]}}
    assert restore_entry("basic_arithmetic", other) == other


def test_generation_errors():
    with pytest.raises(GenerationError, match="unknown reasoning-gym task.*no_such_task"):
        list(generate_rows(["no_such_task"], 2, 0))
    with pytest.raises(GenerationError, match="not being generated: countdown"):
        list(generate_rows(["basic_arithmetic"], 2, 0, config={"countdown": {}}))
    with pytest.raises(GenerationError, match="basic_arithmetic: cannot create the dataset"):
        list(generate_rows(["basic_arithmetic"], 2, 0, config={"basic_arithmetic": {"no_such_knob": 1}}))


def test_config_changes_items_and_seed_is_deterministic():
    a = list(generate_rows(["basic_arithmetic"], 4, 1))
    b = list(generate_rows(["basic_arithmetic"], 4, 1))
    five = {"basic_arithmetic": {"min_terms": 5, "max_terms": 5}}
    c = list(generate_rows(["basic_arithmetic"], 4, 1, config=five))
    assert a == b
    assert all(r["entry"]["metadata"]["num_terms"] == 5 for r in c)


def test_atomic_write_leaves_target_untouched_on_error(tmp_path):
    out = tmp_path / "rows.jsonl"
    out.write_text("old\n")

    def rows():
        yield {"id": 1}
        raise RuntimeError("generator failed")

    with pytest.raises(RuntimeError):
        write_jsonl_atomic(rows(), str(out))
    assert out.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["rows.jsonl"]  # no temp file left behind
    assert write_jsonl_atomic([{"id": 1}, {"id": 2}], str(out)) == 2
    assert out.read_text() == '{"id": 1}\n{"id": 2}\n'


def test_cli_reasoning_gym_then_check(tmp_path, capsys):
    out = tmp_path / "rg.jsonl"
    rc = nemo_main(["data", "reasoning-gym", "--tasks", "letter_counting,basic_arithmetic", "--size", "3",
                    "--seed", "9", "--out", str(out), "--no-progress",
                    "--config-json", '{"basic_arithmetic": {"min_terms": 2, "max_terms": 2}}'])
    assert rc == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[3])["entry"]["metadata"]["num_terms"] == 2
    capsys.readouterr()
    assert nemo_main(["data", "check", str(out), "--policy", "fail"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kept"] == 6 and summary["kept_by_domain"] == {"reasoning_gym": 6}
    assert nemo_main(["data", "reasoning-gym", "--tasks", "nope", "--size", "1", "--seed", "0",
                      "--out", str(tmp_path / "x.jsonl")]) == 2
    assert not (tmp_path / "x.jsonl").exists()


def test_cli_check_policies_and_long_prompts(tmp_path, capsys, tokenizer_dir):
    path = tmp_path / "rows.jsonl"
    inst = [{"id": "x", "kwargs": {}}]
    path.write_text(
        json.dumps({"id": "ok", "domain": "ifeval", "prompt": "hi", "instructions": inst})
        + "\n" + json.dumps({"id": "long", "domain": "ifeval", "prompt": "h" * 50, "instructions": inst})
        + "\n{broken\n"
    )
    kept = tmp_path / "kept.jsonl"
    # chat template "<|user|>{p}<|end|><|assistant|>" adds 28 characters = tokens
    argv = ["data", "check", str(path), "--tokenizer", tokenizer_dir, "--max-prompt-tokens", "40",
            "--no-reward-checks"]
    assert nemo_main(argv + ["--write-kept", str(kept)]) == 0  # skip policy
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["too_long_ids"] == ["long"] and summary["kept"] == 1 and summary["skipped"] == 2
    assert f"{path}:3:<row>: broken JSON" in captured.err
    assert f"{path}:2:prompt: too long (78 tokens > 40); id 'long' filtered" in captured.err
    assert [json.loads(x)["id"] for x in kept.read_text().splitlines()] == ["ok"]
    assert nemo_main(argv + ["--policy", "fail"]) == 1
    assert nemo_main(["data", "check", str(tmp_path / "missing.jsonl")]) == 2
    assert nemo_main(["data", "nope"]) == 2
