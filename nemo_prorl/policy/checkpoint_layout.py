"""Where a run's checkpoints live and which of them are finished: the layout every policy engine writes.

``<run_dir>/checkpoints/step_XXXXXXXX`` (the step count, 8 digits) holds the checkpoint taken after that
many steps; it is finished once the ``COMPLETE`` marker file exists in it (an engine writes the marker
last). Directories named ``*.tmp-*`` or ``step_*`` without the marker are partial and never loaded. What
is inside a checkpoint is the engine's business (:meth:`PolicyInterface.save_checkpoint`); the trainer
only names, finds and rotates the directories, so it needs no engine module for that.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

__all__ = ["COMPLETE", "checkpoint_path", "is_complete", "latest_checkpoint"]

_log = logging.getLogger(__name__)

#: the marker file a finished checkpoint directory holds
COMPLETE = "COMPLETE"
_STEP_RE = re.compile(r"^step_(\d+)$")


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """The canonical directory of the checkpoint taken after ``step`` steps: ``<run_dir>/step_XXXXXXXX``."""
    if step < 0:
        raise ValueError(f"checkpoint_path: step must be >= 0, got {step}")
    return Path(run_dir) / f"step_{step:08d}"


def is_complete(directory: str | Path) -> bool:
    """Whether ``directory`` is a finished checkpoint (has the ``COMPLETE`` marker)."""
    return (Path(directory) / COMPLETE).is_file()


def latest_checkpoint(run_dir: str | Path, *, cleanup: bool = False) -> Path | None:
    """The newest complete ``step_*`` checkpoint under ``run_dir``, or ``None``.

    Partial checkpoints (``*.tmp-*`` directories and ``step_*`` directories without ``COMPLETE``) are
    ignored; with ``cleanup=True`` they are deleted (call it from one process, while no save runs).

    Args:
        run_dir: the directory holding ``step_*`` checkpoint directories.
        cleanup: delete partial checkpoints.

    """
    root = Path(run_dir)
    if not root.is_dir():
        return None
    best: tuple[int, Path] | None = None
    for child in root.iterdir():
        if not child.is_dir():
            continue
        partial = ".tmp-" in child.name
        match = _STEP_RE.match(child.name)
        if match and not partial:
            if is_complete(child):
                step = int(match.group(1))
                if best is None or step > best[0]:
                    best = (step, child)
                continue
            partial = True
        if partial:
            _log.warning("ignoring partial checkpoint %s", child)
            if cleanup:
                shutil.rmtree(child, ignore_errors=True)
    return best[1] if best else None
