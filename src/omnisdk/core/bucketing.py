"""Deterministic experiment bucketing of the GrowthBook SDK specification: the FNV-1a based
hash (versions 1 and 2), bucket ranges for weighted variations with coverage, and the choice of
a variation. The same visitor always lands in the same variation, on every channel."""

from __future__ import annotations

from functools import lru_cache

FNV_OFFSET = 0x811C9DC5
FNV_PRIME = 0x01000193
Range = tuple[float, float]


def fnv1a32(text: str) -> int:
    value = FNV_OFFSET
    for char in text:
        value = ((value ^ ord(char)) * FNV_PRIME) & 0xFFFFFFFF
    return value


@lru_cache(maxsize=16_384)
def bucket_hash(seed: str, value: str, version: int) -> float | None:
    """A number in [0, 1) for this visitor and seed; None for an unknown hash version.
    Remembered for the visitors seen most recently: the same visitor decides again on every
    page, and the hash is a loop over characters in Python."""
    if version == 2:
        return (fnv1a32(str(fnv1a32(seed + value))) % 10000) / 10000
    if version == 1:
        return (fnv1a32(value + seed) % 1000) / 1000
    return None


def equal_weights(variations: int) -> list[float]:
    return [1 / variations] * variations if variations >= 1 else []


def bucket_ranges(
    variations: int, coverage: float = 1.0, weights: list[float] | None = None
) -> list[Range]:
    """Each variation's [start, end) on [0, 1): weights (equal unless valid ones are given)
    scaled by coverage (clamped to [0, 1])."""
    coverage = min(max(coverage, 0.0), 1.0)
    if weights is None or len(weights) != variations or not 0.99 <= sum(weights) <= 1.01:
        weights = equal_weights(variations)
    ranges: list[Range] = []
    cumulative = 0.0
    for weight in weights:
        start = cumulative
        cumulative += weight
        ranges.append((start, start + coverage * weight))
    return ranges


def choose_variation(n: float, ranges: list[Range]) -> int:
    """The index of the range that holds `n`, or -1 (not in the experiment)."""
    for index, (start, end) in enumerate(ranges):
        if start <= n < end:
            return index
    return -1
