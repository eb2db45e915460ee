"""Offline generation of reasoning-gym tasks into training rows.

A row is ``{"id", "domain": "reasoning_gym", "prompt", "task", "entry": {"question", "answer",
"metadata"}}``. reasoning-gym items may hold tuples, sets, numpy values or other objects in their
metadata; they are converted to JSON values, and every converted item is checked to score its oracle
answer exactly as the original item did (so the JSON row is still scoreable by the task's scorer,
after :func:`restore_entry` for the two ARC tasks whose scorers compare tuples).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction
from typing import Any


class GenerationError(ValueError):
    """A task name, config or generated item that cannot become a training row."""


def to_json_value(value: Any, where: str = "metadata") -> Any:
    """Convert ``value`` into plain JSON types (dict with str keys, list, str, int, float, bool, None).

    Tuples become lists, sets become sorted lists, numpy scalars / arrays their Python equivalents,
    fractions and other objects their ``str``; non-finite floats become strings (``"nan"``, ``"inf"``).
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): to_json_value(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        items = [to_json_value(v, where) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return sorted(items, key=lambda x: json.dumps(x, sort_keys=True))
    if isinstance(value, Fraction):
        return str(value)
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        return to_json_value(tolist(), where)
    return str(value)


#: tasks whose scorer compares metadata grids as tuples of tuples; JSON turns them into lists.
# restore_entry lives with the reward that needs it (reward workers must not import the data package)
from nemo_prorl.rewards.rgym import GRID_TASKS, restore_entry  # noqa: E402,F401


def _roundtrip(value: Any) -> Any:
    return json.loads(json.dumps(value, ensure_ascii=False))


def _safe_score(dataset: Any, answer: Any, entry: Mapping[str, Any]) -> float | str:
    try:
        return float(dataset.score_answer(answer, entry))
    except Exception as exc:  # some scorers raise on odd input; compare the failure kind then
        return f"raised {type(exc).__name__}"


def known_tasks() -> list[str]:
    """The names of every reasoning-gym dataset registered in the installed package."""
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def generate_rows(
    tasks: Sequence[str],
    size: int,
    seed: int,
    config: Mapping[str, Mapping[str, Any]] | None = None,
    verify: bool = True,
    progress: bool = False,
) -> Iterator[dict[str, Any]]:
    """Generate ``size`` rows for each task.

    Args:
        tasks: reasoning-gym dataset names (see :func:`known_tasks`).
        size: items per task.
        seed: reasoning-gym's ``seed`` for every task; row ids are ``"{task}-{seed}-{index}"``.
        config: per-task extra config (difficulty knobs), e.g. ``{"countdown": {"min_numbers": 3}}``.
        verify: check that each converted item scores its oracle answer as the original does.
        progress: show a progress bar on stderr.

    Raises:
        GenerationError: for an unknown task, a config naming a task not generated, a task that cannot
            be built with the given config, or an item that stops scoring correctly after conversion.

    """
    import reasoning_gym

    if size < 1:
        raise GenerationError(f"--size must be >= 1, got {size}")
    names = known_tasks()
    unknown = [t for t in tasks if t not in names]
    if unknown:
        raise GenerationError(f"unknown reasoning-gym task(s): {', '.join(unknown)}")
    if len(set(tasks)) != len(tasks):
        raise GenerationError("a task is listed twice; ids would collide")
    config = dict(config or {})
    stray = [k for k in config if k not in tasks]
    if stray:
        raise GenerationError(f"config for task(s) not being generated: {', '.join(stray)}")
    for task, cfg in config.items():
        if not isinstance(cfg, Mapping):
            raise GenerationError(f"config.{task}: expected an object of config fields")

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=size * len(tasks), unit="item", desc="reasoning-gym")
    try:
        for task in tasks:
            extra = dict(config.get(task, {}))
            try:
                dataset = reasoning_gym.create_dataset(task, size=size, seed=seed, **extra)
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                raise GenerationError(f"{task}: cannot create the dataset ({reason})") from None
            if bar is not None:
                bar.set_postfix_str(task)
            for i in range(size):
                item = dataset[i]
                entry = _roundtrip(
                    {
                        "question": to_json_value(item["question"], "question"),
                        "answer": to_json_value(item.get("answer"), "answer"),
                        "metadata": to_json_value(item.get("metadata", {}), "metadata"),
                    }
                )
                if verify and item.get("answer") is not None:
                    before = _safe_score(dataset, item["answer"], item)
                    after = _safe_score(dataset, entry["answer"], restore_entry(task, entry))
                    if before != after:
                        raise GenerationError(
                            f"{task}[{i}]: the JSON-converted item scores its answer {after}, the original "
                            f"{before}; this task's metadata does not survive JSON"
                        )
                yield {
                    "id": f"{task}-{seed}-{i}",
                    "domain": "reasoning_gym",
                    "prompt": entry["question"],
                    "task": task,
                    "entry": entry,
                }
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def write_jsonl_atomic(rows: Iterator[Mapping[str, Any]] | Sequence[Mapping[str, Any]], out: str) -> int:
    """Write rows as JSON Lines to ``out`` atomically (temp file in the same folder, fsync, rename).

    Returns:
        The number of rows written. On any error the target is left untouched.

    """
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(out)}.", suffix=".tmp", dir=folder)
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return n
