"""One meaning per failure: authsvc/failures.py's table, and both faces rendering it.

Every :class:`FailureKind` is walked through serve (the ``Auth-*`` headers nginx
reads, the ``result`` label, the log level) and through the proxy (the IMAP
and POP3 replies, Perdition's ``Auth:`` status, the ``result`` label), and the
answers are checked against the table, against what clients and fail2ban have
always seen (:data:`EXPECTED`, written out here so that a changed table fails),
and against each other.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable

import pytest
from authsvc.proxy.authline import perdition_status
from authsvc.proxy.events import LoginFailed, Send
from authsvc.proxy.imap.front import ImapFront
from authsvc.proxy.metrics import LOGIN_RESULTS, ProxyMetrics, families
from authsvc.proxy.pop3.front import Pop3Front

from authsvc.failures import LOGIN_DISABLED_STATUS, MEANINGS, FailureKind, Reply
from authsvc.http.auth_http import AuthService
from authsvc.http.resolve import Resolver
from authsvc.metrics import RESULTS, Metrics
from authsvc.routing import Decision, LoginRequest, Refusal, Router
from authsvc.settings import ProxySettings, ThrottleSettings
from authsvc.throttle.service import Throttle
from tests.unit.auth_http_fakes import seed_settings
from tests.unit.proxy.machines import feed, imap_listener, pop3_listener

AUTH, TEMP = Reply.AUTHENTICATION, Reply.TEMPORARY
NO_SERVER = "failed: Could not determine server"
REFUSED = "failed: Re-Authentication Failure"

#: kind: (reply, counted by the throttle, label, Auth: status, closes, log level).
#: UNKNOWN_LISTENER is a temporary failure, logged as an error (an operator's
#: mistake); THROTTLED reads as a wrong password to clients and fail2ban;
#: HELD (an operator's hold) reads as a store that cannot be reached, which
#: fail2ban does not count.
EXPECTED = {
    FailureKind.NO_ROUTE: (AUTH, True, "no_route", NO_SERVER, False, logging.INFO),
    FailureKind.BAD_LOGIN: (AUTH, True, "bad_login", NO_SERVER, False, logging.INFO),
    FailureKind.BACKEND_AUTH: (AUTH, True, "backend_auth", REFUSED, False, logging.INFO),
    FailureKind.THROTTLED: (AUTH, False, "throttled", REFUSED, True, logging.INFO),
    FailureKind.MAP_UNAVAILABLE: (TEMP, False, "map_unavailable", NO_SERVER, False, logging.INFO),
    FailureKind.BACKEND_CONNECT: (TEMP, False, "backend_connect",
                                  "failed: Could not connect to server", False, logging.INFO),
    FailureKind.BACKEND_PROTOCOL: (TEMP, False, "backend_protocol",
                                   "failed: Connection Negotiation Failure", False, logging.INFO),
    FailureKind.UNKNOWN_LISTENER: (TEMP, False, "unknown_listener", NO_SERVER, False,
                                   logging.ERROR),
    FailureKind.HELD: (TEMP, False, "held", "failed: Could not connect to server", False,
                       logging.INFO),
}

#: What each face says for each client-facing class.
SERVE_TEXT = {AUTH: "Invalid login or password",
              TEMP: "Temporary server problem, try again later"}
IMAP_REPLY = {AUTH: b"a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n",
              TEMP: b"a1 NO [UNAVAILABLE] Account is temporarily unavailable, try again later.\r\n"}
POP3_REPLY = {AUTH: b"-ERR [AUTH] Authentication failed.\r\n",
              TEMP: b"-ERR [SYS/TEMP] Account is temporarily unavailable, try again later.\r\n"}
POP3_LAST_REPLY = {AUTH: b"-ERR [AUTH] Authentication failed. Too many failures, closing.\r\n",
                   TEMP: POP3_REPLY[TEMP]}

#: What nginx sends (names in lower case, as wire.py hands them over).
NGINX = {"auth-method": "plain", "auth-user": "bob", "auth-pass": "pw", "auth-protocol": "imap",
         "auth-login-attempt": "1", "client-ip": "192.0.2.7", "x-authsvc-listener": "imap4"}


class ScriptedRouter(Router):
    """A router whose every answer is one refusal of the kind under test."""

    def __init__(self, kind: FailureKind) -> None:
        super().__init__(seed_settings(), {})
        self.kind = kind

    def route_now(self, request: LoginRequest) -> Decision | Awaitable[Decision]:
        return Refusal(self.kind, f"scripted {self.kind.value}", key="bob@riseup.net",
                       listener="imap4")


def series(text: str, name: str, **labels: str) -> str:
    """The value of one series in a /metrics text."""
    head = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "} "
    found = [line[len(head):] for line in text.splitlines() if line.startswith(head)]
    assert len(found) == 1, (head, text)
    return found[0]


def test_the_table_has_every_kind_and_says_what_clients_always_saw() -> None:
    assert set(MEANINGS) == set(FailureKind)
    for kind, (reply, counted, label, status, closes, level) in EXPECTED.items():
        meaning = kind.meaning
        assert (meaning.reply, meaning.counted, meaning.label, meaning.auth_status,
                meaning.closes, meaning.log_level) == (reply, counted, label, status, closes,
                                                       level), kind
        assert meaning.temporary is (reply is TEMP) is kind.temporary, kind


def test_rows_agree_with_themselves() -> None:
    labels = [m.label for m in MEANINGS.values()]
    assert len(set(labels)) == len(labels)
    for kind, meaning in MEANINGS.items():
        # The throttle counts only what looks like a wrong login to the client.
        assert not (meaning.counted and meaning.temporary), kind
        # fail2ban counts a store's refusal: never a failure that is not the user's.
        assert not (meaning.temporary and meaning.auth_status == REFUSED), kind
        assert meaning.label in RESULTS and meaning.label in LOGIN_RESULTS, kind


async def serve_face(kind: FailureKind, caplog: pytest.LogCaptureFixture
                     ) -> tuple[dict[str, str], str, str, int]:
    """Headers, result label, the counted metric and the log level serve gives ``kind``."""
    metrics = Metrics()
    service = AuthService(seed_settings(), metrics, Resolver())
    service.bind(ScriptedRouter(kind))
    caplog.clear()
    outcome = await service.answer(NGINX, "127.0.0.1")
    service.flush_log()
    levels = [r.levelno for r in caplog.records if getattr(r, "fields", {}).get("event") == "auth"]
    assert len(levels) == 1, caplog.records
    counted = series(metrics.render(), "authsvc_auth_decisions_total",
                     protocol="imap", result=outcome.result)
    return outcome.headers, outcome.result, counted, levels[0]


def proxy_face(kind: FailureKind) -> tuple[bytes, bytes, bytes, str, str]:
    """IMAP reply, POP3 reply, POP3 last reply, Auth: status and counted metric."""
    imap = ImapFront(imap_listener(), ProxySettings(max_login_attempts=3))
    feed(imap, [b"a1 LOGIN bob pw\r\n"])
    [imap_reply] = imap.handle(LoginFailed(kind))
    pop3 = Pop3Front(pop3_listener(), ProxySettings(max_login_attempts=2))
    feed(pop3, [b"USER bob\r\nPASS pw\r\n"])
    [pop3_reply] = pop3.handle(LoginFailed(kind))
    feed(pop3, [b"USER bob\r\nPASS pw\r\n"])
    pop3_last = pop3.handle(LoginFailed(kind))[0]
    assert isinstance(imap_reply, Send) and isinstance(pop3_reply, Send)
    assert isinstance(pop3_last, Send)
    metrics = Metrics(families=families(["imap4"]))
    ProxyMetrics(metrics).login("imap4", kind)
    counted = series(metrics.render(), "authsvc_proxy_logins_total",
                     listener="imap4", result=kind.meaning.label)
    return imap_reply.data, pop3_reply.data, pop3_last.data, perdition_status(kind), counted


@pytest.mark.parametrize("kind", list(FailureKind), ids=[k.value for k in FailureKind])
async def test_every_kind_through_both_faces(kind: FailureKind,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "authsvc.auth")
    reply, _, label, status, closes, level = EXPECTED[kind]
    # serve: the class's text, Auth-Wait unless the session ends, the label counted.
    headers, result, counted, logged = await serve_face(kind, caplog)
    expected = {"Auth-Status": SERVE_TEXT[reply]}
    if not closes:
        expected["Auth-Wait"] = "3"  # [http] auth_wait
    assert headers == expected
    assert (result, counted, logged) == (label, "1", level)
    # The proxy: the same class in IMAP and POP3 words, Perdition's status, the label.
    imap, pop3, pop3_last, auth_status, proxy_counted = proxy_face(kind)
    assert (imap, pop3, pop3_last) == (IMAP_REPLY[reply], POP3_REPLY[reply],
                                       POP3_LAST_REPLY[reply])
    assert (auth_status, proxy_counted) == (status, "1")
    # And the faces agree with each other: one class, one label.
    serve_class = {text: cls for cls, text in SERVE_TEXT.items()}[headers["Auth-Status"]]
    imap_class = {data: cls for cls, data in IMAP_REPLY.items()}[imap]
    assert serve_class is imap_class is kind.meaning.reply
    assert result == kind.meaning.label


def test_login_disabled_is_perdition_s_one_finer_status() -> None:
    assert perdition_status(FailureKind.BACKEND_PROTOCOL, login_disabled=True) == (
        LOGIN_DISABLED_STATUS)
    assert perdition_status(None) == "ok"


async def test_serve_counts_what_the_table_counts_and_refuses_past_the_cap() -> None:
    settings = ThrottleSettings(enabled=True, free_failures=1, delay=1.0, max_delay=8.0,
                                address_limit=3, login_limit=100)
    for kind in FailureKind:
        throttle = Throttle(settings)
        service = AuthService(seed_settings(), Metrics(), Resolver(), throttle)
        service.bind(ScriptedRouter(kind))
        try:
            outcomes = [await service.answer(NGINX, "127.0.0.1") for _ in range(4)]
        finally:
            await throttle.close()
        results = [o.result for o in outcomes]
        waits = [o.headers.get("Auth-Wait") for o in outcomes]
        label = kind.meaning.label
        if kind.meaning.counted:
            # The third failure reaches address_limit: its own result, no Auth-Wait
            # (nginx closes); the fourth attempt is refused by the throttle.
            assert results == [label, label, label, "throttled"], kind
            assert waits == ["3", "3", None, None], kind
            assert outcomes[2].reason is not None and outcomes[2].reason.endswith("; throttled")
            assert outcomes[3].headers == {"Auth-Status": SERVE_TEXT[AUTH]}
        else:
            assert results == [label] * 4, kind
