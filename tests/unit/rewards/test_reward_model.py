"""The ``reward_model`` reward: a tiny randomly initialised Bradley-Terry RM saved as safetensors to tmp.

The model is a 2-layer ``Qwen2ForSequenceClassification`` (``num_labels=1``) with the demo tokenizer
(``nemo_prorl/assets/demo``); its logit is read by transformers at the last non-pad token, which is what
makes a right-padded batch give the same scores as one-by-one calls.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from nemo_prorl.rewards import RewardPool, RewardsConfig
from nemo_prorl.rewards.reward_model import RewardModelReward, check_options, squash_score

DEMO = Path(__file__).resolve().parents[3] / "nemo_prorl" / "assets" / "demo"


def _save_rm(path: Path, num_labels: int = 1) -> Path:
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=270, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      num_labels=num_labels, pad_token_id=0)
    model = Qwen2ForSequenceClassification(cfg)
    model.save_pretrained(path, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DEMO / name, path / name)
    return path


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory) -> Path:
    return _save_rm(tmp_path_factory.mktemp("rm"))


RESPONSES = ["4", "The answer is 4 because two and two make four.", "five?", "a much longer answer " * 5]
PROMPTS = ["What is 2+2?", "What is 2+2?", [{"role": "user", "content": "Count to 5."}], None]


def _rows():
    rows = []
    for resp, prompt in zip(RESPONSES, PROMPTS):
        row = {"domain": "reward_model", "response": resp}
        if prompt is not None:
            row["prompt"] = prompt
        rows.append(row)
    return rows


def test_squash_hand_values():
    assert squash_score(0.0) == 0.5
    # (3 - 1) / 2 = 1 -> sigmoid(1) = 1 / (1 + e^-1)
    assert squash_score(3.0, "sigmoid", shift=1.0, scale=2.0) == pytest.approx(0.7310585786300049, abs=1e-12)
    assert squash_score(3.0, "none", shift=1.0, scale=2.0) == 1.0
    assert squash_score(-800.0) == 0.0 and squash_score(800.0) == 1.0  # no overflow


def test_batched_scores_equal_one_by_one(rm_dir):
    rows = _rows()
    batched = RewardModelReward(path=str(rm_dir), batch_size=4, max_length=64)
    single = RewardModelReward(path=str(rm_dir), batch_size=1, max_length=64)
    got = batched.score_batch([r["response"] for r in rows], rows)
    one = [single.score(r["response"], r) for r in rows]
    assert [r.status for r in got] == ["ok"] * 4
    for a, b in zip(got, one):
        assert a.info["logit"] == pytest.approx(b.info["logit"], abs=1e-5)
        assert a.score == pytest.approx(b.score, abs=1e-6)
    assert len({round(r.info["logit"], 6) for r in got}) > 1  # not a constant


def test_score_is_the_squashed_logit_of_a_direct_forward(rm_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    reward = RewardModelReward(path=str(rm_dir), shift=0.5, scale=2.0, max_length=64)
    row = {"domain": "reward_model", "prompt": "What is 2+2?", "response": "4"}
    res = reward.score("4", row)
    tok = AutoTokenizer.from_pretrained(rm_dir)
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir, use_safetensors=True).eval()
    with torch.no_grad():
        logit = float(model(**tok(["What is 2+2?\n4"], return_tensors="pt")).logits[0, 0])
    assert res.info["logit"] == pytest.approx(logit, abs=1e-5)
    assert res.score == pytest.approx(1.0 / (1.0 + math.exp(-(logit - 0.5) / 2.0)), abs=1e-6)
    raw = RewardModelReward(path=str(rm_dir), squash="none", max_length=64).score("4", row)
    assert raw.score == pytest.approx(logit, abs=1e-5)


def test_left_truncation_keeps_the_end(rm_dir):
    reward = RewardModelReward(path=str(rm_dir), max_length=8)
    long = "x " * 200 + "the end"
    res = reward.score(long, {"domain": "reward_model", "response": long})
    tail = RewardModelReward(path=str(rm_dir), max_length=64)
    tail.warmup()
    ids = tail._tok(long)["input_ids"][-8:]
    with torch.no_grad():
        logit = float(tail._model(input_ids=torch.tensor([ids])).logits[0, 0])
    assert res.info["logit"] == pytest.approx(logit, abs=1e-5)


def test_options_are_checked_with_dotted_keys(tmp_path, rm_dir):
    assert check_options({"path": str(rm_dir)}) == []
    assert any(m.startswith("rewards.domains.reward_model.path: required") for m in check_options({}))
    pickle_dir = tmp_path / "pickled"
    pickle_dir.mkdir()
    (pickle_dir / "pytorch_model.bin").write_bytes(b"not loaded")
    (msg,) = check_options({"path": str(pickle_dir)})
    assert "no *.safetensors" in msg and msg.startswith("rewards.domains.reward_model.path")
    bad = check_options({"path": str(rm_dir), "batch_size": 0, "squash": "tanh", "scale": 0})
    assert [m.split(":")[0] for m in bad] == ["rewards.domains.reward_model.batch_size",
                                            "rewards.domains.reward_model.squash",
                                            "rewards.domains.reward_model.scale"]
    with pytest.raises(ValueError, match=r"rewards\.domains\.reward_model\.path"):
        RewardsConfig.from_dict({"domains": {"reward_model": {"path": str(pickle_dir)}}})
    with pytest.raises(ValueError, match=r"rewards\.domains\.reward_model: unknown option 'hub_id'"):
        RewardsConfig.from_dict({"domains": {"reward_model": {"path": str(rm_dir), "hub_id": "x/y"}}})


def test_two_label_classifier_is_refused(tmp_path):
    path = _save_rm(tmp_path / "two", num_labels=2)
    res = RewardModelReward(path=str(path)).score("hi", {"domain": "reward_model", "response": "hi"})
    assert res.status == "error" and "num_labels=2" in res.info["reason"]


def test_mixed_math_and_reward_model_rows_in_one_pool_call(rm_dir):
    """Math rows go to the killable workers, reward-model rows to one in-process batched RM."""
    rm_rows = _rows()
    math_rows = [{"domain": "math", "response": "\\boxed{4}", "answer": "4"},
                 {"domain": "math", "response": "\\boxed{5}", "answer": "4"}]
    rows = [math_rows[0], rm_rows[0], rm_rows[1], math_rows[1], rm_rows[2], rm_rows[3],
            {"domain": "reward_model", "response": 3}]
    cfg = RewardsConfig.from_dict({"num_workers": 1, "timeout_s": 20.0,
                                   "domains": {"reward_model": {"path": str(rm_dir), "max_length": 64,
                                                                "batch_size": 2}}})
    direct = RewardModelReward(path=str(rm_dir), max_length=64)
    expect = [direct.score(r["response"], r).score for r in rm_rows]
    with RewardPool(cfg) as pool:
        scored = pool.score_detailed(rows)
        assert "reward_model" in pool._local  # one RM, in this process
    res = [s.result for s in scored]
    assert [r.status for r in res] == ["ok"] * 6 + ["error"]
    assert res[0].score == 1.0 and res[3].score == 0.0
    got = [res[1].score, res[2].score, res[4].score, res[5].score]
    assert got == pytest.approx(expect, abs=1e-6)
    assert scored[6].problems == [("response", "expected a string, got int")]


@pytest.mark.gpu
def test_cuda_device_matches_cpu(rm_dir):
    """``device: cuda:0`` gives the CPU scores (float32; cuBLAS vs CPU GEMM differ only in rounding)."""
    rows = _rows()
    cpu = RewardModelReward(path=str(rm_dir), max_length=64).score_batch([r["response"] for r in rows], rows)
    gpu = RewardModelReward(path=str(rm_dir), device="cuda:0", max_length=64, batch_size=3)
    got = gpu.score_batch([r["response"] for r in rows], rows)
    assert next(gpu._model.parameters()).device.type == "cuda"
    assert [g.info["logit"] for g in got] == pytest.approx([c.info["logit"] for c in cpu], abs=1e-3)
