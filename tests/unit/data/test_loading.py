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
