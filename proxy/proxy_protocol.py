"""The PROXY protocol, v1 and v2, sans-IO: read a header in front of a connection, write one.

What HAProxy's ``send-proxy`` / ``send-proxy-v2`` put in front of every
connection it relays (HAProxy's ``doc/proxy-protocol.txt``, sections 2.1 and
2.2).  :class:`ProxyHeaderReader` takes bytes as they come
and **never consumes a byte past the header**: ``feed`` returns how many of the
given bytes belong to it, so the I/O layer can peek at the socket, feed the
peeked bytes, and remove exactly that many.  A TLS ClientHello (or a pipelined
IMAP command) sent in the same packet stays where it was.

* v1: ``PROXY TCP4|TCP6|UNKNOWN ...\\r\\n``, at most 107 bytes with the CRLF;
  single spaces, addresses in canonical form, ports without leading zeros.  A
  lone CR or LF, or no CRLF within 107 bytes, is an error (section 2.1).
* v2: 12-byte signature, version 2, command LOCAL (health checks, HAProxy
  ``check-send-proxy``) or PROXY, a family from the list in section 2.2, a 16-bit
  length; the address block and TLVs must fit that length, and every TLV
  (and the sub-TLVs of ``PP2_TYPE_SSL``) must fit its parent.  TLV contents are
  skipped: nothing here needs ALPN, SNI or certificate names.  CRC32C TLVs are
  not checked, which section 2.2.5 allows.
* Anything else is an error as early as the bytes show it; a header is never
  auto-detected (section 5: only trusted peers may send one, the caller checks that).

Nothing here imports asyncio or touches a socket.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
#: "PROXY UNKNOWN" plus two longest IPv6 addresses and ports, with CRLF (section 2.1).
V1_MAX = 107
#: What we accept of a v2 header in all; nginx caps it at 4096 as well.
DEFAULT_MAX_LENGTH = 4096

_V2_FIXED = 16
_LOCAL, _PROXY = 0x20, 0x21
#: family byte -> (address block length, address family) for the PROXY command.
_FAMILIES = {
    0x00: (0, None),  # UNSPEC
    0x11: (12, 4),  # TCP over IPv4
    0x12: (12, 4),  # UDP over IPv4
    0x21: (36, 6),  # TCP over IPv6
    0x22: (36, 6),  # UDP over IPv6
    0x31: (216, None),  # UNIX stream
    0x32: (216, None),  # UNIX datagram
}
_DATAGRAM = {0x12, 0x22, 0x32}
_PP2_TYPE_SSL = 0x20
_SSL_FIXED = 5  # client (u8) + verify (u32)

Address = tuple[str, int]


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY header: close the connection."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete header."""

    version: int
    #: The client as the sender saw it; None for LOCAL, ``UNKNOWN`` and non-IP
    #: families, where the connection's own addresses stand (sections 2.1, 2.2).
    source: Address | None
    #: The address the client connected to at the sender.
    destination: Address | None
    #: Bytes the header took on the wire.
    length: int
    #: A v2 LOCAL command: the sender's own connection (a health check).
    local: bool = False


class ProxyHeaderReader:
    """Feed it bytes until :attr:`header` is set; it raises ProxyProtocolError on bad input."""

    def __init__(self, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        self._max = max(max_length, V1_MAX)
        self._buf = bytearray()
        self.header: ProxyHeader | None = None

    def feed(self, data: bytes) -> int:
        """Take the header's bytes from the front of ``data``; returns how many it took."""
        if self.header is not None or not data:
            return 0
        first = self._buf[:1] or data[:1]
        if first == b"\r":
            return self._feed_v2(data)
        if first == b"P":
            return self._feed_v1(data)
        raise ProxyProtocolError("not a PROXY protocol header")

    # --- v1 -----------------------------------------------------------------------

    def _feed_v1(self, data: bytes) -> int:
        end = data.find(b"\n")
        take = len(data) if end < 0 else end + 1
        if len(self._buf) + take > V1_MAX:
            raise ProxyProtocolError(f"v1 header without CRLF in {V1_MAX} bytes")
        chunk = data[:take]
        start = len(self._buf)
        self._buf += chunk
        buf = self._buf
        checked = min(len(buf), len(V1_PREFIX))
        if buf[:checked] != V1_PREFIX[:checked]:
            raise ProxyProtocolError("not a PROXY protocol header")
        for i in range(max(start, len(V1_PREFIX)), len(buf)):
            byte, previous = buf[i], buf[i - 1]
            if previous == 0x0D and byte != 0x0A:
                raise ProxyProtocolError("v1 header: CR without LF")
            if byte == 0x0A and previous != 0x0D:
                raise ProxyProtocolError("v1 header: LF without CR")
            if not 0x20 <= byte < 0x7F and byte not in (0x0D, 0x0A):
                raise ProxyProtocolError("v1 header: byte outside printable ASCII")
        if end >= 0:
            self.header = _parse_v1(bytes(buf))
        return take

    # --- v2 -----------------------------------------------------------------------

    def _feed_v2(self, data: bytes) -> int:
        taken = 0
        while taken < len(data) and self.header is None:
            buf = self._buf
            need = _V2_FIXED if len(buf) < _V2_FIXED else _V2_FIXED + _length(buf)
            take = min(len(data) - taken, need - len(buf))
            start = len(buf)
            buf += data[taken : taken + take]
            taken += take
            self._check_fixed(start)
            if len(buf) >= _V2_FIXED and len(buf) == _V2_FIXED + _length(buf):
                self.header = _parse_v2(bytes(buf))
        return taken

    def _check_fixed(self, start: int) -> None:
        buf = self._buf
        if start < 12:
            upto = min(len(buf), 12)
            if buf[start:upto] != V2_SIGNATURE[start:upto]:
                raise ProxyProtocolError("not a PROXY protocol header")
        if start <= 12 < len(buf) and buf[12] not in (_LOCAL, _PROXY):
            raise ProxyProtocolError(f"v2 header: version/command byte {buf[12]:#04x}")
        if start <= 13 < len(buf) and buf[13] not in _FAMILIES:
            raise ProxyProtocolError(f"v2 header: family byte {buf[13]:#04x}")
        if start < _V2_FIXED <= len(buf):
            total = _V2_FIXED + _length(buf)
            if total > self._max:
                raise ProxyProtocolError(f"v2 header of {total} bytes, over {self._max}")
            if buf[12] == _PROXY and _length(buf) < _FAMILIES[buf[13]][0]:
                raise ProxyProtocolError("v2 header: length shorter than its addresses")


def _length(buf: bytearray | bytes) -> int:
    return int(struct.unpack_from("!H", buf, 14)[0])


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        raise ProxyProtocolError(f"v1 header: bad port {text!r}")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError(f"v1 header: bad port {text!r}")
    return port


def _address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
        if "%" in text:
            raise ValueError(text)  # a scope id is not an address on the wire
    except ValueError:
        raise ProxyProtocolError(f"v1 header: bad address {text!r}") from None
    if address.version != version or (version == 4 and str(address) != text):
        # Dotted quads must be canonical (no leading zeros, proxy-protocol.txt 2.1).
        raise ProxyProtocolError(f"v1 header: bad address {text!r}")
    return str(address)


def _parse_v1(line: bytes) -> ProxyHeader:
    text = line[len(V1_PREFIX) : -2].decode("ascii")
    if text == "UNKNOWN" or text.startswith("UNKNOWN "):
        return ProxyHeader(1, None, None, len(line))  # the rest is ignored (proxy-protocol.txt 2.1)
    parts = text.split(" ")
    if len(parts) != 5 or parts[0] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError("v1 header: expected TCP4/TCP6 and four fields")
    version = 4 if parts[0] == "TCP4" else 6
    source = (_address(parts[1], version), _port(parts[3]))
    destination = (_address(parts[2], version), _port(parts[4]))
    return ProxyHeader(1, source, destination, len(line))


def _parse_v2(data: bytes) -> ProxyHeader:
    command, family = data[12], data[13]
    body = data[_V2_FIXED:]
    block, ip_version = _FAMILIES[family]
    if command == _LOCAL:
        # The sender's own connection: skip whatever follows (proxy-protocol.txt 2.2).
        return ProxyHeader(2, None, None, len(data), local=True)
    if family == 0x00:  # UNSPEC: unspecified, skipped (proxy-protocol.txt 2.2)
        return ProxyHeader(2, None, None, len(data))
    _check_tlvs(body[block:], "TLV")
    if family in _DATAGRAM:
        raise ProxyProtocolError("v2 header: a datagram family on a stream connection")
    if ip_version == 4:
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", body)
    elif ip_version == 6:
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", body)
    else:  # UNIX: the connection's own addresses stand (proxy-protocol.txt 2.2)
        return ProxyHeader(2, None, None, len(data))
    return ProxyHeader(
        2,
        (str(ipaddress.ip_address(src)), sport),
        (str(ipaddress.ip_address(dst)), dport),
        len(data),
    )


def _check_tlvs(data: bytes, what: str) -> None:
    """Every TLV must fit exactly in ``data`` (nginx 1.23.3 fixed a bug here)."""
    offset = 0
    while offset < len(data):
        if len(data) - offset < 3:
            raise ProxyProtocolError(f"v2 header: {what} truncated")
        kind, length = struct.unpack_from("!BH", data, offset)
        value = data[offset + 3 : offset + 3 + length]
        if len(value) != length:
            raise ProxyProtocolError(f"v2 header: {what} {kind:#04x} longer than the header")
        if kind == _PP2_TYPE_SSL:
            if length < _SSL_FIXED:
                raise ProxyProtocolError("v2 header: SSL TLV too short")
            _check_tlvs(value[_SSL_FIXED:], "SSL sub-TLV")
        offset += 3 + length


# --- writing (the client's address for a store, docs/proxy.md) ----------------------


def _pair(source: Address, destination: Address) -> tuple[str, str, int]:
    """Both addresses in one family: IPv4 becomes IPv4-mapped IPv6 next to IPv6."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version == dst.version:
        return str(src), str(dst), src.version
    mapped = [ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a for a in (src, dst)]
    return str(mapped[0]), str(mapped[1]), 6


def encode_v1(source: Address, destination: Address) -> bytes:
    """``PROXY TCP4|TCP6 src dst sport dport\\r\\n``."""
    src, dst, version = _pair(source, destination)
    return f"PROXY TCP{version} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")


def encode_v2(source: Address, destination: Address) -> bytes:
    """A v2 PROXY command over TCP, no TLVs."""
    src, dst, version = _pair(source, destination)
    packed = ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
    block = packed + struct.pack("!HH", source[1], destination[1])
    family = 0x11 if version == 4 else 0x21
    return V2_SIGNATURE + struct.pack("!BBH", _PROXY, family, len(block)) + block


def encode_v2_local() -> bytes:
    """The 16-byte LOCAL header HAProxy's health checks send (configuration.txt)."""
    return V2_SIGNATURE + struct.pack("!BBH", _LOCAL, 0x00, 0)
