"""Fuzz the POP3 side: the front (AUTHORIZATION state) and back machines.

Properties: the machines raise nothing (a client hears ``-ERR``,
a store failure is ``BackendFailed``); every split of the input gives the
same answer; a line past the limit is refused and the next one still parsed.
"""

from __future__ import annotations

from collections.abc import Sequence

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
from authsvc.proxy.pop3 import replies as wire
from authsvc.proxy.pop3.back import MAX_BACKEND_LINE, Pop3Back
from authsvc.proxy.pop3.front import Pop3Front
from hypothesis import event, example, given
from hypothesis import strategies as st

from authsvc.redact import Secret
from authsvc.routing import FailureKind
from authsvc.settings import BackendTls, ForwardClient, ListenerSettings, ListenTls
from tests.fuzz.drive import check_front_output, drive_back, drive_front
from tests.fuzz.splits import SplitPlan, same_for_splits, split_plans
from tests.fuzz.strategies import pop3_client_bytes, pop3_store_bytes
from tests.unit.proxy.machines import PROXY, pop3_listener

MAX_LINE = PROXY.max_line_length

_outcomes = st.lists(
    st.one_of(
        st.sampled_from(list(FailureKind)).map(LoginFailed),
        st.sampled_from([b"", b"+OK 2 messages\r\n"]).map(lambda b: LoginSucceeded(leftover=b)),
    ),
    max_size=4,
)
_listeners = st.sampled_from([
    pop3_listener(),
    pop3_listener(tls_required=True),
    pop3_listener(ListenTls.IMPLICIT),
    pop3_listener(capability=("TOP", "SASL X", "  ", "PIPELINING")),
])


@given(pop3_client_bytes, pop3_client_bytes, split_plans, _outcomes, _listeners, st.booleans())
@example(b"STLS\r\nUSER evil\r\n", b"USER bob\r\nPASS s3cr3t\r\nSTAT\r\n",
         SplitPlan((4,), (2,)), [LoginSucceeded()], pop3_listener(), False)
def test_front_same_answers_for_every_split(
    plain: bytes, after_tls: bytes, plan: SplitPlan, outcomes: list[LoginFailed | LoginSucceeded],
    listener: ListenerSettings, tls_active: bool,
) -> None:
    def run(chunks: Sequence[bytes]) -> list[Command]:
        machine = Pop3Front(listener, PROXY, tls_active=tls_active)
        return drive_front(machine, chunks, len(plain), outcomes)

    commands = same_for_splits(plain + after_tls, plan, run)
    check_front_output(commands)
    for kind in {type(c).__name__ for c in commands}:
        event(f"front gave {kind}")
    for command in commands:
        if isinstance(command, Authenticate):
            creds = command.credentials
            assert len(creds.login.encode("utf-8", "surrogateescape")) < MAX_LINE
            assert len(creds.password.reveal().encode("utf-8", "surrogateescape")) < MAX_LINE


@given(st.binary(min_size=MAX_LINE, max_size=3 * MAX_LINE).map(
    lambda b: b"x" + bytes(c for c in b if c != 0x0A) + b"x" * MAX_LINE), split_plans)
def test_front_refuses_an_overlong_line_and_stays_in_sync(junk: bytes, plan: SplitPlan) -> None:
    data = junk + b"\r\nCAPA\r\n"

    def run(chunks: Sequence[bytes]) -> list[Command]:
        return drive_front(Pop3Front(pop3_listener(), PROXY), chunks, len(data), [])

    commands = same_for_splits(data, plan, run)
    sent = b"".join(c.data for c in commands if isinstance(c, Send))
    capabilities = Pop3Front(pop3_listener(), PROXY).capabilities()
    assert sent == (wire.line(wire.GREETING) + wire.line(wire.ERR_LINE_TOO_LONG)
                    + wire.multiline(wire.OK_CAPA, capabilities))


_ENDPOINTS = Endpoints(("2001:db8::7", 50123), ("198.51.100.1", 110))


@given(pop3_store_bytes, pop3_store_bytes, split_plans, st.sampled_from(list(BackendTls)),
       st.sampled_from(list(ForwardClient)), st.booleans())
@example(b"+OK hi\r\n+OK\r\nSTLS\r\n.\r\n+OK go\r\n", b"+OK\r\n+OK\r\n", SplitPlan((30,), ()),
         BackendTls.STARTTLS, ForwardClient.NONE, False)
def test_back_same_answers_for_every_split(
    before_tls: bytes, after_tls: bytes, plan: SplitPlan, tls: BackendTls,
    forward: ForwardClient, tls_active: bool,
) -> None:
    def run(chunks: Sequence[bytes]) -> list[Command]:
        machine = Pop3Back("bob", Secret("pa ss"), tls, tls_active=tls_active, forward=forward,
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
    machine = Pop3Back("bob", Secret("pw"), BackendTls.NONE, tls_active=False)
    data = b"+OK " + b"x" * (MAX_BACKEND_LINE + extra)
    commands = drive_back(machine, [data, b"\r\n"], len(data) + 2)
    assert commands == [BackendFailed(FailureKind.BACKEND_PROTOCOL, "store line too long")]
