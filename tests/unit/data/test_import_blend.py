"""``nemo-prorl data import`` / ``blend`` / ``reasoning-gym --preset``: hand-made sources, hand-checked rows.

The parquet files mimic the releases' layout: verl's ``examples/data_preprocess`` scripts (``gsm8k.py``,
``math_dataset.py``) write ``data_source``, ``prompt`` (chat messages), ``ability``, ``reward_model``
``{style, ground_truth}`` and ``extra_info`` ``{split, index}``; PRIME's Eurus-2-RL-Data code rows keep a
JSON string ``{"inputs": [...], "outputs": [...]}`` as ground truth. The ``datasets`` folder is written by
``Dataset.save_to_disk`` and read back with ``load_from_disk``, as on a user's offline machine.
"""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nemo_prorl.data import cli
from nemo_prorl.data.blend import PRORL_OOD_TASKS, build_blend, pick_rows, prompt_hash, prorl_tasks
from nemo_prorl.data.importers import (
    SkipRow,
    cases_from_ground_truth,
    convert_gpqa,
    convert_ifeval,
    convert_scp,
    convert_verl,
    import_rows,
    iter_source,
    strip_instruction,
)

DSR_SUFFIX = " Let's think step by step and output the final answer within \\boxed{}."
EURUS_CODE_SUFFIX = (
    "\n\nWrite Python code to solve the problem. Present the code in \n```python\nYour code\n```\nat the end."
)


def _verl(source, content, ability, gt, index, system=None):
    prompt = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": content}
    ]
    return {
        "data_source": source,
        "prompt": prompt,
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": gt},
        "extra_info": {"split": "train", "index": index},
    }


def _write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def _run(capsys, argv):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, json.loads(out.strip().splitlines()[-1]) if out.strip() else None, err


def _read(path):
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


# ------------------------------------------------------------------------------------------- pure parts
def test_strip_instruction_removes_release_suffixes_only():
    assert strip_instruction("What is 1+1?" + DSR_SUFFIX) == "What is 1+1?"
    assert strip_instruction("Sum two ints." + EURUS_CODE_SUFFIX) == "Sum two ints."
    assert (
        strip_instruction("Find x.\n\nPresent the answer in LaTex format: \\boxed{Your answer}") == "Find x."
    )
    assert strip_instruction("Plain question?  ") == "Plain question?"


def test_cases_from_ground_truth_forms():
    assert cases_from_ground_truth('{"inputs": ["1 2\\n", ["3", "4"]], "outputs": ["3\\n", "7"]}') == [
        {"input": "1 2\n", "output": "3\n"},
        {"input": "3\n4", "output": "7"},
    ]
    assert cases_from_ground_truth('["assert f(1) == 2"]') == [{"assert": "assert f(1) == 2"}]
    for bad, why in [
        ("{oops", "not valid JSON"),
        ('{"inputs": ["1"], "outputs": []}', "1 inputs but 0 outputs"),
        ('{"fn_name": "f", "inputs": [[1]], "outputs": [[2]]}', "call-based"),
        ('{"inputs": [1], "outputs": ["1"]}', "case 0: input/output are not text"),
    ]:
        with pytest.raises(SkipRow) as exc:
            cases_from_ground_truth(bad)
        assert exc.value.field == "reward_model.ground_truth" and why in exc.value.reason


def test_convert_verl_math_and_code_rows():
    row = convert_verl(
        _verl("deepscaler", "Compute $2^{10}$." + DSR_SUFFIX, "math", "1024", 17), "0", prefix="dsr"
    )
    assert row == {"id": "dsr-17", "domain": "math", "prompt": "Compute $2^{10}$.", "answer": "1024"}
    code = convert_verl(
        _verl(
            "codecontests",
            "Read a and b, print a+b." + EURUS_CODE_SUFFIX,
            "code",
            json.dumps({"inputs": ["1 2\n"], "outputs": ["3\n"]}),
            5,
            system="You are ...",
        ),
        "0",
        prefix="eurus",
    )
    assert code == {
        "id": "eurus-5",
        "domain": "code",
        "prompt": "Read a and b, print a+b.",
        "tests": [{"input": "1 2\n", "output": "3\n"}],
    }
    # a whole solution as ground truth (some verl-style sets): its last \boxed{} is the answer
    sol = convert_verl(
        _verl("math", "Q", "math", "So $x=\\frac{1}{2}$, i.e. $\\boxed{\\frac{1}{2}}$.", 3), "0"
    )
    assert sol["answer"] == "\\frac{1}{2}"
    with pytest.raises(SkipRow, match="unsupported ability 'chemistry'"):
        convert_verl(_verl("x", "q", "chemistry", "a", 1), "0")


def test_convert_scp_uses_judged_r1_boxed_answer():
    rec = {
        "domain": "physics",
        "problem": "A 2 kg mass at 3 m/s. Kinetic energy?",
        "matched_solution": "E = 1/2 m v^2 = 9 J",
        "r1_solution": "E=\\frac{1}{2}mv^2 so \\boxed{9\\,\\text{J}}",
        "is_r1_solution_same_with_matched_solution": True,
        "o1_solution": "\\boxed{8 J}",
        "is_o1_solution_same_with_matched_solution": False,
    }
    assert convert_scp(rec, "4") == {
        "id": "scp-4",
        "domain": "math",
        "prompt": "A 2 kg mass at 3 m/s. Kinetic energy?",
        "answer": "9\\,\\text{J}",
    }
    with pytest.raises(SkipRow) as exc:
        convert_scp({**rec, "is_r1_solution_same_with_matched_solution": False}, "4")
    assert exc.value.field == "r1_solution" and "judged-matching" in exc.value.reason
    with pytest.raises(SkipRow, match="longer than 100"):
        convert_scp({**rec, "r1_solution": "\\boxed{" + "x" * 101 + "}"}, "4")


def test_convert_ifeval_and_gpqa():
    rec = {
        "key": 1001,
        "prompt": "Write a haiku without commas.",
        "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
        "kwargs": [{}, {"relation": "less than", "num_words": 20, "num_sentences": None}],
    }
    assert convert_ifeval(rec, "0") == {
        "id": "if-1001",
        "domain": "ifeval",
        "prompt": "Write a haiku without commas.",
        "instructions": [
            {"id": "punctuation:no_comma", "kwargs": {}},
            {"id": "length_constraints:number_words", "kwargs": {"relation": "less than", "num_words": 20}},
        ],
    }
    g = {
        "Record ID": "rec1",
        "Question": "Which is a noble gas?",
        "Correct Answer": "Neon",
        "Incorrect Answer 1": "Sodium",
        "Incorrect Answer 2": "Iron",
        "Incorrect Answer 3": "Carbon",
    }
    row = convert_gpqa(g, "0", seed=0)
    assert row["id"] == "gpqa-rec1" and row["domain"] == "mcq"
    assert sorted(row["options"]) == ["Carbon", "Iron", "Neon", "Sodium"]
    assert row["options"]["ABCD".index(row["answer"])] == "Neon"
    assert convert_gpqa(g, "9", seed=0) == row  # the shuffle depends on the record id, not on its position


# ------------------------------------------------------------------------------------ CLI on real files
def test_import_verl_parquet_reports_bad_rows_by_file_row_field(tmp_path, capsys):
    path = _write_parquet(
        tmp_path / "eurus.parquet",
        [
            _verl(
                "numina",
                "Find $x$ if $x+1=3$.\n\nPresent the answer in LaTex format: \\boxed{Your answer}",
                "math",
                "2",
                0,
            ),
            _verl(
                "apps",
                "Echo the input." + EURUS_CODE_SUFFIX,
                "code",
                json.dumps({"inputs": ["hi\n"], "outputs": ["hi\n"]}),
                1,
            ),
            _verl("apps", "Broken tests." + EURUS_CODE_SUFFIX, "code", "{not json", 2),
            _verl("numina", "No answer.", "math", "", 3),
        ],
    )
    out = tmp_path / "rows.jsonl"
    rc, summary, err = _run(
        capsys, ["import", path, "--format", "verl", "--id-prefix", "eurus", "--out", str(out)]
    )
    assert rc == 0
    assert summary["read"] == 4 and summary["written"] == 2 and summary["skipped"] == 2
    assert summary["by_domain"] == {"math": 1, "code": 1}
    assert f"{path}:3:reward_model.ground_truth: not valid JSON" in err
    assert f"{path}:4:reward_model.ground_truth: empty answer" in err
    assert _read(out) == [
        {"id": "eurus-0", "domain": "math", "prompt": "Find $x$ if $x+1=3$.", "answer": "2"},
        {
            "id": "eurus-1",
            "domain": "code",
            "prompt": "Echo the input.",
            "tests": [{"input": "hi\n", "output": "hi\n"}],
        },
    ]
    # --only-domain code keeps Eurus' code rows; the math ones are counted, not silently dropped
    rc, summary, _ = _run(
        capsys, ["import", path, "--format", "verl", "--only-domain", "code", "--out", str(out)]
    )
    assert summary["written"] == 1 and summary["skipped_by_reason"]["not code"] == 1
    rc, summary, _ = _run(
        capsys, ["import", path, "--format", "verl", "--only-source", "apps", "--out", str(out)]
    )
    assert summary["read"] == 4 and summary["written"] == 1 and summary["skipped_by_reason"]["not apps"] == 2
    assert [r["id"] for r in _read(out)] == ["verl-1"]
    rc, _, _ = _run(capsys, ["import", path, "--format", "verl", "--policy", "fail", "--out", str(out)])
    assert rc == 1


def test_import_rejects_what_preflight_rejects(tmp_path, capsys):
    # converts fine, but the ifeval reward does not know the instruction id: preflight's verdict is reported
    path = tmp_path / "if.jsonl"
    path.write_text(
        json.dumps({"prompt": "Say hi.", "instruction_id_list": ["no:such_check"], "kwargs": [{}]})
        + "\n"
        + "{broken\n"
    )
    rc, summary, err = _run(
        capsys, ["import", str(path), "--format", "ifeval", "--out", str(tmp_path / "o.jsonl")]
    )
    assert rc == 1 and summary["read"] == 2 and summary["written"] == 0 and summary["skipped"] == 2
    assert f"{path}:1:instructions" in err and "(converted row)" in err
    assert f"{path}:2:<row>:" in err or f"{path}:2:" in err


def test_import_save_to_disk_folder_scp(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    recs = [
        {
            "domain": "chemistry",
            "problem": "Molar mass of water in g/mol?",
            "matched_solution": "18",
            "r1_solution": "H2O: 2(1)+16 = \\boxed{18}",
            "is_r1_solution_same_with_matched_solution": True,
        },
        {
            "domain": "biology",
            "problem": "Explain osmosis.",
            "matched_solution": "long text",
            "r1_solution": "It is ...",
            "is_r1_solution_same_with_matched_solution": True,
        },
    ]
    folder = tmp_path / "scp_saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(recs)}).save_to_disk(str(folder))
    out = tmp_path / "stem.jsonl"
    rc, summary, err = _run(capsys, ["import", str(folder), "--format", "scp", "--out", str(out)])
    assert rc == 0 and summary["read"] == 2 and summary["written"] == 1
    assert summary["skipped_by_reason"] == {"no checkable answer": 1}
    assert f"{folder}[train]:2:r1_solution: no judged-matching solution" in err
    assert _read(out) == [
        {"id": "scp-0", "domain": "math", "prompt": "Molar mass of water in g/mol?", "answer": "18"}
    ]


def test_uncached_dataset_name_is_a_clear_error(capsys, monkeypatch, tmp_path):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    rc = cli.main(
        ["import", "no-such-org/no-such-dataset", "--format", "math", "--out", str(tmp_path / "o.jsonl")]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "not in the local cache" in err and "huggingface-cli download --repo-type dataset" in err
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"


def test_iter_source_numbers_rows_per_file(tmp_path):
    a = _write_parquet(
        tmp_path / "a.parquet", [{"problem": "p1", "answer": "1"}, {"problem": "p2", "answer": "2"}]
    )
    _write_parquet(tmp_path / "b.parquet", [{"problem": "p3", "answer": "3"}])
    recs = list(iter_source(str(tmp_path)))
    assert [(os.path.basename(r.origin), r.row) for r in recs] == [
        ("a.parquet", 1),
        ("a.parquet", 2),
        ("b.parquet", 1),
    ]
    from nemo_prorl.data.importers import convert_math

    rep = import_rows(iter(recs), convert_math, check_rewards=False)
    assert [r["id"] for r in rep.rows] == ["math-a-0", "math-a-1", "math-b-0"]  # unique across shards
    assert recs[0].origin == a


# ------------------------------------------------------------------------------------------------ blend
def test_prompt_hash_normalises_case_and_space():
    assert prompt_hash("What  is\n2+2?") == prompt_hash("what is 2+2?")
    assert prompt_hash([{"role": "user", "content": "what is 2+2?"}]) == prompt_hash("What is 2+2?")
    assert prompt_hash("what is 2+3?") != prompt_hash("what is 2+2?")


def test_build_blend_is_seeded_and_disjoint():
    val = [{"id": f"v{i}", "domain": "math", "prompt": f"problem {i}", "answer": str(i)} for i in range(10)]
    train = [{"id": "v3", "prompt": "other"}, {"id": "t1", "prompt": "PROBLEM   5"}]
    rep = build_blend([("aime", val, 4)], train, seed=1)
    ids = [r["id"] for r in rep.rows]
    assert len(ids) == 4 and "v3" not in ids and "v5" not in ids and rep.overlapping == {"aime": 2}
    assert rep.rows == build_blend([("aime", list(reversed(val)), 4)], train, seed=1).rows  # order-free
    assert pick_rows(val, 20, 0) == val  # fewer rows than asked: all, in id order
    short = build_blend([("aime", val, 9)], train, seed=1)
    assert short.short == {"aime": "asked 9, only 8 disjoint valid rows"}


def test_blend_cli(tmp_path, capsys):
    val = tmp_path / "aime.jsonl"
    val.write_text(
        "".join(
            json.dumps({"id": f"aime-{i}", "domain": "math", "prompt": f"Q{i}", "answer": str(i)}) + "\n"
            for i in range(5)
        )
    )
    gp = tmp_path / "gpqa.jsonl"
    gp.write_text(
        json.dumps({"id": "g1", "domain": "mcq", "prompt": "Q?", "options": ["a", "b"], "answer": "A"}) + "\n"
    )
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"id": "x", "domain": "math", "prompt": "q0", "answer": "0"}) + "\n")
    out = tmp_path / "val_blend.jsonl"
    rc, summary, _ = _run(
        capsys,
        [
            "blend",
            "--val",
            f"{val}:3",
            "--val",
            str(gp),
            "--train",
            str(train),
            "--seed",
            "0",
            "--out",
            str(out),
        ],
    )
    assert rc == 0 and summary["picked"] == {str(val): 3, str(gp): 1}
    assert summary["overlapping_train"][str(val)] == 1
    rows = _read(out)
    assert len(rows) == 4 and "aime-0" not in {r["id"] for r in rows}


def test_prorl_preset_task_list():
    names = ["acre", "boxnet", "composite", "countdown", "game_of_life_halting", "graph_color"]
    assert prorl_tasks(names) == ["countdown", "graph_color"]
    assert set(PRORL_OOD_TASKS) == {"acre", "boxnet", "game_of_life_halting"}


def test_reasoning_gym_preset_cli(tmp_path, capsys, monkeypatch):
    pytest.importorskip("reasoning_gym")
    from nemo_prorl.data import reasoning_gym_gen

    seen = {}

    def fake_known():
        return ["acre", "countdown", "graph_color", "composite"]

    monkeypatch.setattr(reasoning_gym_gen, "known_tasks", fake_known)
    orig = reasoning_gym_gen.generate_rows

    def spy(tasks, *a, **k):
        seen["tasks"] = list(tasks)
        return orig(tasks, *a, **k)

    monkeypatch.setattr(reasoning_gym_gen, "generate_rows", spy)
    out = tmp_path / "rg.jsonl"
    rc = cli.main(
        [
            "reasoning-gym",
            "--preset",
            "prorl",
            "--exclude",
            "countdown",
            "--size",
            "2",
            "--seed",
            "1",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0 and seen["tasks"] == ["graph_color"]
    rows = _read(out)
    assert len(rows) == 2 and {r["task"] for r in rows} == {"graph_color"}


@pytest.mark.parametrize("recipe", ["prorl_1p5b", "prorl_v2_1p5b"])
def test_recipe_mixture_weights_only_domains_the_import_produces(recipe):
    """SCP-116K imports as math rows (open-ended answers), so the recipes must not weight ``mcq``.

    A positive weight on a domain without rows is refused by ``MixtureSampler.set_weights``; the
    training blend of reproduce.md yields math (DeepScaleR + SCP), code, reasoning_gym and ifeval rows.
    """
    from nemo_prorl.trainer.config import compose

    data = compose(recipe, [])["data"]
    produced = {"math", "code", "reasoning_gym", "ifeval"}
    mixtures = [data["mixture"], *data.get("phase_mixtures", {}).values()]
    for mix in mixtures:
        assert set(mix) <= produced, mix
        assert mix["math"] == 65  # 40K DeepScaleR + 25K SCP-116K, the paper's sizes


def test_import_several_sources_keeps_ids_unique(tmp_path, capsys):
    a = tmp_path / "aime24.jsonl"
    b = tmp_path / "aime25.jsonl"
    a.write_text(json.dumps({"problem": "Q1", "answer": "1"}) + "\n")
    b.write_text(json.dumps({"problem": "Q2", "answer": 2}) + "\n")
    out = tmp_path / "o.jsonl"
    rc, summary, _ = _run(capsys, ["import", str(a), str(b), "--format", "math", "--out", str(out)])
    assert rc == 0 and summary["written"] == 2
    assert _read(out) == [
        {"id": "math-aime24-0", "domain": "math", "prompt": "Q1", "answer": "1"},
        {"id": "math-aime25-0", "domain": "math", "prompt": "Q2", "answer": "2"},
    ]
