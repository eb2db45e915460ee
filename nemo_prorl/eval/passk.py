"""The unbiased pass@k estimator (Chen et al., 2021) in its numerically stable product form.

For a problem with ``n`` samples of which ``c`` are correct,

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n - c + 1}^{n} (1 - k / i)

The product has ``c`` factors, each in [0, 1), so it neither overflows (binomials of n in the
thousands do) nor cancels catastrophically; it is exact to float rounding for n in the thousands.
When ``n - c < k`` every k-subset contains a correct sample and pass@k is exactly 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


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
