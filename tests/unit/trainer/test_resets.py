"""ResetController against hand-worked sequences of steps, validations and KL values."""

from __future__ import annotations

import json

import pytest

from nemo_prorl.trainer.config import ResetConfig
from nemo_prorl.trainer.resets import ResetController


def _run(ctrl: ResetController, steps: range, kl: dict[int, float] | None = None) -> list[int]:
    """Drive ``check``/``record`` over ``steps`` like the fit loop; returns the steps that reset."""
    fired = []
    for step in steps:
        cause = ctrl.check(step, (kl or {}).get(step), None)
        if cause:
            ctrl.record(step, cause)
            fired.append(step)
    return fired


def test_explicit_steps_fire_once_each_with_cause():
    ctrl = ResetController(ResetConfig(at_steps=[3, 5]))
    assert _run(ctrl, range(1, 9)) == [3, 5]
    assert [h["step"] for h in ctrl.history] == [3, 5]
    assert ctrl.history[0]["cause"] == "scheduled (reset.at_steps contains 3)"


def test_every_n_steps():
    ctrl = ResetController(ResetConfig(every_n_steps=4))
    assert _run(ctrl, range(1, 13)) == [4, 8, 12]
    assert ctrl.history[1]["cause"] == "every 4 steps"


def test_min_steps_between_suppresses_close_resets():
    ctrl = ResetController(ResetConfig(at_steps=[3, 5], every_n_steps=2, min_steps_between=3))
    # step 2: every-2 fires (first reset); 3: 1 step later, blocked; 4: blocked (2 < 3);
    # 5: 3 after 2 -> the scheduled reset fires; 6, 7: blocked; 8: every-2 fires
    assert _run(ctrl, range(1, 9)) == [2, 5, 8]
    assert ctrl.history[1]["cause"].startswith("scheduled")


def test_kl_above_is_strict_and_needs_a_value():
    ctrl = ResetController(ResetConfig(kl_above=0.1))
    assert ctrl.check(1, 0.1, None) is None
    assert ctrl.check(1, None, None) is None
    cause = ctrl.check(1, 0.25, None)
    assert cause == "kl 0.25 above reset.kl_above=0.1"


def test_kl_sequence_with_min_steps_between():
    ctrl = ResetController(ResetConfig(kl_above=0.5, min_steps_between=2))
    kl = {1: 0.1, 2: 0.6, 3: 0.7, 4: 0.9, 5: 0.2, 6: 0.8}
    # 2 fires; 3 is 1 step later (blocked); 4 fires; 5 below; 6 fires
    assert _run(ctrl, range(1, 7), kl) == [2, 4, 6]


def test_scheduled_cause_wins_over_kl():
    ctrl = ResetController(ResetConfig(at_steps=[2], kl_above=0.0))
    assert ctrl.check(2, 5.0, None).startswith("scheduled")
    assert ctrl.check(3, 5.0, None).startswith("kl ")


def test_plateau_patience_and_min_delta():
    cfg = ResetConfig(on_val_plateau=True, patience=2, min_delta=0.05)
    ctrl = ResetController(cfg)
    # 0.50 first best; 0.54 not > 0.55 (1 without improvement); 0.56 > 0.55 new best;
    # 0.56 (1); 0.60 not > 0.61 (2 = patience) -> plateau
    out = [ctrl.observe_validation(v) for v in (0.50, 0.54, 0.56, 0.56, 0.60)]
    assert out[:4] == [None] * 4
    assert out[4] is not None and "plateaued" in out[4] and "0.56" in out[4]
    assert ctrl.best == pytest.approx(0.56)
    assert ctrl.since_improvement == 2
    # the plateau cause becomes the reset cause; after the reset the count starts over
    cause = ctrl.check(10, None, out[4])
    assert cause == out[4]
    ctrl.record(10, cause)
    assert ctrl.since_improvement == 0
    assert ctrl.observe_validation(0.55) is None  # 1 without improvement again, patience 2
    assert ctrl.observe_validation(0.62) is None  # 0.62 > 0.56 + 0.05: new best
    assert ctrl.best == pytest.approx(0.62)


def test_drop_delta_fires_before_patience():
    ctrl = ResetController(ResetConfig(on_val_plateau=True, patience=5, drop_delta=0.1))
    assert ctrl.observe_validation(0.5) is None
    assert ctrl.observe_validation(0.45) is None  # 0.45 >= 0.5 - 0.1
    cause = ctrl.observe_validation(0.39)          # 0.39 < 0.4
    assert cause is not None and "dropped to 0.39 from best 0.5" in cause


def test_plateau_trigger_off_or_missing_value_changes_nothing():
    off = ResetController(ResetConfig(on_val_plateau=False, patience=1))
    assert [off.observe_validation(v) for v in (0.5, 0.1, 0.1)] == [None, None, None]
    assert off.best is None
    on = ResetController(ResetConfig(on_val_plateau=True, patience=1))
    assert on.observe_validation(None) is None
    assert on.best is None and on.since_improvement == 0


def test_state_dict_round_trip_makes_the_same_decisions():
    cfg = ResetConfig(on_val_plateau=True, patience=2, min_delta=0.0, kl_above=1.0, min_steps_between=2)
    a = ResetController(cfg)
    a.observe_validation(0.3)
    a.observe_validation(0.3)  # 1 without improvement
    a.record(4, "kl 2 above reset.kl_above=1.0")
    state = json.loads(json.dumps(a.state_dict()))  # goes through the checkpoint's JSON extra state
    b = ResetController(cfg)
    b.load_state_dict(state)
    assert b.state_dict() == a.state_dict()
    for step, kl, val in [(5, 3.0, 0.2), (6, 0.5, 0.2), (7, 0.5, 0.2), (8, 3.0, None)]:
        ca = a.check(step, kl, a.observe_validation(val))
        cb = b.check(step, kl, b.observe_validation(val))
        assert ca == cb
        if ca:
            a.record(step, ca)
            b.record(step, cb)
    assert a.history == b.history
    assert [h["step"] for h in a.history] == [4, 6, 8]


# ------------------------------------------------------------------ reset.reference=best bookkeeping


def test_best_checkpoint_is_the_strict_maximum_of_the_validations():
    ctrl = ResetController(ResetConfig(reference="best"))
    # step: validation value; the first finite value is a best, ties keep the older checkpoint
    marked = []
    for step, value in [(1, 0.25), (2, 0.1875), (3, 0.3125), (4, 0.3125), (5, float("nan")), (6, None)]:
        if ctrl.best_checkpoint_due(value):
            ctrl.mark_best_checkpoint(step, value)
            marked.append(step)
    assert marked == [1, 3]
    assert ctrl.best_checkpoint == {"step": 3, "value": 0.3125}
    assert ctrl.protected_step() == 3


def test_reference_current_tracks_no_best_checkpoint():
    ctrl = ResetController(ResetConfig())
    assert not ctrl.best_checkpoint_due(0.9)
    assert ctrl.protected_step() is None
    assert ctrl.reference_source(4, None) is None


def test_reference_source_prefers_a_current_policy_at_least_as_good():
    ctrl = ResetController(ResetConfig(reference="best"))
    assert ctrl.reference_source(2, 0.1) is None  # no best checkpoint yet: the current policy
    ctrl.mark_best_checkpoint(3, 0.5)
    assert ctrl.reference_source(3, 0.5) is None  # the best checkpoint is this step's policy
    assert ctrl.reference_source(4, 0.25) == 3    # validated worse: back to the best
    assert ctrl.reference_source(4, None) == 3    # not validated at this step: the best checkpoint
    assert ctrl.reference_source(4, 0.5) is None  # a tie: the current policy is as good
    assert ctrl.reference_source(4, 0.75) is None


def test_best_checkpoint_round_trips_through_the_json_state():
    ctrl = ResetController(ResetConfig(reference="best"))
    ctrl.mark_best_checkpoint(7, 0.4)
    ctrl.record(9, "scheduled")
    restored = ResetController(ResetConfig(reference="best"))
    restored.load_state_dict(json.loads(json.dumps(ctrl.state_dict())))
    assert restored.best_checkpoint == {"step": 7, "value": 0.4}
    assert restored.reference_source(9, 0.3) == 7
    old = ctrl.state_dict()
    del old["best_checkpoint"]  # a checkpoint written before reset.reference existed
    restored.load_state_dict(old)
    assert restored.best_checkpoint is None
