"""Fuzz the line cutter under POP3, store replies and IMAP lines (proxy/linebuffer.py).

A model says exactly what it must give: each LF-terminated line whose length
with the LF is within the limit, CR stripped; ``TooLong`` once for each
longer line (reported as soon as the limit passes, even before its LF comes).
Every split gives the model's answer, and what stays buffered is always under
the limit however long the line.
"""

from __future__ import annotations

from collections.abc import Sequence

from authsvc.proxy.linebuffer import LineBuffer, TooLong
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.splits import SplitPlan, same_for_splits, split_plans

_pieces = st.lists(
    st.one_of(
        st.sampled_from([b"\r\n", b"\n", b"\r", b"a", b"\x00", b"\xff", b" "]),
        st.integers(min_value=1, max_value=40).map(lambda n: b"x" * n),
    ),
    max_size=30,
).map(b"".join)


def model(data: bytes, max_line: int) -> list[bytes | TooLong]:
    out: list[bytes | TooLong] = []
    *complete, tail = data.split(b"\n")
    for line in complete:
        if len(line) + 1 > max_line:
            out.append(TooLong())
        else:
            out.append(line[:-1] if line.endswith(b"\r") else line)
    if len(tail) >= max_line:
        out.append(TooLong())  # reported before its LF arrives
    return out


def cut(chunks: Sequence[bytes], max_line: int) -> list[bytes | TooLong]:
    buf = LineBuffer(max_line)
    out: list[bytes | TooLong] = []
    for chunk in chunks:
        buf.feed(chunk)
        while (line := buf.next_line()) is not None:
            out.append(line)
        assert buf.buffered() < max_line, "more than a line's worth buffered"
    return out


@given(_pieces, st.integers(min_value=2, max_value=48), split_plans)
def test_lines_match_the_model_for_every_split(data: bytes, max_line: int,
                                               plan: SplitPlan) -> None:
    assert same_for_splits(data, plan, lambda chunks: cut(chunks, max_line)) == model(
        data, max_line)


@given(_pieces, _pieces, st.integers(min_value=2, max_value=48))
def test_take_remaining_is_what_was_not_consumed(first: bytes, rest: bytes,
                                                 max_line: int) -> None:
    first = first.replace(b"\n", b"")
    data = first + b"\n" + rest
    buf = LineBuffer(max_line)
    buf.feed(data)
    line = buf.next_line()
    if line is None or isinstance(line, TooLong):
        return
    # The first line was short enough: everything after its LF is still there.
    assert buf.take_remaining() == data[len(first) + 1 :]
