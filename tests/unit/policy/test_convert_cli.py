"""`nemo-prorl convert` in-process, single rank: HF -> Megatron -> HF is bit-identical."""

from __future__ import annotations

import json

import torch

from nemo_prorl.policy.megatron import convert as C
from nemo_prorl.policy.megatron import convert_cli
from nemo_prorl.policy.megatron.testing import make_tiny_hf_model


def test_cli_round_trip_self_contained(tmp_path):
    src = make_tiny_hf_model(tmp_path / "src", arch="qwen2", tied=False, seed=5)
    assert convert_cli.main(["--from-hf", str(src), "--to-megatron", str(tmp_path / "mc")]) == 0
    meta = json.loads((tmp_path / "mc" / convert_cli.META_FILE).read_text())
    assert meta["model_type"] == "qwen2" and meta["dtype"] == "float32"
    assert (tmp_path / "mc" / "hf_config" / "tokenizer.json").is_file()
    assert convert_cli.main(["--from-megatron", str(tmp_path / "mc"), "--to-hf", str(tmp_path / "back")]) == 0
    original, back = C.read_hf_state_dict(src), C.read_hf_state_dict(tmp_path / "back")
    assert set(original) == set(back)
    assert all(torch.equal(original[k], back[k]) for k in original)
    assert (tmp_path / "back" / "tokenizer_config.json").is_file()


def test_cli_bad_arguments_exit_2(tmp_path, capsys):
    assert convert_cli.main(["--from-hf", str(tmp_path), "--to-megatron", str(tmp_path / "x")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert convert_cli.main(["--from-hf", str(tmp_path), "--to-hf", str(tmp_path / "x")]) == 2
    assert convert_cli.main(["--from-megatron", str(tmp_path), "--to-hf", str(tmp_path / "y")]) == 2
    assert "hf-config-from" in capsys.readouterr().err
