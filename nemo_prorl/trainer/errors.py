"""The trainer's exceptions."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """The run cannot go on (too many non-finite updates, reward errors, zero steps trained)."""


class StepAbandoned(Exception):
    """A preemption signal at a safe point inside a step; the message says where."""
