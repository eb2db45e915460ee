"""The shipped recipes parse to the same objects as before the config loader was unified.

``data/parsed_recipes.json`` is ``dataclasses.asdict`` of each recipe's parsed :class:`ProRLConfig`, written
by the hand-written per-section parsers that the generic loader (:mod:`nemo_prorl.config_schema`)
replaced; the package directory is written as ``<package>``. The comparison is strict about types
(``1`` is not ``1.0``, ``True`` is not ``1``), so the loader may not coerce a value the old parsers kept.

A change that adds a config field or changes a recipe on purpose rewrites the snapshot with
``python tests/unit/trainer/test_recipe_snapshots.py`` (and the diff shows what moved).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nemo_prorl.trainer.config import PACKAGE_ROOT, build_config, compose, config_to_dict

SNAPSHOT = json.loads((Path(__file__).parent / "data" / "parsed_recipes.json").read_text())


def _normalise(obj: Any) -> Any:
    """JSON round trip (tuples -> lists) with the package directory written as ``<package>``."""
    text = json.dumps(obj).replace(json.dumps(str(PACKAGE_ROOT))[1:-1], "<package>")
    return json.loads(text)


def _same(a: Any, b: Any, where: str = "") -> list[str]:
    """Differences between ``a`` and ``b`` (values and exact JSON types), as dotted paths."""
    if type(a) is not type(b):
        return [f"{where}: {a!r} ({type(a).__name__}) != {b!r} ({type(b).__name__})"]
    if isinstance(a, dict):
        diffs = [f"{where}.{k}: missing on one side" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            diffs += _same(a[k], b[k], f"{where}.{k}" if where else k)
        return diffs
    if isinstance(a, list):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _same(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def _parsed(name: str) -> dict[str, Any]:
    cfg = build_config(compose(name, []), require_model=(name == "demo"))
    return _normalise(config_to_dict(cfg))


@pytest.mark.parametrize("name", sorted(SNAPSHOT))
def test_recipe_parses_to_the_snapshot(name, monkeypatch):
    monkeypatch.delenv("PRORL_MODEL_DIR", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert _same(_parsed(name), SNAPSHOT[name]) == []


def test_the_comparison_sees_a_type_change():
    assert _same({"a": [1, {"b": 1.0}]}, {"a": [1, {"b": 1.0}]}) == []
    assert _same({"a": [1, {"b": 1}]}, {"a": [1, {"b": 1.0}]}) == ["a[1].b: 1 (int) != 1.0 (float)"]
    assert _same({"a": True}, {"a": 1}) == ["a: True (bool) != 1 (int)"]


if __name__ == "__main__":
    import os

    os.environ.pop("PRORL_MODEL_DIR", None)
    os.environ.pop("WORLD_SIZE", None)
    out = {name: _parsed(name) for name in sorted(SNAPSHOT)}
    (Path(__file__).parent / "data" / "parsed_recipes.json").write_text(
        json.dumps(out, indent=1, sort_keys=True) + "\n")
