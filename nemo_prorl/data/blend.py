"""Validation blend builder (``nemo-prorl data blend``) and the ProRL reasoning-gym preset.

Blend contract: from each given file take ``n`` valid rows (preflight-checked), chosen by a seeded
shuffle of the rows sorted by id, so the pick depends only on (file contents, ``n``, ``seed``), never
on read order. A row is *disjoint* from training when neither its id nor its prompt hash appears in
the training files; the prompt hash is the SHA-256 of the prompt text lower-cased with whitespace
collapsed (chat prompts: contents joined), so a benchmark problem copied into the training set under
another id is still caught.

ProRL's validation blend (algorithm.md, section 3): AIME2024, Codeforces, GPQA-Diamond, IFEval and
reasoning-gym ``graph_color``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: the reasoning-gym tasks ProRL held out of training and evaluated out of distribution ([P1] section 3.4)
PRORL_OOD_TASKS: tuple[str, ...] = ("acre", "boxnet", "game_of_life_halting")
#: registered names that are not tasks of their own (``composite`` mixes other tasks from a config)
NOT_TASKS: tuple[str, ...] = ("composite",)
#: ProRL: 37K training items over 96 tasks -> about 385 per task; 100 held-out items per task for eval
PRORL_ITEMS_PER_TASK = 385


def prorl_tasks(registered: Iterable[str]) -> list[str]:
    """The ``--preset prorl`` task list: every registered task but the OOD ones and ``composite``.

    The paper trains on 96 tasks and names only the 3 it held out; its exact list is not published, so
    the preset takes what the installed reasoning-gym registers (102 with reasoning-gym 0.1.25).
    """
    drop = set(PRORL_OOD_TASKS) | set(NOT_TASKS)
    return sorted(t for t in registered if t not in drop)


PRESETS = {"prorl": prorl_tasks}


def prompt_text(prompt: Any) -> str:
    """A prompt as one string: a string as is, a chat prompt as its contents joined by newlines."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return "\n".join(str(m.get("content", "")) for m in prompt if isinstance(m, Mapping))
    return str(prompt)


def prompt_hash(prompt: Any) -> str:
    """SHA-256 hex of the prompt lower-cased with runs of whitespace collapsed to one space."""
    norm = " ".join(prompt_text(prompt).lower().split())
    return hashlib.sha256(norm.encode("utf-8")).hexdigest()


@dataclass
class BlendReport:
    """Rows picked per source, and what was excluded and why."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    picked: dict[str, int] = field(default_factory=dict)
    overlapping: dict[str, int] = field(default_factory=dict)
    short: dict[str, str] = field(default_factory=dict)


def pick_rows(rows: Sequence[Mapping[str, Any]], n: int, seed: int, label: str = "") -> list[dict[str, Any]]:
    """``n`` rows (all of them when fewer) by a seeded shuffle of the rows sorted by id (pure)."""
    ordered = sorted(rows, key=lambda r: str(r["id"]))
    rng = random.Random(f"{seed}:{label}")
    idx = list(range(len(ordered)))
    rng.shuffle(idx)
    return [dict(ordered[i]) for i in sorted(idx[:n])]


def build_blend(sources: Sequence[tuple[str, Sequence[Mapping[str, Any]], int]],
                train_rows: Iterable[Mapping[str, Any]], seed: int) -> BlendReport:
    """Disjoint, deterministic validation blend.

    Args:
        sources: ``(label, valid rows, n)`` per validation file.
        train_rows: every training row (ids and prompts are excluded from the blend).
        seed: selection seed.

    Returns:
        The report; its ``rows`` have unique ids (a later duplicate of an id already picked is skipped
        and counted as overlapping).

    """
    train_ids, train_hashes = set(), set()
    for r in train_rows:
        train_ids.add(str(r["id"]))
        train_hashes.add(prompt_hash(r["prompt"]))
    report = BlendReport()
    seen: set[str] = set()
    for label, rows, n in sources:
        clean = [r for r in rows if str(r["id"]) not in train_ids and str(r["id"]) not in seen
                 and prompt_hash(r["prompt"]) not in train_hashes]
        report.overlapping[label] = len(rows) - len(clean)
        got = pick_rows(clean, n, seed, label)
        if len(got) < n:
            report.short[label] = f"asked {n}, only {len(got)} disjoint valid rows"
        seen.update(str(r["id"]) for r in got)
        report.picked[label] = len(got)
        report.rows.extend(got)
    return report
