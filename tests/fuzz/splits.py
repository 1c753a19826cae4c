"""Cut fuzz inputs the ways a network could: whole, byte by byte, sampled two-chunk splits.

``tests/helpers/feed.py`` tries every two-chunk split, which costs one run per
byte; for fuzzing that is too slow, so a :class:`SplitPlan` (drawn by
hypothesis) names a few cut points and one random partition instead.  Cut
points are reduced modulo the input's length, so any plan fits any input and
hypothesis shrinks the plan and the input independently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from hypothesis import strategies as st

T = TypeVar("T")


@dataclass(frozen=True)
class SplitPlan:
    """Which splits to try besides whole and byte by byte."""

    #: Two-chunk split points, each reduced to 1..len-1.
    cuts: tuple[int, ...]
    #: Chunk sizes (each reduced to 1..16) for one partition into many chunks, cycled.
    sizes: tuple[int, ...]

    def splits(self, data: bytes) -> Iterator[list[bytes]]:
        """The whole input, byte by byte, each sampled two-chunk split, one random partition."""
        yield [data]
        yield [data[i : i + 1] for i in range(len(data))]
        if len(data) > 1:
            for cut in self.cuts:
                point = 1 + cut % (len(data) - 1)
                yield [data[:point], data[point:]]
        if self.sizes:
            chunks, start, index = [], 0, 0
            while start < len(data):
                size = 1 + self.sizes[index % len(self.sizes)] % 16
                chunks.append(data[start : start + size])
                start += size
                index += 1
            yield chunks


split_plans = st.builds(
    SplitPlan,
    st.lists(st.integers(min_value=0, max_value=1 << 16), min_size=1, max_size=3).map(tuple),
    st.lists(st.integers(min_value=0, max_value=15), max_size=6).map(tuple),
)


def same_for_splits(data: bytes, plan: SplitPlan, run: Callable[[Sequence[bytes]], T]) -> T:
    """``run(chunks)`` for every split of the plan; asserts all agree, returns the answer."""
    splits = plan.splits(data)
    expected = run(next(splits))
    for chunks in splits:
        got = run(chunks)
        assert got == expected, (
            f"chunks {[len(c) for c in chunks][:8]}... gave {got!r}, whole input gave {expected!r}"
        )
    return expected
