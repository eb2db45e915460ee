"""``docs/config.md`` is generated from the config dataclasses and must be current."""

from __future__ import annotations

from pathlib import Path

from nemo_prorl.configdoc import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_docs_config_md_is_current():
    assert DOC.read_text() == render(), (
        "docs/config.md is out of date: run `python -m nemo_prorl.configdoc > docs/config.md`")


def test_every_key_row_has_a_type_a_default_and_a_description():
    rows = [line for line in render().splitlines() if line.startswith("| `")]
    assert len(rows) > 150
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert len(cells) == 4 and all(cells), row
    keys = {row.split("`")[1] for row in rows}
    assert {"model", "policy.lr", "rollout.temperature", "data.mixture", "rewards.num_workers",
            "algorithm.loss.clip_high", "trainer.max_steps", "reset.at_steps", "phases[i].n",
            "final_eval.ks"} <= keys
