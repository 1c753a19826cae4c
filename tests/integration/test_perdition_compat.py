"""Perdition compatibility: the same client sessions against Perdition 2.2 and ``authsvc proxy``.

Both programs read the seed deployment's four files (tests/services/perdition.py
writes them twice, differing only in ``bind_address``) and reach the same two
Dovecot stores through the same ``mailboxes`` table on a private MariaDB.
Every scripted session below runs against both; what a client sees is reduced
to a few normalised lines (the *observation*), and the test compares them case
by case:

* equal observations pass, unless tests/compat/expected_differences.toml still
  lists that case (a difference that went away must leave the list);
* different observations pass only when the list names that case with exactly
  these two values, and a reason (docs/perdition-compatibility.md, one section
  per entry).

Normalisation: tags, host addresses and the greeting checksum are replaced,
Dovecot's timing suffix is dropped, and the free text of replies outside the
login exchange (``a OK CAPABILITY`` vs ``a OK CAPABILITY completed.``) is
reduced to the status and response code, which is what clients act on.
Login replies keep their text: it is what a user reads.

Perdition sleeps 3 s before every failure and every BAD (perdition/perdition.c,
imap4_in.c), so all sessions run at once in threads; the database-down sessions run
in a second round while the private mariadbd is stopped.  About 25 s in all.
"""

from __future__ import annotations

import base64
import contextlib
import re
import ssl
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from tests.services.certs import DEFAULT_NAMES, make_test_pki
from tests.services.dovecot import dovecot_stores
from tests.services.mailclient import CLIENT_ADDRESS, RawLines
from tests.services.mariadb import PrivateMariaDb, create_test_database
from tests.services.perdition import (
    LISTENER_TLS,
    SEED_DOMAIN,
    common_ports,
    require_mysql_module,
    running_authsvc_proxy,
    running_perdition,
    write_seed_files,
)
from tests.services.require import require_binary

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DIFFERENCES_FILE = REPO / "tests" / "compat" / "expected_differences.toml"
DOC = REPO / "docs" / "perdition-compatibility.md"

PERDITION_ADDRESS = "127.0.0.30"
AUTHSVC_ADDRESS = "127.0.0.31"
STORE_ADDRESSES = {"a": "127.0.0.2", "b": "127.0.0.3"}
#: No store listens here: a mailbox mapped to it is "the backend down".
DEAD_STORE_ADDRESS = "127.0.0.4"
USERS = {
    "a": {"alice": "alice-secret", "dave": "dave-secret"},
    "b": {"bob": "bob-secret"},
}
MAILBOXES = [
    (f"bob@{SEED_DOMAIN}", STORE_ADDRESSES["b"]),
    (f"alice@{SEED_DOMAIN}", STORE_ADDRESSES["a"]),
    # dave is looked up only while the database is down, so no cache can answer.
    (f"dave@{SEED_DOMAIN}", STORE_ADDRESSES["a"]),
    (f"carol@{SEED_DOMAIN}", DEAD_STORE_ADDRESS),
]
SPELLINGS = ("Bob", "bob", "BOB@riseup.net")
BOB_PLAIN = base64.b64encode(b"\0bob\0bob-secret").decode()

#: Cases whose difference is a proxy bug, not a choice: case -> reason naming it.
#: They run xfail(strict=True), so fixing the bug makes them fail until removed.
KNOWN_BUGS: dict[str, str] = {}

Observation = tuple[str, ...]


# -- normalisation -----------------------------------------------------------------

_HOST = re.compile(r"\b127\.0\.0\.\d{1,3}\b")
_CHECKSUM = re.compile(r" [0-9a-f]{8}$")
_DOVECOT_TIMING = re.compile(r" \(\d+\.\d+ \+ \d+\.\d+(?: \+ \d+\.\d+)? secs\)\.$")
_CAPABILITY_CODE = re.compile(r"\[CAPABILITY [^\]]*\]")
_GREETING = re.compile(r"^\* OK \[CAPABILITY ([^\]]*)\] (.*)$")


def _text(line: bytes) -> str:
    return line.decode("utf-8", "replace").rstrip("\r\n")


def _greeting_text(text: str) -> str:
    """Perdition's greeting names the local address and a config checksum (greeting.c)."""
    return _CHECKSUM.sub(" <checksum>", _HOST.sub("<host>", text))


def _untag(line: str, tag: str) -> str:
    return line[len(tag) + 1:] if line.startswith(tag + " ") else line


def _status(line: str, tag: str) -> str:
    """A completion reduced to what a client acts on: status and response code."""
    words = _untag(line, tag).split(" ", 2)
    status = words[0]
    if len(words) > 1 and words[1].startswith("["):
        code = words[1] if words[1].endswith("]") else words[1] + "…]"
        return f"{status} {code}"
    return status


def _login_reply(line: str, tag: str) -> str:
    """A login reply keeps its text; the store's capability list is elided."""
    text = _DOVECOT_TIMING.sub(".", _untag(line, tag))
    if text.startswith("* CAPABILITY "):
        return "* CAPABILITY …"  # the store's list, relayed by Perdition (imap4_out.c)
    return _CAPABILITY_CODE.sub("[CAPABILITY …]", text)


# -- sessions ----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One program under test: where it listens and how to trust its certificate."""

    name: str
    address: str
    ports: dict[str, int]
    context: ssl.SSLContext
    #: Where the case's connections come from: each case has an address of its
    #: own, so the cases running at once are not one client to authsvc's
    #: per-address limit (docs/proxy.md, "Limits").
    source: str = CLIENT_ADDRESS

    def connect(self, listener: str) -> RawLines:
        """A connection to ``listener``, TLS from the first byte on imaps/pop3s."""
        implicit = LISTENER_TLS[listener][1] == "implicit"
        return RawLines(self.address, self.ports[listener],
                        context=self.context if implicit else None, source=self.source)


class Imap:
    """An IMAP client session on RawLines: commands with fresh tags, lines as text."""

    def __init__(self, target: Target, listener: str) -> None:
        self.conn = target.connect(listener)
        self.target = target
        self.greeting = _text(self.conn.line())
        self._n = 0

    def tag(self) -> str:
        self._n += 1
        return f"t{self._n}"

    def command(self, command: str) -> tuple[str, list[str]]:
        """Send ``<tag> command``; returns the tag and every line up to the tagged one."""
        tag = self.tag()
        lines = self.conn.command(f"{tag} {command}".encode(), tag.encode())
        return tag, [_text(line) for line in lines]

    def starttls(self) -> str:
        tag, lines = self.command("STARTTLS")
        status = _status(lines[-1], tag)
        if status == "OK":
            self.conn.starttls(self.target.context)
        return status

    def capability(self) -> Observation:
        tag, lines = self.command("CAPABILITY")
        return (*lines[:-1], _status(lines[-1], tag))

    def marker(self) -> str:
        """The Subject of INBOX message 1: which store this session reached."""
        self.command("EXAMINE INBOX")
        _, lines = self.command("FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        for line in lines:
            if line.startswith("Subject: "):
                return line.removeprefix("Subject: ")
        return "no marker: " + " | ".join(lines)

    def login(self, user: str, password: str) -> tuple[str, list[str]]:
        return self.command(f'LOGIN "{user}" "{password}"')

    def close(self) -> None:
        self.conn.close()


class Pop3:
    """A POP3 client session on RawLines."""

    def __init__(self, target: Target, listener: str) -> None:
        self.conn = target.connect(listener)
        self.target = target
        self.greeting = _text(self.conn.line())

    def command(self, command: str) -> str:
        return _text(self.conn.command(command.encode())[0])

    def multiline(self, command: str) -> list[str]:
        first = self.command(command)
        lines = [first]
        if first.startswith("+OK"):
            while (line := _text(self.conn.line())) != ".":
                lines.append(line)
        return lines

    def stls(self) -> str:
        reply = self.command("STLS")
        if reply.startswith("+OK"):
            self.conn.starttls(self.target.context)
        return reply.split(" ", 1)[0]

    def marker(self) -> str:
        for line in self.multiline("TOP 1 0"):
            if line.startswith("Subject: "):
                return line.removeprefix("Subject: ")
        return "no marker"

    def close(self) -> None:
        self.conn.close()


@contextlib.contextmanager
def imap(target: Target, listener: str = "imap4") -> Iterator[Imap]:
    session = Imap(target, listener)
    try:
        yield session
    finally:
        session.close()


@contextlib.contextmanager
def pop3(target: Target, listener: str = "pop3") -> Iterator[Pop3]:
    session = Pop3(target, listener)
    try:
        yield session
    finally:
        session.close()


# -- the cases: name -> session returning the observation ---------------------------

Case = Callable[[Target], Observation]
CASES: dict[str, Case] = {}
DATABASE_DOWN_CASES: dict[str, Case] = {}


def case(name: str, *, database_down: bool = False) -> Callable[[Case], Case]:
    def register(function: Case) -> Case:
        (DATABASE_DOWN_CASES if database_down else CASES)[name] = function
        return function
    return register


def _greeting_cases(listener: str) -> None:
    @case(f"{listener}.greeting.capability")
    def _(target: Target) -> Observation:
        with imap(target, listener) as session:
            match = _GREETING.match(session.greeting)
            return (match.group(1),) if match else ("no [CAPABILITY]: " + session.greeting,)

    @case(f"{listener}.greeting.text")
    def _(target: Target) -> Observation:
        with imap(target, listener) as session:
            match = _GREETING.match(session.greeting)
            return (_greeting_text(match.group(2) if match else session.greeting),)

    @case(f"{listener}.capability")
    def _(target: Target) -> Observation:
        with imap(target, listener) as session:
            return session.capability()


for _listener in ("imap4", "imaps"):
    _greeting_cases(_listener)


@case("imap4.starttls")
def _(target: Target) -> Observation:
    with imap(target) as session:
        return (session.starttls(),)


@case("imap4.capability.after_starttls")
def _(target: Target) -> Observation:
    with imap(target) as session:
        session.starttls()
        return session.capability()


@case("imaps.starttls")
def _(target: Target) -> Observation:
    with imap(target, "imaps") as session:
        return (session.starttls(),)


def _login_cases(listener: str) -> None:
    tls = LISTENER_TLS[listener][1]
    protocol = LISTENER_TLS[listener][0]
    for spelling in SPELLINGS:
        @case(f"{listener}.login.{spelling}")
        def _(target: Target, spelling: str = spelling) -> Observation:
            if protocol == "imap":
                with imap(target, listener) as session:
                    if tls == "starttls":
                        session.starttls()
                    tag, lines = session.login(spelling, "bob-secret")
                    status = _status(lines[-1], tag).split(" ")[0]
                    return (status, session.marker()) if status == "OK" else (status,)
            with pop3(target, listener) as pop:
                if tls == "starttls":
                    pop.stls()
                pop.command(f"USER {spelling}")
                reply = pop.command("PASS bob-secret")
                return (reply.split(" ")[0], pop.marker()) if reply.startswith("+OK") else (
                    reply,)

    @case(f"{listener}.login.reply")
    def _(target: Target) -> Observation:
        if protocol == "imap":
            with imap(target, listener) as session:
                if tls == "starttls":
                    session.starttls()
                tag, lines = session.login("Bob", "bob-secret")
                return tuple(_login_reply(line, tag) for line in lines)
        with pop3(target, listener) as pop:
            if tls == "starttls":
                pop.stls()
            return (pop.command("USER Bob").split(" ")[0], pop.command("PASS bob-secret"))

    if protocol == "imap":
        @case(f"{listener}.capability.after_login")
        def _(target: Target) -> Observation:
            with imap(target, listener) as session:
                if tls == "starttls":
                    session.starttls()
                session.login("Bob", "bob-secret")
                return session.capability()


for _listener in LISTENER_TLS:
    _login_cases(_listener)


def _imap_refusal(target: Target, user: str, password: str) -> Observation:
    with imap(target) as session:
        tag, lines = session.login(user, password)
        return tuple(_login_reply(line, tag) for line in lines)


def _pop3_refusal(target: Target, user: str, password: str) -> Observation:
    with pop3(target) as pop:
        return (pop.command(f"USER {user}").split(" ")[0], pop.command(f"PASS {password}"))


@case("imap.unknown_user")
def _(target: Target) -> Observation:
    return _imap_refusal(target, "nosuchuser", "whatever")


@case("imap.wrong_password")
def _(target: Target) -> Observation:
    return _imap_refusal(target, "bob", "wrong")


@case("imap.backend_down")
def _(target: Target) -> Observation:
    return _imap_refusal(target, "carol", "carol-secret")


@case("imap.database_down", database_down=True)
def _(target: Target) -> Observation:
    return _imap_refusal(target, "dave", "dave-secret")


@case("pop3.unknown_user")
def _(target: Target) -> Observation:
    return _pop3_refusal(target, "nosuchuser", "whatever")


@case("pop3.wrong_password")
def _(target: Target) -> Observation:
    return _pop3_refusal(target, "bob", "wrong")


@case("pop3.backend_down")
def _(target: Target) -> Observation:
    return _pop3_refusal(target, "carol", "carol-secret")


@case("pop3.database_down", database_down=True)
def _(target: Target) -> Observation:
    return _pop3_refusal(target, "dave", "dave-secret")


@case("imap.login_after_failure")
def _(target: Target) -> Observation:
    """A wrong password, then the right one on the same connection."""
    with imap(target) as session:
        session.login("bob", "wrong")
        tag, lines = session.login("bob", "bob-secret")
        status = _status(lines[-1], tag).split(" ")[0]
        return (status, session.marker()) if status == "OK" else (status,)


@case("pop3.login_after_failure")
def _(target: Target) -> Observation:
    """A wrong password, then USER and the right PASS on the same connection."""
    with pop3(target) as pop:
        pop.command("USER bob")
        pop.command("PASS wrong")
        pop.command("USER bob")
        reply = pop.command("PASS bob-secret")
        return (reply.split(" ")[0], pop.marker()) if reply.startswith("+OK") else (reply,)


def _after_close_or_noop(conn: RawLines, noop: bytes, tag: str | None) -> list[str]:
    """What a client sees next: send ``noop``, read to its reply or to the end of the stream."""
    with contextlib.suppress(OSError):
        conn.send(noop)
    seen: list[str] = []
    while True:
        try:
            line = _text(conn.line())
        except TimeoutError:
            return [*seen, "no reply"]
        except OSError:
            line = ""
        if not line:
            return [*seen, "closed"]
        if tag is None:
            return [*seen, line.split(" ")[0], "open"]
        if line.startswith(tag + " "):
            return [*seen, _status(line, tag), "open"]
        seen.append(line)


@case("imap.third_failure")
def _(target: Target) -> Observation:
    """Three wrong passwords on one connection; then a NOOP (Perdition: no limit)."""
    with imap(target) as session:
        for _ in range(3):
            session.login("bob", "wrong")
        return tuple(_after_close_or_noop(session.conn, b"n NOOP\r\n", "n"))


@case("pop3.third_failure")
def _(target: Target) -> Observation:
    with pop3(target) as pop:
        for _ in range(2):
            pop.command("USER bob")
            pop.command("PASS wrong")
        pop.command("USER bob")
        third = pop.command("PASS wrong")
        return (third, *_after_close_or_noop(pop.conn, b"NOOP\r\n", None))


@case("imap.silent_client")
def _(target: Target) -> Observation:
    """Nothing after the greeting, past authenticate_timeout (5 s here)."""
    with imap(target) as session:
        return _until_closed(session.conn)


@case("pop3.silent_client")
def _(target: Target) -> Observation:
    with pop3(target) as pop:
        return _until_closed(pop.conn)


def _until_closed(conn: RawLines) -> Observation:
    seen = []
    try:
        while line := _text(conn.line()):
            seen.append(line)
    except TimeoutError:
        return (*seen, "still open")
    except OSError:
        pass
    return (*seen, "closed")


@case("imap4.capability.after_failed_login_over_starttls")
def _(target: Target) -> Observation:
    """Perdition resets its TLS state after a failed login on a TLS socket."""
    with imap(target) as session:
        session.starttls()
        session.login("bob", "wrong")
        capability = session.capability()
        return ("offers STARTTLS" if " STARTTLS" in capability[0] else "no STARTTLS",
                capability[-1])


@case("pop3.pass_again_after_failure")
def _(target: Target) -> Observation:
    """After a failed PASS, a second PASS without USER (Perdition forgets USER)."""
    with pop3(target) as pop:
        pop.command("USER bob")
        pop.command("PASS wrong")
        return (pop.command("PASS bob-secret").split(" ")[0],)


@case("imap.id")
def _(target: Target) -> Observation:
    with imap(target) as session:
        tag, lines = session.command('ID ("name" "compat-test")')
        return (*(line.split(" (")[0] for line in lines[:-1]), _status(lines[-1], tag))


@case("imap.authenticate_plain.initial_response")
def _(target: Target) -> Observation:
    with imap(target) as session:
        tag, lines = session.command(f"AUTHENTICATE PLAIN {BOB_PLAIN}")
        status = _status(lines[-1], tag).split(" ")[0]
        return (status, session.marker()) if status == "OK" else (status,)


@case("imap.authenticate_plain.continuation")
def _(target: Target) -> Observation:
    with imap(target) as session:
        tag = session.tag()
        session.conn.send(f"{tag} AUTHENTICATE PLAIN\r\n".encode())
        first = _text(session.conn.line())
        if not first.startswith("+"):
            return (_status(first, tag),)
        lines = session.conn.command(BOB_PLAIN.encode(), tag.encode())
        status = _status(_text(lines[-1]), tag).split(" ")[0]
        return ("+", status, session.marker()) if status == "OK" else ("+", status)


@case("imap.nul_in_login")
def _(target: Target) -> Observation:
    """``bob<NUL>evil`` as a literal: Perdition's C strings end at the NUL (proxy.md)."""
    with imap(target) as session:
        tag = session.tag()
        user = b"bob\0evil"
        session.conn.send(f"{tag} LOGIN {{{len(user)}}}\r\n".encode())
        first = _text(session.conn.line())
        if not first.startswith("+"):
            return (_status(first, tag),)
        lines = session.conn.command(user + b" bob-secret", tag.encode())
        status = _status(_text(lines[-1]), tag).split(" ")[0]
        return ("+", status, session.marker()) if status == "OK" else ("+", status)


@case("pop3.nul_in_login")
def _(target: Target) -> Observation:
    with pop3(target) as pop:
        user = pop.command("USER bob\0evil").split(" ")[0]
        if not user.startswith("+OK"):
            return (user,)
        reply = pop.command("PASS bob-secret")
        return (user, reply.split(" ")[0], pop.marker()) if reply.startswith("+OK") else (
            user, reply)


@case("imap.pipelined_after_login")
def _(target: Target) -> Observation:
    """``LOGIN`` and ``NOOP`` in one write; then a ``NOOP`` of its own."""
    with imap(target) as session:
        session.conn.send(b"p1 LOGIN bob bob-secret\r\np2 NOOP\r\n")
        seen = []
        while not (line := _text(session.conn.line())).startswith("p1 "):
            if not line:
                return ("closed",)
            seen.append(line)
        session.conn.send(b"p3 NOOP\r\n")
        while not (line := _text(session.conn.line())).startswith("p3 "):
            if not line:
                return ("closed",)
            seen.append(line)
        return ("p2 answered" if any(s.startswith("p2 ") for s in seen) else "p2 dropped",)


@case("pop3.pipelined_after_login")
def _(target: Target) -> Observation:
    """``USER``, ``PASS`` and ``STAT`` in one write; then a ``NOOP`` of its own."""
    with pop3(target) as pop:
        pop.conn.send(b"USER bob\r\nPASS bob-secret\r\nSTAT\r\n")
        _text(pop.conn.line())
        _text(pop.conn.line())
        pop.conn.send(b"NOOP\r\n")
        seen = []
        while (line := _text(pop.conn.line())) not in ("+OK", ""):
            seen.append(line)
        stat = any(re.fullmatch(r"\+OK \d+ \d+", s) for s in seen)
        return ("STAT answered" if stat else "STAT dropped",)


@case("imap.one_address_past_twenty_before_login")
def _(target: Target) -> Observation:
    """Twenty connections from one address that do not log in, then one more."""
    held = [target.connect("imap4") for _ in range(20)]
    try:
        greeted = sum(_text(conn.line()).startswith("* OK") for conn in held)
        with target.connect("imap4") as extra:
            first = _text(extra.line())
            extra.sock.settimeout(1)
            try:
                end = "closed" if extra.closed_by_peer() else "open"
            except TimeoutError:
                end = "open"
        return (f"{greeted} greeted", "greeting" if first.startswith("* OK") else first, end)
    finally:
        for conn in held:
            conn.close()


@case("imap.empty_password")
def _(target: Target) -> Observation:
    """``LOGIN bob ""``: a valid command (RFC 9051 astring) whose password cannot be right."""
    return _imap_refusal(target, "bob", "")


@case("pop3.empty_password")
def _(target: Target) -> Observation:
    return _pop3_refusal(target, "bob", "")


@case("imap.literal_plus_unadvertised")
def _(target: Target) -> Observation:
    """A ``{n+}`` password although the greeting lists no LITERAL+ (RFC 7888)."""
    with imap(target) as session:
        tag = session.tag()
        lines = session.conn.command(f"{tag} LOGIN bob {{10+}}\r\nbob-secret".encode(),
                                     tag.encode())
        status = _status(_text(lines[-1]), tag).split(" ")[0]
        return (status, session.marker()) if status == "OK" else (status,)


@case("imap4.starttls_injection")
def _(target: Target) -> Observation:
    """``CAPABILITY`` in the same write as ``STARTTLS``: must not run under TLS (RFC 2595 §3.1)."""
    with imap(target) as session:
        session.conn.send(b"s1 STARTTLS\r\ns2 CAPABILITY\r\n")
        if not _text(session.conn.line()).startswith("s1 OK"):
            return ("STARTTLS refused",)
        session.conn.starttls(target.context)
        _, lines = session.command("NOOP")
        return ("s2 answered" if any(line.startswith("s2 ") for line in lines)
                else "s2 discarded",)


@case("pop3.stls_injection")
def _(target: Target) -> Observation:
    with pop3(target) as pop:
        pop.conn.send(b"STLS\r\nCAPA\r\n")
        if not _text(pop.conn.line()).startswith("+OK"):
            return ("STLS refused",)
        pop.conn.starttls(target.context)
        # NOOP before login is -ERR on both, so a +OK here is CAPA's answer.
        first = pop.command("NOOP")
        return ("CAPA answered" if first.startswith("+OK") else "CAPA discarded",)


@case("imap.logout")
def _(target: Target) -> Observation:
    with imap(target) as session:
        tag, lines = session.command("LOGOUT")
        return (*(line.split(" ")[0] + " " + line.split(" ")[1] for line in lines[:-1]),
                _status(lines[-1], tag), "closed" if session.conn.closed_by_peer() else "open")


@case("imap.select_before_login")
def _(target: Target) -> Observation:
    with imap(target) as session:
        tag, lines = session.command("SELECT INBOX")
        return (_status(lines[-1], tag),)


def _pop3_greeting_cases(listener: str) -> None:
    tls = LISTENER_TLS[listener][1]

    @case(f"{listener}.greeting")
    def _(target: Target) -> Observation:
        with pop3(target, listener) as pop:
            return (_greeting_text(pop.greeting),)

    def capa(target: Target, *, stls: bool) -> list[str]:
        with pop3(target, listener) as pop:
            if stls:
                pop.stls()
            return pop.multiline("CAPA")

    @case(f"{listener}.capa")
    def _(target: Target) -> Observation:
        return _capa_without_sasl(capa(target, stls=False))

    @case(f"{listener}.capa.sasl")
    def _(target: Target) -> Observation:
        return _capa_sasl(capa(target, stls=False))

    if tls == "starttls":
        @case(f"{listener}.stls")
        def _(target: Target) -> Observation:
            with pop3(target, listener) as pop:
                return (pop.stls(),)

        @case(f"{listener}.capa.after_stls")
        def _(target: Target) -> Observation:
            return _capa_without_sasl(capa(target, stls=True))

        @case(f"{listener}.capa.sasl.after_stls")
        def _(target: Target) -> Observation:
            return _capa_sasl(capa(target, stls=True))


def _capa_without_sasl(lines: list[str]) -> Observation:
    """CAPA's status and its words but SASL, sorted: RFC 2449 §5 gives them no order."""
    return (lines[0].split(" ")[0],
            *sorted(line for line in lines[1:] if not line.startswith("SASL")))


def _capa_sasl(lines: list[str]) -> Observation:
    return tuple(line for line in lines[1:] if line.startswith("SASL")) or ("no SASL",)


for _listener in ("pop3", "pop3s"):
    _pop3_greeting_cases(_listener)


@case("pop3.auth_plain.initial_response")
def _(target: Target) -> Observation:
    with pop3(target) as pop:
        reply = pop.command(f"AUTH PLAIN {BOB_PLAIN}")
        return (reply.split(" ")[0], pop.marker()) if reply.startswith("+OK") else (
            reply.split(" ")[0],)


@case("pop3.quit")
def _(target: Target) -> Observation:
    with pop3(target) as pop:
        reply = pop.command("QUIT").split(" ")[0]
        return (reply, "closed" if pop.conn.closed_by_peer() else "open")


# -- the rig -----------------------------------------------------------------------


@dataclass
class Rig:
    """What each program showed, case by case."""

    observed: dict[str, dict[str, Observation]]
    perdition_logs: str
    authsvc_log: str


def _observe(cases: dict[str, Case], targets: list[Target]) -> dict[str, dict[str, Observation]]:
    """Run every case against every target at once (Perdition sleeps 3 s per failure)."""
    def run(function: Case, target: Target) -> Observation:
        try:
            return function(target)
        except Exception as error:  # the observation says what broke, the test compares it
            return (f"ERROR {type(error).__name__}: {error}",)

    with ThreadPoolExecutor(max_workers=2 * len(cases) * len(targets)) as pool:
        futures = {(t.name, name): pool.submit(run, fn, replace(t, source=f"127.0.1.{n}"))
                   for n, (name, fn) in enumerate(cases.items(), 1) for t in targets}
        observed: dict[str, dict[str, Observation]] = {t.name: {} for t in targets}
        for (target_name, name), future in futures.items():
            observed[target_name][name] = future.result()
    return observed


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory,
        private_mariadb_server: PrivateMariaDb) -> Iterator[Rig]:
    for binary in ("perdition.imap4", "perdition.imaps", "perdition.pop3", "perdition.pop3s",
                   "dovecot", "openssl"):
        require_binary(binary)
    require_mysql_module()
    root = tmp_path_factory.mktemp("perdition-compat")
    pki = make_test_pki(root / "pki", (*DEFAULT_NAMES, PERDITION_ADDRESS, AUTHSVC_ADDRESS))
    server = private_mariadb_server
    server.ensure_running()
    with contextlib.ExitStack() as stack:
        db = stack.enter_context(create_test_database(server.admin, port=server.port))
        stack.callback(server.ensure_running)  # so that the drop can run after the outage
        db.add_mailboxes(MAILBOXES)
        stores = stack.enter_context(dovecot_stores(USERS, STORE_ADDRESSES, pki=pki))
        ports = common_ports((PERDITION_ADDRESS, AUTHSVC_ADDRESS))
        files = {
            address: write_seed_files(root / name, bind=address, ports=ports, pki=pki, db=db,
                                      store_ports=stores["a"].ports)
            for name, address in (("perdition", PERDITION_ADDRESS),
                                  ("authsvc", AUTHSVC_ADDRESS))
        }
        perdition = stack.enter_context(running_perdition(
            files[PERDITION_ADDRESS], address=PERDITION_ADDRESS, ports=ports, pki=pki,
            workdir=root))
        authsvc = stack.enter_context(running_authsvc_proxy(
            files[AUTHSVC_ADDRESS], address=AUTHSVC_ADDRESS, ports=ports, pki=pki, workdir=root))
        context = pki.client_context()
        targets = [Target("perdition", PERDITION_ADDRESS, ports, context),
                   Target("authsvc", AUTHSVC_ADDRESS, ports, context)]
        observed = _observe(CASES, targets)
        server.stop()
        try:
            down = _observe(DATABASE_DOWN_CASES, targets)
        finally:
            server.start()
        for target in targets:
            observed[target.name].update(down[target.name])
        yield Rig(observed,
                  "\n".join(d.log_text() for d in perdition.values()), authsvc.log_text())


# -- the list of expected differences -----------------------------------------------


@dataclass(frozen=True)
class Difference:
    id: str
    title: str
    reason: str
    doc: str
    cases: dict[str, tuple[Observation, Observation]]  # case -> (perdition, authsvc)


def load_differences(path: Path = DIFFERENCES_FILE) -> list[Difference]:
    """The checked-in list: one ``[[difference]]`` per reason, each naming its cases."""
    data: dict[str, Any] = tomllib.loads(path.read_text())
    differences = []
    for entry in data["difference"]:
        cases = {
            name: (tuple(values["perdition"]), tuple(values["authsvc"]))
            for name, values in entry.get("cases", {}).items()
        }
        differences.append(Difference(entry["id"], entry["title"], entry["reason"],
                                      entry["doc"], cases))
    return differences


def _listed() -> dict[str, tuple[Difference, Observation, Observation]]:
    listed: dict[str, tuple[Difference, Observation, Observation]] = {}
    for difference in load_differences():
        for name, (perdition, authsvc) in difference.cases.items():
            assert name not in listed, f"case {name} is listed twice"
            listed[name] = (difference, perdition, authsvc)
    return listed


def _toml_snippet(name: str, perdition: Observation, authsvc: Observation) -> str:
    def value(observation: Observation) -> str:
        return "[" + ", ".join(_toml_string(item) for item in observation) + "]"
    return (f'[difference.cases."{name}"]\nperdition = {value(perdition)}\n'
            f"authsvc = {value(authsvc)}")


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _case_params() -> list[Any]:
    names = [*CASES, *DATABASE_DOWN_CASES]
    return [
        pytest.param(name, marks=pytest.mark.xfail(reason=KNOWN_BUGS[name], strict=True))
        if name in KNOWN_BUGS else name
        for name in names
    ]


@pytest.mark.parametrize("name", _case_params())
def test_clients_see_the_same_or_a_listed_difference(rig: Rig, name: str) -> None:
    perdition = rig.observed["perdition"][name]
    authsvc = rig.observed["authsvc"][name]
    listed = _listed().get(name)
    if perdition == authsvc:
        assert listed is None, (
            f"{name}: both now show {perdition!r}; remove it from difference "
            f"{listed[0].id!r} in {DIFFERENCES_FILE.name}" if listed else "")
        return
    snippet = _toml_snippet(name, perdition, authsvc)
    assert listed is not None, (
        f"{name}: an unlisted difference.\n  perdition: {perdition!r}\n  authsvc:   {authsvc!r}\n"
        f"If it is intended, list it with a reason in {DIFFERENCES_FILE}:\n{snippet}")
    difference, expected_perdition, expected_authsvc = listed
    assert (perdition, authsvc) == (expected_perdition, expected_authsvc), (
        f"{name}: differs otherwise than difference {difference.id!r} says.\n{snippet}")


def test_no_session_broke(rig: Rig) -> None:
    """An exception in a session is never a compatible outcome, even on both sides."""
    broken = {f"{target}:{name}": observation[0]
              for target, observed in rig.observed.items()
              for name, observation in observed.items() if observation[0].startswith("ERROR")}
    assert not broken


def test_every_spelling_lands_on_bobs_store_through_both(rig: Rig) -> None:
    """Both programs route Bob, bob and BOB@riseup.net to store b (checked on the mailbox)."""
    for target, observed in rig.observed.items():
        for listener in LISTENER_TLS:
            for spelling in SPELLINGS:
                assert observed[f"{listener}.login.{spelling}"][-1] == "store-b", (
                    target, listener, spelling)


def test_refusals_are_refusals_on_both(rig: Rig) -> None:
    """Each failure case fails on both sides: equal outcomes cannot hide two logins."""
    for target, observed in rig.observed.items():
        for name in ("unknown_user", "wrong_password", "backend_down", "database_down"):
            assert observed[f"imap.{name}"][-1].startswith("NO "), (target, name)
            assert observed[f"pop3.{name}"][-1].startswith("-ERR "), (target, name)


def test_authsvc_says_the_same_for_unknown_user_and_wrong_password(rig: Rig) -> None:
    authsvc = rig.observed["authsvc"]
    assert authsvc["imap.unknown_user"] == authsvc["imap.wrong_password"]
    assert authsvc["pop3.unknown_user"] == authsvc["pop3.wrong_password"]


def test_no_password_in_the_authsvc_log(rig: Rig) -> None:
    for secret in ("bob-secret", "dave-secret", "carol-secret"):
        assert secret not in rig.authsvc_log


def test_every_listed_case_exists() -> None:
    known = {*CASES, *DATABASE_DOWN_CASES}
    for difference in load_differences():
        assert set(difference.cases) <= known, (difference.id, set(difference.cases) - known)


def test_every_listed_difference_has_a_reason_and_a_section() -> None:
    doc = DOC.read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", heading.lower()).strip().replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", doc, flags=re.MULTILINE)
    }
    ids = [difference.id for difference in load_differences()]
    assert len(ids) == len(set(ids))
    for difference in load_differences():
        assert len(difference.reason.split()) >= 8, difference.id
        assert difference.doc.startswith("docs/perdition-compatibility.md#"), difference.id
        assert difference.doc.split("#", 1)[1] in anchors, difference.id
