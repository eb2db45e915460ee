"""Domain mixture and a resumable, deterministic prompt sampler.

Two modes:

* **natural** (``weights=None``): every row once per epoch, all domains shuffled together, so the mix
  follows the data set sizes (ProRL's setting). Epoch ``e`` is the permutation seeded by
  ``(seed, "all", e)``.
* **weighted**: each draw first picks a domain with probability proportional to its weight (the draw
  ``i`` uses a generator seeded by ``(seed, i)``), then takes that domain's next row. Every domain is its
  own stream that reshuffles when exhausted with a permutation seeded by ``(seed, domain, epoch)``.

Only counters are state: the number of draws and each stream's ``(epoch, position)``. So
``state_dict()`` saved after any draw and loaded into a fresh sampler built on the same rows continues
with exactly the rows the uninterrupted sampler would have produced: nothing replayed or skipped, also
across epoch boundaries. ``set_weights`` (called by the trainer at a phase change) keeps all positions.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from nemo_prorl.data.config import check_weights

_ALL = "all"
_DRAW_TAG = 0x6D6978  # separates the domain-draw seeds from the shuffle seeds
STATE_VERSION = 1


def _key_int(key: str) -> int:
    return zlib.crc32(key.encode("utf-8"))


def _fingerprint(rows: Sequence[Mapping[str, Any]]) -> int:
    crc = 0
    for row in rows:
        crc = zlib.crc32(f"{row.get('id')}\n".encode(), crc)
    return crc


class _Stream:
    """An endless, epoch-reshuffled walk over ``n`` indices."""

    def __init__(self, key: str, n: int, seed: int, shuffle: bool) -> None:
        self.key, self.n, self.seed, self.shuffle = key, n, seed, shuffle
        self.epoch = 0
        self.pos = 0
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of epoch ``epoch``, shape ``[n]`` (int64)."""
        if epoch != self._perm_epoch:
            if self.shuffle:
                rng = np.random.default_rng([self.seed, _key_int(self.key), epoch])
                self._perm = rng.permutation(self.n)
            else:
                self._perm = np.arange(self.n)
            self._perm_epoch = epoch
        return self._perm

    def next(self) -> tuple[int, int]:
        """Return ``(index, epoch)`` of the next item and advance."""
        if self.pos >= self.n:
            self.epoch += 1
            self.pos = 0
        idx = int(self.permutation(self.epoch)[self.pos])
        epoch = self.epoch
        self.pos += 1
        return idx, epoch


class MixtureSampler:
    """Deterministic, resumable sampler of training rows over a domain mixture.

    Args:
        rows_by_domain: domain -> its rows (any sequence supporting ``len`` and indexing).
        weights: domain -> relative weight, or ``None`` for the natural mix (every row once per epoch).
        seed: seed of all shuffles and draws.
        shuffle: reshuffle each epoch; ``False`` walks rows in order.

    Example:
        >>> sampler = MixtureSampler({"math": math_rows, "code": code_rows}, {"math": 3, "code": 1})
        >>> batch = sampler.next_batch(64)
        >>> ckpt["data"] = sampler.state_dict()

    """

    def __init__(
        self,
        rows_by_domain: Mapping[str, Sequence[Mapping[str, Any]]],
        weights: Mapping[str, float] | None = None,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        self.domains = sorted(d for d, rows in rows_by_domain.items() if len(rows) > 0)
        if not self.domains:
            raise ValueError("MixtureSampler: no rows in any domain")
        self.rows = {d: rows_by_domain[d] for d in self.domains}
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self._offsets = np.cumsum([0] + [len(self.rows[d]) for d in self.domains])
        total = int(self._offsets[-1])
        self._streams: dict[str, _Stream] = {_ALL: _Stream(_ALL, total, self.seed, self.shuffle)}
        for d in self.domains:
            self._streams[d] = _Stream(d, len(self.rows[d]), self.seed, self.shuffle)
        self.draws = 0
        self.weights: dict[str, float] | None = None
        self._cum: np.ndarray | None = None
        self.last_epoch = 0
        self.set_weights(weights)

    # ---------------------------------------------------------------- mixture
    def set_weights(self, weights: Mapping[str, float] | None) -> None:
        """Change the mixture from the next draw on (``None``: natural mix). Positions are kept.

        Raises:
            ValueError: for an unknown domain, a bad weight, or a positive weight on a domain with no rows.

        """
        if weights is None:
            self.weights, self._cum = None, None
            return
        w = check_weights(weights, "mixture weights")
        empty = [d for d, v in w.items() if v > 0 and d not in self.rows]
        if empty:
            raise ValueError(f"mixture weights: domain(s) {', '.join(empty)} have weight > 0 but no rows")
        self.weights = {d: w.get(d, 0.0) for d in self.domains}
        vec = np.array([self.weights[d] for d in self.domains], dtype=np.float64)
        self._cum = np.cumsum(vec / vec.sum())

    def probabilities(self) -> dict[str, float]:
        """The probability of each domain per draw (natural mode: its share of the rows)."""
        if self.weights is None:
            total = float(self._offsets[-1])
            return {d: len(self.rows[d]) / total for d in self.domains}
        total = sum(self.weights.values())
        return {d: self.weights[d] / total for d in self.domains}

    # ---------------------------------------------------------------- drawing
    def _draw_domain(self, i: int) -> str:
        u = np.random.default_rng([self.seed, _DRAW_TAG, i]).random()
        k = int(np.searchsorted(self._cum, u, side="right"))
        return self.domains[min(k, len(self.domains) - 1)]

    def next_index(self) -> tuple[str, int]:
        """Advance by one draw; return ``(domain, index within that domain's rows)``."""
        if self.weights is None:
            flat, epoch = self._streams[_ALL].next()
            k = int(np.searchsorted(self._offsets, flat, side="right")) - 1
            domain, idx = self.domains[k], flat - int(self._offsets[k])
        else:
            domain = self._draw_domain(self.draws)
            idx, epoch = self._streams[domain].next()
        self.draws += 1
        self.last_epoch = epoch
        return domain, idx

    def next_row(self) -> Mapping[str, Any]:
        """The next row."""
        domain, idx = self.next_index()
        return self.rows[domain][idx]

    def next_batch(self, batch_size: int) -> list[Mapping[str, Any]]:
        """The next ``batch_size`` rows."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return [self.next_row() for _ in range(batch_size)]

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        return self

    def __next__(self) -> Mapping[str, Any]:
        return self.next_row()

    @property
    def epoch(self) -> int:
        """Completed passes: natural mode over all rows; weighted mode the fewest among active domains."""
        if self.weights is None:
            s = self._streams[_ALL]
            return s.epoch + (1 if s.pos >= s.n else 0)
        return min(
            self._streams[d].epoch + (1 if self._streams[d].pos >= self._streams[d].n else 0)
            for d in self.domains
            if self.weights[d] > 0
        )

    # ---------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position of the sampler (goes into the checkpoint)."""
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "draws": self.draws,
            "weights": None if self.weights is None else dict(self.weights),
            "streams": {k: {"epoch": s.epoch, "pos": s.pos} for k, s in self._streams.items()},
            "sizes": {d: len(self.rows[d]) for d in self.domains},
            "fingerprints": {d: _fingerprint(self.rows[d]) for d in self.domains},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict`.

        Raises:
            ValueError: when the state belongs to different data (other domains, sizes or row ids),
                another seed or shuffle setting, or an unknown state version -- resuming would then
                silently replay or skip prompts.

        """
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"sampler state: unsupported version {state.get('version')!r}")
        if state["seed"] != self.seed or bool(state["shuffle"]) != self.shuffle:
            raise ValueError(
                f"sampler state: saved with seed={state['seed']} shuffle={state['shuffle']}, "
                f"but this sampler has seed={self.seed} shuffle={self.shuffle}"
            )
        sizes = {d: len(self.rows[d]) for d in self.domains}
        if dict(state["sizes"]) != sizes:
            raise ValueError(f"sampler state: saved for rows per domain {dict(state['sizes'])}, now {sizes}")
        for d in self.domains:
            if int(state["fingerprints"][d]) != _fingerprint(self.rows[d]):
                raise ValueError(f"sampler state: ids or order of the {d!r} rows differ from the saved run")
        for key, s in self._streams.items():
            saved = state["streams"][key]
            epoch, pos = int(saved["epoch"]), int(saved["pos"])
            if epoch < 0 or not 0 <= pos <= s.n:
                raise ValueError(f"sampler state: stream {key!r} position {epoch}/{pos} out of range")
            s.epoch, s.pos = epoch, pos
        self.draws = int(state["draws"])
        self.set_weights(state["weights"])
