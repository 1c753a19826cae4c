"""The PROXY protocol reader: whole, byte by byte and at every two-chunk split.

Every case also carries bytes behind the header (a TLS ClientHello, an IMAP
command): the reader must stop exactly at the header's end, whatever the cut.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pytest
from authsvc.proxy.proxy_protocol import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderReader,
    ProxyProtocolError,
    encode_v1,
    encode_v2,
    encode_v2_local,
)

from tests.helpers.feed import same_for_all_splits

#: The start of a TLS 1.2/1.3 ClientHello record, as a client sends it behind the header.
CLIENT_HELLO = bytes.fromhex("160301020001000200030300") + b"\x5a" * 20
#: What HAProxy 2.6's check-send-proxy sends with send-proxy-v2 (seen on 2.6.12).
HAPROXY_LOCAL = bytes.fromhex("0D0A0D0A000D0A515549540A20000000")

Result = tuple[ProxyHeader, int] | str


def read(chunks: Sequence[bytes], max_length: int = 4096) -> Result:
    """(header, bytes taken) as the I/O layer would see it, or the error's text."""
    reader = ProxyHeaderReader(max_length)
    taken = 0
    try:
        for chunk in chunks:
            used = reader.feed(chunk)
            assert reader.header is not None or used == len(chunk), "took less, yet not done"
            taken += used
    except ProxyProtocolError as exc:
        return f"error: {exc}"
    if reader.header is None:
        return "incomplete"
    return reader.header, taken


def parse(data: bytes, max_length: int = 4096) -> Result:
    return same_for_all_splits(data, lambda chunks: read(chunks, max_length))


def v2(command: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", command, family, len(body)) + body


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


IPV4_BLOCK = bytes([192, 0, 2, 7, 198, 51, 100, 1]) + struct.pack("!HH", 50214, 993)
IPV6_BLOCK = (bytes.fromhex("20010db8000000000000000000000007")
              + bytes.fromhex("20010db8000000000000000000000001") + struct.pack("!HH", 1234, 143))
UNIX_BLOCK = b"/run/a".ljust(108, b"\0") + b"/run/b".ljust(108, b"\0")


# --- v1 ------------------------------------------------------------------------


def test_v1_tcp4_stops_before_the_client_hello() -> None:
    header = b"PROXY TCP4 198.51.100.7 192.0.2.1 50214 993\r\n"
    assert parse(header + CLIENT_HELLO) == (
        ProxyHeader(1, ("198.51.100.7", 50214), ("192.0.2.1", 993), len(header)), len(header))


def test_v1_tcp6() -> None:
    header = b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 0\r\n"
    assert parse(header + b"a1 LOGIN x y\r\n") == (
        ProxyHeader(1, ("2001:db8::7", 65535), ("2001:db8::1", 0), len(header)), len(header))


@pytest.mark.parametrize("header", [b"PROXY UNKNOWN\r\n",
                                    b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"])
def test_v1_unknown_keeps_the_connection_addresses(header: bytes) -> None:
    assert parse(header + CLIENT_HELLO) == (ProxyHeader(1, None, None, len(header)), len(header))


def test_v1_longest_line_is_107_bytes() -> None:
    line = b"PROXY UNKNOWN " + b"x" * (107 - 16) + b"\r\n"
    assert len(line) == 107
    assert parse(line) == (ProxyHeader(1, None, None, 107), 107)
    assert parse(line[:-2] + b"x\r\n") == "error: v1 header without CRLF in 107 bytes"


@pytest.mark.parametrize(("header", "error"), [
    (b"PROXY TCP4  198.51.100.7 192.0.2.1 1 2\r\n",
     "v1 header: expected TCP4/TCP6 and four fields"),
    (b"PROXY TCP4 198.51.100.07 192.0.2.1 1 2\r\n", "v1 header: bad address '198.51.100.07'"),
    (b"PROXY TCP4 198.51.100.7 192.0.2.1 01 2\r\n", "v1 header: bad port '01'"),
    (b"PROXY TCP4 198.51.100.7 192.0.2.1 1 65536\r\n", "v1 header: bad port '65536'"),
    (b"PROXY TCP4 2001:db8::1 192.0.2.1 1 2\r\n", "v1 header: bad address '2001:db8::1'"),
    (b"PROXY TCP6 fe80::1%eth0 fe80::2 1 2\r\n", "v1 header: bad address 'fe80::1%eth0'"),
    (b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n", "v1 header: expected TCP4/TCP6 and four fields"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", "v1 header: expected TCP4/TCP6 and four fields"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n", "v1 header: LF without CR"),
    (b"PROXY TCP4 1.2.3.4\r1.2.3.4 1 2\r\n", "v1 header: CR without LF"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\t\r\n", "v1 header: byte outside printable ASCII"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.\xc3\xa9 1 2\r\n", "v1 header: byte outside printable ASCII"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\x7f\r\n", "v1 header: byte outside printable ASCII"),
    (b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n", "not a PROXY protocol header"),
    (b"PROXYTCP4 1.2.3.4 1.2.3.4 1 2\r\n", "not a PROXY protocol header"),
    (b"a1 LOGIN bob secret\r\n", "not a PROXY protocol header"),
    (CLIENT_HELLO, "not a PROXY protocol header"),
])
def test_v1_malformed(header: bytes, error: str) -> None:
    assert parse(header) == f"error: {error}"


def test_v1_error_shows_at_the_first_bad_byte() -> None:
    reader = ProxyHeaderReader()
    assert reader.feed(b"PROX") == 4
    with pytest.raises(ProxyProtocolError):
        reader.feed(b"Z")


def test_v1_tcp6_takes_any_spelling_and_gives_the_canonical_one() -> None:
    # Only dotted quads must be canonical (proxy-protocol.txt 2.1); IPv6 is read as written.
    header = b"PROXY TCP6 2001:0DB8:0::7 2001:db8::1 1 2\r\n"
    assert parse(header) == (
        ProxyHeader(1, ("2001:db8::7", 1), ("2001:db8::1", 2), len(header)), len(header))


@pytest.mark.parametrize(("good", "bad", "error"), [
    (V2_SIGNATURE, b"\x11", "version/command byte 0x11"),
    (V2_SIGNATURE + b"\x21", b"\x13", "family byte 0x13"),
])
def test_v2_error_shows_at_the_first_bad_byte(good: bytes, bad: bytes, error: str) -> None:
    reader = ProxyHeaderReader()
    assert reader.feed(good) == len(good)
    with pytest.raises(ProxyProtocolError, match=error):
        reader.feed(bad)


def test_incomplete_v1_waits() -> None:
    assert read([b"PROXY TCP4 1.2.3.4 "]) == "incomplete"


# --- v2 ------------------------------------------------------------------------


def test_v2_local_from_haproxy_checks_then_tls() -> None:
    assert encode_v2_local() == HAPROXY_LOCAL
    assert parse(HAPROXY_LOCAL + CLIENT_HELLO) == (
        ProxyHeader(2, None, None, 16, local=True), 16)


def test_v2_local_skips_whatever_its_length_covers() -> None:
    header = v2(0x20, 0x11, b"\xff" * 7)
    assert parse(header + b"* OK") == (ProxyHeader(2, None, None, 23, local=True), 23)


def test_v2_tcp4() -> None:
    header = v2(0x21, 0x11, IPV4_BLOCK)
    assert parse(header + CLIENT_HELLO) == (
        ProxyHeader(2, ("192.0.2.7", 50214), ("198.51.100.1", 993), 28), 28)


@pytest.mark.parametrize("tlvs", [
    tlv(0x04, b""),  # an empty TLV: its three bytes are all of it
    tlv(0x20, b"\x01\0\0\0\0"),  # an SSL TLV with no sub-TLV
], ids=["empty-tlv", "bare-ssl-tlv"])
def test_v2_tlvs_at_their_smallest(tlvs: bytes) -> None:
    header = v2(0x21, 0x11, IPV4_BLOCK + tlvs)
    assert parse(header + CLIENT_HELLO) == (
        ProxyHeader(2, ("192.0.2.7", 50214), ("198.51.100.1", 993), len(header)), len(header))


def test_v2_tcp6_with_tlvs_haproxy_sends() -> None:
    block = IPV6_BLOCK
    ssl = tlv(0x20, b"\x01" + b"\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3") + tlv(0x22, b"bob"))
    body = block + tlv(0x01, b"imap") + tlv(0x02, b"mail.test") + ssl + tlv(0x04, b"\0" * 9)
    header = v2(0x21, 0x21, body)
    assert parse(header + CLIENT_HELLO) == (
        ProxyHeader(2, ("2001:db8::7", 1234), ("2001:db8::1", 143), len(header)), len(header))


@pytest.mark.parametrize(("family", "body"), [
    (0x00, b""),
    (0x00, b"\x01\x00"),  # UNSPEC: whatever follows is skipped, not read as TLVs
    (0x31, UNIX_BLOCK),
])
def test_v2_unspec_and_unix_keep_the_connection_addresses(family: int, body: bytes) -> None:
    header = v2(0x21, family, body)
    assert parse(header + b"x") == (ProxyHeader(2, None, None, len(header)), len(header))


@pytest.mark.parametrize(("header", "error"), [
    (b"\r\n\r\n\x00\r\nQUIT\r" + b"\x21\x11\x00\x0c" + IPV4_BLOCK, "not a PROXY protocol header"),
    (v2(0x11, 0x11, IPV4_BLOCK), "v2 header: version/command byte 0x11"),
    (v2(0x22, 0x11, IPV4_BLOCK), "v2 header: version/command byte 0x22"),
    (v2(0x21, 0x13, IPV4_BLOCK), "v2 header: family byte 0x13"),
    (v2(0x21, 0x41, IPV4_BLOCK), "v2 header: family byte 0x41"),
    (v2(0x21, 0x21, IPV4_BLOCK), "v2 header: length shorter than its addresses"),
    (v2(0x21, 0x12, IPV4_BLOCK), "v2 header: a datagram family on a stream connection"),
    (v2(0x21, 0x22, IPV6_BLOCK), "v2 header: a datagram family on a stream connection"),
    (v2(0x21, 0x32, UNIX_BLOCK), "v2 header: a datagram family on a stream connection"),
    (v2(0x21, 0x22, IPV6_BLOCK[:-1]), "v2 header: length shorter than its addresses"),
    (v2(0x21, 0x32, UNIX_BLOCK[:-1]), "v2 header: length shorter than its addresses"),
    (v2(0x21, 0x11, IPV4_BLOCK + b"\x01\x00"), "v2 header: TLV truncated"),
    (v2(0x21, 0x11, IPV4_BLOCK + b"\x01\x00\x05abc"),
     "v2 header: TLV 0x01 longer than the header"),
    (v2(0x21, 0x11, IPV4_BLOCK + tlv(0x20, b"\x01\x00")), "v2 header: SSL TLV too short"),
    (v2(0x21, 0x11, IPV4_BLOCK + tlv(0x20, b"\x01\0\0\0\0" + b"\x22\x00\x09bob")),
     "v2 header: SSL sub-TLV 0x22 longer than the header"),
])
def test_v2_malformed(header: bytes, error: str) -> None:
    assert parse(header + CLIENT_HELLO) == f"error: {error}"


def test_v2_over_the_cap_is_refused_from_the_fixed_part_alone() -> None:
    fixed = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, 4096 - 16 + 1)
    assert read([fixed]) == "error: v2 header of 4097 bytes, over 4096"
    with pytest.raises(ProxyProtocolError, match="over 4096"):
        ProxyHeaderReader().feed(fixed)  # the default cap
    fits = v2(0x21, 0x11, IPV4_BLOCK + tlv(0x04, b"\0" * (4096 - 16 - 12 - 3)))
    assert len(fits) == 4096
    assert parse(fits, 4096) == (
        ProxyHeader(2, ("192.0.2.7", 50214), ("198.51.100.1", 993), 4096), 4096)


def test_incomplete_v2_waits_and_never_takes_more_than_asked() -> None:
    header = v2(0x21, 0x11, IPV4_BLOCK)
    reader = ProxyHeaderReader()
    assert reader.feed(header[:20]) == 20
    assert reader.header is None
    assert reader.feed(header[20:] + b"tail") == len(header) - 20
    assert reader.feed(b"more") == 0


# --- writing -------------------------------------------------------------------


@pytest.mark.parametrize(("source", "destination", "expected"), [
    (("127.0.0.77", 40000), ("127.0.0.1", 143), ("127.0.0.77", "127.0.0.1")),
    (("2001:db8::7", 40000), ("2001:db8::1", 143), ("2001:db8::7", "2001:db8::1")),
    (("192.0.2.7", 40000), ("2001:db8::1", 143), ("::ffff:c000:207", "2001:db8::1")),
])
def test_written_headers_read_back(
    source: tuple[str, int], destination: tuple[str, int], expected: tuple[str, str]
) -> None:
    for header in (encode_v1(source, destination), encode_v2(source, destination)):
        result = parse(header)
        assert not isinstance(result, str)
        found, _ = result
        assert found.source == (expected[0], 40000)
        assert found.destination == (expected[1], 143)
    assert encode_v1(source, destination).startswith(b"PROXY TCP")
