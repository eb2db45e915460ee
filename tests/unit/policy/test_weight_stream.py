"""``iter_hf_weights``: the rollout sync's lazy weight stream equals the full export, bucket layout by hand.

TP=2 and PP=2 (the gathers and the bucketed pipeline broadcast) run under torchrun in
``tests/distributed/test_weight_stream_parallel.py``.
"""

from __future__ import annotations

import pytest
import torch

from nemo_prorl.policy.megatron import convert as C
from nemo_prorl.policy.megatron.testing import make_tiny_hf_model


def test_weight_buckets_hand_values():
    meta = [("a", (4, 4), "float32"), ("b", (4,), "float32"), ("c", (2, 2), "bfloat16"),
            ("d", (100,), "float32"), ("e", (3,), "float32")]
    # a=64 B, b=16 B, c=8 B (bf16), d=400 B, e=12 B; bucket limit 80 B
    got = [[name for name, _, _ in b] for b in C.weight_buckets(meta, 80)]
    assert got == [["a", "b"], ["c"], ["d"], ["e"]]  # dtype change and an oversize tensor start buckets
    assert [[n for n, _, _ in b] for b in C.weight_buckets(meta, 1 << 20)] == [["a", "b"], ["c"], ["d", "e"]]
    assert C.weight_buckets([], 10) == []


@pytest.mark.parametrize("arch,tied", [("qwen2", False), ("llama", True)])
def test_stream_equals_export_tp1(tmp_path, arch, tied):
    from transformers import AutoConfig

    from nemo_prorl.policy.megatron import parallel
    from nemo_prorl.policy.megatron.model import build_gpt_model

    path = make_tiny_hf_model(tmp_path / "hf", arch=arch, tied=tied, seed=5, num_layers=2)
    parallel.init_parallel(tp=1, pp=1)
    try:
        cfg = AutoConfig.from_pretrained(path)
        model = build_gpt_model(cfg)
        C.load_hf_weights(model, path, cfg)
        exported = C.export_hf_state_dict(model, cfg)
        stream = C.iter_hf_weights(model, cfg)
        first_name, first = next(stream)
        assert first_name == "model.embed_tokens.weight" and first.shape == (cfg.vocab_size, cfg.hidden_size)
        rest = dict(stream)
        streamed = {first_name: first, **rest}
        assert set(streamed) == set(exported) and ("lm_head.weight" in streamed) != tied
        for name, tensor in exported.items():
            assert torch.equal(streamed[name].cpu(), tensor), name
        # layer by layer: every tensor of layer 0 comes before any of layer 1 (vLLM reloads per layer)
        order = [n for n in [first_name, *rest] if n.startswith("model.layers.")]
        layers = [int(n.split(".")[2]) for n in order]
        assert layers == sorted(layers)
        meta = C._stage_meta(model, C._Dims(cfg))
        assert [(n, tuple(s)) for n, s, _ in meta] == [(n, tuple(t.shape)) for n, t in streamed.items()]
    finally:
        parallel.destroy_parallel()
