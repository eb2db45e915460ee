"""Preflight validation of data files, run before any model is built.

JSONL is read line by line here (not through ``datasets``) so that a broken JSON line or non-UTF-8 bytes
become a report entry instead of a crash. Every problem is reported as ``file:row:field: reason`` with
1-based row numbers (the line number for JSONL, the record number for JSON arrays and parquet).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nemo_prorl.data.config import POLICIES
from nemo_prorl.schema import Problem, check_training_row, known_domains

DATA_SUFFIXES: tuple[str, ...] = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class Issue:
    """One problem found at preflight.

    Attributes:
        file: the data file.
        row: 1-based row (line) number; 0 for file-level problems.
        field: the field concerned (``<row>`` for the whole row, ``<file>`` for the whole file).
        reason: what is wrong.
        category: summary bucket (``missing``, ``null``, ``wrong type``, ``unknown domain``,
            ``unparsable tests``, ``non-UTF-8``, ``broken JSON``, ``duplicate id``, ``invalid``,
            ``ground truth``, ``unreadable file``).

    """

    file: str
    row: int
    field: str
    reason: str
    category: str

    def __str__(self) -> str:
        return f"{self.file}:{self.row}:{self.field}: {self.reason}"


class DataValidationError(ValueError):
    """Raised under the ``fail`` policy; carries the full :class:`PreflightReport`."""

    def __init__(self, report: PreflightReport, limit: int = 20) -> None:
        self.report = report
        lines = [str(i) for i in report.issues[:limit]]
        more = len(report.issues) - limit
        if more > 0:
            lines.append(f"... and {more} more")
        super().__init__(f"{len(report.issues)} data problem(s) (policy 'fail'):\n" + "\n".join(lines))


class EmptyDomainError(DataValidationError):
    """A domain the mixture samples from has no row left after preflight (the CLI exits 2 with it)."""

    def __init__(self, report: PreflightReport, message: str) -> None:
        self.report = report
        ValueError.__init__(self, message)


def categorize(problem: Problem) -> str:
    """The summary bucket of a schema :class:`~nemo_prorl.schema.Problem`."""
    reason = problem.reason
    if problem.field == "domain" and reason.startswith("unknown domain"):
        return "unknown domain"
    if reason.startswith("missing"):
        return "missing"
    if reason == "null":
        return "null"
    if reason.startswith("expected"):
        return "wrong type"
    if problem.field == "tests":
        return "unparsable tests"
    return "invalid"


@dataclass
class RawRecord:
    """A row as read from disk: where it came from and the decoded object (or why decoding failed)."""

    file: str
    row: int
    value: Any = None
    issue: Issue | None = None


def expand_paths(paths: Iterable[str]) -> list[str]:
    """Expand directories into their data shards (sorted, recursive); keep files as given.

    Raises:
        FileNotFoundError: naming a path that does not exist or a directory without data files.

    """
    out: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(path)
                for name in names
                if name.endswith(DATA_SUFFIXES) and not name.startswith(".")
            )
            if not found:
                raise FileNotFoundError(f"{path}: directory holds no {'/'.join(DATA_SUFFIXES)} files")
            out.extend(found)
        elif os.path.isfile(path):
            out.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return out


def _decode_line(path: str, lineno: int, raw: bytes) -> RawRecord | None:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        reason = f"not valid UTF-8 ({exc.reason} at byte {exc.start})"
        return RawRecord(path, lineno, issue=Issue(path, lineno, "<row>", reason, "non-UTF-8"))
    if not line.strip():
        return None
    try:
        return RawRecord(path, lineno, json.loads(line))
    except json.JSONDecodeError as exc:
        reason = f"broken JSON ({exc.msg} at char {exc.pos})"
        return RawRecord(path, lineno, issue=Issue(path, lineno, "<row>", reason, "broken JSON"))
    except RecursionError:
        issue = Issue(path, lineno, "<row>", "JSON nested too deeply", "broken JSON")
        return RawRecord(path, lineno, issue=issue)


def iter_jsonl(path: str) -> Iterator[RawRecord]:
    """Yield one record per non-blank line of a JSON Lines file, lazily (streams big files)."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            rec = _decode_line(path, lineno, raw)
            if rec is not None:
                yield rec


def iter_json(path: str) -> Iterator[RawRecord]:
    """Yield the records of a ``.json`` file: a top-level array of objects, or JSON Lines."""
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip()
    if not head.startswith(b"["):
        yield from iter_jsonl(path)
        return
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        values = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        reason = f"not valid UTF-8 ({exc.reason} at byte {exc.start})"
        yield RawRecord(path, 0, issue=Issue(path, 0, "<file>", reason, "non-UTF-8"))
        return
    except json.JSONDecodeError as exc:
        reason = f"broken JSON (line {exc.lineno} col {exc.colno}: {exc.msg})"
        yield RawRecord(path, 0, issue=Issue(path, 0, "<file>", reason, "broken JSON"))
        return
    for i, value in enumerate(values, start=1):
        yield RawRecord(path, i, value)


def iter_parquet(path: str, batch_size: int = 1024) -> Iterator[RawRecord]:
    """Yield the rows of a parquet file batch by batch (as Python objects)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        issue = Issue(path, 0, "<file>", f"unreadable parquet ({exc})", "unreadable file")
        yield RawRecord(path, 0, issue=issue)
        return
    row = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        for value in batch.to_pylist():
            row += 1
            yield RawRecord(path, row, value)


def iter_records(path: str) -> Iterator[RawRecord]:
    """Yield the raw records of one data file, choosing the reader by suffix."""
    if path.endswith(".parquet"):
        yield from iter_parquet(path)
    elif path.endswith(".json"):
        yield from iter_json(path)
    else:
        yield from iter_jsonl(path)


@dataclass
class PreflightReport:
    """What preflight found and kept.

    Attributes:
        rows: the rows kept, in file order (the training rows themselves, unchanged).
        issues: every malformed-row problem, in file order (several per row possible).
        too_long: ``(file, row, id, n_tokens)`` of prompts filtered for exceeding the maximum.
        too_long_by_domain: number of those prompts per domain.
        rows_read: rows read (blank lines not counted).
        skipped_by_reason: number of skipped rows per category (a row counts once, under its first).
        read_by_domain / kept_by_domain: rows per domain (rows whose domain is unknown count as
            ``<unknown>``).
        policy: the validation policy used.
        max_prompt_tokens: the limit applied, if any.

    """

    rows: list[dict] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    too_long: list[tuple[str, int, Any, int]] = field(default_factory=list)
    too_long_by_domain: Counter = field(default_factory=Counter)
    rows_read: int = 0
    skipped_by_reason: Counter = field(default_factory=Counter)
    read_by_domain: Counter = field(default_factory=Counter)
    kept_by_domain: Counter = field(default_factory=Counter)
    policy: str = "skip"
    max_prompt_tokens: int | None = None

    @property
    def kept(self) -> int:
        """Number of rows kept."""
        return len(self.rows)

    @property
    def skipped(self) -> int:
        """Number of rows dropped (malformed or too long)."""
        return self.rows_read - self.kept

    @property
    def ok(self) -> bool:
        """True when no row was malformed (long prompts filtered do not count as problems)."""
        return not self.issues

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable summary (counts by reason and domain, ids of filtered long prompts)."""
        return {
            "policy": self.policy,
            "rows_read": self.rows_read,
            "kept": self.kept,
            "skipped": self.skipped,
            "problems": len(self.issues),
            "skipped_by_reason": dict(sorted(self.skipped_by_reason.items())),
            "read_by_domain": dict(sorted(self.read_by_domain.items())),
            "kept_by_domain": dict(sorted(self.kept_by_domain.items())),
            "max_prompt_tokens": self.max_prompt_tokens,
            "too_long_ids": [rid for _, _, rid, _ in self.too_long],
        }

    def format_summary(self) -> str:
        """A short human-readable summary."""
        s = self.summary()
        def counts(c: dict) -> str:
            return ", ".join(f"{k} {v}" for k, v in c.items()) or "-"

        head = f"rows read {s['rows_read']}, kept {s['kept']}, skipped {s['skipped']}"
        lines = [f"{head} (policy {self.policy})"]
        if s["skipped_by_reason"]:
            lines.append("skipped by reason: " + counts(s["skipped_by_reason"]))
        lines.append("kept by domain: " + counts(s["kept_by_domain"]))
        if self.too_long:
            lines.append(
                f"{len(self.too_long)} prompt(s) longer than {self.max_prompt_tokens} tokens filtered: "
                + ", ".join(f"{rid} ({n})" for _, _, rid, n in self.too_long)
            )
        return "\n".join(lines)


def _reward_validators(enabled: bool) -> dict[str, Any]:
    """Instances of the registered rewards, by domain (empty when disabled or none is registered)."""
    if not enabled:
        return {}
    try:
        from nemo_prorl.rewards.base import registered_rewards

        # importing the rewards package registers the built-in rewards that exist so far
        try:
            import nemo_prorl.rewards  # noqa: F401
        except ImportError:
            pass
        classes = registered_rewards()
    except ImportError:
        return {}
    out = {}
    for name, cls in classes.items():
        try:
            out[name] = cls()
        except Exception:  # a reward that needs options cannot validate without them; skip it
            continue
    return out


def preflight(
    paths: Sequence[str],
    policy: str = "skip",
    tokenizer: Any = None,
    max_prompt_tokens: int | None = None,
    templates: Mapping[str, str] | None = None,
    system_prompt: str | None = None,
    check_rewards: bool = True,
) -> PreflightReport:
    """Read and validate data files; keep the good rows.

    Args:
        paths: files (JSONL / JSON / parquet) or directories of shards.
        policy: ``"skip"`` keeps going and drops bad rows; ``"fail"`` raises after reading everything.
        tokenizer: needed when ``max_prompt_tokens`` is set; prompts are measured after the template.
        max_prompt_tokens: filter prompts longer than this many tokens (ids listed in the report).
        templates: per-domain template overrides used for the length check.
        system_prompt: system message used for the length check.
        check_rewards: also call ``Reward.validate(row)`` of the registered reward for each domain.

    Returns:
        The report, whose ``rows`` are the rows to train on.

    Raises:
        DataValidationError: under policy ``"fail"`` when any row is malformed.
        FileNotFoundError: for a missing path.
        ValueError: for a bad policy, or a length limit without a tokenizer.

    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if max_prompt_tokens is not None and tokenizer is None:
        raise ValueError("max_prompt_tokens needs a tokenizer to count prompt tokens")
    from nemo_prorl.data.templates import merged_templates, tokenize_prompt

    all_templates = merged_templates(templates)
    domains = set(known_domains())  # built-in and plug-in (entry point) rewards
    validators = _reward_validators(check_rewards)
    report = PreflightReport(policy=policy, max_prompt_tokens=max_prompt_tokens)
    first_seen: dict[str, str] = {}

    for path in expand_paths(paths):
        for rec in iter_records(path):
            if rec.row > 0 or rec.issue is None:
                report.rows_read += 1
            if rec.issue is not None:
                report.issues.append(rec.issue)
                if rec.row > 0:
                    report.skipped_by_reason[rec.issue.category] += 1
                    report.read_by_domain["<unknown>"] += 1
                continue
            row = rec.value
            domain = row.get("domain") if isinstance(row, dict) else None
            dkey = domain if isinstance(domain, str) and domain in domains else "<unknown>"
            report.read_by_domain[dkey] += 1
            issues = [
                Issue(path, rec.row, p.field, p.reason, categorize(p)) for p in check_training_row(row)
            ]
            if not issues and domain in validators:
                try:
                    extra = validators[domain].validate(row)
                except Exception as exc:  # a validator bug must not take preflight down
                    extra = [Problem("<row>", f"reward validator raised {type(exc).__name__}: {exc}")]
                issues += [Issue(path, rec.row, p.field, p.reason, "ground truth") for p in extra]
            elif not issues and domain == "code" and check_rewards:
                # no code reward could be built here (no sandbox): its test checks need none
                from nemo_prorl.rewards.code import code_row_problems

                issues += [Issue(path, rec.row, p.field, p.reason, "ground truth")
                           for p in code_row_problems(row)]
            if not issues:
                key = str(row["id"])  # 7 and "7" collide once ids become strings downstream
                where = f"{path}:{rec.row}"
                if key in first_seen:
                    issues.append(
                        Issue(path, rec.row, "id", f"duplicate id {row['id']!r} (first at {first_seen[key]})",
                              "duplicate id")
                    )
                else:
                    first_seen[key] = where
            if issues:
                report.issues.extend(issues)
                report.skipped_by_reason[issues[0].category] += 1
                continue
            if max_prompt_tokens is not None:
                n_tokens = len(tokenize_prompt(row, tokenizer, all_templates, system_prompt))
                if n_tokens > max_prompt_tokens:
                    report.too_long.append((path, rec.row, row["id"], n_tokens))
                    report.too_long_by_domain[domain] += 1
                    report.skipped_by_reason["prompt too long"] += 1
                    continue
            report.rows.append(row)
            report.kept_by_domain[domain] += 1

    if policy == "fail" and report.issues:
        raise DataValidationError(report)
    return report


def group_by_domain(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Split rows into per-domain lists, keeping their order."""
    out: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        out[row["domain"]].append(row)
    return dict(out)
