"""Feed a parser its input every way a network could cut it.

``all_splits(data)`` yields the whole input, then one byte at a time, then
every two-chunk split.  A sans-IO parser must give the same answer for each
(h11's ``tr()``, Dovecot's byte-by-byte istream tests, imap-codec's
fragmentizer tests): TCP does not keep write boundaries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def all_splits(data: bytes) -> Iterator[list[bytes]]:
    """The whole input, then byte by byte, then every split into two chunks."""
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for cut in range(1, len(data)):
        yield [data[:cut], data[cut:]]


def same_for_all_splits(data: bytes, run: Callable[[Sequence[bytes]], T]) -> T:
    """``run(chunks)`` for every split; asserts all agree and returns the answer."""
    splits = all_splits(data)
    expected = run(next(splits))
    for chunks in splits:
        got = run(chunks)
        assert got == expected, (
            f"chunks {[len(c) for c in chunks][:8]}... gave {got!r}, whole input gave {expected!r}"
        )
    return expected
