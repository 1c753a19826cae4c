"""Fuzz the PROXY protocol v1/v2 reader (proxy/proxy_protocol.py).

Properties: the only error is ``ProxyProtocolError``; every split
gives the same header (or an error), and the reader never takes a byte past
the header, so what follows (a ClientHello, an IMAP command) is untouched;
nothing past the limit (107 bytes for v1, ``max_length`` for v2) is taken.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence

from authsvc.proxy.proxy_protocol import (
    DEFAULT_MAX_LENGTH,
    V1_MAX,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderReader,
    ProxyProtocolError,
    encode_v1,
    encode_v2,
    encode_v2_local,
)
from hypothesis import event, example, given
from hypothesis import strategies as st

from tests.fuzz.splits import SplitPlan, same_for_splits, split_plans

MAX_LENGTH = 256  # a small v2 limit, so fuzzing reaches it

_v4 = st.ip_addresses(v=4).map(str)
_v6 = st.ip_addresses(v=6).map(str)
_ports = st.integers(min_value=0, max_value=65535)
_addresses = st.one_of(
    st.tuples(st.tuples(_v4, _ports), st.tuples(_v4, _ports)),
    st.tuples(st.tuples(_v6, _ports), st.tuples(_v6, _ports)),
    st.tuples(st.tuples(_v4, _ports), st.tuples(_v6, _ports)),
)


def _tlvs(items: list[tuple[int, bytes]]) -> bytes:
    return b"".join(struct.pack("!BH", kind, len(value)) + value for kind, value in items)


_tlv_items = st.lists(
    st.tuples(st.sampled_from([0x01, 0x02, 0x04, 0x05, 0x20, 0x30, 0xEE]), st.binary(max_size=12)),
    max_size=3,
)


def _v2(command: int, family: int, block: bytes, length_delta: int) -> bytes:
    length = max(0, min(0xFFFF, len(block) + length_delta))
    return V2_SIGNATURE + struct.pack("!BBH", command, family, length) + block


_v1_lines = st.one_of(
    st.builds(lambda pair: encode_v1(*pair), _addresses),
    st.builds(lambda proto, a, b, p, q: f"PROXY {proto} {a} {b} {p} {q}\r\n".encode(),
              st.sampled_from(["TCP4", "TCP6", "UNKNOWN", "tcp4", "UDP4"]),
              _v4 | _v6 | st.sampled_from(["01.2.3.4", "fe80::1%eth0", "::ffff:1.2.3.4", ""]),
              _v4 | _v6, st.sampled_from(["0", "80", "080", "65535", "65536", "x", "¹"]),
              _ports.map(str)),
    st.just(b"PROXY UNKNOWN\r\n"),
)
_v2_headers = st.one_of(
    st.builds(lambda pair: encode_v2(*pair), _addresses),
    st.just(encode_v2_local()),
    st.builds(_v2, st.sampled_from([0x20, 0x21, 0x22, 0x11]),
              st.sampled_from([0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32, 0x13]),
              st.builds(lambda block, tlvs: block + _tlvs(tlvs),
                        st.sampled_from([b"", bytes(12), bytes(36), bytes(216)]), _tlv_items),
              st.sampled_from([0, 0, 0, -1, 1, -12, 300])),
)


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for at, value in edits:
        if out:
            out[at % len(out)] = value
    return bytes(out)


#: Headers, good and damaged, with what a client sends after them.
proxy_inputs = st.builds(
    lambda header, edits, cut, after: _mutate(header, edits)[: cut or None] + after,
    _v1_lines | _v2_headers,
    st.lists(st.tuples(st.integers(min_value=0, max_value=300),
                       st.integers(min_value=0, max_value=255)), max_size=2),
    st.integers(min_value=0, max_value=300) | st.just(0),
    st.sampled_from([b"", b"\x16\x03\x01\x00\xa5\x01", b"a CAPABILITY\r\n", b"\r\n", b"PROXY "]),
) | st.binary(max_size=64)

Outcome = tuple[ProxyHeader | None, bool, bytes]


def read(chunks: Sequence[bytes], max_length: int = MAX_LENGTH) -> Outcome:
    """(header, failed, bytes left for the connection) as the I/O layer would see them."""
    reader = ProxyHeaderReader(max_length)
    taken_total = 0
    rest = b""
    header: ProxyHeader | None = None
    for chunk in chunks:
        if header is not None:
            rest += chunk
            continue
        try:
            taken = reader.feed(chunk)
        except ProxyProtocolError:
            return None, True, b""
        assert 0 <= taken <= len(chunk)
        taken_total += taken
        # Nothing is buffered past the limit, header or not.
        assert taken_total <= max(max_length, V1_MAX)
        header = _header(reader)
        if header is None:
            assert taken == len(chunk), "bytes left over before the header is complete"
        else:
            assert header.length == taken_total
            rest += chunk[taken:]
    return header, False, rest


def _header(reader: ProxyHeaderReader) -> ProxyHeader | None:
    return reader.header


@given(proxy_inputs, split_plans)
@example(encode_v1(("192.0.2.1", 5), ("192.0.2.2", 143)) + b"a NOOP\r\n", SplitPlan((9,), ()))
@example(encode_v2(("2001:db8::1", 5), ("2001:db8::2", 993)) + b"\x16\x03", SplitPlan((17,), ()))
def test_same_header_for_every_split_and_nothing_past_it(data: bytes, plan: SplitPlan) -> None:
    header, failed, rest = same_for_splits(data, plan, read)
    event("error" if failed else "header" if header else "incomplete")
    if header is not None:
        assert rest == data[header.length :]
        assert header.version in (1, 2)
        if header.version == 1:
            assert header.length <= V1_MAX
        for address in (header.source, header.destination):
            if address is not None:
                ipaddress.ip_address(address[0])
                assert 0 <= address[1] <= 65535


@given(_addresses, st.binary(max_size=16))
def test_what_we_write_reads_back(pair: tuple[tuple[str, int], tuple[str, int]],
                                  after: bytes) -> None:
    source, destination = pair
    for data in (encode_v1(source, destination), encode_v2(source, destination)):
        header, failed, rest = read([data + after], DEFAULT_MAX_LENGTH)
        assert not failed and header is not None and rest == after
        assert header.source is not None and header.destination is not None
        got = (ipaddress.ip_address(header.source[0]), header.source[1])
        sent = ipaddress.ip_address(source[0])
        if isinstance(sent, ipaddress.IPv4Address) and got[0].version == 6:
            sent = ipaddress.IPv6Address(f"::ffff:{sent}")  # mixed families: mapped
        assert got == (sent, source[1])


@given(st.integers(min_value=MAX_LENGTH - 15, max_value=0xFFFF), st.binary(max_size=32))
def test_a_v2_header_over_the_limit_is_refused_before_its_body(length: int, body: bytes) -> None:
    head = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, length)
    reader = ProxyHeaderReader(MAX_LENGTH)
    try:
        reader.feed(head + body)
    except ProxyProtocolError:
        assert 16 + length > MAX_LENGTH
        return
    assert 16 + length <= MAX_LENGTH


@given(st.binary(min_size=V1_MAX, max_size=3 * V1_MAX).map(
    lambda b: b"PROXY " + bytes(c for c in b if c not in b"\r\n")))
def test_a_v1_line_without_crlf_is_refused_within_107_bytes(data: bytes) -> None:
    reader = ProxyHeaderReader()
    taken = 0
    try:
        for i in range(len(data)):
            taken += reader.feed(data[i : i + 1])
    except ProxyProtocolError:
        assert taken <= V1_MAX
        return
    raise AssertionError("no error")
