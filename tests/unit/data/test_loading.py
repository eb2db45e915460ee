"""Loading through `datasets` (local files, shards, streaming)."""

from __future__ import annotations

import json

import pytest

from nemo_prorl.data.loading import load_hf_dataset


def test_load_jsonl_dir_and_streaming(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(2):
        rows = [{"id": f"{k}-{i}", "domain": "math", "prompt": f"p{i}", "answer": str(i)} for i in range(3)]
        (shards / f"train-{k:05d}-of-00002.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_hf_dataset([str(shards)])
    assert len(ds) == 6 and ds[4]["id"] == "1-1"
    stream = load_hf_dataset([str(shards)], streaming=True)
    assert [r["id"] for r in stream] == [r["id"] for r in ds]


def test_mixed_formats_rejected(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    (tmp_path / "b.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="mix of parquet and JSON"):
        load_hf_dataset([str(tmp_path)])


def _rows(tmp_path, long_math: int = 3):
    """4 short reasoning-gym rows and ``long_math`` math rows (with the char tokenizer's default
    templates: 147 and 300 tokens)."""
    path = tmp_path / "mix.jsonl"
    rows = [{"id": f"rg{i}", "domain": "reasoning_gym", "prompt": f"{i} + 1 =", "task": "chain_sum",
             "entry": {"question": f"{i} + 1 =", "answer": str(i + 1), "metadata": {}}} for i in range(4)]
    rows += [{"id": f"m{i}", "domain": "math", "prompt": "what is " + "1 + " * 48 + f"{i}?",
              "answer": str(48 + i)} for i in range(long_math)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_every_row_of_a_mixture_domain_filtered_names_cause_domain_count_and_key(tmp_path, char_tokenizer):
    from nemo_prorl.data import DataConfig, prepare_data
    from nemo_prorl.data.preflight import DataValidationError, EmptyDomainError

    path = _rows(tmp_path)
    cfg = DataConfig(train_files=[str(path)], max_prompt_tokens=200, check_rewards=False,
                     mixture={"reasoning_gym": 1.0, "math": 1.0})
    with pytest.raises(EmptyDomainError) as info:
        prepare_data(cfg, char_tokenizer)
    msg = str(info.value)
    assert isinstance(info.value, DataValidationError)  # the CLI's exit-2 family
    assert msg.startswith("data.mixture: domain 'math' has weight 1 but no training row left")
    assert "all 3 row(s) read were filtered by preflight: 3 prompt(s) longer than " \
           "data.max_prompt_tokens=200" in msg
    assert msg.endswith("raise data.max_prompt_tokens (now 200) or set data.mixture.math=0")
    # a later phase's mixture is checked up front too, and a domain with no rows at all says so
    cfg = DataConfig(train_files=[str(path)], max_prompt_tokens=1000, check_rewards=False,
                     phase_mixtures={"run3": {"math": 1.0, "ifeval": 0.5}})
    with pytest.raises(EmptyDomainError, match=r"data.phase_mixtures.run3: domain 'ifeval' has weight 0.5 .*"
                                               r"no 'ifeval' rows in data.train_files; add 'ifeval' rows"):
        prepare_data(cfg, char_tokenizer)
    # weight 0 or a long enough limit: fine
    ok = DataConfig(train_files=[str(path)], max_prompt_tokens=200, check_rewards=False,
                    mixture={"reasoning_gym": 1.0, "math": 0.0})
    assert prepare_data(ok, char_tokenizer).train_report.kept == 4


def test_nothing_left_at_all(tmp_path, char_tokenizer):
    from nemo_prorl.data import DataConfig, prepare_data
    from nemo_prorl.data.preflight import EmptyDomainError

    path = _rows(tmp_path)
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()[4:]))  # math rows only
    want = (r"no usable training rows: all 3 row\(s\) read were filtered by preflight: 3 prompt\(s\) longer "
            r".*raise data.max_prompt_tokens")
    with pytest.raises(EmptyDomainError, match=want):
        prepare_data(DataConfig(train_files=[str(path)], max_prompt_tokens=64, check_rewards=False),
                     char_tokenizer)


def test_train_cli_exits_2_with_the_message(tmp_path, capsys):
    """The whole command: no traceback, exit code 2, the reason on stderr."""
    from nemo_prorl.cli import main

    path = _rows(tmp_path)
    rc = main(["train", f"run_dir={tmp_path / 'run'}", f"data.train_files=[{path}]",
               "data.max_prompt_tokens=24", "+data.templates.math='{prompt}'",
               "data.mixture={reasoning_gym: 1, math: 1}",
               "trainer.val_interval=0", "reset.on_val_plateau=false", "final_eval.enabled=false",
               "trainer.progress_bar=false"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "data.mixture: domain 'math' has weight 1 but no training row left" in err
    assert "3 prompt(s) longer than data.max_prompt_tokens=24" in err and "Traceback" not in err
