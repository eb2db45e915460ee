"""eval.sampling.summarize against hand-computed numbers; plots from a small metrics.jsonl."""

from __future__ import annotations

import json

import pytest

from nemo_prorl.eval.sampling import scoring_row, summarize
from nemo_prorl.trainer.plotting import main as plot_main
from nemo_prorl.trainer.plotting import plot_run, read_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rec(domain, rewards, correct, lengths, statuses=None):
    return {"id": "x", "domain": domain, "rewards": rewards, "correct": correct, "lengths": lengths,
            "statuses": statuses or ["ok"] * len(rewards), "finish_reasons": ["stop"] * len(rewards),
            "responses": [""] * len(rewards)}


RECORDS = [
    _rec("math", [1.0, 0.0, 1.0, 0.0], [True, False, True, False], [3, 5, 7, 9]),
    _rec("math", [0.0, 0.0, 0.0, 0.0], [False] * 4, [1, 1, 1, 1], ["ok", "ok", "error", "timeout"]),
    _rec("code", [0.5, 1.0, 0.25, 0.25], [False, True, False, False], [2, 2, 2, 2]),
]


def test_summarize_hand_computed():
    out = summarize(RECORDS, ks=(1, 2, 4), prefix="val/")
    # rewards: math 2/8, code 2/4, all 4/12
    assert out["val/reward/mean"] == pytest.approx(1 / 3)
    assert out["val/reward/math"] == pytest.approx(0.25)
    assert out["val/reward/code"] == pytest.approx(0.5)
    # pass@1 per problem: c/n = 0.5, 0, 0.25
    assert out["val/pass@1"] == pytest.approx(0.25)
    assert out["val/pass@1/math"] == pytest.approx(0.25)
    assert out["val/pass@1/code"] == pytest.approx(0.25)
    # pass@2 = 1 - C(n-c,2)/C(4,2): 1 - 1/6 = 5/6, 0, 1 - 3/6 = 1/2
    assert out["val/pass@2"] == pytest.approx((5 / 6 + 0.5) / 3)
    assert out["val/pass@2/math"] == pytest.approx(5 / 12)
    assert out["val/pass@2/code"] == pytest.approx(0.5)
    # pass@4: n - c < 4 -> 1 for the first and third, 0 for the second
    assert out["val/pass@4"] == pytest.approx(2 / 3)
    assert out["val/pass@4/math"] == pytest.approx(0.5)
    # lengths 24 + 4 + 8 over 12 samples
    assert out["val/response_length/mean"] == pytest.approx(3.0)
    assert out["val/status/ok"] == pytest.approx(10 / 12)
    assert out["val/status/error"] == pytest.approx(1 / 12)
    assert out["val/status/timeout"] == pytest.approx(1 / 12)
    assert set(out) == {
        "val/reward/mean", "val/reward/math", "val/reward/code", "val/response_length/mean",
        "val/status/ok", "val/status/error", "val/status/timeout",
        *(f"val/pass@{k}{d}" for k in (1, 2, 4) for d in ("", "/math", "/code")),
    }


def test_summarize_skips_problems_with_fewer_than_k_samples():
    recs = [_rec("math", [1.0, 0.0], [True, False], [1, 1]),
            _rec("math", [0.0] * 4, [False] * 4, [1] * 4)]
    out = summarize(recs, ks=(1, 4))
    assert out["pass@1"] == pytest.approx(0.25)  # (1/2 + 0) / 2
    assert out["pass@4"] == 0.0                  # only the 4-sample problem counts
    assert summarize([], ks=(1,)) == {}


def test_scoring_row_keeps_ground_truth_only():
    row = {"id": "a", "domain": "math", "prompt": "1+1?", "answer": "2", "extra": 1}
    assert scoring_row(row, "2") == {"domain": "math", "answer": "2", "response": "2"}


def _metrics(run_dir):
    lines = [{"step": 0, "val/reward/mean": 0.2}]
    for s in range(1, 7):
        lines.append({"step": s, "reward/mean": 0.1 * s, "loss": 1.0 / s, "kl": 0.01 * s, "entropy": 0.5,
                      "response_length/mean": 5 + s, "time/step": 0.2, "grad_norm": "nan"})
    lines.insert(4, {"step": 3, "event": "reset", "cause": "scheduled"})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"cut')


def test_plot_run_writes_pngs(tmp_path):
    _metrics(tmp_path)
    steps, events = read_metrics(tmp_path)
    assert len(steps) == 7 and [e["event"] for e in events] == ["reset"]
    written = plot_run(tmp_path)
    assert [p.name for p in written] == ["curves.png"]
    assert written[0].read_bytes()[:8] == PNG_MAGIC
    (tmp_path / "passk.json").write_text(json.dumps(
        {"curves": {"base": {"pass@1": 0.2, "pass@2": 0.3, "pass@2/math": 0.1},
                    "final": {"pass@1": 0.4, "pass@2": 0.5}}}))
    written = plot_run(tmp_path)
    assert [p.name for p in written] == ["curves.png", "passk.png"]
    assert (tmp_path / "plots" / "passk.png").read_bytes()[:8] == PNG_MAGIC


def test_plot_cli(tmp_path, capsys):
    assert plot_main([str(tmp_path)]) == 2
    assert "metrics.jsonl not found" in capsys.readouterr().err
    _metrics(tmp_path)
    assert plot_main([str(tmp_path)]) == 0
    assert "curves.png" in capsys.readouterr().out
