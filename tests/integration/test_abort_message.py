"""An aborted run says why on a clean line: the progress bar is closed before the reason is printed.

Every reward is 0 at the first step (the data's answers are ones no model writes), dynamic sampling finds
no informative group in its one round and the run aborts (exit 1). Before the fix the bar was left open
and redrew itself after the message ("...or use easier/harder data\\n\\rProRL:   0%|..."), and on a
terminal the message was half overwritten.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_abort_reason_printed_after_the_bar_is_closed(tmp_path):
    rows = [json.loads(x) for x in (REPO / "nemo_prorl/assets/demo/train.jsonl").read_text().splitlines()[:8]]
    data = tmp_path / "zero.jsonl"
    with open(data, "w") as f:
        for r in rows:
            r["entry"]["answer"] = "no model writes this"
            f.write(json.dumps(r) + "\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-m", "nemo_prorl.cli", "train", f"run_dir={tmp_path / 'run'}",
         "trainer.max_steps=3", f"data.train_files=[{data}]", "trainer.prompts_per_step=4",
         "trainer.mini_batch_prompts=2",
         "rollout.n=4", "trainer.val_interval=0", "reset.on_val_plateau=false", "final_eval.enabled=false",
         "algorithm.dynamic_sampling.max_rounds=1", "algorithm.dynamic_sampling.on_exhausted=error",
         "checkpoint.interval=0", "logging.plots=false", "trainer.progress_bar=true"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    err = proc.stderr
    assert proc.returncode == 1, err[-3000:]
    head, sep, tail = err.partition("nemo-prorl train: aborted: ")
    assert sep, err[-3000:]
    assert "ProRL:" in head  # the bar was shown ...
    assert head.endswith("\n")  # ... and finished its line before the message began
    assert "ProRL" not in tail and "\r" not in tail, tail  # nothing drawn after (or over) the message
    assert "every reward 0" in tail and "Every sample scored 0" in tail  # the reason and what to change
