"""Admission: every limit refuses the one connection over it, and counts come back down."""

from __future__ import annotations

import pytest
from authsvc.proxy.limits import (
    Admission,
    DescriptorBudget,
    Refused,
    Ticket,
    client_key,
    in_networks,
    parse_networks,
)
from authsvc.proxy.lograte import LogRate

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


def test_twenty_per_address_by_default_and_trusted_clients_are_exempt() -> None:
    admission = Admission(ProxySettings(), {})
    held = [admitted(admission.connect("imap4")) for _ in range(21)]
    assert [admission.identify(t, "192.0.2.7") for t in held[:20]] == [None] * 20
    assert admission.identify(held[20], "192.0.2.7") is Refused.CLIENT_PREAUTH_LIMIT
    webmail = admitted(admission.connect("imap4"))
    assert admission.identify(webmail, "192.0.2.7", exempt=True) is None
    admission.release(webmail)
    admission.login(held[0])  # a logged-in session leaves room for one more
    again = admitted(admission.connect("imap4"))
    assert admission.identify(again, "192.0.2.7") is None


@pytest.mark.parametrize(("limit", "headroom", "preauth"), [
    (1024, 64, 320),        # the common default soft limit
    (65536, 4096, 20480),   # LimitNOFILE=65536
    (128, 32, 32),
    (64, 32, 10),
    (8, 7, 1),              # too small to plan for: still one
])
def test_descriptor_budget(limit: int, headroom: int, preauth: int) -> None:
    """docs/proxy.md, "Limits": headroom max(32, N/16), pre-login a third of the rest."""
    budget = DescriptorBudget(limit)
    assert (budget.headroom, budget.preauth_limit) == (headroom, preauth)
    # Pre-login connections at their limit leave room for as many logged-in sessions.
    assert limit < 32 or limit - budget.headroom - budget.preauth_limit >= 2 * budget.preauth_limit
    assert not budget.near(limit - headroom - 1)
    assert budget.near(limit - headroom)


def test_preauth_limit_is_derived_unless_set() -> None:
    budget = DescriptorBudget(1024)
    assert Admission(ProxySettings(), {}, budget).preauth_limit == 320
    assert Admission(ProxySettings(preauth_limit=0), {}, budget).preauth_limit == 0
    assert Admission(ProxySettings(preauth_limit=5), {}, budget).preauth_limit == 5
    admission = Admission(ProxySettings(), {}, DescriptorBudget(64))
    tickets = [admitted(admission.connect("imap4")) for _ in range(10)]
    assert admission.connect("pop3") is Refused.PREAUTH_LIMIT
    admission.configure(ProxySettings(preauth_limit=11), {})  # a reload
    assert isinstance(admission.connect("pop3"), Ticket)
    assert admission.preauth_total == len(tickets) + 1


def test_log_rate_one_line_a_second_per_kind_and_the_count_held_back() -> None:
    rate = LogRate(1.0)
    assert rate.allow("a", 10.0) == 0
    assert rate.allow("a", 10.2) is None
    assert rate.allow("a", 10.9) is None
    assert rate.allow("b", 10.9) == 0  # another kind is not held back
    assert rate.allow("a", 11.0) == 2
    assert rate.allow("a", 12.5) == 0
