"""ProRLTrainer on CPU with the demo model: resume equality, resets and phase transitions, preemption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nemo_prorl.cli import main as cli_main
from nemo_prorl.trainer.callbacks import Callback, register_callback
from nemo_prorl.trainer.config import load_config
from nemo_prorl.trainer.trainer import ProRLTrainer

REPO = Path(__file__).resolve().parents[2]

#: tiny overrides of the embedded default: 4 prompts x 4 rollouts per step, no validation or final eval
TINY = ["trainer.prompts_per_step=4", "trainer.mini_batch_prompts=2", "rollout.n=4",
        "trainer.val_interval=0", "final_eval.enabled=false", "checkpoint.interval=0",
        "trainer.progress_bar=false", "logging.plots=false", "reset.at_steps=[]",
        "reset.on_val_plateau=false"]

#: values that depend on wall-clock time
_TIMED = ("time/", "tokens_per_s")


def _read(run_dir: Path) -> tuple[list[dict], list[dict]]:
    steps, events = [], []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        obj = json.loads(line)
        (events if "event" in obj else steps).append(obj)
    return steps, events


def _untimed(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if not k.startswith(_TIMED)}


@register_callback("test_recorder")
class _Recorder(Callback):
    """Records the trainer's callback calls (chosen by name: ``trainer.callbacks=[test_recorder]``)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_step_end(self, step, metrics):
        self.calls.append(("step_end", step, metrics["step"], "kl" in metrics))

    def on_validation(self, step, metrics):
        self.calls.append(("validation", step))

    def on_reset(self, step, cause):
        self.calls.append(("reset", step, cause))


def _train(run_dir: Path, *overrides: str) -> int:
    return cli_main(["train", *TINY, f"run_dir={run_dir}", *overrides])


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    # the split falls on a phase boundary whose phase starts with a reset, after a scheduled reset:
    # the resumed run must redo the phase switch and its reset, with the restored reset history
    over = ["reset.at_steps=[1]",
            "phases=[{name: a, steps: 2}, {name: b, steps: 2, reset: true, temperature: 1.1}]"]
    full, split = tmp_path / "full", tmp_path / "split"
    assert _train(full, "trainer.max_steps=4", *over) == 0
    assert _train(split, "trainer.max_steps=2", *over) == 0
    assert (split / "checkpoints" / "step_00000002" / "COMPLETE").is_file()
    # the same command with a larger max_steps continues the run in the same run_dir
    assert _train(split, "trainer.max_steps=4", *over) == 0
    a, events_a = _read(full)
    b, events_b = _read(split)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    assert [(e["step"], e["event"]) for e in events_a] == [
        (0, "phase"), (1, "reset"), (2, "phase"), (2, "reset"), (4, "checkpoint")]
    assert [(e["step"], e["event"]) for e in events_b] == [
        (0, "phase"), (1, "reset"), (2, "checkpoint"), (2, "resume"), (2, "phase"), (2, "reset"),
        (4, "checkpoint")]
    assert [e.get("cause") for e in events_a if e["event"] == "reset"] == \
        [e.get("cause") for e in events_b if e["event"] == "reset"]
    assert [e["total_resets"] for e in events_b if e["event"] == "reset"] == [1, 2]
    # CPU, same seeds, restored sampler/RNG/optimizer: bit-identical numbers, not merely close
    for ra, rb in zip(a, b):
        assert _untimed(ra) == _untimed(rb), f"step {ra['step']} differs after resume"
    assert a[2]["loss"] != a[3]["loss"]  # the compared values are not constant
    # the uninterrupted and the resumed run end with identical weights
    from safetensors.torch import load_file

    wa = load_file(str(full / "hf" / "model.safetensors"))
    wb = load_file(str(split / "hf" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all((wa[k] == wb[k]).all() for k in wa)


def test_scheduled_reset_and_phase_transition(tmp_path):
    run = tmp_path / "run"
    cfg = load_config(None, [
        *TINY, f"run_dir={run}", "trainer.max_steps=4", "trainer.mini_batch_prompts=4",  # one update per step
        "reset.at_steps=[1]", "trainer.generation_prompts=8", "algorithm.dynamic_sampling.max_rounds=8",
        "phases=[{name: warm, steps: 2}, {name: long, steps: 2, reset: true, n: 3, temperature: 1.1}]",
        "trainer.callbacks=[test_recorder]",
    ])
    trainer = ProRLTrainer(cfg)
    try:
        trainer.setup()
        summary = trainer.fit()
    finally:
        trainer.close()
    steps, events = _read(run)
    assert [(e["step"], e["event"]) for e in events] == [
        (0, "phase"), (1, "reset"), (2, "phase"), (2, "reset"), (4, "checkpoint")]
    phase0, reset1, phase1, reset2 = events[:4]
    assert (phase0["name"], phase0["n"]) == ("warm", 4)
    assert (phase1["name"], phase1["n"], phase1["temperature"]) == ("long", 3, 1.1)
    assert reset1["cause"] == "scheduled (reset.at_steps contains 1)"
    assert reset2["cause"] == "phase 'long' starts with a reset"
    assert [r["total_resets"] for r in (reset1, reset2)] == [1, 2]
    assert [h["step"] for h in summary["resets"]] == [1, 2]
    # the configured callback saw every step end and both resets, in order
    assert trainer.callbacks[0].calls == [
        ("step_end", 1, 1, True), ("reset", 1, "scheduled (reset.at_steps contains 1)"),
        ("step_end", 2, 2, True), ("reset", 2, "phase 'long' starts with a reset"),
        ("step_end", 3, 3, True), ("step_end", 4, 4, True)]
    # n in force: 4 prompts x 4 rollouts, then 4 prompts x 3 rollouts (one update per step)
    assert [r["phase"] for r in steps] == [0, 0, 1, 1]
    assert [r["num_seqs"] for r in steps] == [16, 16, 12, 12]
    # after a reset the reference equals the policy, so the step's (single) update starts at KL 0
    kl = [r["kl"] for r in steps]
    assert kl[0] == pytest.approx(0.0, abs=1e-7)  # reference = initial policy
    assert kl[1] == pytest.approx(0.0, abs=1e-7)  # reset after step 1
    assert kl[2] == pytest.approx(0.0, abs=1e-7)  # reset at the start of phase 'long'
    assert kl[3] > 1e-6                           # no reset before step 4: the policy has moved
    # the checkpoint carries the reset history and phase for a resume
    extra = json.loads((run / "checkpoints" / "step_00000004" / "extra_state.json").read_text())
    blob = json.dumps(extra)
    assert "phase 'long' starts with a reset" in blob


def _wait_for(pred, timeout: float, proc: subprocess.Popen) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"trainer exited early ({proc.returncode}):\n{out[-3000:]}\n{err[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail("timed out waiting for the trainer")


def test_sigusr1_saves_a_checkpoint_exits_3_and_the_rerun_resumes(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "nemo_prorl.cli", "train", *TINY, f"run_dir={run}", "trainer.max_steps=500"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"

    def trained_a_step() -> bool:
        return metrics.is_file() and '"loss"' in metrics.read_text()

    try:
        _wait_for(trained_a_step, 240, proc)
        proc.send_signal(signal.SIGUSR1)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, err[-3000:]  # 3: preempted, checkpoint complete, re-run to resume
    steps, events = _read(run)
    stopped = steps[-1]["step"]
    assert 1 <= stopped < 500
    assert events[-1]["event"] == "checkpoint"
    assert events[-1]["reason"] == "signal SIGUSR1"
    assert events[-1]["step"] == stopped
    assert (run / "checkpoints" / f"step_{stopped:08d}" / "COMPLETE").is_file()
    assert '"preempted": true' in out
    # re-running the same command (one more step) resumes from the signal's checkpoint
    assert _train(run, f"trainer.max_steps={stopped + 1}") == 0
    steps, events = _read(run)
    assert [r["step"] for r in steps] == list(range(1, stopped + 2))
    resume = [e for e in events if e["event"] == "resume"]
    assert len(resume) == 1 and resume[0]["step"] == stopped
    assert resume[0]["from"].endswith(f"step_{stopped:08d}")
