"""``nemo_prorl.integrations.verl`` against hand-made verl rows of every domain.

The call shapes emulate verl at commit b178a3cd56f58b2d502255daba591e92833930a7:

* ``verl/workers/reward_manager/naive.py`` ``NaiveRewardManager.__call__``: keyword call
  ``compute_score(data_source=, solution_str=, ground_truth=, extra_info=)`` with ``extra_info`` a dict to
  which verl adds ``num_turns`` and ``rollout_reward_scores``; a dict result's ``"score"`` is the reward
  and every key goes into ``reward_extra_info``.
* ``verl/workers/reward_manager/batch.py`` ``BatchRewardManager.verify``: keyword call
  ``compute_score(data_sources=, solution_strs=, ground_truths=, extra_infos=, **reward_kwargs)`` with
  ``data_sources`` a numpy object array (``data.non_tensor_batch[reward_fn_key]``).
* ``verl/trainer/ppo/reward.py`` ``get_custom_reward_fn``: ``custom_reward_function.reward_kwargs`` are
  merged into the call's keyword arguments.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nemo_prorl.integrations import verl
from nemo_prorl.integrations.verl import boxed_from_convention, code_tests, compute_score, compute_score_batch

DEMO = Path(__file__).resolve().parents[3] / "nemo_prorl" / "assets" / "demo"
REWARDS = {"num_workers": 2, "timeout_s": 20.0}


@pytest.fixture(scope="module", autouse=True)
def _close_pools():
    yield
    verl.close_pools()


def _verl_extra(**kw):
    """An ``extra_info`` as verl's naive manager leaves it (it adds these two keys)."""
    return {"index": 0, "split": "train", "num_turns": None, "rollout_reward_scores": {}, **kw}


def test_conventions_hand_cases():
    assert boxed_from_convention("so 3 + 4 = 7\n#### 1,000", "gsm8k").endswith("\\boxed{1000}")
    assert boxed_from_convention("#### 5 and later #### 6.", "gsm8k").endswith("\\boxed{6}")
    assert boxed_from_convention("no marker", "gsm8k") == "no marker"
    assert boxed_from_convention("work\nAnswer: 34\n", "dapo").endswith("\\boxed{34}")
    assert boxed_from_convention("\\boxed{3}\nAnswer: 4", "dapo") == "\\boxed{3}\nAnswer: 4"


def test_code_ground_truth_conversion():
    tests, ep = code_tests(json.dumps({"inputs": ["1 2\n", ["3", "4"]], "outputs": ["3\n", ["7"]]}))
    assert ep is None
    assert tests == [{"input": "1 2\n", "output": "3\n"}, {"input": "3\n4", "output": "7"}]
    tests, ep = code_tests({"fn_name": "add", "inputs": [[1, 2], [[1], [2]]], "outputs": [[3], [1, 2]]})
    assert ep == "add"
    assert tests == [{"assert": "assert add(1, 2) == [3] or add(1, 2) == 3"},
                     {"assert": "assert add([1], [2]) == [1, 2]"}]
    with pytest.raises(ValueError, match="2 inputs but 1 outputs"):
        code_tests({"inputs": ["a", "b"], "outputs": ["c"]})
    with pytest.raises(ValueError, match="not a Python identifier"):
        code_tests({"fn_name": "os.system", "inputs": [[1]], "outputs": [1]})


def test_rows_map_to_domains_and_ground_truth():
    assert verl.to_row("lighteval/MATH", "\\boxed{2}", "2") == {"domain": "math", "answer": "2",
                                                              "response": "\\boxed{2}"}
    assert verl.to_row("aime2024", "Answer: 7", "7")["response"].endswith("\\boxed{7}")
    mcq = verl.to_row("my_gpqa", "\\boxed{B}", "B", _verl_extra(domain="mcq", options=["x", "y"]))
    assert mcq == {"domain": "mcq", "answer": "B", "options": ["x", "y"], "response": "\\boxed{B}"}
    assert verl.to_row("custom", "x", "1", None, {"custom": "math"})["domain"] == "math"
    rm = verl.to_row("chat", "hi", None, {"domain": "reward_model", "question": "say hi"})
    assert rm == {"domain": "reward_model", "prompt": "say hi", "response": "hi"}
    with pytest.raises(ValueError, match="searchR1_nq.*extra_info\\['domain'\\].*domain_map"):
        verl.to_row("searchR1_nq", "x", "y")


def test_naive_manager_call_every_verifiable_domain():
    """One keyword call per row, as NaiveRewardManager makes it; hand-made rows of each domain."""
    import reasoning_gym

    entry = reasoning_gym.create_dataset("basic_arithmetic", size=1, seed=3)[0]
    cases = [
        # (data_source, solution_str, ground_truth, extra_info, expected score)
        ("openai/gsm8k", "She has 3 + 4 = 7 apples.\n#### 7", "7", _verl_extra(), 1.0),
        ("openai/gsm8k", "#### 8", "7", _verl_extra(), 0.0),
        ("DigitalLearningGmbH/MATH-lighteval", "so \\boxed{\\frac{1}{2}}", "\\frac12", _verl_extra(), 1.0),
        ("numina_olympiads", "\\boxed{0.5}", "\\frac{1}{2}", _verl_extra(), 1.0),
        ("math_dapo", "thinking...\nAnswer: 34", "34", _verl_extra(), 1.0),
        ("gpqa", "The answer is \\boxed{C}", "C", _verl_extra(domain="mcq"), 1.0),
        ("rg", f"<answer>{entry['answer']}</answer>", {"task": "basic_arithmetic", "entry": entry},
         _verl_extra(domain="reasoning_gym"), 1.0),
        ("ifeval", "all lower case here", [{"id": "change_case:english_lowercase", "kwargs": {}}],
         _verl_extra(domain="ifeval"), 1.0),
        ("ifeval", "Not Lower", [{"id": "change_case:english_lowercase", "kwargs": {}}],
         _verl_extra(domain="ifeval"), 0.0),
    ]
    for ds, sol, gt, extra, want in cases:
        out = compute_score(data_source=ds, solution_str=sol, ground_truth=gt, extra_info=extra,
                            rewards=REWARDS)
        assert set(out) == {"score", "status", "domain"}, out
        assert out["score"] == want, (ds, sol, out)
    miss = compute_score(data_source="openai/gsm8k", solution_str="no answer", ground_truth="7",
                         extra_info=_verl_extra(), rewards=REWARDS)
    assert miss == {"score": 0.0, "status": "no_answer", "domain": "math"}
    penal = compute_score(data_source="openai/gsm8k", solution_str="no answer", ground_truth="7",
                          extra_info=_verl_extra(), rewards={**REWARDS, "failure_score": -0.5})
    assert penal["score"] == -0.5


def test_batch_manager_call_with_code_rows():
    """BatchRewardManager's keyword call, numpy object arrays, stdin/stdout and call-based code rows."""
    src = "```python\nimport sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b)\n```"
    fn = "```python\ndef add(a, b):\n    return a + b\n```"
    stdin_gt = json.dumps({"inputs": ["1 2\n", "5 5\n"], "outputs": ["3\n", "10\n"]})
    call_gt = json.dumps({"fn_name": "add", "inputs": [[1, 2], [2, 2]], "outputs": [[3], [4]]})
    data_sources = np.array(["apps", "taco", "codecontests", "lighteval/MATH"], dtype=object)
    extras = np.array([_verl_extra(), _verl_extra(), _verl_extra(), _verl_extra()], dtype=object)
    out = compute_score_batch(
        data_sources=data_sources,
        solution_strs=[src, fn, src.replace("a + b", "a - b"), "\\boxed{4}"],
        ground_truths=[stdin_gt, call_gt, stdin_gt, "4"],
        extra_infos=extras,
        rewards={**REWARDS, "domain_timeout_s": {"code": 60.0}},
    )
    if out[0]["status"] == "error" and "sandbox" in json.dumps(out).lower():
        pytest.skip(f"no isolated sandbox on this host: {out[0]}")
    assert [o["score"] for o in out] == [1.0, 1.0, 0.0, 1.0], out
    assert [o["domain"] for o in out] == ["code", "code", "code", "math"]
    with pytest.raises(ValueError, match="lengths differ"):
        compute_score_batch(["apps"], ["x", "y"], ["1"], [None])


def test_batch_mixes_reward_model_and_verifiable_rows(tmp_path):
    """reward_model rows are scored by one in-process RM; math rows by the workers, in one call."""
    import torch
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    from nemo_prorl.rewards.reward_model import RewardModelReward

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=270, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=0)
    Qwen2ForSequenceClassification(cfg).save_pretrained(tmp_path, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DEMO / name, tmp_path / name)
    rewards = {**REWARDS, "domains": {"reward_model": {"path": str(tmp_path), "max_length": 64}}}
    out = compute_score_batch(
        ["openai/gsm8k", "chat", "chat"], ["#### 3", "hello there", "bye"], ["3", None, None],
        [_verl_extra(), _verl_extra(domain="reward_model", question="greet me"),
         _verl_extra(domain="reward_model")], rewards=rewards)
    rm = RewardModelReward(path=str(tmp_path), max_length=64)
    want = [rm.score("hello there", {"prompt": "greet me"}).score, rm.score("bye", {}).score]
    assert out[0] == {"score": 1.0, "status": "ok", "domain": "math"}
    assert [o["score"] for o in out[1:]] == pytest.approx(want, abs=1e-6)
    assert all(0.0 < o["score"] < 1.0 for o in out[1:])


def test_import_pulls_in_neither_megatron_nor_torch():
    """A rewards-only user (verl) imports the rewards and this adapter without megatron-core or torch."""
    code = ("import sys, nemo_prorl.rewards, nemo_prorl.integrations.verl, nemo_prorl.integrations.nemo_rl; "
            "heavy = ('megatron', 'torch', 'transformer_engine'); "
            "bad = [m for m in sys.modules if m.split('.')[0] in heavy]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_numpy_and_omegaconf_values_as_verl_hands_them():
    """Parquet list columns arrive as numpy object arrays in ``non_tensor_batch``; Hydra's
    ``reward_kwargs`` nest OmegaConf containers (``get_custom_reward_fn`` only ``dict()``s the top)."""
    from omegaconf import OmegaConf

    instructions = np.array([{"id": "change_case:english_lowercase", "kwargs": {}}], dtype=object)
    extra = _verl_extra(domain="mcq", options=np.array(["red", "blue"], dtype=object))
    rewards = dict(OmegaConf.create({"num_workers": 1, "domains": {"math": {"max_nesting": 40}}}))
    out = compute_score_batch(np.array(["ifeval", "q"], dtype=object), ["lower case", "\\boxed{blue}"],
                              np.array([instructions, "B"], dtype=object),
                              np.array([_verl_extra(domain="ifeval"), extra], dtype=object), rewards=rewards)
    assert [o["score"] for o in out] == [1.0, 1.0], out
    assert verl.plain({"a": np.int64(3), "b": np.array([1.5, 2.0])}) == {"a": 3, "b": [1.5, 2.0]}
