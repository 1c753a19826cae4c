"""Run a sans-IO machine over cut input the way ``proxy/session.py`` would, for fuzzing.

A front machine's answers must not depend on how the client's bytes were cut
into reads, nor on when the login result arrives relative to pipelined
bytes.  :func:`drive_front` feeds the chunks, answers each ``Authenticate``
at once with the next scripted outcome, feeds ``TlsEstablished`` at a fixed
byte offset (the end of the plaintext phase) when a ``StartTls`` is pending,
and after a ``Splice`` counts the rest as bytes forwarded to the store.  The
normalised command list (Sends merged, the Splice carrying everything
forwarded) is what the split tests compare.
"""

from __future__ import annotations

from collections.abc import Sequence

from authsvc.proxy.events import (
    Authenticate,
    BackendFailed,
    BackendReady,
    Close,
    Command,
    ConnectionClosed,
    DataReceived,
    Event,
    LoginFailed,
    LoginSucceeded,
    Send,
    Splice,
    StartTls,
    TlsEstablished,
)

from authsvc.routing import FailureKind
from tests.unit.proxy.machines import Machine, merge

Outcome = LoginFailed | LoginSucceeded
_DEFAULT_OUTCOME = LoginFailed(FailureKind.BACKEND_AUTH)


def recut(chunks: Sequence[bytes], boundary: int) -> list[bytes]:
    """``chunks`` with the one that straddles ``boundary`` cut in two there."""
    out: list[bytes] = []
    pos = 0
    for chunk in chunks:
        if pos < boundary < pos + len(chunk):
            out += [chunk[: boundary - pos], chunk[boundary - pos :]]
        else:
            out.append(chunk)
        pos += len(chunk)
    return out


def drive_front(
    machine: Machine, chunks: Sequence[bytes], boundary: int, outcomes: Sequence[Outcome]
) -> list[Command]:
    """Every command the front gives, normalised; see the module docstring."""
    out: list[Command] = []
    forwarded: bytes | None = None
    tls_pending = False
    answered = 0

    def run(event: Event) -> None:
        nonlocal forwarded, tls_pending, answered
        queue = list(machine.handle(event))
        while queue:
            command = queue.pop(0)
            out.append(command)
            if isinstance(command, Authenticate):
                outcome = outcomes[answered] if answered < len(outcomes) else _DEFAULT_OUTCOME
                answered += 1
                queue = list(machine.handle(outcome)) + queue
            elif isinstance(command, Splice):
                forwarded = command.to_backend
            elif isinstance(command, StartTls):
                tls_pending = True

    out += machine.start()
    pos = 0
    for chunk in recut(chunks, boundary):
        if pos == boundary and tls_pending:
            tls_pending = False
            run(TlsEstablished())
        pos += len(chunk)
        if forwarded is not None:
            forwarded += chunk
        else:
            run(DataReceived(chunk))
    if tls_pending:
        run(TlsEstablished())
    run(ConnectionClosed())
    splices = [i for i, c in enumerate(out) if isinstance(c, Splice)]
    if splices:
        first = out[splices[0]]
        assert isinstance(first, Splice) and forwarded is not None
        out[splices[0]] = Splice(forwarded, first.to_client)
    return merge(out)


def drive_back(machine: Machine, chunks: Sequence[bytes], boundary: int) -> list[Command]:
    """As the session drives a back machine: ``TlsEstablished`` at ``boundary`` if asked for.

    Once the machine is done (ready or failed) the session stops feeding it;
    later bytes are leftover for the client, so they are added to the result's.
    """
    out: list[Command] = list(machine.start())
    tls_pending = False
    rest = b""
    pos = 0

    def done() -> bool:
        return any(isinstance(c, BackendReady | BackendFailed) for c in out)

    def run(event: Event) -> None:
        nonlocal tls_pending
        for command in machine.handle(event):
            out.append(command)
            if isinstance(command, StartTls):
                tls_pending = True

    for chunk in recut(chunks, boundary):
        if pos == boundary and tls_pending and not done():
            tls_pending = False
            run(TlsEstablished())
        pos += len(chunk)
        if done():
            rest += chunk
        else:
            run(DataReceived(chunk))
    if not done():
        if tls_pending:
            run(TlsEstablished())
        run(ConnectionClosed())
    if len(out) >= 2 and isinstance(out[-2], StartTls) and isinstance(out[-1], BackendFailed):
        # Store bytes behind its STARTTLS OK fail the login either way; whether
        # the machine had asked for the handshake first depends only on whether
        # they came in the same read (timing, not parsing), so it is not compared.
        del out[-2]
    ready = [i for i, c in enumerate(out) if isinstance(c, BackendReady)]
    if ready:
        result = out[ready[0]]
        assert isinstance(result, BackendReady)
        out[ready[0]] = BackendReady(
            LoginSucceeded(result.result.capabilities, result.result.untagged,
                           result.result.leftover + rest))
    return merge(out)


def check_front_output(commands: Sequence[Command]) -> None:
    """What must hold for any client input: nothing written after Close, CRLF-ended replies."""
    closed = False
    for command in commands:
        if isinstance(command, Send):
            assert not closed, f"wrote {command.data!r} after Close"
            assert command.data.endswith(b"\r\n"), command.data
            assert not command.secret, "a front never sends a password to its client"
        elif isinstance(command, Close):
            closed = True
        elif isinstance(command, Authenticate):
            creds = command.credentials
            login = creds.login.encode("utf-8", "surrogateescape")
            password = creds.password.reveal().encode("utf-8", "surrogateescape")
            # Empty parts may go on (a failed login, proxy/failures.py); these never.
            assert not set(login + password) & set(b"\0\r\n"), "NUL/CR/LF reached a store"
