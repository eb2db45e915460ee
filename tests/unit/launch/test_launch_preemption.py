import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nemo_prorl.launch import (
    PreemptionHandler,
    RequeueError,
    request_slurm_requeue,
    signal_lead_time,
    slurm_requeue_enabled,
)

CHILD = Path(__file__).with_name("preempt_child.py")


def wait_for(predicate, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_own_process_signal_sets_flag_and_restores_handler(sig):
    seen = []

    def previous(signum, frame):
        seen.append(signum)

    old = signal.signal(sig, previous)
    try:
        with PreemptionHandler() as handler:
            assert handler.installed and not handler.requested
            assert handler.seconds_since_request() is None
            os.kill(os.getpid(), sig)
            assert wait_for(lambda: handler.requested)
            assert handler.signal_name == sig.name
            assert handler.seconds_since_request() >= 0.0
            os.kill(os.getpid(), sig)
            assert wait_for(lambda: handler.count == 2)
            assert handler.signal_name == sig.name  # the first signal is kept
        assert not handler.installed
        assert signal.getsignal(sig) is previous
        os.kill(os.getpid(), sig)
        assert wait_for(lambda: seen == [sig])
        assert handler.count == 2  # no longer listening
    finally:
        signal.signal(sig, old)


def test_unlisted_signal_is_not_caught():
    old = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        with PreemptionHandler(["USR1"]) as handler:
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.05)
            assert not handler.requested
            os.kill(os.getpid(), signal.SIGUSR1)
            assert wait_for(lambda: handler.signal_name == "SIGUSR1")
    finally:
        signal.signal(signal.SIGUSR2, old)


def test_signal_names_and_validation():
    assert PreemptionHandler(["usr1", "SIGTERM", int(signal.SIGUSR2), "USR1"]).signals == (
        signal.SIGUSR1,
        signal.SIGTERM,
        signal.SIGUSR2,
    )
    with pytest.raises(ValueError, match="unknown signal name 'SIGNOPE'"):
        PreemptionHandler(["SIGNOPE"])
    with pytest.raises(ValueError, match="SIGKILL cannot be caught"):
        PreemptionHandler(["KILL"])
    with pytest.raises(ValueError, match="the list is empty"):
        PreemptionHandler([])
    with pytest.raises(ValueError, match="expected a signal name or number"):
        PreemptionHandler([1.5])


def test_install_rules_and_manual_request():
    handler = PreemptionHandler(["USR1"])
    with handler:
        with pytest.raises(RuntimeError, match="already installed"):
            handler.install()
    errors = []

    def off_main():
        try:
            PreemptionHandler(["USR1"]).install()
        except RuntimeError as err:
            errors.append(str(err))

    t = threading.Thread(target=off_main)
    t.start()
    t.join()
    assert errors and "main thread" in errors[0]

    handler.request("walltime")
    assert handler.requested and handler.signal_name == "walltime"
    # without a process group the cross-rank check is the local flag
    assert handler.requested_on_any_rank() is True
    handler.reset()
    assert not handler.requested and handler.count == 0
    assert handler.requested_on_any_rank() is False


@pytest.mark.parametrize("sig", ["SIGUSR1", "SIGTERM"])
def test_child_process_saves_and_exits_on_signal(tmp_path, sig):
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(tmp_path), "SIGTERM,SIGUSR1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(lambda: (tmp_path / "ready").exists(), timeout=30), "child never became ready"
        time.sleep(0.05)  # let it run a few steps
        proc.send_signal(signal.Signals[sig])
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    ckpt = json.loads((tmp_path / "ckpt.json").read_text())
    assert ckpt["signal"] == sig and ckpt["count"] == 1 and ckpt["steps"] >= 1
    assert not (tmp_path / "ckpt.json.tmp").exists()


# --------------------------------------------------------------------------------------------- requeue
@pytest.fixture
def fake_scontrol(tmp_path, monkeypatch):
    """An `scontrol` executable on PATH that logs its arguments (Slurm itself is not installed here)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "scontrol.log"
    script = bindir / "scontrol"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{log}"\n'
        'if [ "$1" = show ]; then\n'
        '  [ -n "$FAKE_SHOW_FAIL" ] && { echo "slurm_load_jobs error: Invalid job id" >&2; exit 1; }\n'
        '  echo "JobId=$4 JobName=prorl UserId=u(1) Requeue=${FAKE_REQUEUE:-1} Restarts=0 BatchFlag=1"\n'
        "  exit 0\n"
        "fi\n"
        '[ -n "$FAKE_REQUEUE_FAIL" ] && { echo "Requested operation is presently disabled" >&2; exit 1; }\n'
        "exit 0\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_requeue_when_enabled(fake_scontrol):
    env = {"SLURM_JOB_ID": "4242"}
    assert slurm_requeue_enabled(env) is True
    assert request_slurm_requeue(env) is True
    assert fake_scontrol.read_text().splitlines() == [
        "show job -o 4242",
        "show job -o 4242",
        "requeue 4242",
    ]


def test_requeue_disabled_or_outside_slurm(fake_scontrol, monkeypatch):
    assert request_slurm_requeue({}) is False
    assert slurm_requeue_enabled({}) is False
    assert not fake_scontrol.exists()
    monkeypatch.setenv("FAKE_REQUEUE", "0")
    assert request_slurm_requeue({"SLURM_JOB_ID": "7"}) is False
    assert fake_scontrol.read_text().splitlines() == ["show job -o 7"]
    assert request_slurm_requeue({"SLURM_JOB_ID": "7"}, require_enabled=False) is True
    assert fake_scontrol.read_text().splitlines()[-1] == "requeue 7"


def test_requeue_errors(fake_scontrol, monkeypatch, tmp_path):
    with pytest.raises(RequeueError, match="SLURM_JOB_ID='12;rm' is not a job number"):
        request_slurm_requeue({"SLURM_JOB_ID": "12;rm"})
    monkeypatch.setenv("FAKE_SHOW_FAIL", "1")
    with pytest.raises(RequeueError, match="exited 1: slurm_load_jobs error: Invalid job id"):
        slurm_requeue_enabled({"SLURM_JOB_ID": "9"})
    monkeypatch.delenv("FAKE_SHOW_FAIL")
    monkeypatch.setenv("FAKE_REQUEUE_FAIL", "1")
    with pytest.raises(RequeueError, match="`scontrol requeue 9` exited 1: Requested operation"):
        request_slurm_requeue({"SLURM_JOB_ID": "9"})
    with pytest.raises(RequeueError, match="not found on PATH"):
        request_slurm_requeue({"SLURM_JOB_ID": "9"}, scontrol=str(tmp_path / "no-such-scontrol"))


# ------------------------------------------------------------------------------ sizing --signal=@N


def test_signal_lead_time_takes_the_longest_stretch_between_safe_points():
    records = [
        {"step": 0, "event": "phase", "name": "a"},
        # rounds: (90 + 10) / 2 = 50; log-probs 20; updates 60 + 5 = 65
        {"step": 1, "time/generate": 90.0, "time/score": 10.0, "dynamic_sampling/rounds": 2.0,
         "time/logprobs": 20.0, "time/train": 60.0, "time/sync": 5.0, "loss": 0.1},
        # one round of 70 + 10 = 80 (the longest stretch); updates 40 + 5 + validation 30 = 75
        {"step": 2, "time/generate": 70.0, "time/score": 10.0, "dynamic_sampling/rounds": 1.0,
         "time/logprobs": 25.0, "time/train": 40.0, "time/sync": 5.0, "time/validate": 30.0, "loss": 0.2},
        {"step": 2, "event": "checkpoint", "reason": "interval", "seconds": 41.5},
        {"step": 4, "event": "checkpoint", "reason": "final", "seconds": 38.0},
    ]
    lead = signal_lead_time(records)
    assert (lead.round, lead.logprobs, lead.updates, lead.save) == (80.0, 25.0, 75.0, 41.5)
    assert lead.seconds == 152  # 80 + 41.5 + 30 = 151.5, rounded up
    assert signal_lead_time(records[:3], margin=0.0, save_seconds=20.0).seconds == 100


def test_signal_lead_time_needs_steps_and_a_save_time():
    with pytest.raises(ValueError, match="no step records"):
        signal_lead_time([{"step": 2, "event": "checkpoint", "seconds": 3.0}])
    with pytest.raises(ValueError, match="pass save_seconds"):
        signal_lead_time([{"step": 1, "time/generate": 1.0, "loss": 0.0}])
