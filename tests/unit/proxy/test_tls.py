"""proxy/tls.py: two TlsEndpoints paired through memory, no sockets."""

from __future__ import annotations

import ast
import ssl
from pathlib import Path

import pytest
from authsvc.proxy.tls import PIECE, TlsEndpoint

from tests.services.certs import make_test_pki

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    pki = make_test_pki(tmp_path_factory.mktemp("pki"), names=("localhost",))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(pki.cert, pki.key)
    client = ssl.create_default_context(cafile=str(pki.ca))
    return server, client


def shuttle(a: TlsEndpoint, b: TlsEndpoint, rounds: int = 10) -> tuple[bytes, bytes]:
    """Move bytes both ways until quiet; the plaintext each side received."""
    got_a, got_b = b"", b""
    for _ in range(rounds):
        to_b, to_a = a.outgoing(), b.outgoing()
        if not to_a and not to_b:
            break
        got_b += b.receive(to_b)
        got_a += a.receive(to_a)
    return got_a, got_b


def test_handshake_and_data_both_ways(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server = TlsEndpoint(contexts[0], server_side=True)
    client = TlsEndpoint(contexts[1], server_side=False, server_hostname="localhost")
    hello = client.start()
    assert hello[:1] == b"\x16"  # a handshake record (RFC 8446 §5.1)
    assert server.receive(hello) == b""
    shuttle(server, client)
    assert server.handshake_done and client.handshake_done
    assert client.info("version") == "TLSv1.3"
    client.send(b"a1 LOGIN bob secret\r\n")
    server.send(b"* OK hello\r\n")
    at_server, at_client = shuttle(server, client)
    assert at_server == b"a1 LOGIN bob secret\r\n"
    assert at_client == b"* OK hello\r\n"


def test_bytes_one_at_a_time(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server = TlsEndpoint(contexts[0], server_side=True)
    client = TlsEndpoint(contexts[1], server_side=False, server_hostname="localhost")
    wire = client.start()
    for _ in range(10):
        for i in range(len(wire)):
            assert server.receive(wire[i:i + 1]) == b""
        back = server.outgoing()
        if back:
            client.receive(back)
        wire = client.outgoing()
        if not wire:
            break
    assert server.handshake_done
    big = bytes(range(256)) * 400  # 100 KiB: several records
    client.send(big)
    wire = client.outgoing()
    got = b"".join(server.receive(wire[i:i + 1000]) for i in range(0, len(wire), 1000))
    assert got == big


def test_a_burst_goes_a_record_at_a_time(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server = TlsEndpoint(contexts[0], server_side=True)
    client = TlsEndpoint(contexts[1], server_side=False, server_hostname="localhost")
    server.receive(client.start())
    shuttle(server, client)
    big = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit: many pieces
    server.send(big)
    pieces = server.outgoing_pieces()
    # One record per piece: TLSCiphertext is at most 2^14 + 256 bytes (RFC 8446 §5.2).
    assert len(pieces) == -(-len(big) // PIECE)
    assert max(len(piece) for piece in pieces) <= PIECE + 256 + 5
    assert server.outgoing_pieces() == []
    assert client.receive(b"".join(pieces)) == big  # all of it in one call
    client.send(big)
    assert server.receive(client.outgoing()) == big


def test_close_notify_is_end_of_data(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server = TlsEndpoint(contexts[0], server_side=True)
    client = TlsEndpoint(contexts[1], server_side=False, server_hostname="localhost")
    server.receive(client.start())
    shuttle(server, client)
    client.send(b"last\r\n")
    wire = client.outgoing() + client.close()
    assert server.receive(wire) == b"last\r\n"
    assert server.peer_closed


def test_wrong_name_fails_the_client(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server = TlsEndpoint(contexts[0], server_side=True)
    client = TlsEndpoint(contexts[1], server_side=False, server_hostname="mail.example.net")
    server.receive(client.start())
    with pytest.raises(ssl.SSLCertVerificationError):
        client.receive(server.outgoing())


def test_plaintext_is_not_tls(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server = TlsEndpoint(contexts[0], server_side=True)
    with pytest.raises(ssl.SSLError):
        server.receive(b"a1 CAPABILITY\r\n")


def test_sans_io() -> None:
    tree = ast.parse((ROOT / "proxy/tls.py").read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    names |= {node.module for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module}
    assert not names & {"asyncio", "socket", "selectors"}
