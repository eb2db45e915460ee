"""``nemo-prorl train`` end to end on CPU: a two-step run, and the error paths with their exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from nemo_prorl.cli import main as cli_main
from nemo_prorl.trainer.callbacks import Callback, register_callback

TINY = ["trainer.prompts_per_step=4", "trainer.mini_batch_prompts=2", "rollout.n=4",
        "trainer.val_interval=0", "final_eval.enabled=false", "checkpoint.interval=0",
        "trainer.progress_bar=false", "logging.plots=false", "reset.at_steps=[]",
        "reset.on_val_plateau=false"]

STEP_KEYS = {"step", "reward/mean", "reward/reasoning_gym", "loss", "kl", "entropy", "response_length/mean",
             "clip_frac_high", "clip_frac_low", "dynamic_sampling/groups_kept",
             "dynamic_sampling/groups_dropped",
             "time/generate", "time/score", "time/logprobs", "time/train", "time/sync", "time/step",
             "tokens_per_s", "grad_norm", "lr"}


#: what the ``cli_recorder`` callback saw (it is built by the trainer from its registry name)
SEEN: list[tuple] = []


@register_callback("cli_recorder")
class _CliRecorder(Callback):
    def on_validation(self, step, metrics):
        SEEN.append(("validation", step, "val/reward/mean" in metrics))

    def on_reset(self, step, cause):
        SEEN.append(("reset", step, cause.split(" (")[0]))


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_step_run_end_to_end_then_a_rerun_trains_zero_steps_and_fails(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", *TINY, f"run_dir={run}", "trainer.max_steps=2",
            # validation at steps 0, 1, 2 and base/final pass@k, all tiny
            "trainer.val_interval=1", "trainer.val_max_prompts=4", "trainer.val_n=2",
            "final_eval.enabled=true", "final_eval.n=4", "final_eval.ks=[1,2,4]", "final_eval.max_prompts=4",
            "logging.plots=true", "logging.tensorboard=true",
            # the paper's trigger, made to fire: no validation can improve by 1.0, patience 1
            "reset.on_val_plateau=true", "reset.patience=1", "reset.min_delta=1.0",
            "trainer.callbacks=[cli_recorder]"]
    SEEN.clear()
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert f"run directory: {run}" in out and "metrics.jsonl" in out

    lines = _lines(run)
    steps = [r for r in lines if "event" not in r and "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for rec in steps:
        missing = STEP_KEYS - set(rec)
        assert not missing, f"step {rec['step']} lacks {sorted(missing)}"
        assert 0.0 <= rec["reward/mean"] <= 1.0
        assert rec["kl"] >= 0.0 and rec["entropy"] > 0.0 and rec["response_length/mean"] > 0
        assert rec["dynamic_sampling/groups_kept"] >= 4
        assert "val/reward/mean" in rec and "val/pass@1" in rec
    val0 = [r for r in lines if r["step"] == 0 and "val/reward/mean" in r]
    assert len(val0) == 1  # the initial policy is validated before training

    # step 0's validation sets the best; steps 1 and 2 do not beat it by min_delta -> a reset after each
    resets = [e for e in lines if e.get("event") == "reset"]
    assert [e["step"] for e in resets] == [1, 2]
    assert all("validation val/reward/mean plateaued" in e["cause"] for e in resets)
    assert "2 reset(s)" in out
    plateau = "validation val/reward/mean plateaued"
    assert SEEN == [("validation", 0, True), ("validation", 1, True), ("reset", 1, plateau),
                    ("validation", 2, True), ("reset", 2, plateau)]

    ckpt = run / "checkpoints" / "step_00000002"
    assert (ckpt / "COMPLETE").is_file()
    extra = json.loads((ckpt / "extra_state.json").read_text())
    assert '"step": 2' in json.dumps(extra)
    assert [e["reason"] for e in lines if e.get("event") == "checkpoint"] == ["final"]
    assert json.loads((run / "config.json").read_text())["trainer"]["max_steps"] == 2
    passk = json.loads((run / "passk.json").read_text())["curves"]
    assert set(passk) == {"base", "final"}
    for curve in passk.values():
        assert 0.0 <= curve["pass@1"] <= curve["pass@2"] <= curve["pass@4"] <= 1.0
    assert (run / "plots" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "plots" / "passk.png").is_file()
    assert any((run / "tensorboard").glob("events.out.tfevents.*"))

    # the same command again: the run is already complete -> nothing trained -> non-zero exit
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert "nothing to train" in err and "trainer.max_steps=2" in err
    assert (ckpt / "COMPLETE").is_file()  # the finished run is untouched


def test_bad_config_exits_2_naming_the_key(capsys):
    assert cli_main(["train", "trainer.prompts_per_step=8", "trainer.mini_batch_prompts=3"]) == 2
    assert "trainer.mini_batch_prompts" in capsys.readouterr().err
    assert cli_main(["train", "+trainer.max_stepz=3"]) == 2
    assert "trainer.max_stepz" in capsys.readouterr().err
    assert cli_main(["train", "trainer.max_stepz=3"]) == 2  # not in the schema: the loader names it
    assert "trainer.max_stepz: unknown key; did you mean 'max_steps'?" in capsys.readouterr().err
    assert cli_main(["train", "--config-name", "no_such_recipe"]) == 2
    assert "no_such_recipe" in capsys.readouterr().err
    assert cli_main(["train", "+algorithm.loss._target_=os.system"]) == 2
    assert "_target_" in capsys.readouterr().err


def test_malformed_data_file_exits_2_naming_file_row_field(tmp_path, capsys):
    good = {"id": "r1", "domain": "reasoning_gym", "prompt": "1 + 2 =", "task": "chain_sum",
            "entry": {"question": "1 + 2 =", "answer": "3", "metadata": {}}}
    bad = dict(good, id="r2")
    del bad["prompt"]
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    rc = cli_main(["train", *TINY, f"run_dir={tmp_path / 'run'}", f"data.train_files=[{data}]",
                   "data.validation_policy=fail"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{data}:2:prompt" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_dynamic_sampling_exhaustion_aborts_with_exit_1(tmp_path, capsys):
    # greedy decoding gives every rollout of a prompt the same answer: no group has reward variance
    rc = cli_main(["train", *TINY, f"run_dir={tmp_path / 'run'}", "rollout.temperature=0.0", "rollout.n=2",
                   "algorithm.dynamic_sampling.max_rounds=1", "trainer.max_steps=1"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "aborted: dynamic sampling" in err and "algorithm.dynamic_sampling.max_rounds" in err


def test_dynamic_sampling_on_exhausted_partial_trains_on_the_groups_found(tmp_path):
    # 2 rollouts per prompt of a ~15%-accurate base: few groups vary, so one round never fills 8 groups
    run = tmp_path / "run"
    rc = cli_main(["train", *TINY, f"run_dir={run}", "rollout.n=2", "trainer.prompts_per_step=8",
                   "trainer.mini_batch_prompts=8", "algorithm.dynamic_sampling.max_rounds=2",
                   "algorithm.dynamic_sampling.on_exhausted=partial", "trainer.max_steps=2"])
    assert rc == 0
    steps = [r for r in _lines(run) if "event" not in r and "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    short = [r for r in steps if r["dynamic_sampling/partial"] == 1.0]
    assert short, "expected at least one short batch"
    for r in short:
        kept = r["dynamic_sampling/groups_kept"]
        assert 1 <= kept < 8 and r["num_seqs"] == 2 * kept and r["dynamic_sampling/rounds"] == 2


def _demo_rows(n: int) -> list[dict]:
    from nemo_prorl.trainer.config import ASSETS

    with open(ASSETS["demo"] / "train.jsonl", encoding="utf-8") as fh:
        return [json.loads(next(fh)) for _ in range(n)]


def _without_answer(row: dict) -> dict:
    # structurally valid, but the reasoning-gym scorer raises on it: every scored sample is an "error"
    return dict(row, id=f"broken-{row['id']}", entry={k: v for k, v in row["entry"].items() if k != "answer"})


def test_reward_errors_abort_with_the_failing_rows(tmp_path, capsys):
    rows = _demo_rows(64)
    mixed = tmp_path / "mixed.jsonl"  # every other row cannot be scored
    mixed.write_text("".join(json.dumps(_without_answer(r) if i % 2 else r) + "\n"
                             for i, r in enumerate(rows)))
    rc = cli_main(["train", *TINY, f"run_dir={tmp_path / 'a'}", f"data.train_files=[{mixed}]",
                   "rewards.error_window_steps=1", "algorithm.dynamic_sampling.max_rounds=10",
                   "trainer.max_steps=3"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "above rewards.max_error_rate=0.05 for 1 steps; failing rows:" in err
    assert '"broken-chain_sum-train-' in err and "KeyError" in err

    # when every sample fails, no group has reward variance: the abort names the reward errors, not
    # (only) dynamic sampling
    broken = tmp_path / "broken.jsonl"
    broken.write_text("".join(json.dumps(_without_answer(r)) + "\n" for r in rows))
    rc = cli_main(["train", *TINY, f"run_dir={tmp_path / 'b'}", f"data.train_files=[{broken}]",
                   "trainer.max_steps=1"])
    assert rc == 1
    err = capsys.readouterr().err
    # every scored sample errors; a response without an <answer> tag scores 0 without the scorer
    rate = re.search(r"reward error/timeout rate ([0-9.]+)% above rewards.max_error_rate=0.05", err)
    assert rate and float(rate.group(1)) >= 90.0
    assert "no group had reward variance" in err and '"broken-chain_sum-train-' in err
