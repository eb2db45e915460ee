"""Preemption of the real trainer: the safe points inside a step resume exactly, and SIGTERM ends a run.

* ``test_a_signal_at_each_safe_point_resumes_exactly``: a signal delivered at a chosen moment of the
  second step stops the run at the next safe point (before the rollouts, between dynamic-sampling
  rounds, after the log-prob passes, or at the end of the step), with exit code 3 and a complete
  checkpoint; re-running the same command finishes the run with step records and final weights
  bit-identical to an uninterrupted run's. The signal is sent from inside the trainer's own methods
  (each wrapped, still called), so the moment is exact.
* ``test_sigterm_to_nemo_prorl_train``: the ``nemo-prorl train`` console script in a subprocess gets
  SIGTERM (what ``scancel`` and Slurm preemption send) while it trains, exits 3 with a complete
  checkpoint, and the re-run resumes from it and finishes.
"""

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
from nemo_prorl.trainer.trainer import ProRLTrainer

REPO = Path(__file__).resolve().parents[2]

#: 4 prompts x 4 rollouts per step, generated 2 prompts per dynamic-sampling round (>= 2 rounds a step)
TINY = ["trainer.prompts_per_step=4", "trainer.mini_batch_prompts=2", "rollout.n=4",
        "trainer.generation_prompts=2", "algorithm.dynamic_sampling.max_rounds=12",
        "trainer.val_interval=0", "final_eval.enabled=false", "checkpoint.interval=0",
        "trainer.progress_bar=false", "logging.plots=false", "reset.at_steps=[]",
        "reset.on_val_plateau=false"]

_TIMED = ("time/", "tokens_per_s")


def _read(run_dir: Path) -> tuple[list[dict], list[dict]]:
    steps, events = [], []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        obj = json.loads(line)
        (events if "event" in obj else steps).append(obj)
    return steps, events


def _untimed(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if not k.startswith(_TIMED)}


def _weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "hf" / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("full") / "run"
    assert cli_main(["train", *TINY, f"run_dir={run}", "trainer.max_steps=3"]) == 0
    return run


def _signal_self() -> None:
    os.kill(os.getpid(), signal.SIGUSR1)  # the PreemptionHandler installed by fit() records it


#: method to wrap -> (when to send the signal, the safe point expected to stop the run, steps completed)
MOMENTS = {
    # during the second step's phase entry: the check before its rollouts catches it
    "_enter_phase": (lambda self, step, resuming=False: step == 1 and not resuming, "before rollouts", 1),
    # while the second step's first dynamic-sampling round is being prepared
    "_sampling": (lambda self, round_idx, **over: self.step == 1 and round_idx == 0,
                  "between rollout rounds (1 done)", 1),
    # after the second step's rollouts, while its token batch is built (before the log-prob passes)
    "_build_batch": (lambda self, groups: self.step == 1, "after the log-prob passes", 1),
    # after the log-prob safe point, while the loss is built: the updates finish, the step ends
    "_loss_fn": (lambda self: self.step == 1, "end of step", 2),
}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(MOMENTS))
def test_a_signal_at_each_safe_point_resumes_exactly(tmp_path, monkeypatch, uninterrupted, method):
    when, where, stopped = MOMENTS[method]
    real = getattr(ProRLTrainer, method)

    def wrapped(self, *args, **kwargs):
        if when(self, *args, **kwargs):
            _signal_self()
        return real(self, *args, **kwargs)

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(ProRLTrainer, method, wrapped)
        assert cli_main(["train", *TINY, f"run_dir={run}", "trainer.max_steps=3"]) == 3
    steps, events = _read(run)
    assert [r["step"] for r in steps] == list(range(1, stopped + 1))
    ckpt = events[-1]
    assert (ckpt["event"], ckpt["step"], ckpt["reason"], ckpt["at"]) == (
        "checkpoint", stopped, "signal SIGUSR1", where)
    assert (run / "checkpoints" / f"step_{stopped:08d}" / "COMPLETE").is_file()
    assert not (run / "hf").exists()  # stopped: no final export

    assert cli_main(["train", *TINY, f"run_dir={run}", "trainer.max_steps=3"]) == 0
    steps, events = _read(run)
    full, _ = _read(uninterrupted)
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert [e["step"] for e in events if e["event"] == "resume"] == [stopped]
    # same sampler position, RNG, weights and optimizer at the restart: bit-identical, not merely close
    for a, b in zip(full, steps):
        assert _untimed(a) == _untimed(b), f"step {a['step']} differs after a stop {where}"
    wa, wb = _weights(uninterrupted), _weights(run)
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


@pytest.mark.slow  # about 35 s of CPU: start-up, one step, the signal's checkpoint, a one-step resume
def test_sigterm_to_nemo_prorl_train(tmp_path):
    run = tmp_path / "run"
    exe = Path(sys.executable).parent / "nemo-prorl"
    cmd = [str(exe), "train", *TINY, f"run_dir={run}", "trainer.max_steps=500"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get(
        "PYTHONPATH", "")}
    metrics = run / "metrics.jsonl"
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        while not (metrics.is_file() and '"loss"' in metrics.read_text()):
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"trainer exited early ({proc.returncode}):\n{out[-3000:]}\n{err[-3000:]}")
            if time.time() - t0 > 120:
                pytest.fail("the trainer logged no step within 120 s")
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, err[-3000:]  # 3: preempted, checkpoint complete, re-run to resume
    steps, events = _read(run)
    stopped = steps[-1]["step"]
    assert 1 <= stopped < 500
    ckpt = events[-1]
    assert (ckpt["event"], ckpt["step"], ckpt["reason"]) == ("checkpoint", stopped, "signal SIGTERM")
    assert ckpt["at"] in ("before rollouts", "after the log-prob passes", "end of step") or \
        ckpt["at"].startswith("between rollout rounds")
    assert (run / "checkpoints" / f"step_{stopped:08d}" / "COMPLETE").is_file()
    assert '"preempted": true' in out and "re-run the same command to resume" in out
    # the same command with one more step resumes from the signal's checkpoint and finishes
    assert cli_main(["train", *TINY, f"run_dir={run}", f"trainer.max_steps={stopped + 1}"]) == 0
    steps, events = _read(run)
    assert [r["step"] for r in steps] == list(range(1, stopped + 2))
    resume = [e for e in events if e["event"] == "resume"]
    assert len(resume) == 1 and resume[0]["step"] == stopped
    assert resume[0]["from"].endswith(f"step_{stopped:08d}")
    assert (run / "hf" / "model.safetensors").is_file()
