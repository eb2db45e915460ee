"""HF <-> Megatron weight conversion at TP=1/PP=1: layout formulas, bit-exact round trips, logits."""

from __future__ import annotations

import json

import pytest
import torch

from nemo_prorl.policy.megatron import convert as C
from nemo_prorl.policy.megatron.testing import make_tiny_hf_model

# Megatron (local spec, unfused fp32) vs transformers eager attention, the figure README states: max
# |diff| 2.1e-7..2.4e-7 over the four cases below (logits of magnitude ~1, 2-core x86 CPU, torch 2.13);
# asserted at 5e-7, 2x headroom for another CPU's summation order.
LOGITS_ATOL = 5e-7

CASES = [("qwen2", False), ("qwen2", True), ("llama", False), ("llama", True)]


@pytest.fixture(scope="module")
def mp():
    from nemo_prorl.policy.megatron import parallel

    parallel.init_parallel(tp=1, pp=1)
    yield parallel
    parallel.destroy_parallel()


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {
        (arch, tied): make_tiny_hf_model(root / f"{arch}-{tied}", arch=arch, tied=tied, seed=3, num_layers=2)
        for arch, tied in CASES
    }


def _build(path):
    from transformers import AutoConfig

    from nemo_prorl.policy.megatron.model import build_gpt_model

    cfg = AutoConfig.from_pretrained(path)
    model = build_gpt_model(cfg)
    return cfg, model


def test_fuse_qkv_hand_computed_layout():
    # 4 heads, 2 groups, head_dim 1, hidden 1: group g holds q heads 2g, 2g+1 then k_g, v_g.
    q = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    k = torch.tensor([[10.0], [11.0]])
    v = torch.tensor([[20.0], [21.0]])
    fused = C.fuse_qkv(q, k, v, num_heads=4, num_groups=2, head_dim=1)
    assert fused.flatten().tolist() == [0, 1, 10, 20, 2, 3, 11, 21]
    q2, k2, v2 = C.split_qkv(fused, 4, 2, 1)
    assert torch.equal(q2, q) and torch.equal(k2, k) and torch.equal(v2, v)
    # biases (1-D) and head_dim 2
    qb, kb, vb = torch.arange(8.0), torch.arange(100.0, 104.0), torch.arange(200.0, 204.0)
    fb = C.fuse_qkv(qb, kb, vb, num_heads=4, num_groups=2, head_dim=2)
    assert fb.tolist() == [0, 1, 2, 3, 100, 101, 200, 201, 4, 5, 6, 7, 102, 103, 202, 203]


@pytest.mark.parametrize("arch,tied", CASES)
def test_round_trip_bit_identical_and_logits_match_transformers(mp, hf_dirs, arch, tied):
    from transformers import AutoModelForCausalLM

    path = hf_dirs[(arch, tied)]
    cfg, model = _build(path)
    C.load_hf_weights(model, path, cfg)
    original = C.read_hf_state_dict(path)
    exported = C.export_hf_state_dict(model, cfg)
    assert list(exported) == sorted(original, key=list(exported).index)  # same keys
    assert set(exported) == set(original)
    assert ("lm_head.weight" in exported) != tied
    for name, tensor in original.items():
        assert exported[name].dtype == tensor.dtype and torch.equal(exported[name], tensor), name

    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(ids).logits
        out = model(ids, torch.arange(20).expand(2, -1), attention_mask=None)
    assert out.shape[-1] == model.padded_vocab_size
    torch.testing.assert_close(out[..., : cfg.vocab_size], ref, atol=LOGITS_ATOL, rtol=0)


def test_vocab_padding_rows_are_zero(mp, hf_dirs):
    path = hf_dirs[("qwen2", False)]
    cfg, model = _build(path)
    C.load_hf_weights(model, path, cfg)
    emb = model.embedding.word_embeddings.weight
    assert model.padded_vocab_size > cfg.vocab_size
    assert torch.count_nonzero(emb[cfg.vocab_size :]) == 0
    assert torch.equal(emb[: cfg.vocab_size], C.read_hf_state_dict(path)["model.embed_tokens.weight"])


def test_save_hf_checkpoint_reloads_in_transformers(mp, hf_dirs, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = hf_dirs[("llama", False)]
    cfg, model = _build(path)
    C.load_hf_weights(model, path, cfg)
    out = C.save_hf_checkpoint(C.export_hf_state_dict(model, cfg), cfg, tmp_path / "out", tokenizer_dir=path)
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    reloaded = C.read_hf_state_dict(out)
    for name, tensor in C.read_hf_state_dict(path).items():
        assert torch.equal(reloaded[name], tensor)
    hf = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.decode(tok("x + y = 7").input_ids) == "x + y = 7"
    assert hf.config.num_hidden_layers == cfg.num_hidden_layers


def test_megatron_dist_checkpoint_round_trip(mp, hf_dirs, tmp_path):
    path = hf_dirs[("qwen2", True)]
    cfg, model = _build(path)
    C.load_hf_weights(model, path, cfg)
    C.save_megatron_weights(model, tmp_path / "mcore")
    assert (tmp_path / "mcore" / "metadata.json").is_file()
    _, fresh = _build(path)
    C.load_megatron_weights(fresh, tmp_path / "mcore")
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), name


def test_load_megatron_weights_rejects_non_checkpoint(mp, hf_dirs, tmp_path):
    _, model = _build(hf_dirs[("qwen2", False)])
    with pytest.raises(C.ConversionError, match="metadata.json"):
        C.load_megatron_weights(model, tmp_path)


def test_wrong_shape_names_file_and_tensor(mp, hf_dirs, tmp_path):
    from safetensors.torch import save_file

    path = hf_dirs[("qwen2", False)]
    cfg, model = _build(path)
    state = C.read_hf_state_dict(path)
    state["model.layers.1.mlp.up_proj.weight"] = torch.zeros(3, 3)
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file(state, str(bad / "model.safetensors"))
    pattern = r"model\.safetensors.*model\.layers\.1\.mlp\.up_proj\.weight.*\(3, 3\)"
    with pytest.raises(C.ConversionError, match=pattern):
        C.load_hf_weights(model, bad, cfg)


def test_missing_tensor_and_pickle_only_dirs_rejected(mp, hf_dirs, tmp_path):
    path = hf_dirs[("llama", False)]
    cfg, model = _build(path)
    state = C.read_hf_state_dict(path)
    del state["model.layers.0.self_attn.k_proj.weight"]
    with pytest.raises(C.ConversionError, match="missing tensor 'model.layers.0.self_attn.k_proj.weight'"):
        C.load_hf_weights(model, state, cfg)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(C.ConversionError, match="pickle checkpoints are not loaded"):
        C.load_hf_weights(model, tmp_path, cfg)


def test_sharded_safetensors_index_is_honoured(mp, hf_dirs, tmp_path):
    from safetensors.torch import save_file

    path = hf_dirs[("qwen2", False)]
    cfg, model = _build(path)
    state = C.read_hf_state_dict(path)
    names = sorted(state)
    half = len(names) // 2
    shards = {
        "model-00001-of-00002.safetensors": names[:half],
        "model-00002-of-00002.safetensors": names[half:],
    }
    weight_map = {}
    for fname, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(tmp_path / fname))
        weight_map.update({k: fname for k in keys})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    C.load_hf_weights(model, tmp_path, cfg)
    exported = C.export_hf_state_dict(model, cfg)
    assert all(torch.equal(exported[k], state[k]) for k in state)
