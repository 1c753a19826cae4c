"""Map answers ``[user@]host[:port]`` split as Perdition does (server_port.c), and refusals."""

from __future__ import annotations

import pytest

from authsvc.maps import MapEntry
from authsvc.maps.serverspec import ServerSpecError, parse_port, parse_server


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.0.0.5", MapEntry("10.0.0.5")),
        ("10.0.0.5:143", MapEntry("10.0.0.5", 143)),
        ("bob@10.0.0.5:143", MapEntry("10.0.0.5", 143, user="bob")),
        ("bob@10.0.0.5", MapEntry("10.0.0.5", user="bob")),
        ("  store1.example.org:993  ", MapEntry("store1.example.org", 993)),
        # "host:" is an empty port: the default port applies (server_port.c).
        ("10.0.0.5:", MapEntry("10.0.0.5")),
        # The user is everything before the LAST delimiter.
        ("a@b@10.0.0.5", MapEntry("10.0.0.5", user="a@b")),
        ("[2001:db8::1]:143", MapEntry("2001:db8::1", 143)),
        ("[2001:db8::1]", MapEntry("2001:db8::1")),
        ("carol@[::1]:2143", MapEntry("::1", 2143, user="carol")),
        # A bare IPv6 address is a host, not host ":" port "1" as in Perdition.
        ("::1", MapEntry("::1")),
        ("2001:db8::5", MapEntry("2001:db8::5")),
        ("@10.0.0.5", MapEntry("10.0.0.5")),
    ],
)
def test_values_split(value: str, expected: MapEntry) -> None:
    assert parse_server(value) == expected


@pytest.mark.parametrize("value", ["", "   ", "bob@", "bob@:143"])
def test_empty_host_means_no_server(value: str) -> None:
    assert parse_server(value) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        # Perdition: host "10.0.0.5:993", port 143, and the connect fails.
        ("10.0.0.5:993:143", "several colons"),
        ("10.0.0.5:imap", "not a number"),
        ("10.0.0.5:0", "out of range"),
        ("10.0.0.5:65536", "out of range"),
        ("10.0.0.5:٣١", "not a number"),
        ("[a]:143", "bad IPv6 literal"),
        ("[::1", "bad IPv6 literal"),
        ("[::1]143", "unexpected"),
        ("[host.example]:143", "no IPv6 address"),
        ("10.0.0.5 x:143", "blanks"),
    ],
)
def test_nonsense_is_refused(value: str, message: str) -> None:
    with pytest.raises(ServerSpecError, match=message):
        parse_server(value)


def test_other_delimiter() -> None:
    assert parse_server("bob%10.0.0.5:110", "%") == MapEntry("10.0.0.5", 110, user="bob")
    # With "%" as delimiter an "@" is part of the host text.
    assert parse_server("10.0.0.5", "%") == MapEntry("10.0.0.5")


def test_entry_prints_back() -> None:
    assert str(parse_server("bob@[2001:db8::1]:143")) == "bob@[2001:db8::1]:143"
    assert str(parse_server("10.0.0.5")) == "10.0.0.5"


@pytest.mark.parametrize(
    ("text", "port"), [("1", 1), ("143", 143), ("0993", 993), ("65535", 65535)]
)
def test_ports(text: str, port: int) -> None:
    assert parse_port(text) == port
