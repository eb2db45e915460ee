"""``metrics.jsonl`` (always), TensorBoard (default on), Weights & Biases (when configured)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep it visible
    return value


class MetricsLogger:
    """Appends one JSON object per step to ``run_dir/metrics.jsonl``; events go to the same file.

    On resume, lines from steps after the checkpoint are dropped first, so the file continues exactly
    where the restored state is.
    """

    def __init__(self, run_dir: Path, *, tensorboard: bool, wandb_project: str | None, wandb_name: str | None,
                 config: dict[str, Any], resume_step: int | None) -> None:
        self.path = run_dir / "metrics.jsonl"
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._fh = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        self._wandb = None
        if wandb_project:
            import wandb

            id_file = run_dir / "wandb_id.txt"
            run_id = id_file.read_text().strip() if id_file.exists() else wandb.util.generate_id()
            id_file.write_text(run_id)
            self._wandb = wandb.init(project=wandb_project, name=wandb_name, id=run_id, resume="allow",
                                     config=config, dir=str(run_dir))

    def _truncate_after(self, step: int) -> None:
        """Drop the lines the restored state does not contain.

        Those are lines of later steps, a line cut by a crash, and lines of ``step`` written after its
        checkpoint event (e.g. a phase-start reset of the next step, which is logged under the previous
        step number and happens again after the resume). Earlier ``resume`` events are kept.
        """
        records: list[tuple[dict[str, Any], str]] = []
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
                if isinstance(obj, dict) and obj.get("step", 0) <= step:
                    records.append((obj, line if line.endswith("\n") else line + "\n"))
        saved_at = [i for i, (obj, _) in enumerate(records)
                    if obj.get("event") == "checkpoint" and obj.get("step") == step]
        if saved_at:
            last = saved_at[-1]
            records = [r for i, r in enumerate(records)
                       if i <= last or r[0].get("step", 0) < step or r[0].get("event") == "resume"]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line for _, line in records), encoding="utf-8")
        os.replace(tmp, self.path)

    def log(self, record: dict[str, Any]) -> None:
        """Write one step's metrics (``record["step"]`` required)."""
        self._fh.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._fh.flush()
        step = int(record["step"])
        scalars = {k: v for k, v in record.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self, failed: bool = False) -> None:
        """Flush and close every sink (W&B marks the run failed when ``failed``)."""
        self._fh.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish(exit_code=1 if failed else 0)
