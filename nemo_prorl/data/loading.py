"""Loading data for training: ``datasets`` for bulk/streaming access, preflight for the training rows.

The trainer calls :func:`prepare_data` once, before any model is built: it runs preflight on the train
and validation files (raising under the ``fail`` policy), and builds the :class:`MixtureSampler`.

:func:`load_hf_dataset` reads the same files through Hugging Face ``datasets`` (Arrow, memory-mapped,
optionally streaming) for users who want a ``datasets`` object, e.g. to map or filter a large set.
Note that Arrow needs one type per column: JSON files whose rows mix types in a column (a math
``answer`` that is sometimes a number, reasoning-gym metadata that differs per task) are better read
with preflight, which keeps each row exactly as written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nemo_prorl.data.config import DataConfig
from nemo_prorl.data.mixture import MixtureSampler
from nemo_prorl.data.preflight import (
    EmptyDomainError,
    PreflightReport,
    expand_paths,
    group_by_domain,
    preflight,
)


def load_hf_dataset(paths: list[str], streaming: bool = False) -> Any:
    """Load local JSONL / JSON / parquet files (or directories of shards) with ``datasets``.

    Args:
        paths: files or directories; all must have the same format.
        streaming: return an ``IterableDataset`` that reads lazily (for sets larger than memory).

    Returns:
        ``datasets.Dataset`` (or ``IterableDataset`` when streaming) of the ``train`` split.

    Raises:
        ValueError: when the files mix formats.
        FileNotFoundError: naming a missing path.

    """
    import datasets

    files = expand_paths(paths)
    kinds = {"parquet" if f.endswith(".parquet") else "json" for f in files}
    if len(kinds) != 1:
        raise ValueError(f"cannot load a mix of parquet and JSON files in one dataset: {files}")
    # built-in packaged builders only: no loading script, no remote code
    return datasets.load_dataset(kinds.pop(), data_files=files, split="train", streaming=streaming)


def _why_empty(report: PreflightReport, domain: str | None, limit: int | None) -> str:
    """Why ``domain`` (``None``: all domains) kept no row, with counts, e.g. ``"8 row(s) read, ..."``."""
    if domain is None:
        read, long = report.rows_read, len(report.too_long)
    else:
        read, long = report.read_by_domain.get(domain, 0), report.too_long_by_domain.get(domain, 0)
    if not read:
        return "no rows read" if domain is None else f"no {domain!r} rows in data.train_files"
    parts = [f"{long} prompt(s) longer than data.max_prompt_tokens={limit} tokens"] if long else []
    if read - long:
        parts.append(f"{read - long} malformed (`nemo-prorl data check FILE` lists them)")
    return f"all {read} row(s) read were filtered by preflight: " + ", ".join(parts)


def check_domains_survive(cfg: DataConfig, train: PreflightReport) -> None:
    """Raise :class:`EmptyDomainError` naming the cause, the domain, the count and the key to change.

    A domain with weight > 0 in ``data.mixture`` or in any ``data.phase_mixtures`` entry must keep at
    least one training row after preflight, or the sampler could never draw from it.
    """
    limit = cfg.max_prompt_tokens
    if not train.rows:
        fix = (f"raise data.max_prompt_tokens (now {limit})" if train.too_long
               else "fix the rows or point data.train_files at other files")
        raise EmptyDomainError(train, f"data.train_files: no usable training rows: "
                                      f"{_why_empty(train, None, limit)}; {fix}\n{train.format_summary()}")
    mixtures = [("data.mixture", cfg.mixture)]
    mixtures += [(f"data.phase_mixtures.{name}", w) for name, w in cfg.phase_mixtures.items()]
    for key, weights in mixtures:
        for domain, weight in (weights or {}).items():
            if weight <= 0 or train.kept_by_domain.get(domain):
                continue
            fixes = [f"set {key}.{domain}=0"]
            if train.too_long_by_domain.get(domain):
                fixes.insert(0, f"raise data.max_prompt_tokens (now {limit})")
            if not train.read_by_domain.get(domain):
                fixes.insert(0, f"add {domain!r} rows to data.train_files")
            raise EmptyDomainError(
                train, f"{key}: domain {domain!r} has weight {weight:g} but no training row left: "
                       f"{_why_empty(train, domain, limit)}; {' or '.join(fixes)}")


@dataclass
class PreparedData:
    """What the trainer needs from the data package.

    Attributes:
        sampler: the resumable training-prompt sampler.
        train_report: preflight of the training files.
        val_rows: validated validation rows (empty when no ``val_files``).
        val_report: preflight of the validation files (``None`` when no ``val_files``).

    """

    sampler: MixtureSampler
    train_report: PreflightReport
    val_rows: list[dict]
    val_report: PreflightReport | None


def prepare_data(cfg: DataConfig, tokenizer: Any = None, phase: str | None = None) -> PreparedData:
    """Validate the data of ``cfg`` and build the sampler (call before building any model).

    Args:
        cfg: the data config.
        tokenizer: used for ``max_prompt_tokens`` (required when that is set).
        phase: the current run phase; its ``phase_mixtures`` entry (if any) sets the initial weights.

    Raises:
        DataValidationError: under ``validation_policy="fail"`` when a row is malformed.
        EmptyDomainError: when nothing survives preflight, or every row of a domain that a mixture
            (``data.mixture`` or any ``data.phase_mixtures`` entry) samples from was filtered.
        ValueError: when no training files are configured.

    """
    if not cfg.train_files:
        raise ValueError("data.train_files: no training files configured")
    common = dict(
        policy=cfg.validation_policy, tokenizer=tokenizer, max_prompt_tokens=cfg.max_prompt_tokens,
        templates=cfg.templates, system_prompt=cfg.system_prompt, check_rewards=cfg.check_rewards,
    )
    train = preflight(cfg.train_files, **common)
    check_domains_survive(cfg, train)
    val = preflight(cfg.val_files, **common) if cfg.val_files else None
    sampler = MixtureSampler(
        group_by_domain(train.rows), cfg.weights_for_phase(phase), seed=cfg.seed, shuffle=cfg.shuffle
    )
    return PreparedData(sampler, train, val.rows if val else [], val)
