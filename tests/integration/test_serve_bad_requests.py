"""A real ``authsvc serve`` quotes nothing of a malformed request, in its log or its replies.

``python -m authsvc serve`` with every logger at debug and aiohttp's access
log on (``connection_logging``), as an operator chasing a problem would run
it.  Each case of ``tests/helpers/bad_heads.py`` carries its own password;
no 4-byte piece of it may be in the process's log or in any byte sent back,
a refused head gets serve's one fixed 400 (no ``Server`` header), and the
log says who sent it, where it went wrong and how long it was
(docs/security.md, "Secrets in logs").
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from authsvc.http.wire import BAD_REQUEST_REPLY
from tests.helpers.bad_heads import CASES, Case, leaks, password, send
from tests.helpers.eventually import eventually
from tests.services.serve import ServeProcess, parse_fields

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    tmp = tmp_path_factory.mktemp("serve-bad-requests")
    (tmp / "popmap").write_text("bob@riseup.net: 127.0.0.2:1143\n")
    config = tmp / "authsvc.toml"
    config.write_text(f"""
[login]
explicit_domain = "riseup.net"
add_domain = ["lookup"]

[map]
type = "file"
path = "{tmp / 'popmap'}"

[log]
level = "debug"
connection_logging = true

[[listener]]
name = "imap4"
protocol = "imap"
bind = ["127.0.0.1"]
port = 1143
""")
    with ServeProcess([config], tmp) as process:
        yield process


def bad_request_lines(serve: ServeProcess) -> list[dict[str, str | None]]:
    return [parse_fields(line) for line in serve.log_text().splitlines()
            if " event=bad_request " in f" {line} "]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_serve_logs_and_echoes_no_part_of_a_malformed_heads_password(
    serve: ServeProcess, case: Case
) -> None:
    secret = password()
    before = len(bad_request_lines(serve))
    reply = send(serve.port, case, secret)
    assert leaks(reply, secret) == [], reply
    assert b"aiohttp" not in reply and b"Server:" not in reply
    if b" 400 " in reply:
        assert reply.endswith(BAD_REQUEST_REPLY)
        line = eventually(lambda: bad_request_lines(serve)[before:])[0]
        assert set(line) >= {"peer", "offset", "length"}
        assert line["peer"] is not None and line["peer"].startswith("127.0.0.1:")
    assert serve.get("/healthz")[0] == 200  # serve goes on
    serve.decisions(settle=True)  # lines batched with the decisions are written too
    assert leaks(serve.log_text().encode("utf-8", "surrogateescape"), secret) == []
