"""Debian's fail2ban filters as plain regexes, for tests that must match them.

fail2ban builds a filter's ``failregex`` in three steps, and this helper does the
same, simplified but honestly (the files are the real ones: Debian's
``fail2ban`` package installs them in ``/etc/fail2ban/filter.d``; tests/run.sh
installs the package):

1. ``configparser`` reads ``common.conf`` (``[INCLUDES] before``) and the filter;
   the filter's ``[Definition]`` overrides ``common.conf``'s ``[DEFAULT]`` (here
   ``_daemon = perdition.\\S+``).
2. ``%(name)s`` (configparser interpolation) and fail2ban's ``<name>`` tags are
   replaced until nothing changes, including the cross-section form
   ``<lt_<logtype>/__prefix_line>`` with ``logtype = file``
   (``fail2ban/client/configreader.py``, ``helpers.substituteRecursiveTags``).
   Tags that are not configuration names (a regex's ``(?P<ip4>...)``) stay.
3. ``<HOST>`` becomes fail2ban's address pattern with groups ``ip4``/``ip6``
   (``fail2ban/server/failregex.py`` ``R_HOST``, ``usedns = no``; the IPv6 part is
   shortened to hex digits and colons).

Dates: fail2ban finds the date at the start of the line (``datepattern =
{^LN-BEG}``) and matches the regex against the line *without* it;
:func:`match` strips a leading RFC 3164 timestamp the same way.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

FILTER_DIR = Path("/etc/fail2ban/filter.d")
HOST = (r"(?:(?:::f{4,6}:)?(?P<ip4>(?:\d{1,3}\.){3}\d{1,3})"
        r"|\[?(?P<ip6>[0-9a-fA-F]{0,4}(?::[0-9a-fA-F]{0,4}){2,7})\]?)")
_PERCENT = re.compile(r"%\((\w+)\)s")
_TAG = re.compile(r"<([\w/]+)>")
_SYSLOG_DATE = re.compile(r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d")


def _read(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep key case
    parser.read(path)
    return parser


def failregexes(name: str, directory: Path = FILTER_DIR) -> list[re.Pattern[str]]:
    """The filter's ``failregex`` lines, expanded and compiled."""
    common = _read(directory / "common.conf")
    own = _read(directory / f"{name}.conf")
    values = dict(common.defaults())
    values.update({key: own.get("Definition", key) for key in own.options("Definition")})

    def lookup(key: str) -> str | None:
        if "/" in key:
            section, option = key.split("/", 1)
            return common.get(section, option) if common.has_option(section, option) else None
        return values.get(key)

    def expand(text: str) -> str:
        for _ in range(50):
            before = text
            text = _PERCENT.sub(lambda m: lookup(m.group(1)) or m.group(0), text)
            text = _TAG.sub(lambda m: m.group(0) if m.group(1) == "HOST"
                            else lookup(m.group(1)) or m.group(0), text)
            if text == before:
                return text.replace("<HOST>", HOST)
        raise AssertionError(f"{name}: tags do not settle: {text}")

    lines = [line.strip() for line in values["failregex"].splitlines() if line.strip()]
    return [re.compile(expand(line)) for line in lines]


def match(regexes: list[re.Pattern[str]], line: str) -> re.Match[str] | None:
    """The first failregex that matches ``line`` once its leading date is cut, as fail2ban does."""
    rest = _SYSLOG_DATE.sub("", line, count=1)
    for regex in regexes:
        found = regex.search(rest)
        if found is not None:
            return found
    return None


def logfile_line(datagram: bytes, hostname: str = "mx1") -> str:
    """What rsyslog writes to /var/log/mail.log for a syslog(3) datagram: no <PRI>, a host."""
    text = datagram.decode("utf-8", "replace")
    text = re.sub(r"^<\d+>", "", text)
    date = _SYSLOG_DATE.match(text)
    assert date is not None, text
    return f"{date.group(0)} {hostname}{text[date.end():]}"
