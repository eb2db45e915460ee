import json

import pytest

from nemo_prorl.cli import main as top_main
from nemo_prorl.rewards.cli import main


def write(path, lines):
    with open(path, "wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else (json.dumps(line) + "\n").encode())


def read(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_malformed_file_hits_every_error(tmp_path, capsys):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write(
        src,
        [
            {"domain": "math", "response": "\\boxed{4}", "answer": "4", "id": "keep-me"},  # 1 ok
            b'{"domain": "math", "response": broken\n',  # 2 JSON
            b'{"domain": "math", "response": "\xff", "answer": "1"}\n',  # 3 UTF-8
            b"\n",  # blank: skipped
            {"domain": "math", "response": "\\boxed{1}"},  # 5 missing field
            {"domain": "poetry", "response": "x"},  # 6 unknown domain
            [1, 2],  # 7 not an object
            {"response": "x", "answer": "1"},  # 8 no domain
            {"domain": "mcq", "response": 5, "answer": "B"},  # 9 wrong type
            {"domain": "ifeval", "response": "x", "instructions": [{"id": "made:up"}]},  # 10 unknown id
            {
                "domain": "reasoning_gym",
                "response": "<answer>1</answer>",
                "task": "nope",
                "entry": {"question": "q"},
            },  # 11 unknown task
            {"domain": "mcq", "response": "Answer: B", "answer": "B"},  # 12 ok
        ],
    )
    rc = main(["--input", str(src), "--output", str(dst), "--workers", "2", "--timeout", "20"])
    rows = read(dst)
    assert len(rows) == 11 and rc == 9
    assert rows[0]["id"] == "keep-me" and rows[0]["reward"] == 1.0 and rows[0]["status"] == "ok"
    assert rows[-1]["status"] == "ok" and rows[-1]["reward"] == 1.0
    errors = [r["error"] for r in rows[1:-1]]
    assert all(r["status"] == "error" and r["reward"] == 0.0 for r in rows[1:-1])
    expected = [
        ":2: <row>: not valid JSON",
        ":3: <row>: not valid UTF-8",
        ":5: field 'answer': missing",
        ":6: field 'domain': unknown domain 'poetry'",
        ":7: field '<row>': expected a JSON object",
        ":8: field 'domain': missing",
        ":9: field 'response': expected a string",
        ":10: field 'instructions[0].id': unknown IFEval instruction id 'made:up'",
        ":11: field 'task': unknown reasoning-gym task 'nope'",
    ]
    for err, want in zip(errors, expected):
        assert err.startswith(str(src)) and want in err, (err, want)
    err_out = capsys.readouterr().err
    assert "domain" in err_out and "total" in err_out and "9 row(s) failed validation" in err_out


def test_dispatcher_and_all_valid_exit_zero(tmp_path):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write(src, [{"domain": "math", "response": f"\\boxed{{{i}}}", "answer": str(i % 3)} for i in range(30)])
    assert (
        top_main(["score", "--input", str(src), "--output", str(dst), "--workers", "1", "--no-progress"]) == 0
    )
    rows = read(dst)
    assert [r["reward"] for r in rows] == [1.0 if i < 3 else 0.0 for i in range(30)]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]  # renamed into place


def test_small_chunks_keep_order_and_config_file(tmp_path):
    src, dst, cfg = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "rewards.yaml"
    cfg.write_text("num_workers: 2\ndomains:\n  math:\n    fast_path: false\n")
    write(
        src, [{"domain": "math", "response": f"\\boxed{{{i}}}", "answer": str(i), "k": i} for i in range(10)]
    )
    assert (
        main(
            [
                "--input",
                str(src),
                "--output",
                str(dst),
                "--rewards-config",
                str(cfg),
                "--chunk",
                "3",
                "--no-progress",
            ]
        )
        == 0
    )
    rows = read(dst)
    assert [r["k"] for r in rows] == list(range(10)) and all(r["reward"] == 1.0 for r in rows)
    assert rows[0]["reward_info"]["path"] == "math_verify"


def test_bad_arguments(tmp_path, capsys):
    assert main(["--input", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o.jsonl")]) == 2
    src = tmp_path / "in.jsonl"
    write(src, [{"domain": "math", "response": "x", "answer": "1"}])
    assert main(["--input", str(src), "--output", str(tmp_path / "o.jsonl"), "--workers", "0"]) == 2
    assert "num_workers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--input", str(src)])


def test_unreadable_rows_become_error_rows_never_a_crash(tmp_path):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    deep = b"[" * 300000 + b"]" * 300000 + b"\n"  # json.loads raises RecursionError
    huge_int = b'{"domain": "math", "response": "x", "answer": ' + b"9" * 5000 + b"}\n"  # digit limit
    long_row = b'{"domain": "math", "response": "' + b"a" * 2_000_000 + b'", "answer": "1"}\n'
    deep_field = json.dumps({"domain": "math", "response": "\\boxed{1}", "answer": "1",
                             "extra": json.loads("[" * 500 + "]" * 500)}).encode() + b"\n"
    surrogate = b'{"domain": "math", "response": "\\ud800 \\\\boxed{2}", "answer": "2"}\n'  # lone surrogate
    write(src, [deep, huge_int, long_row, b'"just a string"\n', b"{}\n", deep_field, surrogate,
                {"domain": "math", "response": "\\boxed{3}", "answer": "3"}])
    rc = main(["--input", str(src), "--output", str(dst), "--workers", "1", "--no-progress",
               "--max-row-bytes", "1000000"])
    rows = read(dst)
    assert len(rows) == 8 and rc == 6
    assert "nested too deeply" in rows[0]["error"] and rows[0]["line"] == 1
    assert "unreadable JSON" in rows[1]["error"] and "longer than 1000000 bytes" in rows[2]["error"]
    assert rows[3]["status"] == "error" and "field 'domain': missing" in rows[4]["error"]
    assert rows[5]["status"] == "ok" and rows[5]["reward"] == 1.0  # deep but readable: scored
    # a lone surrogate cannot be written back as UTF-8: an error row naming the field, U+FFFD in its place
    assert rows[6]["status"] == "error" and rows[6]["reward"] == 0.0 and rows[6]["line"] == 7
    assert "field 'response': lone surrogate U+D800 at character 0" in rows[6]["error"]
    assert rows[6]["response"] == "\ufffd \\boxed{2}"
    assert rows[7]["reward"] == 1.0


def test_lone_surrogates_anywhere_every_row_comes_back(tmp_path):
    """Surrogates in a nested field, a key, the domain, and a valid escaped pair: each row is written back
    as valid UTF-8 JSON, the bad ones as error rows naming the field; the good rows are scored."""
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write(src, [
        b'{"domain": "math", "response": "\\\\boxed{1}", "answer": "1"}\n',
        b'{"domain": "ifeval", "response": "x", "instructions": [{"id": "punctuation:no_comma", '
        b'"kwargs": {"k\\udfff": 1}}]}\n',
        b'{"domain": "math\\ud800", "response": "1", "answer": "1"}\n',
        b'{"domain": "math", "response": "\\ud83d\\ude00 \\\\boxed{2}", "answer": "2"}\n',  # a pair: valid
        b'{"domain": "math", "response": "\\\\boxed{3}", "answer": "4"}\n',
    ])
    rc = main(["--input", str(src), "--output", str(dst), "--workers", "1", "--no-progress"])
    raw = dst.read_bytes()
    raw.decode("utf-8")  # strict: the whole file is valid UTF-8
    rows = read(dst)
    assert rc == 2 and [r["status"] for r in rows] == ["ok", "error", "error", "ok", "ok"]
    assert [r["reward"] for r in rows] == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert "field 'instructions[0].kwargs.k\ufffd (the key)': lone surrogate U+DFFF" in rows[1]["error"]
    assert "field 'domain': lone surrogate U+D800 at character 4" in rows[2]["error"]
    assert rows[2]["domain"] == "math\ufffd" and rows[3]["response"].startswith("\U0001F600")
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_interrupted_run_keeps_every_row_already_scored(tmp_path):
    """Ctrl-C in the middle: the rows scored so far stay in OUT.partial (valid, in order), the message
    says how many, and no half file appears under the final name."""
    import os
    import signal
    import subprocess
    import sys
    import time

    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write(src, [{"domain": "math", "response": f"\\boxed{{{i}}}", "answer": str(i % 2)} for i in range(5000)])
    partial = tmp_path / "out.jsonl.partial"
    # Ctrl-C reaches a command run in the foreground; a shell starts background jobs (a CI runner's, too)
    # with SIGINT ignored, and the child would inherit that and run to the end: restore the default
    proc = subprocess.Popen(
        [sys.executable, "-m", "nemo_prorl.cli", "score", "--input", str(src), "--output", str(dst),
         "--workers", "1", "--chunk", "1", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if partial.exists() and partial.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and not dst.exists()
    rows = read(partial)
    assert len(rows) >= 3 and [r["reward"] for r in rows] == [1.0 if i < 2 else 0.0 for i in range(len(rows))]
    assert [r["response"] for r in rows] == [f"\\boxed{{{i}}}" for i in range(len(rows))]
    assert f"stopped (KeyboardInterrupt) after {len(rows)} row(s); they are in {partial}" in err, err
