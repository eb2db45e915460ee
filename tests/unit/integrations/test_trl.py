"""``nemo_prorl.integrations.trl``: reward functions and the hard-reset callback inside a real TRL run.

The GRPO test runs TRL 1.16.0's ``GRPOTrainer`` for real (CPU, a tiny random Qwen2): generation,
``_calculate_rewards`` calling our reward functions through the reward pool, the KL to ``ref_model``
(``beta > 0``), AdamW steps by transformers' ``Trainer`` through accelerate's ``AcceleratedOptimizer``.
It skips when trl is not installed (``pip install -e .[trl]``; ``scripts/setup.sh`` installs it).
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from nemo_prorl.integrations.trl import completion_text, reward_funcs, unwrap_optimizer


def test_completion_text_standard_and_conversational():
    assert completion_text("x = \\boxed{4}") == "x = \\boxed{4}"
    conv = [{"role": "assistant", "content": "first"}, {"role": "tool", "content": "ignored"},
            {"role": "assistant", "content": [{"type": "text", "text": "second"}, {"type": "image"}]}]
    assert completion_text(conv) == "first\nsecond"
    assert completion_text([]) == ""


def test_reward_funcs_score_own_domain_and_none_elsewhere():
    funcs = reward_funcs(["math", "mcq"], {"num_workers": 1, "failure_score": -1.0})
    by_name = {f.__name__: f for f in funcs}
    assert sorted(by_name) == ["prorl_math", "prorl_mcq"]
    columns = {"domain": ["math", "mcq", "math", "math"], "answer": ["4", "B", "7", "9"]}
    completions = ["so \\boxed{4}", "The answer is B", [{"role": "assistant", "content": "\\boxed{8}"}],
                   "no final answer here"]
    logged = []
    try:
        got = by_name["prorl_math"](prompts=["p"] * 4, completions=completions, completion_ids=None,
                                    trainer_state=None, log_extra=None,
                                    log_metric=lambda k, v: logged.append((k, v)), **columns)
        assert got[0] == 1.0 and got[1] is None and got[2] == 0.0
        assert got[3] == -1.0  # status no_answer -> failure_score
        assert logged == [("prorl/math/error_rate", 0.0)]
        got = by_name["prorl_mcq"](prompts=["p"] * 4, completions=completions, **columns)
        assert got == [None, 1.0, None, None]
        # one pool call per batch: the math call scored the mcq row too, kept for this very list object
        completions[1] = "The answer is C"
        assert by_name["prorl_mcq"](prompts=["p"] * 4, completions=completions, **columns)[1] == 1.0
        fresh = list(completions)  # a new batch (a new list) is scored again
        assert by_name["prorl_mcq"](prompts=["p"] * 4, completions=fresh, **columns)[1] == 0.0
        with pytest.raises(KeyError, match="'domain' column"):
            by_name["prorl_math"](prompts=["p"], completions=["x"], answer=["1"])
    finally:
        funcs[0].close()
    with pytest.raises(ValueError, match="unknown domain 'nope'"):
        reward_funcs(["nope"])


def _fresh_adamw_step(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """The weights a freshly built optimizer of the same class, groups and options gives after one step
    from the current weights and gradients (computed on copies; the trainer's state is untouched)."""
    index = {id(p): i for i, p in enumerate(params)}
    copies = [p.detach().clone().requires_grad_(True) for p in params]
    for c, p in zip(copies, params):
        c.grad = None if p.grad is None else p.grad.detach().clone()
    groups = [{**{k: v for k, v in g.items() if k != "params"},
               "params": [copies[index[id(p)]] for p in g["params"]]} for g in opt.param_groups]
    accepted = inspect.signature(type(opt).__init__).parameters  # AdamW's defaults hold Adam-only keys
    fresh = type(opt)(groups, **{k: v for k, v in opt.defaults.items() if k in accepted})
    fresh.step()
    return [c.detach() for c in copies]


@pytest.mark.timeout(180)
def test_grpo_trainer_reset_at_step_1(tmp_path):
    """2 GRPO steps with ``beta=0.1``, our math reward plus a length reward, reset after step 1.

    Checks, inside the real run: before the reset the reference differs from the updated policy and
    AdamW holds non-zero moments at step 1; right after it (step 1's ``on_step_end``) the reference equals
    the policy parameter for parameter, every moment is zero and every step counter 0; step 2's update
    equals, bit for bit, the first step of a fresh ``type(opt)(same groups, **opt.defaults)`` on the same
    weights and (clipped) gradients.
    """
    pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from nemo_prorl.integrations.trl import ProRLResetCallback
    from nemo_prorl.policy.megatron.testing import make_tiny_hf_model

    model_dir = make_tiny_hf_model(tmp_path / "tiny", arch="qwen2", seed=0, num_layers=1, hidden_size=32,
                                   intermediate_size=64)
    data = Dataset.from_list([{"prompt": f"What is {a} + {a}?", "domain": "math", "answer": str(2 * a)}
                              for a in range(8)])

    def distinct_chars(completions, **kwargs):  # varies across completions, so advantages are not all 0
        return [len(set(c)) / 10.0 for c in completions]

    funcs = reward_funcs(["math"], {"num_workers": 1})
    args = GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=8, max_steps=2, beta=0.1, learning_rate=1e-2, logging_steps=1,
                      report_to="none", use_cpu=True, bf16=False, save_strategy="no", seed=0,
                      lr_scheduler_type="constant", warmup_steps=0, steps_per_generation=1,
                      dataloader_num_workers=0, disable_tqdm=True)
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=[*funcs, distinct_chars], args=args,
                          train_dataset=data)
    assert trainer.ref_model is not None
    reset = ProRLResetCallback.attach(trainer, {"at_steps": [1]})
    seen: dict[str, object] = {}

    def named(model):
        return dict(trainer.accelerator.unwrap_model(model).named_parameters())

    class Probe(TrainerCallback):  # added after the reset callback: on_step_end sees the reset done
        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kw):
            if state.global_step == 1:  # step 2's update is about to run (global_step counts finished steps)
                opt = unwrap_optimizer(optimizer)
                params = [p for g in opt.param_groups for p in g["params"]]
                seen["params"], seen["expected"] = params, _fresh_adamw_step(opt, params)

        def on_optimizer_step(self, args, state, control, optimizer=None, **kw):
            opt = unwrap_optimizer(optimizer)
            if state.global_step == 0:
                seen["moments_before"] = sum(float(s["exp_avg"].abs().sum()) for s in opt.state.values())
                seen["step_before"] = {float(s["step"]) for s in opt.state.values()}
                pol, ref = named(trainer.model), named(trainer.ref_model)
                seen["ref_differs_before"] = any(not torch.equal(pol[k], ref[k]) for k in pol)
            else:
                seen["actual"] = [p.detach().clone() for p in seen["params"]]

        def on_step_end(self, args, state, control, optimizer=None, **kw):
            if state.global_step == 1:
                pol, ref = named(trainer.model), named(trainer.ref_model)
                assert pol.keys() == ref.keys()
                seen["ref_equal_after"] = all(torch.equal(pol[k], ref[k]) for k in pol)
                opt = unwrap_optimizer(optimizer)
                seen["moments_after"] = sum(float(s["exp_avg"].abs().sum() + s["exp_avg_sq"].abs().sum())
                                            for s in opt.state.values())
                seen["step_after"] = {float(s["step"]) for s in opt.state.values()}

    trainer.add_callback(Probe())
    try:
        trainer.train()
    finally:
        funcs[0].close()

    assert reset.history == [{"step": 1, "cause": "scheduled (reset.at_steps contains 1)"}]
    assert seen["ref_differs_before"] and seen["moments_before"] > 0 and seen["step_before"] == {1.0}
    assert seen["ref_equal_after"]
    assert seen["moments_after"] == 0.0 and seen["step_after"] == {0.0}
    assert len(seen["actual"]) == len(seen["expected"]) > 0
    for got, want in zip(seen["actual"], seen["expected"]):
        assert torch.equal(got, want)
    # our reward function ran inside TRL and was logged per domain (a random model rarely says \boxed{})
    logs = [h for h in trainer.state.log_history if "rewards/prorl_math/mean" in h]
    assert len(logs) == 2 and all(math.isfinite(h["rewards/prorl_math/mean"]) for h in logs)
    assert all("kl" in h for h in logs)


def test_restart_warmup_multiplies_the_schedule_by_a_fresh_ramp():
    """After a reset at scheduler epoch 5 of ``linear warm-up 2 -> decay to 0 at 10`` (transformers'
    ``get_linear_schedule_with_warmup``), update j = 1, 2, ... after it gets ``min(1, j/2)`` x schedule,
    as ``MegatronPolicy.current_lr`` ramps ours (``lr * j / W`` for ``j < W``)."""
    from transformers import get_linear_schedule_with_warmup

    from nemo_prorl.integrations.trl import _restart_warmup

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=10)
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(5 / 8)  # (10 - 5) / (10 - 2)
    _restart_warmup(sched, 2)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(4):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    # epochs 5..9: schedule 5/8, 4/8, 3/8, 2/8, 1/8; ramp 1/2, then 1
    assert lrs == pytest.approx([5 / 16, 4 / 8, 3 / 8, 2 / 8, 1 / 8])
    assert sched.get_last_lr() == pytest.approx([1 / 8])


@pytest.mark.timeout(180)
def test_grpo_trainer_plateau_reset_with_beta_0(tmp_path):
    """The paper's trigger inside TRL: evaluation every step, ``reset.metric = eval_reward``,
    ``patience 1`` and a ``min_delta`` no evaluation can beat. Step 1's evaluation sets the best; step
    2's does not improve on it, so the decision deferred from step 2's ``on_step_end`` (an evaluation
    was due, ``control.should_evaluate``) resets in ``on_evaluate``. With ``beta = 0`` TRL builds no
    reference model, so only the optimizer is restarted."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from nemo_prorl.integrations.trl import ProRLResetCallback
    from nemo_prorl.policy.megatron.testing import make_tiny_hf_model

    model_dir = make_tiny_hf_model(tmp_path / "tiny", arch="qwen2", seed=1, num_layers=1, hidden_size=32,
                                   intermediate_size=64)
    rows = [{"prompt": f"Name a letter after {c}.", "domain": "mcq", "answer": "B"} for c in "abcdefgh"]
    funcs = reward_funcs(["mcq"], {"num_workers": 1})

    def distinct_chars(completions, **kwargs):
        return [len(set(c)) / 10.0 for c in completions]

    args = GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4,
                      per_device_eval_batch_size=4, num_generations=4, max_completion_length=6, max_steps=2,
                      beta=0.0, learning_rate=1e-2, logging_steps=1, eval_strategy="steps", eval_steps=1,
                      report_to="none", use_cpu=True, bf16=False, save_strategy="no", seed=0,
                      steps_per_generation=1, disable_tqdm=True)
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=[*funcs, distinct_chars], args=args,
                          train_dataset=Dataset.from_list(rows), eval_dataset=Dataset.from_list(rows[:4]))
    assert trainer.ref_model is None
    with pytest.raises(ValueError, match=r"^reset\.patiense: unknown key; did you mean 'patience'\?"):
        ProRLResetCallback(trainer, {"patiense": 1})
    cb = ProRLResetCallback.attach(trainer, {"on_val_plateau": True, "metric": "eval_reward", "patience": 1,
                                             "min_delta": 100.0})
    try:
        trainer.train()
    finally:
        funcs[0].close()
    evals = [h["eval_reward"] for h in trainer.state.log_history if "eval_reward" in h]
    assert len(evals) == 2
    assert [h["step"] for h in cb.history] == [2]
    assert cb.history[0]["cause"].startswith("validation eval_reward plateaued (1 validations without")
    assert cb.controller.best == pytest.approx(evals[0])
    opt = unwrap_optimizer(trainer.optimizer)
    states = list(opt.state.values())
    assert states and all(float(s["step"]) == 0.0 and not s["exp_avg"].any() for s in states)


@pytest.mark.timeout(180)
def test_grpo_trainer_kl_reset_reaches_the_next_steps_kl(tmp_path):
    """``reset.kl_above`` reads the KL that ``GRPOTrainer`` records (``_metrics["train"]["kl"]``).

    Step 1's KL is 0 (TRL builds the reference from the same checkpoint), step 2's is positive, so the
    trigger fires after step 2; step 3's reference log-probs then come from the reset reference and its
    logged KL is 0 again, while without a reset it keeps growing.
    """
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from nemo_prorl.integrations.trl import ProRLResetCallback
    from nemo_prorl.policy.megatron.testing import make_tiny_hf_model

    model_dir = make_tiny_hf_model(tmp_path / "tiny", arch="llama", seed=2, num_layers=1, hidden_size=32,
                                   intermediate_size=64)
    data = Dataset.from_list([{"prompt": f"Count to {a}.", "domain": "math", "answer": str(a)}
                              for a in range(8)])
    funcs = reward_funcs(["math"], {"num_workers": 1})

    def distinct_chars(completions, **kwargs):
        return [len(set(c)) / 10.0 for c in completions]

    args = GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=6, max_steps=3, beta=0.1, learning_rate=1e-2, logging_steps=1,
                      report_to="none", use_cpu=True, bf16=False, save_strategy="no", seed=0,
                      steps_per_generation=1, disable_tqdm=True)
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=[*funcs, distinct_chars], args=args,
                          train_dataset=data)
    cb = ProRLResetCallback.attach(trainer, {"kl_above": 1e-9})
    try:
        trainer.train()
    finally:
        funcs[0].close()
    kl = [h["kl"] for h in trainer.state.log_history if "kl" in h and "loss" in h]
    assert len(kl) == 3
    assert kl[0] == 0.0 and kl[1] > 1e-9 and kl[2] == 0.0  # without the reset: [0, 0.0027, 0.019]
    assert [h["step"] for h in cb.history] == [2]
    assert cb.history[0]["cause"].startswith("kl ") and "above reset.kl_above=1e-09" in cb.history[0]["cause"]
