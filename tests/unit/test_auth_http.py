"""The auth_http handler through pytest-aiohttp's client: what nginx reads back.

Every test asserts the reply headers nginx acts on (ngx_mail_auth_http_module, "Protocol"),
using the seed deployment's rules: ``Bob`` is looked up as ``bob@riseup.net``
and logs in to the store as ``bob``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from authsvc.http.auth_http import (
    SMTP_ERROR_CODE,
    TEXT_INTERNAL,
    TEXT_INVALID,
    TEXT_METHOD,
    TEXT_SMTP,
    TEXT_TEMPORARY,
    AuthRequest,
    decode_escaped,
    parse_request,
)
from authsvc.maps import MapEntry
from authsvc.settings import HttpSettings
from tests.unit.auth_http_fakes import (
    Maps,
    make_app,
    make_maps,
    secret_settings,
    seed_settings,
)

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]

HEADER_NAME = re.compile(r"[A-Za-z0-9-]+")


def nginx_headers(user: str, **extra: str) -> dict[str, str]:
    """What nginx sends, as a header dict (values already %-escaped by the caller)."""
    headers = {
        "Auth-Method": "plain",
        "Auth-User": user,
        "Auth-Pass": "secret%20pw",
        "Auth-Protocol": "imap",
        "Auth-Login-Attempt": "1",
        "Client-IP": "192.0.2.7",
        "X-Authsvc-Listener": "imap4",
        "X-Authsvc-Local-Name": "mail.riseup.net",
    }
    headers.update(extra)
    return {k: v for k, v in headers.items() if v != "<none>"}


@pytest.fixture
def maps() -> Maps:
    return make_maps()


@pytest.fixture
async def client(aiohttp_client: MakeClient, maps: Maps) -> Client:
    return await aiohttp_client(make_app(seed_settings(), maps))


async def auth(client: Client, user: str, **extra: str) -> dict[str, str]:
    async with client.get("/auth", headers=nginx_headers(user, **extra)) as reply:
        assert reply.status == 200  # nginx ignores it; humans and monitoring do not
        assert await reply.read() == b""
        return {k: v for k, v in reply.headers.items() if k.startswith("Auth-")}


# -- success -------------------------------------------------------------------------------------


async def test_seed_login_is_routed_and_rewritten(client: Client) -> None:
    assert await auth(client, "Bob") == {
        "Auth-Status": "OK", "Auth-Server": "10.0.0.5", "Auth-Port": "143", "Auth-User": "bob"
    }


async def test_no_auth_user_when_the_login_is_unchanged(client: Client) -> None:
    assert await auth(client, "bob") == {
        "Auth-Status": "OK", "Auth-Server": "10.0.0.5", "Auth-Port": "143"
    }


async def test_map_port_wins_over_listener_default(client: Client) -> None:
    reply = await auth(client, "alice")
    assert (reply["Auth-Server"], reply["Auth-Port"]) == ("10.0.0.6", "1143")


async def test_pop3_listener_gives_the_pop3_port(client: Client) -> None:
    reply = await auth(client, "bob", **{"Auth-Protocol": "pop3", "X-Authsvc-Listener": "pop3s"})
    assert (reply["Auth-Status"], reply["Auth-Port"]) == ("OK", "110")


async def test_without_our_headers_the_first_listener_of_the_protocol_answers(
    client: Client,
) -> None:
    reply = await auth(client, "bob", **{"Auth-Protocol": "pop3", "X-Authsvc-Listener": "<none>",
                                         "X-Authsvc-Local-Name": "<none>"})
    assert (reply["Auth-Status"], reply["Auth-Port"]) == ("OK", "110")


async def test_local_name_gives_the_domain_without_explicit_domain(
    client: Client, maps: Maps
) -> None:
    reply = await auth(client, "bob", **{"X-Authsvc-Listener": "imap-local",
                                         "X-Authsvc-Local-Name": "mail.example.org"})
    assert reply["Auth-Server"] == "10.0.1.5"
    assert maps.scripted.asked == ["bob@example.org"]


async def test_ipv6_backend_is_sent_bare(client: Client) -> None:
    assert (await auth(client, "v6"))["Auth-Server"] == "2001:db8::25"


async def test_host_name_is_resolved_to_an_address(client: Client) -> None:
    assert (await auth(client, "named"))["Auth-Server"] in ("127.0.0.1", "::1")


async def test_unresolvable_backend_is_a_temporary_failure(client: Client) -> None:
    assert await auth(client, "nowhere") == {"Auth-Status": TEXT_TEMPORARY, "Auth-Wait": "3"}


async def test_port_zero_from_the_map_is_not_sent(client: Client) -> None:
    assert await auth(client, "zero") == {"Auth-Status": TEXT_TEMPORARY, "Auth-Wait": "3"}


# -- escaping (NGX_ESCAPE_MAIL_AUTH in nginx's ngx_string.c) --------------------------------------


async def test_percent_escapes_are_decoded(client: Client, maps: Maps) -> None:
    reply = await auth(client, "ok%20sp%25ce")
    assert reply["Auth-Server"] == "10.0.0.8"
    assert maps.scripted.asked == ["ok sp%ce@riseup.net"]


async def test_plus_is_literal(client: Client, maps: Maps) -> None:
    assert (await auth(client, "a+b"))["Auth-Server"] == "10.0.0.9"
    assert maps.scripted.asked == ["a+b@riseup.net"]


@pytest.mark.parametrize(
    ("wire", "text", "utf8"),
    [
        ("plain", "plain", True),
        ("a+b", "a+b", True),
        ("ok%20sp%25ce", "ok sp%ce", True),
        ("j\xc3\xb6hn".encode("latin-1").decode("utf-8", "surrogateescape"), "jöhn", True),
        (b"latin\xe9".decode("utf-8", "surrogateescape"), "latin\xe9", False),
        ("tab%09x", "tab\tx", True),
        ("%2", "%2", True),  # not an escape nginx makes: left alone
    ],
)
def test_decode_escaped(wire: str, text: str, utf8: bool) -> None:
    assert decode_escaped(wire) == (text, utf8)


def test_password_is_wrapped_at_once() -> None:
    headers = nginx_headers("bob", **{"Auth-Pass": "p%25w%20d"})
    parsed = parse_request({name.lower(): value for name, value in headers.items()})
    assert isinstance(parsed, AuthRequest)
    assert "p%w d" not in repr(parsed)
    assert "p%25w" not in repr(parsed)
    assert parsed.password.reveal() == "p%w d"


# -- refusals -----------------------------------------------------------------------------------


async def test_unknown_user_is_refused_with_auth_wait(client: Client) -> None:
    assert await auth(client, "nobody") == {"Auth-Status": TEXT_INVALID, "Auth-Wait": "3"}


async def test_no_auth_wait_after_max_attempts(aiohttp_client: MakeClient, maps: Maps) -> None:
    client = await aiohttp_client(make_app(seed_settings(HttpSettings(max_attempts=2)), maps))
    assert (await auth(client, "nobody", **{"Auth-Login-Attempt": "2"}))["Auth-Wait"] == "3"
    assert await auth(client, "nobody", **{"Auth-Login-Attempt": "3"}) == {
        "Auth-Status": TEXT_INVALID
    }


async def test_map_down_says_try_again_later_not_wrong_password(
    client: Client, maps: Maps
) -> None:
    maps.scripted.down = True
    reply = await auth(client, "bob")
    assert reply == {"Auth-Status": TEXT_TEMPORARY, "Auth-Wait": "3"}
    assert "try again later" in reply["Auth-Status"]
    assert TEXT_TEMPORARY != TEXT_INVALID


async def test_stale_route_is_served_while_the_map_is_down(aiohttp_client: MakeClient) -> None:
    now = [1000.0]
    maps = make_maps(cached=True, clock=lambda: now[0])
    client = await aiohttp_client(make_app(seed_settings(), maps))
    assert (await auth(client, "Bob"))["Auth-Status"] == "OK"
    maps.scripted.down = True
    now[0] += 120  # past the TTL: only the stale store has it
    assert await auth(client, "Bob") == {
        "Auth-Status": "OK", "Auth-Server": "10.0.0.5", "Auth-Port": "143", "Auth-User": "bob"
    }
    # A user the cache never saw gets the temporary failure, not "wrong password".
    assert (await auth(client, "alice"))["Auth-Status"] == TEXT_TEMPORARY


async def test_smtp_is_refused_with_an_error_code(client: Client) -> None:
    assert await auth(client, "bob", **{"Auth-Protocol": "smtp"}) == {
        "Auth-Status": TEXT_SMTP, "Auth-Error-Code": SMTP_ERROR_CODE
    }


async def test_cram_md5_is_refused_clearly(client: Client) -> None:
    assert await auth(client, "bob", **{"Auth-Method": "cram-md5"}) == {
        "Auth-Status": TEXT_METHOD
    }


@pytest.mark.parametrize(
    ("user", "extra", "expected"),
    [
        ("<none>", {}, {"Auth-Status": TEXT_INTERNAL}),
        ("bob", {"Auth-Protocol": "nntp"}, {"Auth-Status": TEXT_INTERNAL}),
        ("bob", {"Auth-Protocol": "<none>"}, {"Auth-Status": TEXT_INTERNAL}),
        # An unknown listener is the operator's mistake: the client retries
        # (authsvc/failures.py); a POP3 listener name on an IMAP request too.
        ("bob", {"X-Authsvc-Listener": "imap9"}, {"Auth-Status": TEXT_TEMPORARY, "Auth-Wait": "3"}),
        ("bob", {"X-Authsvc-Listener": "pop3"}, {"Auth-Status": TEXT_TEMPORARY, "Auth-Wait": "3"}),
        ("bob%0D%0AAuth-Status:%20OK", {}, {"Auth-Status": TEXT_INVALID, "Auth-Wait": "3"}),
        ("bob%00evil", {}, {"Auth-Status": TEXT_INVALID, "Auth-Wait": "3"}),
        ("x" * 300, {}, {"Auth-Status": TEXT_INVALID, "Auth-Wait": "3"}),
        ("", {}, {"Auth-Status": TEXT_INVALID, "Auth-Wait": "3"}),
    ],
    ids=["no-user", "bad-protocol", "no-protocol", "unknown-listener", "wrong-protocol-listener",
         "crlf", "nul", "too-long", "empty"],
)
async def test_bad_requests_get_a_refusal_and_the_service_keeps_serving(
    client: Client, user: str, extra: dict[str, str], expected: dict[str, str]
) -> None:
    assert await auth(client, user, **extra) == expected
    assert (await auth(client, "bob"))["Auth-Status"] == "OK"


@pytest.mark.parametrize("listener", ["imap9", "pop3"])
async def test_an_unknown_listener_is_logged_as_an_error(
    client: Client, listener: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "authsvc.auth")
    await auth(client, "bob", **{"X-Authsvc-Listener": listener})
    found = [r for r in caplog.records
             if getattr(r, "fields", {}).get("result") == "unknown_listener"]
    assert [r.levelno for r in found] == [logging.ERROR]
    assert f"listener named {listener!r}" in found[0].fields["reason"]  # type: ignore[attr-defined]


async def test_garbage_attempt_counts_as_first(client: Client) -> None:
    reply = await auth(client, "nobody", **{"Auth-Login-Attempt": "x9"})
    assert reply["Auth-Wait"] == "3"


# -- shared secret ------------------------------------------------------------------------------


@pytest.mark.parametrize("offered", ["<none>", "wrong", "s3cret-ke", "S3cret-key", "s3cret-key2"])
async def test_missing_or_wrong_secret_is_refused(
    aiohttp_client: MakeClient, maps: Maps, offered: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = await aiohttp_client(make_app(secret_settings(), maps))
    assert await auth(client, "Bob", **{"X-Authsvc-Key": offered}) == {
        "Auth-Status": TEXT_INTERNAL
    }
    assert maps.scripted.asked == []
    assert any(getattr(r, "fields", {}).get("result") == "forbidden" for r in caplog.records)
    assert all("s3cret" not in r.getMessage() for r in caplog.records)


async def test_right_secret_is_accepted(aiohttp_client: MakeClient, maps: Maps) -> None:
    client = await aiohttp_client(make_app(secret_settings(), maps))
    assert (await auth(client, "Bob", **{"X-Authsvc-Key": "s3cret-key"}))["Auth-Status"] == "OK"


# -- the reply itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "extra"),
    [("Bob", {}), ("nobody", {}), ("bob", {"Auth-Protocol": "smtp"}), ("x" * 250, {}),
     ("<none>", {})],
)
async def test_replies_fit_nginx_buffer_with_valid_names(
    client: Client, user: str, extra: dict[str, str]
) -> None:
    async with client.get("/auth", headers=nginx_headers(user, **extra)) as reply:
        names = list(reply.raw_headers)
        size = sum(len(k) + len(v) + 4 for k, v in names) + 17 + 2
        assert size < 1024
        assert all(HEADER_NAME.fullmatch(k.decode()) for k, _ in names)
        assert "Server" not in reply.headers


async def test_map_entry_user_is_sent_when_username_from_database(
    aiohttp_client: MakeClient,
) -> None:
    import dataclasses

    from authsvc.settings import Settings

    maps = make_maps()
    maps.scripted.entries["bob@riseup.net"] = MapEntry("10.0.0.5", None, "robert")
    base = seed_settings()
    settings: Settings = dataclasses.replace(base, listeners=tuple(
        dataclasses.replace(ls, login=dataclasses.replace(ls.login, username_from_database=True))
        for ls in base.listeners))
    client = await aiohttp_client(make_app(settings, maps))
    assert (await auth(client, "Bob"))["Auth-User"] == "robert"
