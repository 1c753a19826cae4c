"""The throttle's sans-IO policy: subjects, keys, delays, verdicts, fingerprints."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from authsvc.redact import Secret
from authsvc.settings import ThrottleSettings
from authsvc.throttle.policy import FREE, Policy, fingerprint, subject

ON = ThrottleSettings(enabled=True, free_failures=3, delay=1.0, max_delay=8.0,
                      address_limit=10, login_limit=20, trusted=("198.51.100.0/24", "::1/128"))


@pytest.mark.parametrize(("client", "prefix", "expected"), [
    ("192.0.2.7", 64, "192.0.2.7"),
    ("2001:db8:1:2:3:4:5:6", 64, "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff::1", 64, "2001:db8:1:2::/64"),
    ("2001:db8:1:2:3:4:5:6", 56, "2001:db8:1::/56"),
    ("2001:db8::1", 128, "2001:db8::1/128"),
    ("::ffff:192.0.2.7", 64, "192.0.2.7"),
    ("fe80::1%eth0", 64, "fe80::/64"),
    ("not an address", 64, None),
    ("", 64, None),
    (None, 64, None),
])
def test_subject(client: str | None, prefix: int, expected: str | None) -> None:
    assert subject(client, prefix) == expected


def test_keys_fold_the_login_and_share_an_ipv6_network() -> None:
    policy = Policy(ON)
    a = policy.keys("2001:db8::1", "Bob")
    b = policy.keys("2001:db8::2", "bob")
    assert a == b
    assert a is not None
    assert (a.address, a.login, a.pair) == ("a:2001:db8::/64", "l:bob", "p:2001:db8::/64|bob")


def test_trusted_networks_disabled_and_unix_peers_are_not_counted() -> None:
    policy = Policy(ON)
    assert policy.keys("198.51.100.9", "bob") is None
    assert policy.keys("::1", "bob") is None
    assert policy.keys(None, "bob") is None
    assert policy.keys("192.0.2.1", "bob") is not None
    assert Policy(dataclasses.replace(ON, enabled=False)).keys("192.0.2.1", "bob") is None


def test_delays_double_from_free_failures_up_to_the_maximum() -> None:
    policy = Policy(ON)
    assert [policy.delay_for(n) for n in range(10)] == [0, 0, 0, 0, 1, 2, 4, 8, 8, 8]
    assert Policy(dataclasses.replace(ON, delay=0.0)).delay_for(9) == 0


def test_verdict_blocks_at_the_address_limit_only() -> None:
    policy = Policy(ON)
    assert policy.verdict(9, 0).blocked is False
    assert policy.verdict(10, 0).blocked is True
    assert policy.verdict(10, 0).delay == 0
    # The login counter never blocks; at its limit it means the longest delay.
    assert policy.verdict(0, 1000) == dataclasses.replace(policy.verdict(0, 1000), blocked=False)
    assert policy.verdict(0, 19).delay == 0
    assert policy.verdict(0, 20).delay == 8
    assert FREE.delay == 0 and not FREE.blocked


def test_fingerprint_is_keyed_and_never_the_password() -> None:
    key = Secret("k" * 32)
    one = fingerprint(key, "a:192.0.2.1", "Bob", Secret("hunter2"))
    assert one == fingerprint(key, "a:192.0.2.1", "bob", Secret("hunter2"))
    assert len(one) == 32
    assert "hunter2" not in one
    assert one != fingerprint(key, "a:192.0.2.1", "bob", Secret("hunter3"))
    assert one != fingerprint(key, "a:192.0.2.2", "bob", Secret("hunter2"))
    assert one != fingerprint(Secret("x" * 32), "a:192.0.2.1", "bob", Secret("hunter2"))


@pytest.mark.parametrize("text", [
    "192.0.2.1", "0.0.0.0", "255.255.255.255", "010.1.1.1", "256.1.1.1", "1.2.3",
    "1.2.3.4.5", "a.b.c.d", "1.2.3.4\n", " 1.2.3.4", "\u0661.\u0662.\u0663.\u0664", "1.2.3.04",
])
def test_an_ipv4_subject_is_what_ipaddress_makes_of_it(text: str) -> None:
    # The IPv4 path matches the text instead of parsing it: the same answers.
    try:
        expected: str | None = str(ipaddress.ip_address(text))
    except ValueError:
        expected = None
    assert subject(text, 48) == expected
