"""metrics.jsonl: append, non-finite values, truncation on resume, fresh runs start a new file."""

from __future__ import annotations

import json
from pathlib import Path

from nemo_prorl.trainer.metrics_log import MetricsLogger


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _logger(run_dir: Path, resume_step: int | None, tensorboard: bool = False) -> MetricsLogger:
    return MetricsLogger(run_dir, tensorboard=tensorboard, wandb_project=None, wandb_name=None, config={},
                         resume_step=resume_step)


def _write(path: Path, objs: list[dict], tail: str = "") -> None:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs) + tail)


def test_log_appends_one_object_per_line_and_keeps_non_finite_visible(tmp_path):
    log = _logger(tmp_path, None)
    log.log({"step": 1, "loss": 0.5, "kl": float("nan"), "grad_norm": float("inf"), "note": "x"})
    log.log({"step": 1, "event": "reset", "cause": "scheduled"})
    log.close()
    got = _lines(tmp_path / "metrics.jsonl")
    assert got[0] == {"step": 1, "loss": 0.5, "kl": "nan", "grad_norm": "inf", "note": "x"}
    assert got[1]["event"] == "reset"


def test_resume_truncates_later_steps_and_a_cut_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write(path, [{"step": 0, "val/reward/mean": 0.1}, {"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0},
                  {"step": 2, "event": "checkpoint"}, {"step": 3, "loss": 3.0}, {"step": 4, "loss": 4.0}],
           tail='{"step": 5, "lo')  # a crash cut the last line
    log = _logger(tmp_path, 2)
    log.log({"step": 3, "loss": 30.0})
    log.close()
    got = _lines(path)
    assert [(o["step"], o.get("loss"), o.get("event")) for o in got] == [
        (0, None, None), (1, 1.0, None), (2, 2.0, None), (2, None, "checkpoint"), (3, 30.0, None)]


def test_resume_drops_events_logged_after_the_checkpoint_of_the_resume_step(tmp_path):
    # a phase-start reset of step 3 is logged with step=2 after step 2's checkpoint; it happens again
    # after the resume, so the old copy must go -- but an earlier resume event is history and stays
    path = tmp_path / "metrics.jsonl"
    _write(path, [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0},
                  {"step": 2, "event": "reset", "cause": "a"},
                  {"step": 2, "event": "checkpoint"}, {"step": 2, "event": "resume"},
                  {"step": 2, "event": "phase", "name": "b"}, {"step": 2, "event": "reset", "cause": "b"},
                  {"step": 3, "loss": 3.0}])
    _logger(tmp_path, 2).close()
    got = [(o["step"], o.get("event"), o.get("cause")) for o in _lines(path)]
    assert got == [(1, None, None), (2, None, None), (2, "reset", "a"), (2, "checkpoint", None),
                   (2, "resume", None)]


def test_resume_without_a_checkpoint_event_keeps_all_lines_of_that_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write(path, [{"step": 1, "loss": 1.0}, {"step": 1, "event": "reset"}, {"step": 2, "loss": 2.0}])
    _logger(tmp_path, 1).close()
    assert [(o["step"], o.get("event")) for o in _lines(path)] == [(1, None), (1, "reset")]


def test_fresh_run_replaces_an_old_file(tmp_path):
    _write(tmp_path / "metrics.jsonl", [{"step": 1, "loss": 1.0}])
    log = _logger(tmp_path, None)
    log.log({"step": 1, "loss": 9.0})
    log.close()
    assert _lines(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 9.0}]


def test_tensorboard_scalars_are_written(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = _logger(tmp_path, None, tensorboard=True)
    log.log({"step": 1, "loss": 0.25, "flag": True, "phase_name": "a"})
    log.log({"step": 2, "loss": 0.5})
    log.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert acc.Tags()["scalars"] == ["loss"]  # bools and strings are not scalars
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 0.25), (2, 0.5)]
