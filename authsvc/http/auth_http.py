"""nginx's mail ``auth_http``: request headers in, ``Auth-*`` reply headers out.

The wire rules this module lives by (nginx's ngx_mail_auth_http_module docs,
"Protocol", and its source ngx_mail_auth_http_module.c; docs/serve.md):

* nginx ignores the HTTP status line, so every answer is a 200 and the
  outcome is in the headers: ``Auth-Status: OK`` plus ``Auth-Server`` (an IP
  literal, IPv6 bare: ``ngx_parse_addr``) and ``Auth-Port``, or a failure text that nginx
  shows the client (``a1 NO <text>``, ``-ERR <text>``).
* ``Auth-User`` and ``Auth-Pass`` arrive ``%XX``-escaped for 0x00-0x1F, space and
  ``%`` only (NGX_ESCAPE_MAIL_AUTH in nginx's src/core/ngx_string.c); ``+`` is
  literal.  Our ``Auth-User`` reply is used verbatim.
* ``Auth-Wait: N`` keeps the client's session open for another try; we send it
  until ``Auth-Login-Attempt`` passes ``http.max_attempts`` and then let nginx
  close (ngx_mail_auth_http_module, "Protocol").
* The reply must fit nginx's 1024-byte buffer and use header names made of
  letters, digits and ``-`` only (ngx_mail_auth_http_module.c).

authsvc never checks passwords: ``Auth-Pass`` is wrapped in
:class:`~authsvc.redact.Secret` as soon as it is decoded and goes nowhere.
"""

from __future__ import annotations

import logging
import math
import re
import time
import urllib.parse
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass

from aiohttp import web

from authsvc.control.trust import trusted
from authsvc.failures import FailureKind, Meaning, Reply
from authsvc.http.resolve import ResolveError, Resolver
from authsvc.log import BatchedLog
from authsvc.metrics import Metrics
from authsvc.redact import Secret
from authsvc.routing import Decision, LoginRequest, Refusal, Route, Router
from authsvc.settings import MailProtocol, Settings
from authsvc.throttle.service import Throttle

logger = logging.getLogger("authsvc.auth")

# What the client sees after ``NO`` / ``-ERR``.  Deliberately generic; the log
# line carries the reason.  A temporary failure must never read like a wrong
# password (authsvc/failures.py), and the two texts differ so a user (and the
# help desk) can tell them apart.
TEXT_INVALID = "Invalid login or password"
TEXT_TEMPORARY = "Temporary server problem, try again later"
#: The words for each client-facing class of authsvc/failures.py's table.
REPLY_TEXT = {Reply.AUTHENTICATION: TEXT_INVALID, Reply.TEMPORARY: TEXT_TEMPORARY}
#: A request nginx would never send, or one without the shared secret: nothing
#: the user can fix, so no Auth-Wait either.
TEXT_INTERNAL = "Internal server error"
TEXT_METHOD = "Authentication method not supported"
TEXT_SMTP = "SMTP is not served here"
#: nginx puts Auth-Error-Code in front of the text on SMTP (ngx_mail_auth_http_module, "Protocol").
#: 5.3.3 is
#: "system not capable of selected features" (RFC 3463): permanent, so a
#: client does not retry.
SMTP_ERROR_CODE = "554 5.3.3"

#: Seconds between copies of the cache counters into the metrics (see metrics.py).
CACHE_STATS_INTERVAL = 0.5

_PROTOCOLS = {p.value: p for p in MailProtocol}

#: The HTTP front's own results that point at a misconfiguration (or an
#: attacker); a refusal's level is its kind's (authsvc/failures.py).
_WARN_RESULTS = frozenset({"forbidden", "bad_request", "error"})

#: Longest backend login we will put in Auth-User: the whole reply must stay
#: well inside nginx's 1024-byte header buffer (ngx_mail_auth_http_module.c).
MAX_REPLY_LOGIN = 512

def decode_escaped(value: str) -> tuple[str, bool]:
    """nginx's ``%XX`` escaping undone; returns (text, was valid UTF-8).

    aiohttp hands header values over as UTF-8 with ``surrogateescape``, so the
    original bytes come back with the same codec.  Only ``%XX`` is decoded:
    never ``+`` to space (``unquote_plus`` would corrupt ``a+b``).  Bytes that
    are not UTF-8 are read as Latin-1, as an old client would have meant them.
    """
    if value.isascii() and "%" not in value:
        return value, True  # the common case: nothing to do
    raw = urllib.parse.unquote_to_bytes(value.encode("utf-8", "surrogateescape"))
    try:
        return raw.decode("utf-8"), True
    except UnicodeDecodeError:
        return raw.decode("latin-1"), False


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def _has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


@dataclass(slots=True)  # not frozen: built once per login, and frozen __init__ is slower
class AuthRequest:
    """One nginx auth request, decoded.  The password never prints."""

    login: str
    login_utf8: bool
    password: Secret
    method: str
    protocol: str
    attempt: int
    client_ip: str | None
    ssl: bool
    listener: str | None
    local_name: str | None


@dataclass(frozen=True, slots=True)
class BadRequest:
    """A request nginx would never send; ``reason`` is for the log."""

    reason: str
    protocol: str = "unknown"


def parse_request(headers: Mapping[str, str]) -> AuthRequest | BadRequest:
    """Read the headers nginx sends ("Protocol") plus our template's two ``X-Authsvc-*``.

    Names are looked up in lower case: that works on aiohttp's case-insensitive
    headers and on the plain dict of lower-cased names ``wire.py`` builds.
    """
    get = headers.get
    protocol = (get("auth-protocol") or "").strip().lower()
    if protocol not in ("imap", "pop3", "smtp"):
        return BadRequest("no or unknown Auth-Protocol")
    raw_user = get("auth-user")
    if raw_user is None:
        return BadRequest("no Auth-User", protocol)
    login, utf8 = decode_escaped(raw_user)
    password, _ = decode_escaped(get("auth-pass") or "")
    attempt_text = get("auth-login-attempt") or "1"
    # isascii(): str.isdigit() is true for '²', which int() refuses.
    attempt = (int(attempt_text)
               if attempt_text.isascii() and attempt_text.isdigit() and len(attempt_text) < 9
               else 1)
    listener = get("x-authsvc-listener") or None
    local_name = get("x-authsvc-local-name") or None
    client_ip = get("client-ip") or None
    # These are not escaped by nginx, and aiohttp and wire.py refuse raw
    # control characters, so one here means the request did not come from nginx.
    if _has_control(f"{listener}{local_name}{client_ip}"):
        return BadRequest("control character in X-Authsvc-* or Client-IP", protocol)
    return AuthRequest(
        login=login,
        login_utf8=utf8,
        password=Secret(password),
        method=(get("auth-method") or "plain").strip().lower(),
        protocol=protocol,
        attempt=max(attempt, 1),
        client_ip=client_ip,
        ssl=get("auth-ssl") == "on",
        listener=listener,
        local_name=local_name,
    )


@dataclass(slots=True)
class Outcome:
    """The reply headers plus what the log line and metrics need."""

    headers: dict[str, str]
    result: str
    reason: str | None = None
    route: Route | None = None
    address: str | None = None
    key: str | None = None
    listener: str | None = None
    level: int = logging.INFO


def refusal_headers(text: str, *, wait: int | None) -> dict[str, str]:
    """A failure nginx understands: ``Auth-Status: <text>`` and maybe ``Auth-Wait``.

    ``wait`` is None for failures the user cannot fix by trying again; then
    nginx sends the text and closes at once (ngx_mail_auth_http_module, "Protocol").
    """
    headers = {"Auth-Status": text}
    if wait is not None and wait > 0:
        headers["Auth-Wait"] = str(wait)
    return headers


class AuthService:
    """The ``GET /auth`` handler: decode, route, resolve, answer, log, count."""

    def __init__(self, settings: Settings, metrics: Metrics, resolver: Resolver,
                 throttle: Throttle | None = None) -> None:
        self._settings = settings
        #: Brute-force throttling (docs/security.md); None or disabled = off.
        self._throttle = throttle if throttle is not None and throttle.enabled else None
        self._http = settings.http
        self._metrics = metrics
        self._resolver = resolver
        self._router: Router | None = None
        self._stats_due = 0.0
        self._secret_header = settings.http.secret_header.lower()
        self._decisions = BatchedLog(logger, "auth_http.py")

    def bind(self, router: Router | None) -> None:
        """Start (or stop, with None) answering with ``router``."""
        self._router = router

    async def handle(self, request: web.Request) -> web.Response:
        """aiohttp handler: always a 200 whose headers carry the outcome."""
        outcome = await self.answer(request.headers, request.remote)
        return web.Response(headers=outcome.headers)

    async def answer(self, headers: Mapping[str, str], peer: str | None) -> Outcome:
        """Decide, count and log one request; never raises.

        Shared by the aiohttp handler and ``wire.py``'s own reading of
        nginx's one-shot requests.
        """
        outcome = self.answer_now(headers, peer)
        return outcome if isinstance(outcome, Outcome) else await outcome

    def answer_now(self, headers: Mapping[str, str],
                   peer: str | None) -> Outcome | Awaitable[Outcome]:
        """:meth:`answer` without waiting where nothing needs waiting for.

        A cached route (the usual login) is decided, counted and logged here
        and returned; ``wire.py`` then writes the reply without a task.  When a
        map query, the throttle's store or a DNS lookup is needed, the rest of
        the work is returned as an awaitable that the caller must await.
        """
        started = time.perf_counter()
        parsed: AuthRequest | BadRequest | None = None
        try:
            if not trusted(headers, self._http.secret, self._secret_header,
                           open_without_secret=True):
                outcome: Outcome | Awaitable[Outcome] = Outcome(
                    refusal_headers(TEXT_INTERNAL, wait=None),
                    "forbidden", f"missing or wrong {self._http.secret_header}")
            else:
                parsed = parse_request(headers)
                outcome = self._decide(parsed)
        except Exception as exc:  # never let nginx see aiohttp's 500 page (no Auth-* headers)
            outcome = self._crashed(exc, parsed)
        if isinstance(outcome, Outcome):
            self._record(headers, peer, parsed, outcome, started)
            return outcome
        return self._finish(outcome, headers, peer, parsed, started)

    async def _finish(self, pending: Awaitable[Outcome], headers: Mapping[str, str],
                      peer: str | None, parsed: AuthRequest | BadRequest | None,
                      started: float) -> Outcome:
        try:
            outcome = await pending
        except Exception as exc:
            outcome = self._crashed(exc, parsed)
        self._record(headers, peer, parsed, outcome, started)
        return outcome

    def _crashed(self, exc: Exception, parsed: AuthRequest | BadRequest | None) -> Outcome:
        logger.exception("auth request failed: %s", type(exc).__name__)
        attempt = parsed.attempt if isinstance(parsed, AuthRequest) else 1
        return Outcome(self._refuse(TEXT_TEMPORARY, attempt), "error", type(exc).__name__)

    def _record(self, headers: Mapping[str, str], peer: str | None,
                parsed: AuthRequest | BadRequest | None, outcome: Outcome,
                started: float) -> None:
        """Count and log one decided request."""
        elapsed = time.perf_counter() - started
        protocol = parsed.protocol if parsed is not None else "unknown"
        self._metrics.observe_decision(protocol, outcome.result, elapsed)
        if started >= self._stats_due and outcome.key is not None:  # a map was asked
            self.refresh_cache_stats()
        level = logging.WARNING if outcome.result in _WARN_RESULTS else outcome.level
        if logger.isEnabledFor(level):
            self._log(headers, peer, parsed, outcome, elapsed, level)

    def flush_log(self) -> None:
        """Write the decision lines still queued (at shutdown)."""
        self._decisions.flush()

    def refresh_cache_stats(self) -> None:
        """Copy the caches' counters into the metrics (at most twice a second from requests)."""
        router = self._router
        if router is not None:
            self._metrics.set_cache_stats(router.cache_stats())
            self._metrics.set_map_hosts(router.map_hosts())
        self._stats_due = time.perf_counter() + CACHE_STATS_INTERVAL

    def _refuse(self, text: str, attempt: int) -> dict[str, str]:
        """A refusal the user may retry: Auth-Wait until max_attempts (nginx's "Protocol")."""
        wait = self._http.auth_wait if attempt <= self._http.max_attempts else None
        return refusal_headers(text, wait=wait)

    def _decide(self, parsed: AuthRequest | BadRequest) -> Outcome | Awaitable[Outcome]:
        if isinstance(parsed, BadRequest):
            return Outcome(refusal_headers(TEXT_INTERNAL, wait=None),
                           "bad_request", parsed.reason)
        if parsed.protocol == "smtp":
            headers = refusal_headers(TEXT_SMTP, wait=None)
            headers["Auth-Error-Code"] = SMTP_ERROR_CODE
            return Outcome(headers, "unsupported", "smtp")
        if parsed.method != "plain":
            # apop, cram-md5 and external need the cleartext password back in
            # Auth-Pass (ngx_mail_auth_http_module, "Protocol"), which authsvc never has.
            return Outcome(refusal_headers(TEXT_METHOD, wait=None),
                           "unsupported", f"Auth-Method {parsed.method}")
        router = self._router
        if router is None:  # not started yet, or draining
            return Outcome(self._refuse(TEXT_TEMPORARY, parsed.attempt), "error", "not ready")
        request = LoginRequest(
            login=parsed.login,
            protocol=_PROTOCOLS[parsed.protocol],
            listener=parsed.listener,
            client_ip=parsed.client_ip,
            local_name=parsed.local_name,
            attempt=parsed.attempt,
        )
        if self._throttle is not None:
            return self._decide_throttled(self._throttle, router, request, parsed)
        decision = router.route_now(request)
        if isinstance(decision, Route):
            return self._answer_route(decision, parsed)
        if isinstance(decision, Refusal):
            return self._refusal(decision, parsed.attempt)
        return self._decide_later(decision, parsed)

    async def _decide_later(self, pending: Awaitable[Decision], parsed: AuthRequest) -> Outcome:
        """The reply once the map has answered (a cache miss)."""
        decision = await pending
        if isinstance(decision, Refusal):
            return self._refusal(decision, parsed.attempt)
        outcome = self._answer_route(decision, parsed)
        return outcome if isinstance(outcome, Outcome) else await outcome

    async def _decide_throttled(self, throttle: Throttle, router: Router, request: LoginRequest,
                                parsed: AuthRequest) -> Outcome:
        """As :meth:`_decide`, with the throttle's store asked before and after."""
        verdict = await throttle.check(parsed.client_ip, parsed.login)
        if verdict.blocked:
            # Past the hard cap the address is refused even for a valid user
            # (docs/security.md), before routing.
            return self._refusal(Refusal(
                FailureKind.THROTTLED, f"{verdict.address_failures} failures from this address",
            ), parsed.attempt)
        decision = await router.route(request)
        if isinstance(decision, Refusal):
            outcome = self._refusal(decision, parsed.attempt)
            if decision.kind.meaning.counted:
                await self._throttled(throttle, parsed, outcome)
            return outcome
        answered = self._answer_route(decision, parsed)
        return answered if isinstance(answered, Outcome) else await answered

    def _answer_route(self, route: Route, parsed: AuthRequest) -> Outcome | Awaitable[Outcome]:
        """The reply for a route: at once for an address already known (every IP
        literal); a name may first need a DNS lookup."""
        address = self._resolver.known(route.host)
        if address is None:
            return self._resolve_then_answer(route, parsed)
        return self._success(route, parsed, address)

    async def _resolve_then_answer(self, route: Route, parsed: AuthRequest) -> Outcome:
        try:
            address = await self._resolver.resolve(route.host)
        except ResolveError as exc:
            return self._failed(route, parsed.attempt, "resolve_failed", str(exc))
        return self._success(route, parsed, address)

    def _refusal(self, refusal: Refusal, attempt: int) -> Outcome:
        """A refusal as its kind's row of authsvc/failures.py's table says."""
        meaning: Meaning = refusal.kind.meaning
        text = REPLY_TEXT[meaning.reply]
        # A refusal that closes gets no Auth-Wait, so nginx closes the session
        # (docs/serve.md, "The reply").
        headers = (refusal_headers(text, wait=None) if meaning.closes
                   else self._refuse(text, attempt))
        return Outcome(headers, meaning.label, refusal.reason, key=refusal.key,
                       listener=refusal.listener, level=meaning.log_level)

    async def _throttled(self, throttle: Throttle, parsed: AuthRequest, outcome: Outcome) -> None:
        """Count our own refusal and stretch (or drop) its Auth-Wait accordingly.

        nginx never tells us whether a store accepted a password, so in serve
        only authsvc's own refusals count, as a rate per address and per login
        (docs/security.md): the kinds authsvc/failures.py's table counts.
        """
        verdict = await throttle.failed(parsed.client_ip, parsed.login)
        headers = outcome.headers
        if verdict.blocked:
            # This failure reached the cap: the same refusal without Auth-Wait,
            # so nginx closes the session (docs/serve.md).  The result stays
            # the failure's own; the next attempts from here are THROTTLED.
            headers.pop("Auth-Wait", None)
            outcome.reason = f"{outcome.reason}; throttled"
        elif verdict.delay > 0 and "Auth-Wait" in headers:
            # Auth-Wait is whole seconds (ngx_mail_auth_http_module, "Protocol"); never shorter than
            # [http] auth_wait.
            wait = max(self._http.auth_wait, math.ceil(verdict.delay))
            headers["Auth-Wait"] = str(wait)

    def _failed(self, route: Route, attempt: int, result: str, reason: str) -> Outcome:
        return Outcome(self._refuse(TEXT_TEMPORARY, attempt), result, reason, key=route.key,
                       listener=route.listener)

    def _success(self, route: Route, parsed: AuthRequest, address: str) -> Outcome:
        if not 0 < route.port < 65536:  # nginx checks the range too (ngx_mail_auth_http_module.c)
            return self._failed(route, parsed.attempt, "error", f"map gave port {route.port}")
        headers = {"Auth-Status": "OK", "Auth-Server": address, "Auth-Port": str(route.port)}
        if route.backend_login != parsed.login:
            login = route.backend_login
            if _has_control(login) or len(login.encode()) > MAX_REPLY_LOGIN:
                return self._failed(route, parsed.attempt, "error",
                                    "backend login cannot be sent to nginx")
            if not parsed.login_utf8:
                # Replies are written as UTF-8, so a Latin-1 login cannot be handed
                # back byte for byte; refuse rather than log in as someone else.
                return self._refusal(Refusal(
                    FailureKind.BAD_LOGIN, "login is not UTF-8 and would be rewritten",
                    key=route.key, listener=route.listener), parsed.attempt)
            headers["Auth-User"] = login
        return Outcome(headers, "ok", None, route=route, address=address, key=route.key,
                       listener=route.listener)

    def _log(self, headers: Mapping[str, str], peer: str | None,
             parsed: AuthRequest | BadRequest | None, outcome: Outcome, elapsed: float,
             level: int) -> None:
        route = outcome.route
        if isinstance(parsed, AuthRequest):
            fields: dict[str, object] = {
                "event": "auth",
                "login": parsed.login,
                "key": outcome.key,
                "client": parsed.client_ip,
                "listener": outcome.listener or parsed.listener,
                "protocol": parsed.protocol,
                "attempt": parsed.attempt,
                "result": outcome.result,
                "reason": outcome.reason,
            }
            if parsed.ssl:
                fields["ssl"] = "on"
        else:
            fields = {
                "event": "auth",
                "client": headers.get("client-ip") or peer,
                "protocol": parsed.protocol if parsed is not None else None,
                "result": outcome.result,
                "reason": outcome.reason,
            }
        if route is not None:
            address = outcome.address or ""
            fields["backend"] = (f"[{address}]:{route.port}" if ":" in address
                                 else f"{address}:{route.port}")
            user = outcome.headers.get("Auth-User")
            if user is not None:
                fields["user"] = user
            fields["source"] = route.source
        fields["ms"] = f"{elapsed * 1000:.2f}"
        self._decisions.log(level, fields)
