"""Shards: contiguous sample ranges made of whole chunks of the local run.

A local run processes its samples in fixed chunks (``chunk`` samples from index 0: 64 in the
command line's attack loop and cross-check, ``chunk_size`` in :func:`boundkit.crosscheck`),
and every chunk's computation depends only on the chunk (the attacks' random generator is
seeded per chunk, the ``best`` ensemble's batch fallback looks inside the chunk, the
certificates are computed per sample). A shard is a union of consecutive whole chunks
``[k * chunk, min(m * chunk, n))``, so a shard computes exactly what the local run computes
on those samples, bit for bit, whatever the number of shards.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Shard", "plan_shards", "remaining_ranges"]


@dataclass(frozen=True, order=True)
class Shard:
    """Samples ``start <= i < stop`` of the run (``start`` a multiple of the chunk)."""

    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def name(self) -> str:
        """File stem of the shard's results: ``shard-<start>-<stop>``."""
        return f"shard-{self.start:09d}-{self.stop:09d}"

    @classmethod
    def from_name(cls, stem: str) -> Shard | None:
        parts = stem.split("-")
        if len(parts) != 3 or parts[0] != "shard" or not all(p.isdigit() for p in parts[1:]):
            return None
        return cls(int(parts[1]), int(parts[2]))


def _check(n: int, chunk: int) -> None:
    if n < 0:
        raise ValueError(f"number of samples must be >= 0, got {n}")
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")


def plan_shards(n: int, chunk: int, shards: int | None = None, *, start: int = 0,
                stop: int | None = None) -> list[Shard]:
    """Split samples ``[start, stop)`` (default ``[0, n)``) into at most ``shards`` shards of
    whole chunks, as equal as possible (``shards=None``: one shard per chunk).

    ``start`` must be a chunk boundary; ``stop`` a chunk boundary or ``n``.
    """
    _check(n, chunk)
    stop = n if stop is None else stop
    if start % chunk or (stop != n and stop % chunk) or not 0 <= start <= stop <= n:
        raise ValueError(f"range [{start}, {stop}) is not aligned to chunks of {chunk}")
    n_chunks = math.ceil((stop - start) / chunk)
    if n_chunks == 0:
        return []
    if shards is not None and shards < 1:
        raise ValueError(f"the number of shards must be positive, got {shards}")
    k = n_chunks if shards is None else min(shards, n_chunks)
    out = []
    for j in range(k):  # chunks [j * n_chunks // k, (j + 1) * n_chunks // k)
        a = start + (j * n_chunks // k) * chunk
        b = min(start + ((j + 1) * n_chunks // k) * chunk, stop)
        out.append(Shard(a, b))
    return out


def remaining_ranges(n: int, chunk: int, done: Iterable[Shard]) -> tuple[list[Shard],
                                                                        list[Shard]]:
    """Choose non-overlapping done shards (aligned, inside ``[0, n)``) and the gaps left.

    Returns ``(kept, gaps)``: ``kept`` sorted, disjoint; ``gaps`` the maximal ranges of
    ``[0, n)`` that ``kept`` does not cover (each aligned to chunks, to be planned again).
    Shards of another plan (a different shard count) are reused where they fit.
    """
    _check(n, chunk)
    kept: list[Shard] = []
    end = 0
    for s in sorted(done, key=lambda s: (s.start, -s.stop)):
        valid = (s.start % chunk == 0 and (s.stop % chunk == 0 or s.stop == n)
                 and 0 <= s.start < s.stop <= n)
        if valid and s.start >= end:
            kept.append(s)
            end = s.stop
    gaps, pos = [], 0
    for s in kept:
        if s.start > pos:
            gaps.append(Shard(pos, s.start))
        pos = s.stop
    if pos < n:
        gaps.append(Shard(pos, n))
    return kept, gaps
