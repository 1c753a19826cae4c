"""Admission: every limit refuses the one connection over it, and counts come back down."""

from __future__ import annotations

from authsvc.proxy.limits import Admission, Refused, Ticket, client_key, in_networks, parse_networks

from authsvc.settings import ProxySettings


def admitted(result: Ticket | Refused) -> Ticket:
    assert isinstance(result, Ticket), result
    return result


def test_connection_limit_per_listener_and_room_again_after_one_leaves() -> None:
    admission = Admission(ProxySettings(), {"imap4": 3, "pop3": 0})
    tickets = [admitted(admission.connect("imap4")) for _ in range(3)]
    assert admission.connect("imap4") is Refused.CONNECTION_LIMIT
    assert isinstance(admission.connect("pop3"), Ticket)  # 0 = no limit, other listener
    admission.release(tickets[0])
    admission.release(tickets[0])  # twice is once
    assert isinstance(admission.connect("imap4"), Ticket)
    assert admission.connect("imap4") is Refused.CONNECTION_LIMIT


def test_logged_in_sessions_still_count_against_connection_limit() -> None:
    admission = Admission(ProxySettings(), {"imap4": 1})
    ticket = admitted(admission.connect("imap4"))
    admission.login(ticket)
    assert (admission.live("imap4"), admission.preauth("imap4"),
            admission.logged_in("imap4")) == (1, 0, 1)
    assert admission.connect("imap4") is Refused.CONNECTION_LIMIT


def test_preauth_limit_over_all_listeners() -> None:
    admission = Admission(ProxySettings(preauth_limit=2), {})
    first = admitted(admission.connect("imap4"))
    admitted(admission.connect("pop3"))
    assert admission.connect("imaps") is Refused.PREAUTH_LIMIT
    admission.login(first)
    assert isinstance(admission.connect("imaps"), Ticket)
    assert admission.preauth_total == 2


def test_client_limits_by_real_address() -> None:
    admission = Admission(ProxySettings(client_limit=2, client_preauth_limit=1), {})
    one = admitted(admission.connect("imap4"))
    assert admission.identify(one, "192.0.2.7") is None
    two = admitted(admission.connect("imap4"))
    assert admission.identify(two, "192.0.2.7") is Refused.CLIENT_PREAUTH_LIMIT
    admission.release(two)
    admission.login(one)
    three = admitted(admission.connect("imap4"))
    assert admission.identify(three, "::ffff:192.0.2.7") is None  # the same client
    four = admitted(admission.connect("imap4"))
    assert admission.identify(four, "192.0.2.7") is Refused.CLIENT_LIMIT
    assert admission.identify(four, "192.0.2.8") is None
    for ticket in (one, three, four):
        admission.release(ticket)
    assert (admission.live("imap4"), admission.preauth_total) == (0, 0)


def test_client_key() -> None:
    assert client_key("::ffff:127.0.0.77") == "127.0.0.77"
    assert client_key("2001:DB8::1") == "2001:db8::1"
    assert client_key("not-an-address") == "not-an-address"


def test_trusted_networks() -> None:
    networks = parse_networks(["127.0.0.1/32", "2001:db8::/64"])
    assert in_networks("127.0.0.1", networks)
    assert in_networks("::ffff:127.0.0.1", networks)
    assert in_networks("2001:db8::99", networks)
    assert not in_networks("127.0.0.77", networks)
    assert not in_networks("2001:db9::1", networks)
    assert not in_networks("/run/sock", networks)
    assert not in_networks("127.0.0.1", ())
