"""The unbiased pass@k estimator (Chen et al., 2021) in its numerically stable product form.

For a problem with ``n`` samples of which ``c`` are correct,

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n - c + 1}^{n} (1 - k / i)

The product has ``c`` factors, each in [0, 1), so it neither overflows (binomials of n in the
thousands do) nor cancels catastrophically; it is exact to float rounding for n in the thousands.
When ``n - c < k`` every k-subset contains a correct sample and pass@k is exactly 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem.

    Args:
        n: number of samples (>= 1).
        c: number of correct samples (0 <= c <= n).
        k: subset size (1 <= k <= n).

    Returns:
        The probability that a random size-k subset of the n samples contains a correct one.

    Raises:
        ValueError: when the arguments are out of range (message names the offending values).

    """
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, c, k)):
        raise ValueError(f"n, c, k must be integers (got n={n!r}, c={c!r}, k={k!r})")
    if n < 1:
        raise ValueError(f"n must be >= 1 (got n={n})")
    if not 0 <= c <= n:
        raise ValueError(f"c must be in [0, n] (got c={c}, n={n})")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n] (got k={k}, n={n})")
    if n - c < k:
        return 1.0
    # log-space product keeps precision when many factors are close to 1
    log_fail = math.fsum(math.log1p(-k / i) for i in range(n - c + 1, n + 1))
    return -math.expm1(log_fail)


def pass_at_k_curve(counts: Iterable[tuple[int, int]], ks: Sequence[int]) -> dict[str, float]:
    """Mean pass@k over problems for each k.

    Args:
        counts: ``(n, c)`` per problem.
        ks: the k values.

    Returns:
        ``{"pass@K": mean over problems}`` for each K in ``ks``.

    Raises:
        ValueError: if there are no problems or some k exceeds some problem's n.

    """
    counts = list(counts)
    if not counts:
        raise ValueError("no problems to average over")
    out: dict[str, float] = {}
    for k in ks:
        out[f"pass@{k}"] = math.fsum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
    return out


#: the key suffix of a group's numbers: ``pass@16/group:hard``
GROUP_PREFIX = "group:"


def group_counts(records: Iterable[Mapping[str, Any]],
                 key: str = "group") -> dict[str, list[tuple[int, int]]]:
    """``(n, c)`` per problem, split by the records' ``group`` field (records without one are skipped).

    Args:
        records: per-problem records with ``correct`` (a list of booleans, one per sample) and, optionally,
            ``key`` (the difficulty group, a non-empty string), e.g. :func:`nemo_prorl.eval.sampling.
            sample_and_score` records of rows that carry a ``group``.
        key: the field that names the group.

    Returns:
        ``{group: [(n, c), ...]}`` in first-seen order of the groups.

    Raises:
        ValueError: a group that is not a non-empty string, or a record without ``correct``.

    """
    out: dict[str, list[tuple[int, int]]] = {}
    for i, rec in enumerate(records):
        group = rec.get(key)
        if group is None:
            continue
        if not isinstance(group, str) or not group:
            raise ValueError(f"record {i} (id={rec.get('id')!r}): {key} must be a non-empty string, "
                             f"got {group!r}")
        if "correct" not in rec:
            raise ValueError(f"record {i} (id={rec.get('id')!r}): no 'correct' list to count")
        correct = rec["correct"]
        out.setdefault(group, []).append((len(correct), sum(bool(x) for x in correct)))
    return out


def pass_at_k_by_group(records: Iterable[Mapping[str, Any]], ks: Sequence[int],
                       key: str = "group") -> dict[str, float]:
    """Mean pass@k within each difficulty group: ``{"pass@K/group:G": value}``.

    Each group's value is the mean over its own problems (a group is an evaluation set of its own,
    so a large easy group cannot hide a hard group's zero). A problem enters the pass@K mean only
    when it has at least K samples, as in :func:`nemo_prorl.eval.sampling.summarize`; a group where no
    problem has K samples gets no pass@K key. Records without a group are left out (their numbers stay
    in the overall ``pass@K``).

    Args:
        records: per-problem records with ``correct`` and optionally ``key`` (see :func:`group_counts`).
        ks: the k values.
        key: the field that names the group.

    Returns:
        ``{"pass@K/group:G": mean pass@K over group G's problems}`` plus ``{"problems/group:G": count}``.

    """
    return grouped_pass_at_k(group_counts(records, key), ks)


def grouped_pass_at_k(groups: Mapping[str, Sequence[tuple[int, int]]], ks: Sequence[int]) -> dict[str, float]:
    """:func:`pass_at_k_by_group` from ``{group: [(n, c), ...]}`` (e.g. :func:`group_counts`)."""
    out: dict[str, float] = {}
    for group, counts in groups.items():
        out[f"problems/{GROUP_PREFIX}{group}"] = float(len(counts))
        for k in ks:
            vals = [pass_at_k(n, c, k) for n, c in counts if n >= k]
            if vals:
                out[f"pass@{k}/{GROUP_PREFIX}{group}"] = math.fsum(vals) / len(vals)
    return out


def groups_in(metrics: Mapping[str, Any]) -> list[str]:
    """The group names that have pass@k keys in ``metrics`` (e.g. a ``passk.json`` curve), sorted."""
    return sorted({k.split(f"/{GROUP_PREFIX}", 1)[1] for k in metrics
                   if k.startswith("pass@") and f"/{GROUP_PREFIX}" in k})
