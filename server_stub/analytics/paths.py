"""Journeys aggregated into distinct paths: what every attribution model reads.

A journey is a customer's touchpoints in the lookback window, ending in a conversion (an order
on any channel) or not. Journeys with the same touch labels and the same touch ages (whole days
before the journey's end) are one path with counts, so a model's cost depends on the number of
distinct paths, not of customers. The paths are kept in a compressed layout (one flat array of
touches, offsets per path) that the models read with vectorised numpy, and in a canonical order
(sorted by key), so the same journeys give bit-identical results whatever order they came in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import chain
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    FloatArray = npt.NDArray[np.float64]
    IntArray = npt.NDArray[np.int64]
else:
    FloatArray = IntArray = Any

PathKey = tuple[tuple[str, ...], tuple[int, ...]]


@dataclass(frozen=True)
class Journey:
    """One customer's touches (labels, oldest first), their ages in whole days before the end,
    and the outcome: converted or not, and the conversion's net value."""

    labels: tuple[str, ...]
    ages: tuple[int, ...]
    converted: bool
    value: float = 0.0


@dataclass
class PathCounts:
    """Aggregated paths before they are frozen: add journeys or pre-aggregated rows, merge.

    Values are summed in whole cents (integers), so the sums do not depend on the order the
    journeys came in: the models' results are bit-identical however they are read."""

    rows: dict[PathKey, list[float]]

    def __init__(self) -> None:
        self.rows = {}

    def add(
        self,
        labels: Sequence[str],
        ages: Sequence[int],
        *,
        conversions: float,
        nulls: float,
        value: float,
    ) -> None:
        """Count `conversions` converting and `nulls` non-converting journeys on one path."""
        if len(labels) != len(ages) or not labels:
            raise ValueError("a path needs at least one touch and one age per touch")
        key = (tuple(labels), tuple(int(age) for age in ages))
        cents = round(value * 100)
        row = self.rows.get(key)
        if row is None:
            self.rows[key] = [conversions, nulls, cents]
        else:
            row[0] += conversions
            row[1] += nulls
            row[2] += cents

    def add_journey(self, journey: Journey) -> None:
        self.add(
            journey.labels,
            journey.ages,
            conversions=1.0 if journey.converted else 0.0,
            nulls=0.0 if journey.converted else 1.0,
            value=journey.value if journey.converted else 0.0,
        )

    def merge(self, other: PathCounts) -> None:
        for key, (conv, null, cents) in other.rows.items():
            row = self.rows.get(key)
            if row is None:
                self.rows[key] = [conv, null, cents]
            else:
                row[0] += conv
                row[1] += null
                row[2] += cents

    def items(self) -> list[tuple[PathKey, tuple[float, float, float]]]:
        """(path, (conversions, non-conversions, value)) in canonical order."""
        return [((k[0], k[1]), (r[0], r[1], r[2] / 100)) for k, r in sorted(self.rows.items())]

    def freeze(self) -> Paths:
        return Paths._canonical(list(self.rows), list(self.rows.values()), 100.0)


@dataclass(frozen=True)
class Paths:
    """Distinct paths in canonical order, in a flat layout.

    `touches[offsets[i]:offsets[i+1]]` are path i's channel indices into `channels` (oldest
    first) and `ages` the same touches' ages in days; `conversions`, `nulls` and `value` are
    per path. Channel indices follow `channels`, which is sorted.
    """

    channels: tuple[str, ...]
    touches: IntArray
    ages: FloatArray
    offsets: IntArray
    conversions: FloatArray
    nulls: FloatArray
    value: FloatArray

    @staticmethod
    def from_rows(rows: Iterable[tuple[PathKey, Sequence[float]]]) -> Paths:
        """From (path, (conversions, non-conversions, value)) rows with distinct paths."""
        listed = list(rows)
        return Paths._canonical([key for key, _ in listed], [list(v) for _, v in listed], 1.0)

    @staticmethod
    def _canonical(keys: list[PathKey], values: list[list[float]], value_scale: float) -> Paths:
        """The paths in canonical order (by labels, then ages, as tuples compare), sorted with
        numpy rather than by Python tuple comparisons (the cost of a million paths)."""
        import numpy as np

        flat_labels = list(chain.from_iterable(labels for labels, _ in keys))
        channels = tuple(sorted(set(flat_labels)))
        index = {label: i for i, label in enumerate(channels)}
        n = len(keys)
        lengths = np.fromiter(map(len, (labels for labels, _ in keys)), np.int64, n)
        total = int(lengths.sum())
        touches = np.array(list(map(index.__getitem__, flat_labels)), np.int64).reshape(total)
        ages = np.array(list(chain.from_iterable(ages for _, ages in keys)), np.float64)
        ages = ages.reshape(total)
        counts = np.array(values, np.float64).reshape(-1, 3)
        width = int(lengths.max()) if n else 0
        path_of = np.repeat(np.arange(n), lengths)
        starts = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=starts[1:])
        position = np.arange(total) - np.repeat(starts[:-1], lengths)
        # Padded with -1, which sorts before every real label or age: a shorter path that is a
        # prefix of a longer one comes first, as with tuples.
        label_grid = np.full((n, width), -1, np.int64)
        age_grid = np.full((n, width), -1.0)
        label_grid[path_of, position] = touches
        age_grid[path_of, position] = ages
        sort_keys = [age_grid[:, j] for j in reversed(range(width))]
        sort_keys += [label_grid[:, j] for j in reversed(range(width))]
        order = np.lexsort(sort_keys) if n else np.zeros(0, np.int64)
        lengths = lengths[order]
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        keep = np.arange(width)[None, :] < lengths[:, None]
        counts = counts[order]
        return Paths(
            channels=channels,
            touches=label_grid[order][keep],
            ages=age_grid[order][keep],
            offsets=offsets,
            conversions=counts[:, 0].copy(),
            nulls=counts[:, 1].copy(),
            value=counts[:, 2] / value_scale if value_scale != 1.0 else counts[:, 2].copy(),
        )

    @staticmethod
    def from_journeys(journeys: Iterable[Journey]) -> Paths:
        counts = PathCounts()
        for journey in journeys:
            counts.add_journey(journey)
        return counts.freeze()

    def __len__(self) -> int:
        return len(self.conversions)

    @cached_property
    def lengths(self) -> IntArray:
        import numpy as np

        return np.diff(self.offsets)

    @cached_property
    def path_of_touch(self) -> IntArray:
        """For each touch, the index of its path."""
        import numpy as np

        return np.repeat(np.arange(len(self), dtype=np.int64), self.lengths)

    @cached_property
    def position(self) -> IntArray:
        """For each touch, its position in its path (0 = first touch)."""
        import numpy as np

        return np.arange(len(self.touches), dtype=np.int64) - np.repeat(
            self.offsets[:-1], self.lengths
        )

    def with_counts(self, conversions: FloatArray, nulls: FloatArray) -> Paths:
        """The same paths with other counts (a bootstrap resample); value per conversion kept."""
        import numpy as np

        per_conversion = np.divide(
            self.value, self.conversions, out=np.zeros_like(self.value), where=self.conversions > 0
        )
        return Paths(
            channels=self.channels,
            touches=self.touches,
            ages=self.ages,
            offsets=self.offsets,
            conversions=conversions,
            nulls=nulls,
            value=per_conversion * conversions,
        )

    def rows(self) -> list[tuple[PathKey, tuple[float, float, float]]]:
        """The paths back as keyed rows (for storage and tests)."""
        out: list[tuple[PathKey, tuple[float, float, float]]] = []
        for i in range(len(self)):
            start, end = int(self.offsets[i]), int(self.offsets[i + 1])
            labels = tuple(self.channels[int(t)] for t in self.touches[start:end])
            ages = tuple(int(a) for a in self.ages[start:end])
            out.append(
                (
                    (labels, ages),
                    (
                        float(self.conversions[i]),
                        float(self.nulls[i]),
                        float(self.value[i]),
                    ),
                )
            )
        return out
