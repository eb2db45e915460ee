"""The row contract shared by data loading, reward scoring and evaluation.

A *training/eval row* is ``{"id", "domain", "prompt", <ground truth>}``; a *scoring row* (input of
``nemo-prorl score``) is ``{"domain", "response", <ground truth>}``. Ground truth per domain:

========================  =====================================================================
domain                    fields
========================  =====================================================================
``math``                  ``answer``: str or number (the reference final answer)
``mcq``                   ``answer``: option letter (``"B"``) or option text; optional ``options``
                          (list of str, or dict letter -> text)
``code``                  ``tests``: list of ``{"input": str, "output": str}`` (stdin/stdout) or
                          ``{"assert": str}`` (Python asserts), or a JSON string of that list;
                          optional ``entry_point``: str
``reasoning_gym``         ``task``: reasoning-gym dataset name; ``entry``: the generated item
                          (``{"question", "answer", "metadata"}``)
``ifeval``                ``instructions``: list of ``{"id": str, "kwargs": dict}``
``reward_model``          none (a learned reward model reads ``prompt`` and ``response``)
========================  =====================================================================

A domain is any name in the reward registry (:func:`known_domains`): the built-in ones above plus every
reward a package adds through the ``nemo_prorl.rewards`` entry-point group (``docs/plugins.md``). Rows of a
plug-in domain get only the domain check here; their reward's ``validate`` checks their ground truth.

This module only checks *structure*; each reward checks the meaning of its own fields (for example
that an IFEval instruction id is known). Nothing here imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: the built-in domains (the ones whose ground truth this module checks); see :func:`known_domains`
DOMAINS: tuple[str, ...] = ("math", "code", "mcq", "reasoning_gym", "ifeval")


def known_domains() -> tuple[str, ...]:
    """Every domain a row may name: the built-in :data:`DOMAINS`, then other registered rewards, sorted.

    Reads the reward registry (which loads the ``nemo_prorl.rewards`` entry points on first use), so a
    reward installed as a package is a domain of the row checks, the mixture weights and the CLI.
    """
    from nemo_prorl.rewards import registered_rewards  # late: the rewards import this module

    extra = sorted(set(registered_rewards()) - set(DOMAINS))
    return DOMAINS + tuple(extra)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a row: the field it concerns and why."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def parse_tests(tests: Any) -> list[dict]:
    """Return a code row's ``tests`` as a list of dicts.

    Args:
        tests: a list of test dicts, or a JSON string encoding one.

    Raises:
        ValueError: with a reason naming what is wrong (not JSON, not a list, a bad case).

    """
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(tests, list):
        raise ValueError(f"expected a list of test cases, got {type(tests).__name__}")
    if not tests:
        raise ValueError("empty list of test cases")
    for i, case in enumerate(tests):
        if not isinstance(case, dict):
            raise ValueError(f"case {i}: expected an object, got {type(case).__name__}")
        if "assert" in case:
            if not _is_str(case["assert"]):
                raise ValueError(f"case {i}: 'assert' must be a string")
        elif "input" in case and "output" in case:
            if not (_is_str(case["input"]) and _is_str(case["output"])):
                raise ValueError(f"case {i}: 'input' and 'output' must be strings")
        else:
            raise ValueError(f"case {i}: needs 'input' and 'output', or 'assert'")
    return tests


def check_ground_truth(row: dict) -> list[Problem]:
    """Check the domain and its ground-truth fields.

    Args:
        row: a decoded JSON object.

    Returns:
        The problems found; empty when the row is well formed.

    """
    domain = row.get("domain")
    if domain is None:
        return [Problem("domain", "missing" if "domain" not in row else "null")]
    if not _is_str(domain):
        return [Problem("domain", f"expected a string, got {type(domain).__name__}")]
    if domain not in DOMAINS:
        known = known_domains()
        if domain not in known:
            return [Problem("domain", f"unknown domain {domain!r} (known: {', '.join(known)})")]
        return []  # a plug-in domain: its reward's validate() checks the ground truth

    problems: list[Problem] = []

    def need(field: str, check, expect: str) -> Any:
        if field not in row:
            problems.append(Problem(field, f"missing (required for domain {domain!r})"))
            return None
        value = row[field]
        if value is None:
            problems.append(Problem(field, "null"))
            return None
        if not check(value):
            problems.append(Problem(field, f"expected {expect}, got {type(value).__name__}"))
            return None
        return value

    if domain in ("math", "mcq"):
        need("answer", lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool),
             "a string or number")
        if domain == "mcq" and row.get("options") is not None:
            opts = row["options"]
            if not (isinstance(opts, dict) or (isinstance(opts, list) and all(map(_is_str, opts)))):
                problems.append(Problem("options", "expected a list of strings or a letter->text object"))
    elif domain == "code":
        tests = need("tests", lambda v: isinstance(v, (list, str)), "a list (or JSON string) of test cases")
        if tests is not None:
            try:
                parse_tests(tests)
            except ValueError as exc:
                problems.append(Problem("tests", str(exc)))
        if row.get("entry_point") is not None and not _is_str(row["entry_point"]):
            problems.append(Problem("entry_point", "expected a string"))
    elif domain == "reasoning_gym":
        need("task", _is_str, "a string (a reasoning-gym dataset name)")
        entry = need("entry", lambda v: isinstance(v, dict), "an object (the reasoning-gym item)")
        if entry is not None and "question" not in entry:
            problems.append(Problem("entry.question", "missing"))
    elif domain == "ifeval":
        inst = need("instructions", lambda v: isinstance(v, list), "a list of {id, kwargs}")
        if inst is not None:
            if not inst:
                problems.append(Problem("instructions", "empty list"))
            for i, item in enumerate(inst):
                if not isinstance(item, dict) or not _is_str(item.get("id")):
                    problems.append(Problem(f"instructions[{i}].id", "missing or not a string"))
                elif item.get("kwargs") is not None and not isinstance(item["kwargs"], dict):
                    problems.append(Problem(f"instructions[{i}].kwargs", "expected an object"))
    return problems


def _check_prompt(prompt: Any) -> list[Problem]:
    if _is_str(prompt):
        return [] if prompt.strip() else [Problem("prompt", "empty string")]
    if isinstance(prompt, list):
        if not prompt:
            return [Problem("prompt", "empty message list")]
        out = []
        for i, msg in enumerate(prompt):
            if not isinstance(msg, dict) or not _is_str(msg.get("role")) or not _is_str(msg.get("content")):
                out.append(Problem(f"prompt[{i}]", "expected {role: str, content: str}"))
        return out
    return [Problem("prompt", f"expected a string or a list of chat messages, got {type(prompt).__name__}")]


def check_training_row(row: Any) -> list[Problem]:
    """Check a training/eval row: ``id``, ``domain``, ``prompt`` and the domain's ground truth."""
    if not isinstance(row, dict):
        return [Problem("<row>", f"expected a JSON object, got {type(row).__name__}")]
    problems: list[Problem] = []
    if row.get("id") is None:
        problems.append(Problem("id", "missing" if "id" not in row else "null"))
    elif not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool):
        problems.append(Problem("id", f"expected a string or integer, got {type(row['id']).__name__}"))
    if row.get("prompt") is None:
        problems.append(Problem("prompt", "missing" if "prompt" not in row else "null"))
    else:
        problems.extend(_check_prompt(row["prompt"]))
    problems.extend(check_ground_truth(row))
    return problems


def check_scoring_row(row: Any) -> list[Problem]:
    """Check a scoring row: ``domain``, ``response`` and the domain's ground truth."""
    if not isinstance(row, dict):
        return [Problem("<row>", f"expected a JSON object, got {type(row).__name__}")]
    problems: list[Problem] = []
    if row.get("response") is None:
        problems.append(Problem("response", "missing" if "response" not in row else "null"))
    elif not _is_str(row["response"]):
        problems.append(Problem("response", f"expected a string, got {type(row['response']).__name__}"))
    problems.extend(check_ground_truth(row))
    return problems
