"""ProRL's reset triggers: explicit steps, every N steps, validation plateau/drop, KL above a threshold.

And the target of a reset (``reset.reference``): the current policy (ProRL v1), or the best checkpoint by
the validation metric (ProRL v2). For the latter the controller keeps the best checkpoint's step and
value: a validation whose value beats it (strictly) makes that step's checkpoint the new best, which the
trainer saves and keeps out of the rotation (``checkpoint.keep_last``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from nemo_prorl.trainer.config import ResetConfig


@dataclass
class ResetController:
    """Decides, after each step, whether to hard-reset reference and optimizer, and why.

    Its state (best validation value, validations since improvement, last reset step, history) is
    part of the checkpoint, so a resumed run makes the same decisions.
    """

    cfg: ResetConfig
    best: float | None = None
    since_improvement: int = 0
    last_reset_step: int = -(10**9)
    history: list[dict[str, Any]] = field(default_factory=list)
    #: ``{"step": s, "value": v}`` of the best checkpoint (``reset.reference=best``), or None
    best_checkpoint: dict[str, Any] | None = None

    def observe_validation(self, value: float | None) -> str | None:
        """Record a validation result; returns a cause when the plateau/drop trigger fires."""
        if value is None or not self.cfg.on_val_plateau:
            return None
        if self.best is None or value > self.best + self.cfg.min_delta:
            self.best = value
            self.since_improvement = 0
            return None
        self.since_improvement += 1
        if self.cfg.drop_delta is not None and value < self.best - self.cfg.drop_delta:
            return f"validation {self.cfg.metric} dropped to {value:.4g} from best {self.best:.4g}"
        if self.since_improvement >= self.cfg.patience:
            return (f"validation {self.cfg.metric} plateaued ({self.since_improvement} validations without "
                    f"improving on {self.best:.4g} by {self.cfg.min_delta})")
        return None

    def check(self, step: int, kl: float | None, val_cause: str | None) -> str | None:
        """The cause of a reset after 1-based ``step`` (None = no reset)."""
        if step - self.last_reset_step < self.cfg.min_steps_between:
            return None
        if step in self.cfg.at_steps:
            return f"scheduled (reset.at_steps contains {step})"
        if self.cfg.every_n_steps and step % self.cfg.every_n_steps == 0:
            return f"every {self.cfg.every_n_steps} steps"
        if val_cause:
            return val_cause
        if self.cfg.kl_above is not None and kl is not None and kl > self.cfg.kl_above:
            return f"kl {kl:.4g} above reset.kl_above={self.cfg.kl_above}"
        return None

    def record(self, step: int, cause: str) -> None:
        """Note that a reset happened after ``step``."""
        self.last_reset_step = step
        # after a reset the policy starts a new "run": plateau tracking starts over
        self.since_improvement = 0
        self.history.append({"step": step, "cause": cause})

    def best_checkpoint_due(self, value: float | None) -> bool:
        """Whether a validation ``value`` at this step makes this step's checkpoint the new best.

        Only with ``reset.reference=best``; the value must be finite and beat the best checkpoint's
        strictly (a tie keeps the older checkpoint).
        """
        if self.cfg.reference != "best" or value is None or not math.isfinite(value):
            return False
        return self.best_checkpoint is None or value > self.best_checkpoint["value"]

    def mark_best_checkpoint(self, step: int, value: float) -> None:
        """Record that the checkpoint after ``step`` (validated at ``value``) is the best one."""
        self.best_checkpoint = {"step": int(step), "value": float(value)}

    def protected_step(self) -> int | None:
        """The step of the checkpoint that rotation must keep (None = none)."""
        return None if self.best_checkpoint is None else int(self.best_checkpoint["step"])

    def reference_source(self, step: int, current_value: float | None) -> int | None:
        """The checkpoint step whose policy weights a reset after ``step`` loads (None = the current policy).

        ``current_value`` is the validation value of the current policy at ``step`` (None when it was
        not validated at ``step``). The current policy is used with ``reset.reference=current``, before
        any best checkpoint exists, and when it is itself at least as good as the best checkpoint.
        """
        best = self.best_checkpoint
        if self.cfg.reference != "best" or best is None or best["step"] == step:
            return None
        if current_value is not None and current_value >= best["value"]:
            return None
        return int(best["step"])

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (stored in the checkpoint's extra state)."""
        return {"best": self.best, "since_improvement": self.since_improvement,
                "last_reset_step": self.last_reset_step, "history": list(self.history),
                "best_checkpoint": None if self.best_checkpoint is None else dict(self.best_checkpoint)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.best = state["best"]
        self.since_improvement = state["since_improvement"]
        self.last_reset_step = state["last_reset_step"]
        self.history = list(state["history"])
        best = state.get("best_checkpoint")  # (absent from checkpoints written before reset.reference)
        self.best_checkpoint = None if best is None else dict(best)
