"""Fuzz the IMAP side: fragmentizer, pre-auth grammar, front and back machines.

Properties: nothing but the defined errors escapes (``CommandError``
from the grammar; the machines raise nothing at all and answer ``BAD``/``BYE``
or ``BackendFailed`` instead); every split of the input gives the same
answer; no line or literal past its limit is parsed or buffered.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from authsvc.proxy.events import (
    Authenticate,
    BackendFailed,
    BackendReady,
    Command,
    Endpoints,
    LoginFailed,
    LoginSucceeded,
    Send,
)
from authsvc.proxy.imap import serialise as wire
from authsvc.proxy.imap.back import MAX_BACKEND_LINE, ImapBack
from authsvc.proxy.imap.fragmentizer import (
    MAX_NUMBER,
    Fragment,
    Fragmentizer,
    LineFragment,
    LiteralFragment,
    split_announcement,
)
from authsvc.proxy.imap.front import ImapFront
from authsvc.proxy.imap.grammar import (
    ASTRING_CHARS,
    ATOM_CHARS,
    MAX_LIST_DEPTH,
    TAG_CHARS,
    Arg,
    Atom,
    CommandError,
    Literal,
    ParenList,
    Quoted,
    parse_command,
)
from authsvc.proxy.imap.grammar import (
    Command as ImapCommand,
)
from hypothesis import event, example, given
from hypothesis import strategies as st

from authsvc.redact import Secret
from authsvc.routing import FailureKind
from authsvc.settings import BackendTls, ForwardClient, ListenTls
from tests.fuzz.drive import check_front_output, drive_back, drive_front
from tests.fuzz.splits import SplitPlan, same_for_splits, split_plans
from tests.fuzz.strategies import imap_client_bytes, imap_store_bytes
from tests.unit.proxy.machines import PROXY, imap_listener

MAX_LINE = PROXY.max_line_length  # 256
MAX_LITERAL = PROXY.max_literal_length  # 64

# --- fragmentizer ----------------------------------------------------------------


def fragments(chunks: Sequence[bytes], max_line: int = MAX_LINE) -> list[Fragment]:
    """Fragments, accepting every literal up to MAX_LITERAL as a front would."""
    frag = Fragmentizer(max_line)
    out: list[Fragment] = []
    for chunk in chunks:
        frag.feed(chunk)
        while (fragment := frag.next()) is not None:
            out.append(fragment)
            announced = fragment.literal if isinstance(fragment, LineFragment) else None
            if announced is not None and announced.length <= MAX_LITERAL:
                frag.expect_literal(announced.length)
    return out


@given(imap_client_bytes, split_plans)
def test_fragmentizer_same_fragments_for_every_split(data: bytes, plan: SplitPlan) -> None:
    found = same_for_splits(data, plan, fragments)
    expecting: int | None = None
    for fragment in found:
        if expecting is not None:
            # An accepted literal is exactly the announced bytes, never a line.
            assert isinstance(fragment, LiteralFragment) and len(fragment.data) == expecting
            expecting = None
            continue
        assert not isinstance(fragment, LiteralFragment)
        if isinstance(fragment, LineFragment):
            # The limit counts the LF: a line is at most max_line - 1 bytes.
            assert len(fragment.text) < MAX_LINE
            assert b"\n" not in fragment.text
            if fragment.literal is not None and fragment.literal.length <= MAX_LITERAL:
                expecting = fragment.literal.length


@given(st.binary(max_size=40), st.integers(min_value=0, max_value=10**12), st.booleans())
def test_announcement_round_trip(text: bytes, length: int, plus: bool) -> None:
    line = text + b"{%d%s}" % (length, b"+" if plus else b"")
    fragment = split_announcement(line)
    assert fragment.literal is not None
    assert fragment.text == text
    assert fragment.literal.synchronising is not plus
    # RFC 9051 §9 number: exact up to 2^32-1; anything bigger stays bigger (and is
    # refused by the front), but never costs a bignum (clamped past 10 digits).
    if length <= MAX_NUMBER:
        assert fragment.literal.length == length
    else:
        assert MAX_NUMBER < fragment.literal.length <= max(length, MAX_NUMBER + 1)
        assert fragment.literal.length < 10**10


@given(st.binary(max_size=60))
def test_split_announcement_never_raises_and_keeps_bytes(line: bytes) -> None:
    fragment = split_announcement(line)
    assert line.startswith(fragment.text)
    if fragment.literal is None:
        assert fragment.text == line


# --- grammar ---------------------------------------------------------------------

_atoms = st.binary(min_size=1, max_size=8).map(
    lambda b: bytes(sorted(ASTRING_CHARS)[c % len(ASTRING_CHARS)] for c in b))
_tags = st.binary(min_size=1, max_size=6).map(
    lambda b: bytes(sorted(TAG_CHARS)[c % len(TAG_CHARS)] for c in b).decode("ascii"))
_names = st.binary(min_size=1, max_size=10).map(
    lambda b: bytes(sorted(ATOM_CHARS)[c % len(ATOM_CHARS)] for c in b).decode("ascii"))
_quoted_bytes = st.binary(max_size=10).filter(lambda b: b"\0" not in b and b"\r" not in b
                                              and b"\n" not in b)
_args: st.SearchStrategy[Arg] = st.recursive(
    st.one_of(
        _atoms.map(Atom),
        _quoted_bytes.map(Quoted),
        st.binary(max_size=12).filter(lambda b: b"\0" not in b).map(Literal),
    ),
    lambda inner: st.lists(inner, max_size=3).map(lambda items: ParenList(tuple(items))),
    max_leaves=6,
)


def _serialise(arg: Arg, parts: list[bytes | LiteralFragment]) -> None:
    """Append ``arg`` to the parts as a client would write it (RFC 9051 §4)."""
    last = parts[-1]
    assert isinstance(last, bytes)
    if isinstance(arg, Atom):
        parts[-1] = last + arg.value
    elif isinstance(arg, Quoted):
        escaped = arg.value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        parts[-1] = last + b'"' + escaped + b'"'
    elif isinstance(arg, Literal):
        parts += [LiteralFragment(arg.value), b""]
    else:
        parts[-1] = last + b"("
        for index, item in enumerate(arg.items):
            if index:
                tail = parts[-1]
                assert isinstance(tail, bytes)
                parts[-1] = tail + b" "
            _serialise(item, parts)
        tail = parts[-1]
        assert isinstance(tail, bytes)
        parts[-1] = tail + b")"


def _depth(arg: Arg) -> int:
    return 1 + max(map(_depth, arg.items), default=0) if isinstance(arg, ParenList) else 0


@given(_tags, _names, st.lists(_args, max_size=4))
def test_grammar_parses_what_a_client_writes(tag: str, name: str, args: list[Arg]) -> None:
    parts: list[bytes | LiteralFragment] = [f"{tag} {name}".encode("ascii")]
    for arg in args:
        last = parts[-1]
        assert isinstance(last, bytes)
        parts[-1] = last + b" "
        _serialise(arg, parts)
    if any(_depth(arg) > MAX_LIST_DEPTH for arg in args):
        with pytest.raises(CommandError) as refused:
            parse_command(parts)
        assert refused.value.tag == tag
        return
    assert parse_command(parts) == ImapCommand(tag, name.upper(), tuple(args))


_part_lines = st.lists(
    st.sampled_from([b"a", b" ", b"LOGIN", b'"', b"\\", b"(", b")", b"\x00", b"\xff", b"]",
                     b"+", b"x y", b"{3}", b"NIL", b"*"]), max_size=12).map(b"".join)


@given(st.lists(st.tuples(_part_lines, st.binary(max_size=6)), min_size=1, max_size=3),
       _part_lines)
def test_grammar_raises_only_command_error(pairs: list[tuple[bytes, bytes]], end: bytes) -> None:
    parts: list[bytes | LiteralFragment] = []
    for line, literal in pairs:
        parts += [line, LiteralFragment(literal)]
    parts.append(end)
    try:
        command = parse_command(parts)
    except CommandError as exc:
        error: CommandError | None = exc
    else:
        error = None
        assert command.tag and command.name == command.name.upper()
    if error is not None:  # answered "<tag> BAD" or "* BAD": the tag must be writable
        assert error.tag is None or error.tag.isascii()


# --- the front machine -------------------------------------------------------------

_outcomes = st.lists(
    st.one_of(
        st.sampled_from(list(FailureKind)).map(LoginFailed),
        st.builds(LoginSucceeded,
                  st.sampled_from([None, "IMAP4rev1 IDLE"]),
                  st.sampled_from([(), (b"* OK [ALERT] hi",)]),
                  st.sampled_from([b"", b"* 1 EXISTS\r\n"])),
    ),
    max_size=4,
)
_listeners = st.sampled_from([
    imap_listener(),
    imap_listener(tls_required=True),
    imap_listener(ListenTls.IMPLICIT),
    imap_listener(capability=("IMAP4rev1 LITERAL+",)),
])


@given(imap_client_bytes, imap_client_bytes, split_plans, _outcomes, _listeners, st.booleans())
@example(b"a STARTTLS\r\nb NOOP\r\n", b"c LOGIN bob s3cr3t\r\nd NOOP\r\n",
         SplitPlan((5,), (3,)), [LoginSucceeded()], imap_listener(), False)
@example(b"a LOGIN {3+}\r\nbob x\r\nb NOOP\r\n", b"", SplitPlan((13,), ()), [],
         imap_listener(), False)
def test_front_same_answers_for_every_split(
    plain: bytes, after_tls: bytes, plan: SplitPlan, outcomes: list[LoginFailed | LoginSucceeded],
    listener: object, tls_active: bool,
) -> None:
    from authsvc.settings import ListenerSettings

    assert isinstance(listener, ListenerSettings)

    def run(chunks: Sequence[bytes]) -> list[Command]:
        machine = ImapFront(listener, PROXY, tls_active=tls_active)
        return drive_front(machine, chunks, len(plain), outcomes)

    commands = same_for_splits(plain + after_tls, plan, run)
    check_front_output(commands)
    # --hypothesis-show-statistics: how deep the inputs got
    for kind in {type(c).__name__ for c in commands}:
        event(f"front gave {kind}")
    sent = b"".join(c.data for c in commands if isinstance(c, Send))
    event(f"front said OK {min(sent.count(b' OK '), 3)}+ times")
    for command in commands:
        if isinstance(command, Authenticate):
            creds = command.credentials
            # A login or password is at most one line or one accepted literal.
            limit = max(MAX_LINE, MAX_LITERAL)
            assert len(creds.login.encode("utf-8", "surrogateescape")) <= limit
            assert len(creds.password.reveal().encode("utf-8", "surrogateescape")) <= limit


@given(st.binary(min_size=MAX_LINE, max_size=3 * MAX_LINE).map(
    lambda b: bytes(c for c in b if c != 0x0A) + b"x" * MAX_LINE), split_plans)
def test_front_refuses_an_overlong_line_and_stays_in_sync(junk: bytes, plan: SplitPlan) -> None:
    data = b"x" + junk + b"\r\na NOOP\r\n"  # "x": no TLS record byte first

    def run(chunks: Sequence[bytes]) -> list[Command]:
        return drive_front(ImapFront(imap_listener(), PROXY), chunks, len(data), [])

    commands = same_for_splits(data, plan, run)
    sent = b"".join(c.data for c in commands if isinstance(c, Send))
    greeting = wire.greeting(ImapFront(imap_listener(), PROXY).capabilities())
    assert sent == (greeting + wire.untagged(f"BAD {wire.BAD_LINE_TOO_LONG}")
                    + wire.tagged("a", "OK", wire.OK_NOOP))


@given(st.integers(min_value=MAX_LITERAL + 1, max_value=10**15), st.booleans())
def test_front_refuses_an_overlong_literal(length: int, plus: bool) -> None:
    marker = b"+" if plus else b""
    data = b"a LOGIN {%d%s}\r\n" % (length, marker) + b"y" * 100 + b"\r\nb NOOP\r\n"
    machine = ImapFront(imap_listener(capability=("IMAP4rev1 LITERAL+",)), PROXY)
    commands = drive_front(machine, [data], len(data), [])
    assert not any(isinstance(c, Authenticate) for c in commands)
    sent = b"".join(c.data for c in commands if isinstance(c, Send))
    if plus:  # RFC 7888 §4: the bytes come anyway, so the connection ends
        assert sent.endswith(wire.untagged(f"BYE {wire.BYE_LITERAL_TOO_LONG}"))
    else:
        assert wire.tagged("a", "BAD", wire.BAD_LITERAL_TOO_LONG) in sent
        assert b"+ Ready" not in sent


# --- the back machine ----------------------------------------------------------------

_ENDPOINTS = Endpoints(("192.0.2.7", 50123), ("198.51.100.1", 143))


@given(imap_store_bytes, imap_store_bytes, split_plans, st.sampled_from(list(BackendTls)),
       st.sampled_from(list(ForwardClient)), st.sampled_from(["bob", "b\udcffb", "x y\\\""]),
       st.booleans())
@example(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\nA1 OK\r\n", b"",
         SplitPlan((40,), ()), BackendTls.STARTTLS, ForwardClient.NONE, "bob", False)
def test_back_same_answers_for_every_split(
    before_tls: bytes, after_tls: bytes, plan: SplitPlan, tls: BackendTls,
    forward: ForwardClient, login: str, tls_active: bool,
) -> None:
    def run(chunks: Sequence[bytes]) -> list[Command]:
        machine = ImapBack(login, Secret("pa ss"), tls, tls_active=tls_active, forward=forward,
                           endpoints=_ENDPOINTS)
        return drive_back(machine, chunks, len(before_tls))

    commands = same_for_splits(before_tls + after_tls, plan, run)
    for kind in {type(c).__name__ for c in commands}:
        event(f"back gave {kind}")
    finished = [c for c in commands if isinstance(c, BackendReady | BackendFailed)]
    assert len(finished) <= 1 and (not finished or commands[-1] is finished[0])
    for command in commands:
        if isinstance(command, Send) and b"pa ss" in command.data:
            assert command.secret, "a password went out unmarked"


@given(st.integers(min_value=1, max_value=3 * MAX_BACKEND_LINE))
def test_back_refuses_an_overlong_store_line(extra: int) -> None:
    machine = ImapBack("bob", Secret("pw"), BackendTls.NONE, tls_active=False)
    data = b"* OK " + b"x" * (MAX_BACKEND_LINE + extra)
    commands = drive_back(machine, [data, b"\r\n"], len(data) + 2)
    assert commands == [BackendFailed(FailureKind.BACKEND_PROTOCOL, "store line too long")]
