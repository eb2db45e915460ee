"""The trainer-callback registry: names in, instances out, errors that name the config key."""

from __future__ import annotations

import pytest

from nemo_prorl.config_schema import ConfigError
from nemo_prorl.trainer.callbacks import Callback, build_callbacks, register_callback, registered_callbacks
from nemo_prorl.trainer.config import load_config


@register_callback("unit_counter")
class _Counter(Callback):
    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, step, metrics):
        self.steps += 1


def test_build_in_order_fresh_instances_and_noop_hooks():
    a, b = build_callbacks(["unit_counter", "unit_counter"])
    assert type(a) is _Counter and a is not b and a.name == "unit_counter"
    a.on_step_end(1, {})
    assert (a.steps, b.steps) == (1, 0)
    base = Callback()  # the protocol's hooks are no-ops
    assert base.on_step_end(1, {}) is None and base.on_validation(0, {}) is None
    assert base.on_reset(3, "x") is None
    assert "unit_counter" in registered_callbacks()


def test_unknown_name_and_duplicate_registration():
    with pytest.raises(ValueError, match=r"trainer\.callbacks\[1\]: unknown callback 'nope'.*unit_counter"):
        build_callbacks(["unit_counter", "nope"])
    with pytest.raises(ValueError, match="already registered"):
        register_callback("unit_counter")(type("Other", (Callback,), {}))
    with pytest.raises(ValueError, match="non-empty string"):
        register_callback("")


def test_config_names_callbacks_and_rejects_unknown_ones():
    assert load_config("demo", ["trainer.callbacks=[unit_counter]"]).trainer.callbacks == ["unit_counter"]
    with pytest.raises(ConfigError, match=r"trainer\.callbacks\[0\].*'pkg\.mod:Cls'"):
        load_config("demo", ["trainer.callbacks=['pkg.mod:Cls']"])  # never an import path
