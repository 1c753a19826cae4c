"""Input strategies shared by the fuzz tests: protocol-shaped bytes with some noise.

Pure random bytes rarely get past a parser's first check, so each strategy
joins tokens a real peer (or attacker) would send: command words in odd
cases, tags, atoms, quoted strings with escapes, literal announcements, SASL
responses, CR/LF/CRLF, NUL, 8-bit bytes, overlong runs.  Sizes are bounded
(``MAX_TOKENS``; the longest token is a little over the machines' 256-byte
line limit) so an example stays cheap at every split.
"""

from __future__ import annotations

import base64

from authsvc.proxy.sasl import encode_plain
from hypothesis import strategies as st

MAX_TOKENS = 40

_NOISE = st.binary(max_size=12)
_NAMES = st.sampled_from([b"bob", b"Bob@Example.org", b"a", b"\xc3\xa9l\xc3\xa8ve", b"x y"])
_PASSWORDS = st.sampled_from([b"s3cr3t", b"p w", b"\xff\xfe", b"a\x00b", b"%41", b'"q\\'])

#: Base64 SASL PLAIN responses, good and bad (RFC 4616 §2; RFC 4648 §4).
sasl_responses = st.one_of(
    st.builds(encode_plain, _NAMES, _PASSWORDS),
    st.builds(lambda z, c, p: encode_plain(c, p, z), _NAMES, _NAMES, _PASSWORDS),
    st.binary(max_size=24).map(base64.b64encode),
    st.sampled_from([b"*", b"=", b"====", b"AGJvYgA", b"AGJvYgBw\x00", b"YQ==YQ=="]),
)

_CRLF = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\r\n"])
_SP = st.sampled_from([b" ", b"  ", b"\t", b""])


def _sprinkle(parts: list[bytes], noise: list[tuple[int, bytes]]) -> bytes:
    """``parts`` joined, with each noise token put in before the part at its index."""
    out = list(parts)
    for index, token in noise:
        out.insert(min(index, len(out)), token)
    return b"".join(out)


def _case(word: bytes) -> st.SearchStrategy[bytes]:
    return st.sampled_from([word, word.lower(), word.capitalize()])


_IMAP_WORDS = st.sampled_from(
    [b"CAPABILITY", b"NOOP", b"LOGOUT", b"STARTTLS", b"ID", b"LOGIN", b"AUTHENTICATE",
     b"SELECT", b"PLAIN", b"NIL", b"LOGIN\x00"]
).flatmap(_case)
_IMAP_TOKENS = st.one_of(
    _IMAP_WORDS,
    st.sampled_from([b"a", b"A1", b"*", b"+", b"tag]", b"(", b")", b"()", b"{", b"}", b'"',
                     b"\\", b"\x16\x03\x01", b"\x00", b"\xff"]),
    _NAMES,
    _PASSWORDS,
    st.builds(lambda v: b'"' + v.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"',
              _PASSWORDS | _NAMES),
    # literal announcements: small, at the limits (64 in the fuzz settings), huge
    st.builds(lambda n, plus: b"{%d%s}" % (n, b"+" if plus else b""),
              st.sampled_from([0, 1, 3, 6, 63, 64, 65, 300, 4294967295, 10**12]), st.booleans()),
    sasl_responses,
    _CRLF,
    _SP,
    _NOISE,
    st.integers(min_value=200, max_value=300).map(lambda n: b"x" * n),
)

_IMAP_ARGS = st.one_of(
    _NAMES, _PASSWORDS, sasl_responses,
    st.builds(lambda v: b'"' + v.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"',
              _PASSWORDS | _NAMES),
    st.sampled_from([b"PLAIN", b"plain", b"NIL", b"()", b'("name" "x")', b"((((()))))", b"(a",
                     b"=", b"*"]),
    st.builds(lambda n, plus, body: b"{%d%s}\r\n" % (n, b"+" if plus else b"") + body,
              st.sampled_from([0, 3, 6, 64, 65]), st.booleans(), st.binary(max_size=8)),
)
#: One command line as a client writes it: tag SP name *(SP arg) CRLF, sometimes damaged.
imap_commands = st.builds(
    lambda tag, name, args, end: tag + b" " + name + b"".join(b" " + a for a in args) + end,
    st.sampled_from([b"a", b"A1", b"b2", b"a", b"A1", b"b2", b"*", b"+", b"tag]"]),
    _IMAP_WORDS,
    st.lists(_IMAP_ARGS, max_size=3),
    _CRLF,
)
_quote = st.builds(lambda v: b'"' + v.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"',
                   _PASSWORDS | _NAMES)
#: Well-formed logins, so that fuzzing reaches Authenticate and what follows it.
imap_logins = st.one_of(
    st.builds(lambda u, p: b"L LOGIN " + u + b" " + p + b"\r\n", _quote, _quote),
    st.builds(lambda r: b"P AUTHENTICATE PLAIN " + r + b"\r\n", sasl_responses),
    st.builds(lambda r: b"Q AUTHENTICATE PLAIN\r\n" + r + b"\r\n", sasl_responses),
    st.builds(lambda u, p: b"R LOGIN {%d}\r\n%s {%d+}\r\n%s\r\n" % (len(u), u, len(p), p),
              _NAMES, _PASSWORDS),
)
#: What an IMAP client might send before login: mostly commands, some noise.
imap_client_bytes = st.builds(
    lambda commands, noise: _sprinkle(commands, noise),
    st.lists(imap_commands | imap_logins, max_size=8),
    st.lists(st.tuples(st.integers(min_value=0, max_value=8), _IMAP_TOKENS), max_size=2),
)

_POP3_WORDS = st.sampled_from(
    [b"CAPA", b"QUIT", b"STLS", b"USER", b"PASS", b"AUTH", b"PLAIN", b"APOP", b"RETR"]
).flatmap(_case)
_POP3_TOKENS = st.one_of(
    _POP3_WORDS,
    st.sampled_from([b"*", b"=", b"+OK", b"-ERR", b"\x16\x03\x01", b"\x00", b"\xff", b"."]),
    _NAMES,
    _PASSWORDS,
    sasl_responses,
    _CRLF,
    _SP,
    _NOISE,
    st.integers(min_value=200, max_value=300).map(lambda n: b"x" * n),
)

#: Well-formed logins, so that fuzzing reaches Authenticate and what follows it.
pop3_logins = st.one_of(
    st.builds(lambda u, p: b"USER " + u + b"\r\nPASS " + p + b"\r\n", _NAMES, _PASSWORDS),
    st.builds(lambda r: b"AUTH PLAIN " + r + b"\r\n", sasl_responses),
    st.builds(lambda r: b"AUTH PLAIN\r\n" + r + b"\r\n", sasl_responses),
)
_POP3_ARGS = st.one_of(
    _NAMES, _PASSWORDS, sasl_responses, st.sampled_from([b"PLAIN", b"plain", b"PLAIN =", b"x"]),
    st.builds(lambda r: b"PLAIN " + r, sasl_responses),
)
#: One POP3 command line (RFC 1939 §3): keyword [SP argument] CRLF.
pop3_commands = st.builds(
    lambda name, args, end: name + b"".join(b" " + a for a in args) + end,
    _POP3_WORDS,
    st.lists(_POP3_ARGS, max_size=2),
    _CRLF,
)
#: What a POP3 client might send in the AUTHORIZATION state.
pop3_client_bytes = st.builds(
    lambda commands, noise: _sprinkle(commands, noise),
    st.lists(pop3_commands | pop3_logins | sasl_responses.map(lambda r: r + b"\r\n"),
             max_size=8),
    st.lists(st.tuples(st.integers(min_value=0, max_value=8), _POP3_TOKENS), max_size=2),
)

_CAPS = st.lists(
    st.sampled_from([b"IMAP4rev1", b"STARTTLS", b"LITERAL+", b"LOGINDISABLED", b"ID",
                     b"AUTH=PLAIN", b"IDLE"]), max_size=4
).map(b" ".join)
_STORE_TEXT = st.one_of(
    st.sampled_from([b"hi", b"", b"Logged in", b"[UNAVAILABLE] later", b"[ALERT] note",
                     b"[AUTHENTICATIONFAILED] no", b"[INUSE] busy", b"{5}"]),
    st.builds(lambda c: b"[CAPABILITY " + c + b"] ok", _CAPS),
    _NOISE,
)
_IMAP_TAGGED = st.builds(
    lambda n, s, t: b"A%d " % n + s + b" " + t, st.integers(min_value=1, max_value=5),
    st.sampled_from([b"OK", b"OK", b"OK", b"NO", b"BAD", b"ok"]), _STORE_TEXT)
_IMAP_STORE_LINES = st.one_of(
    _IMAP_TAGGED,
    _IMAP_TAGGED,
    _IMAP_TAGGED,
    st.builds(lambda s, t: b"* " + s + b" " + t,
              st.sampled_from([b"OK", b"ok", b"BYE", b"PREAUTH", b"NO", b"CAPABILITY",
                               b"ID", b"1 EXISTS"]), _STORE_TEXT),
    st.builds(lambda c: b"* CAPABILITY " + c, _CAPS),
    st.sampled_from([b"+ ", b"+", b"+ go", b"", b"A1", b"*"]),
    _NOISE,
)
_IMAP_GREETINGS = st.one_of(
    st.builds(lambda c: b"* OK [CAPABILITY " + c + b"] ready.\r\n", _CAPS),
    st.sampled_from([b"* OK ready.\r\n"] * 4 + [b"* BYE no\r\n", b"* PREAUTH hi\r\n", b""]),
)
_IMAP_UNTAGGED = st.builds(
    lambda s, t: b"* " + s + b" " + t + b"\r\n",
    st.sampled_from([b"OK", b"CAPABILITY", b"ID", b"1 EXISTS", b"BYE", b"NO"]), _STORE_TEXT)


def _imap_replies(replies: list[tuple[list[bytes], bytes, bytes, bytes]]) -> bytes:
    """Tagged replies A1, A2, ... as the back machine numbers its commands."""
    out = b""
    for serial, (untagged, plus, status, text) in enumerate(replies, 1):
        out += b"".join(untagged) + plus + b"A%d " % serial + status + b" " + text + b"\r\n"
    return out


#: What an IMAP store might answer a proxy logging in: a greeting, then a
#: reply to each command (tags A1, A2, ... as ImapBack numbers them), with noise.
imap_store_bytes = st.builds(
    lambda greeting, replies, noise: greeting + _sprinkle([_imap_replies(replies)], noise),
    _IMAP_GREETINGS,
    st.lists(st.tuples(
        st.lists(_IMAP_UNTAGGED, max_size=2),
        st.sampled_from([b""] * 6 + [b"+ \r\n", b"+ go\r\n+ \r\n"]),
        st.sampled_from([b"OK", b"OK", b"OK", b"NO", b"BAD", b"ok"]),
        _STORE_TEXT,
    ), max_size=5),
    st.lists(st.tuples(st.integers(min_value=0, max_value=1),
                       st.tuples(_IMAP_STORE_LINES, _CRLF).map(b"".join)), max_size=1),
)

_POP3_STORE_LINES = st.one_of(
    st.builds(lambda s, t: s + t, st.sampled_from([b"+OK", b"-ERR", b"+ok", b"+OKAY", b"-ERR "]),
              st.sampled_from([b"", b" ready", b" [SYS/TEMP] later", b" [IN-USE] busy",
                               b" [AUTH] no", b" [LOGIN-DELAY]", b" [SYS/TEMP"])),
    st.sampled_from([b"STLS", b"USER", b"SASL PLAIN", b".", b"..", b"TOP", b""]),
    _NOISE,
)
_POP3_REPLIES = st.one_of(
    st.sampled_from([b"+OK\r\n"] * 6 + [b"+OK hi\r\n", b"-ERR [IN-USE] busy\r\n",
                     b"+OK\r\nSTLS\r\nUSER\r\n.\r\n", b"+OK\r\nTOP\r\n.\r\n"]),
    _POP3_STORE_LINES.map(lambda line: line + b"\r\n"),
)
#: What a POP3 store might answer a proxy logging in: a greeting, then replies.
pop3_store_bytes = st.builds(
    lambda greeting, replies: greeting + b"".join(replies),
    st.sampled_from([b"+OK POP3 ready.\r\n"] * 4 + [b"-ERR busy\r\n", b""]),
    st.lists(_POP3_REPLIES, max_size=8),
)
