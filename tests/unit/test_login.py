"""Perdition's login-name rules (perdition/username.c), row by row as Perdition 2.2 did."""

from __future__ import annotations

import pytest

from authsvc.login import (
    LoginRejected,
    check_login,
    domain_from_local_name,
    normalise,
    normalise_steps,
)
from authsvc.settings import LoginPolicy, Stage

LOOKUP, BACKEND = Stage.LOOKUP, Stage.BACKEND_LOGIN
ALL = frozenset(Stage)

# The seed deployment's options: lower_case all, explicit_domain
# example.com, add_domain servername_lookup, no strip_domain.
TYPICAL = LoginPolicy(
    lower_case=ALL, add_domain=frozenset({LOOKUP}), explicit_domain="example.com"
)
# The seed's options (riseup.net).
SEED = LoginPolicy(lower_case=ALL, add_domain=frozenset({LOOKUP}), explicit_domain="riseup.net")


@pytest.mark.parametrize(
    ("typed", "key", "backend"),
    [
        # Every row as Perdition 2.2 answered it.
        ("Alice@Example.COM", "alice@example.com", "alice@example.com"),
        ("ALICE", "alice@example.com", "alice"),  # add_domain is lookup-only
        ("bare", "bare@example.com", "bare"),
        ("a@b@example.com", "a@b@example.com", "a@b@example.com"),  # has a delimiter
        ("alice@example.com ", "alice@example.com ", "alice@example.com "),  # space kept
    ],
)
def test_deployment_typical_rows(typed: str, key: str, backend: str) -> None:
    assert normalise(typed, LOOKUP, TYPICAL) == key
    assert normalise(typed, BACKEND, TYPICAL) == backend


def test_seed_bob() -> None:
    assert normalise("Bob", LOOKUP, SEED) == "bob@riseup.net"
    assert normalise("Bob", BACKEND, SEED) == "bob"


def test_strip_plus_add_replaces_the_domain() -> None:
    # As Perdition did: strip_domain + add_domain servername_lookup, explicit example.com.
    policy = LoginPolicy(
        strip_domain=frozenset({LOOKUP}),
        add_domain=frozenset({LOOKUP}),
        explicit_domain="example.com",
    )
    assert normalise("alice@other.org", LOOKUP, policy) == "alice@example.com"
    assert normalise("alice@other.org", BACKEND, policy) == "alice@other.org"


def test_strip_cuts_at_the_last_delimiter() -> None:
    policy = LoginPolicy(strip_domain=frozenset({BACKEND}))
    assert normalise("a@b@example.com", BACKEND, policy) == "a@b"
    assert normalise("plain", BACKEND, policy) == "plain"


@pytest.mark.parametrize(
    ("local_name", "depth", "domain"),
    [
        ("mail.example.org", 1, "example.org"),  # the depth strip
        ("mail.example.org", 2, "org"),
        ("mail.example.org", 3, None),  # no label left to remove
        ("10.0.0.5", 1, "0.0.5"),  # an IPv4 local address with depth 1
        ("localhost", 1, None),  # as Perdition 2.2: no '.' to strip, nothing added
        ("example.org", 0, "example.org"),
        (None, 1, None),
        ("::1", 1, None),
    ],
)
def test_domain_from_local_name(local_name: str | None, depth: int, domain: str | None) -> None:
    assert domain_from_local_name(local_name, depth) == domain


def test_add_domain_from_local_name_with_depth() -> None:
    policy = LoginPolicy(add_domain=frozenset({LOOKUP}), add_domain_depth=1)
    assert normalise("bob", LOOKUP, policy, "mail.example.org") == "bob@example.org"
    assert normalise("bob", LOOKUP, policy, "10.0.0.5") == "bob@0.0.5"
    assert normalise("bob", LOOKUP, policy, "localhost") == "bob"


def test_explicit_domain_is_verbatim_and_ignores_depth() -> None:
    policy = LoginPolicy(
        add_domain=frozenset({LOOKUP}), add_domain_depth=2, explicit_domain="Mail.Example.ORG"
    )
    assert normalise("bob", LOOKUP, policy, "x.y.z") == "bob@Mail.Example.ORG"


def test_explicit_domain_alone_does_nothing() -> None:
    policy = LoginPolicy(explicit_domain="example.com")
    assert normalise("bob", LOOKUP, policy) == "bob"
    assert normalise("bob", BACKEND, policy) == "bob"


def test_lower_case_is_ascii_only() -> None:
    policy = LoginPolicy(lower_case=ALL)
    # tolower() in the C locale: only A-Z change; UTF-8 passes through.
    assert normalise("ÄLICE@ÉXAMPLE.COM", LOOKUP, policy) == "Älice@Éxample.com"
    assert normalise("İ", LOOKUP, policy) == "İ"


def test_multi_character_delimiter() -> None:
    policy = LoginPolicy(
        add_domain=frozenset({LOOKUP}), explicit_domain="example.com", domain_delimiter="%%"
    )
    assert normalise("bob", LOOKUP, policy) == "bob%%example.com"
    assert normalise("bob%%x", LOOKUP, policy) == "bob%%x"


def test_steps_explain_each_stage() -> None:
    steps = normalise_steps("Bob", LOOKUP, SEED)
    assert [(s.name, s.value) for s in steps] == [
        ("as typed", "Bob"),
        ("add_domain", "Bob@riseup.net"),
        ("lower_case", "bob@riseup.net"),
    ]


def test_normalising_twice_changes_nothing() -> None:
    for typed in ("Bob", "ALICE@X.ORG", "a@b@c", "bare "):
        once = normalise(typed, LOOKUP, SEED)
        assert normalise(once, LOOKUP, SEED) == once


@pytest.mark.parametrize(
    ("login", "message"),
    [
        ("", "empty login"),
        ("bob\x00evil", "control character in login"),
        ("bob\r\n", "control character in login"),
        ("x" * 256, "login longer than 255 bytes"),
        ("é" * 128, "login longer than 255 bytes"),  # 256 bytes of UTF-8
    ],
)
def test_check_login_refuses(login: str, message: str) -> None:
    with pytest.raises(LoginRejected, match=message):
        check_login(login, LoginPolicy())


def test_check_login_accepts_reasonable_names() -> None:
    check_login("x" * 255, LoginPolicy())
    check_login("bob@riseup.net ", LoginPolicy())
    check_login("jörg@example.de", LoginPolicy())
