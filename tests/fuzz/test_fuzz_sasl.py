"""Fuzz the SASL PLAIN decoder both fronts use (proxy/sasl.py, RFC 4616 §2).

Its one defined error is :class:`~proxy.sasl.SaslError`; whatever the client
sends, nothing else may escape, and a response we encode decodes back.
"""

from __future__ import annotations

import base64

from authsvc.proxy import sasl
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.strategies import sasl_responses

_field = st.binary(max_size=20).map(lambda b: b.replace(b"\0", b""))
_nonempty = st.binary(min_size=1, max_size=20).map(lambda b: b.replace(b"\0", b"") or b"x")


@given(st.one_of(sasl_responses, st.binary(max_size=64)))
def test_decode_raises_only_sasl_error(line: bytes) -> None:
    try:
        plain = sasl.parse_plain(sasl.decode_base64(line))
    except sasl.SaslError:
        return
    assert plain.authcid and plain.password
    assert b"\0" not in plain.authzid + plain.authcid + plain.password


@given(_field, _nonempty, _nonempty)
def test_round_trip(authzid: bytes, authcid: bytes, password: bytes) -> None:
    line = sasl.encode_plain(authcid, password, authzid)
    assert sasl.parse_plain(sasl.decode_base64(line)) == sasl.PlainResponse(
        authzid, authcid, password)


@given(st.binary(max_size=40), st.integers(min_value=0, max_value=60), st.binary(min_size=1,
                                                                              max_size=2))
def test_damaged_base64_is_refused_not_guessed(message: bytes, at: int, junk: bytes) -> None:
    """Strict base64 (RFC 4648 §3.3): a byte outside the alphabet is an error, not skipped."""
    line = base64.b64encode(message)
    at = at % (len(line) + 1)
    damaged = line[:at] + junk + line[at:]
    if all(c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=" for c in junk):
        return
    try:
        sasl.decode_base64(damaged)
    except sasl.SaslError:
        return
    raise AssertionError(f"{damaged!r} decoded")
