"""Preemption: catch the scheduler's warning signal, let the trainer save, then requeue the job.

Slurm warns a job before it ends it: ``#SBATCH --signal=B:USR1@120`` sends SIGUSR1 to the batch shell
120 s before the time limit (the example sbatch scripts forward it to every rank through ``srun``), and
preemption or ``scancel`` sends SIGTERM, then SIGKILL after the cluster's ``KillWait``. A
:class:`PreemptionHandler` turns those signals into a flag; the trainer polls it at the safe points of a
step (before its rollouts, between dynamic-sampling rounds, after the log-prob passes, at its end; see
``docs/preemption.md``), agrees on it across ranks (:meth:`PreemptionHandler.requested_on_any_rank`),
saves a checkpoint, and rank 0 calls :func:`request_slurm_requeue`. The requeued job re-runs the same
command and resumes from ``run_dir``. :func:`signal_lead_time` sizes the ``@N`` of ``--signal`` from a
run's ``metrics.jsonl``.

The signal handler only records the signal: no I/O, no locks, nothing that is unsafe to do while the
interrupted code holds a lock.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

__all__ = [
    "DEFAULT_PREEMPTION_SIGNALS",
    "PreemptionHandler",
    "RequeueError",
    "LeadTime",
    "request_slurm_requeue",
    "signal_lead_time",
    "slurm_requeue_enabled",
]

logger = logging.getLogger(__name__)

#: Signals a handler listens to by default: Slurm's ``--signal`` warning (USR1) and the kill notice (TERM).
DEFAULT_PREEMPTION_SIGNALS: tuple[str, ...] = ("SIGTERM", "SIGUSR1")
_UNCATCHABLE = {"SIGKILL", "SIGSTOP"}
_REQUEUE_FIELD = re.compile(r"(?:^|\s)Requeue=(\d+)(?:\s|$)")


def _signal_by_name(name: str | int | signal.Signals) -> signal.Signals:
    """Turn ``"SIGUSR1"``, ``"USR1"``, ``"usr1"``, ``10`` or ``signal.SIGUSR1`` into a ``Signals`` member."""
    if isinstance(name, signal.Signals):
        sig = name
    elif isinstance(name, int) and not isinstance(name, bool):
        try:
            sig = signal.Signals(name)
        except ValueError:
            raise ValueError(f"preemption signals: {name} is not a signal number on this platform") from None
    elif isinstance(name, str):
        key = name.strip().upper()
        if not key.startswith("SIG"):
            key = "SIG" + key
        try:
            sig = signal.Signals[key]
        except KeyError:
            raise ValueError(f"preemption signals: unknown signal name {name!r}") from None
    else:
        raise ValueError(f"preemption signals: expected a signal name or number, got {type(name).__name__}")
    if sig.name in _UNCATCHABLE:
        raise ValueError(f"preemption signals: {sig.name} cannot be caught")
    return sig


class PreemptionHandler:
    """Record the first preemption signal so the training loop can stop cleanly.

    Use as a context manager around the training loop; previous handlers are restored on exit::

        with PreemptionHandler(["SIGTERM", "SIGUSR1"]) as preempt:
            for step in ...:
                train_step()
                if preempt.requested_on_any_rank():
                    save_checkpoint()
                    if dist_env.is_main:
                        request_slurm_requeue()
                    break

    Attributes:
        signals: the signals listened to, in the order given.

    """

    def __init__(self, signals: Iterable[str | int | signal.Signals] = DEFAULT_PREEMPTION_SIGNALS) -> None:
        """Validate the signal list; nothing is installed until :meth:`install` or ``with``.

        Args:
            signals: names (``"SIGUSR1"`` or ``"USR1"``), numbers or ``signal.Signals`` members.

        Raises:
            ValueError: on an empty list, an unknown name, or SIGKILL/SIGSTOP.

        """
        resolved: list[signal.Signals] = []
        for item in signals:
            sig = _signal_by_name(item)
            if sig not in resolved:
                resolved.append(sig)
        if not resolved:
            raise ValueError("preemption signals: the list is empty")
        self.signals: tuple[signal.Signals, ...] = tuple(resolved)
        self._previous: dict[signal.Signals, Any] = {}
        self._signal_name: str | None = None
        self._received_at: float | None = None
        self._count = 0

    # -- state the trainer polls ------------------------------------------------------------------------
    @property
    def requested(self) -> bool:
        """True once any of the signals has arrived (on this process)."""
        return self._signal_name is not None

    @property
    def signal_name(self) -> str | None:
        """Name of the first signal received (``"SIGUSR1"``), or None."""
        return self._signal_name

    @property
    def received_at(self) -> float | None:
        """``time.monotonic()`` when the first signal arrived, or None."""
        return self._received_at

    @property
    def count(self) -> int:
        """How many of the signals have arrived since installation (repeats included)."""
        return self._count

    @property
    def installed(self) -> bool:
        """True between :meth:`install` and :meth:`uninstall`."""
        return bool(self._previous)

    def seconds_since_request(self) -> float | None:
        """Seconds since the first signal, to compare against the grace window; None before it."""
        return None if self._received_at is None else time.monotonic() - self._received_at

    def reset(self) -> None:
        """Forget received signals (e.g. after a save that did not end the job)."""
        self._signal_name = None
        self._received_at = None
        self._count = 0

    def request(self, name: str = "manual") -> None:
        """Set the flag without a signal (a time-based "save before the wall clock ends" policy)."""
        if self._signal_name is None:
            self._signal_name = name
            self._received_at = time.monotonic()
        self._count += 1

    # -- installation -----------------------------------------------------------------------------------
    def _handle(self, signum: int, frame: FrameType | None) -> None:  # noqa: ARG002 - signal API
        self.request(signal.Signals(signum).name)

    def install(self) -> PreemptionHandler:
        """Install the handlers, remembering the previous ones.

        Returns:
            ``self``.

        Raises:
            RuntimeError: when called off the main thread (Python delivers signals only there) or twice.

        """
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionHandler.install() must run on the main thread (Python signal rule)")
        if self._previous:
            raise RuntimeError("PreemptionHandler is already installed")
        installed: dict[signal.Signals, Any] = {}
        try:
            for sig in self.signals:
                installed[sig] = signal.signal(sig, self._handle)
        except Exception:
            for sig, old in installed.items():
                signal.signal(sig, old)
            raise
        self._previous = installed
        return self

    def uninstall(self) -> None:
        """Restore the handlers that were active before :meth:`install`; a no-op when not installed."""
        previous, self._previous = self._previous, {}
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)

    def __enter__(self) -> PreemptionHandler:
        return self.install()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstall()

    # -- agreement across ranks -------------------------------------------------------------------------
    def requested_on_any_rank(self, group: Any = None) -> bool:
        """All-reduce the flag so every rank stops at the same step.

        Signals reach ranks at slightly different times; a rank that stopped alone would leave the others
        waiting in a collective. Call this at the same point of every step on every rank. Without an
        initialised ``torch.distributed`` process group it returns :attr:`requested`.

        Args:
            group: process group to reduce over (default: the world).

        Returns:
            True if any rank has received a signal. Once True on one rank it is True on all of them.

        """
        try:
            import torch

            from nemo_prorl import collectives
        except ImportError:  # pragma: no cover - torch is a core dependency
            return self.requested
        if not collectives.is_active():
            return self.requested
        flag = torch.tensor([1 if self.requested else 0], dtype=torch.int32)  # staged on the group's device
        collectives.all_reduce(flag, op=collectives.ReduceOp.MAX, group=group)
        if flag.item() and not self.requested:
            self.request("peer")
        return bool(flag.item())


class RequeueError(RuntimeError):
    """``scontrol requeue`` was called and failed."""


def _run_scontrol(args: Sequence[str], scontrol: str, timeout: float) -> subprocess.CompletedProcess[str]:
    exe = shutil.which(scontrol)
    if exe is None:
        raise RequeueError(f"{scontrol!r} not found on PATH: cannot talk to Slurm from inside this container")
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
    )


def slurm_requeue_enabled(
    environ: Mapping[str, str] | None = None, *, scontrol: str = "scontrol", timeout: float = 30.0
) -> bool:
    """Ask Slurm whether this job may be requeued (``sbatch --requeue`` or the cluster default).

    Reads the ``Requeue=`` field of ``scontrol show job -o $SLURM_JOB_ID``.

    Args:
        environ: environment to read ``SLURM_JOB_ID`` from; ``os.environ`` when None.
        scontrol: the ``scontrol`` executable (name on PATH or a path).
        timeout: seconds to wait for ``scontrol``.

    Returns:
        False outside Slurm or when the job is not requeueable; True when ``Requeue=1``.

    Raises:
        RequeueError: when ``scontrol`` is missing, fails, or prints no ``Requeue=`` field.

    """
    env_map = os.environ if environ is None else environ
    job_id = env_map.get("SLURM_JOB_ID", "").strip()
    if not job_id:
        return False
    if not job_id.isdigit():
        raise RequeueError(f"SLURM_JOB_ID={job_id!r} is not a job number")
    proc = _run_scontrol(["show", "job", "-o", job_id], scontrol, timeout)
    if proc.returncode != 0:
        raise RequeueError(
            f"`scontrol show job -o {job_id}` exited {proc.returncode}: {proc.stderr.strip()[:500]}"
        )
    m = _REQUEUE_FIELD.search(proc.stdout)
    if m is None:
        raise RequeueError(f"`scontrol show job -o {job_id}` printed no Requeue= field")
    return m.group(1) != "0"


def request_slurm_requeue(
    environ: Mapping[str, str] | None = None,
    *,
    require_enabled: bool = True,
    scontrol: str = "scontrol",
    timeout: float = 30.0,
) -> bool:
    """Ask Slurm to requeue this job; call on rank 0 after the checkpoint is complete on every rank.

    ``scontrol requeue`` ends every step of the job at once and puts it back in the queue, where it
    re-runs the same batch script (``SLURM_RESTART_COUNT`` then counts the restarts). The trainer resumes
    from the newest complete checkpoint in ``run_dir``.

    Args:
        environ: environment to read ``SLURM_JOB_ID`` from; ``os.environ`` when None.
        require_enabled: first check :func:`slurm_requeue_enabled` and do nothing if it says no.
        scontrol: the ``scontrol`` executable (name on PATH or a path).
        timeout: seconds to wait for each ``scontrol`` call.

    Returns:
        True when the requeue was requested; False outside Slurm or when requeueing is disabled.

    Raises:
        RequeueError: when ``scontrol`` is missing or the requeue command fails.

    """
    env_map = os.environ if environ is None else environ
    job_id = env_map.get("SLURM_JOB_ID", "").strip()
    if not job_id:
        logger.info("not running under Slurm (no SLURM_JOB_ID): no requeue")
        return False
    if not job_id.isdigit():
        raise RequeueError(f"SLURM_JOB_ID={job_id!r} is not a job number")
    if require_enabled and not slurm_requeue_enabled(env_map, scontrol=scontrol, timeout=timeout):
        logger.warning("Slurm job %s is not requeueable (submit with --requeue): no requeue", job_id)
        return False
    proc = _run_scontrol(["requeue", job_id], scontrol, timeout)
    if proc.returncode != 0:
        raise RequeueError(
            f"`scontrol requeue {job_id}` exited {proc.returncode}: {proc.stderr.strip()[:500]}"
        )
    logger.warning("requested requeue of Slurm job %s", job_id)
    return True


# -- sizing the warning ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeadTime:
    """How early the scheduler must warn (``--signal=B:USR1@seconds``), from a run's own timings.

    A signal waits at most for the longest stretch between two safe points, then the checkpoint is
    written; ``seconds = max(round, logprobs, updates) + save + margin``.

    Attributes:
        round: longest dynamic-sampling round: ``(time/generate + time/score) / dynamic_sampling/rounds``.
        logprobs: longest ``time/logprobs`` (reference and old log-prob passes).
        updates: longest ``time/train + time/sync + time/validate`` (all mini-batch updates, the weight
            sync, validation on its steps): the stretch from the last in-step safe point to the step's end.
        save: longest checkpoint save (the ``seconds`` of ``checkpoint`` events).
        margin: added for the requeue call, process exit and the signal's own delivery.
        seconds: the lead time to ask for, rounded up to a whole second.

    """

    round: float
    logprobs: float
    updates: float
    save: float
    margin: float
    seconds: int


def signal_lead_time(records: Iterable[Mapping[str, Any]], *, margin: float = 30.0,
                     save_seconds: float | None = None) -> LeadTime:
    """The ``--signal`` lead time a run needs, from its ``metrics.jsonl`` records.

    Args:
        records: the run's ``metrics.jsonl`` objects (step records and events, in any order); use steps
            at the longest response lengths of the phase you size for (lengths grow during ProRL).
        margin: seconds added on top.
        save_seconds: the checkpoint save time when the records hold no ``checkpoint`` event.

    Returns:
        A :class:`LeadTime`.

    Raises:
        ValueError: no step records, or no save time (neither a ``checkpoint`` event nor ``save_seconds``).

    """
    worst_round = worst_lp = worst_upd = 0.0
    saves: list[float] = []
    n_steps = 0
    for r in records:
        if r.get("event") == "checkpoint" and "seconds" in r:
            saves.append(float(r["seconds"]))
            continue
        if "event" in r or "time/generate" not in r:
            continue
        n_steps += 1
        rounds = max(1.0, float(r.get("dynamic_sampling/rounds", 1.0)))
        worst_round = max(worst_round, (float(r["time/generate"]) + float(r.get("time/score", 0.0))) / rounds)
        worst_lp = max(worst_lp, float(r.get("time/logprobs", 0.0)))
        worst_upd = max(worst_upd, float(r.get("time/train", 0.0)) + float(r.get("time/sync", 0.0))
                        + float(r.get("time/validate", 0.0)))
    if not n_steps:
        raise ValueError("signal_lead_time: no step records (with time/generate) in the metrics")
    if saves:
        save = max(saves)
    elif save_seconds is not None:
        save = float(save_seconds)
    else:
        raise ValueError("signal_lead_time: no checkpoint event in the metrics; pass save_seconds")
    total = max(worst_round, worst_lp, worst_upd) + save + margin
    return LeadTime(worst_round, worst_lp, worst_upd, save, margin, int(-(-total // 1)))
