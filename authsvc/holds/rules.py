"""What a hold is and what it matches: the pure part of holds (no I/O).

A hold names a user by a mask of map keys (``*`` and ``?``, as doveadm's
masks do, matched without regard to case) or a store by ``HOST[:PORT]`` (the
one address syntax, ``authsvc/address.py``; without a port it holds every
port of the host).  The router (``authsvc/routing.py``) asks a
:class:`HoldSet` about every route it makes, after the map: a hold matches the
route's map key and the store address the map gave, so a user the map has
moved to another store is not held by a hold on the old one.  A store is
matched as the map names it: a host name in the map is matched by that name,
an address by that address.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from authsvc.address import parse_hostport
from authsvc.settings import HostPort

USER = "user"
STORE = "store"
KINDS = (USER, STORE)
#: A map key is an e-mail address: 64 + 1 + 255 octets (RFC 5321 §4.5.3.1).
MAX_MASK = 320
MAX_REASON = 200


def parse_mask(text: str) -> str:
    """A user mask, lower-cased, or ValueError with a one-line message."""
    mask = text.strip()
    if not mask:
        raise ValueError("the user mask is empty")
    if len(mask) > MAX_MASK:
        raise ValueError(f"the user mask is longer than {MAX_MASK} characters")
    for ch in mask:
        if ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise ValueError(f"{text!r}: a user mask has no blank or control character")
        if ch in "[]":
            raise ValueError(f"{text!r}: a user mask takes only '*' and '?' as wildcards")
    return mask.lower()


def parse_store(text: str) -> str:
    """A store, ``HOST[:PORT]``, as the text holds are keyed by, or ValueError."""
    try:
        return store_text(parse_hostport(text))
    except ValueError as exc:
        raise ValueError(f"store {text.strip()!r}: {exc}") from None


def store_text(address: HostPort) -> str:
    """``host``, ``host:port`` or ``[v6]:port``, the host lower-cased."""
    host = address.host.lower()
    if address.port is None:
        return host
    return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"


def parse_target(kind: str, text: str) -> str:
    """The normalised target of a hold of ``kind``, or ValueError."""
    if kind == USER:
        return parse_mask(text)
    if kind == STORE:
        return parse_store(text)
    raise ValueError(f"unknown hold kind {kind!r}: give user or store")


def check_reason(text: str | None) -> str | None:
    """A reason as stored (None when blank), or ValueError."""
    if text is None or not text.strip():
        return None
    reason = text.strip()
    if len(reason) > MAX_REASON or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in reason):
        raise ValueError(f"the reason must be one line of at most {MAX_REASON} characters")
    return reason


@dataclass(frozen=True, slots=True)
class Hold:
    """One hold: a user mask or a store, why, since when, until when and by whom."""

    kind: str
    target: str
    reason: str | None = None
    #: Unix time at which the hold ends by itself; None: until released.
    until: float | None = None
    #: Unix time at which it was placed.
    since: float = 0.0
    #: The address of the operator's command that placed it.
    by: str | None = None

    @property
    def ident(self) -> tuple[str, str]:
        """What a hold is known by: placing the same one again replaces it."""
        return (self.kind, self.target)

    def expired(self, now: float) -> bool:
        return self.until is not None and now >= self.until

    def as_json(self) -> dict[str, object]:
        return {"kind": self.kind, "target": self.target, "reason": self.reason,
                "until": self.until, "since": self.since, "by": self.by}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Hold:
        """A hold from its JSON form, checked as a new one is; ValueError if it is not one."""
        kind, target = data.get("kind"), data.get("target")
        if not isinstance(kind, str) or not isinstance(target, str):
            raise ValueError("a hold needs kind and target")
        until, since = data.get("until"), data.get("since", 0.0)
        if until is not None and not isinstance(until, int | float):
            raise ValueError("until must be a number")
        if not isinstance(since, int | float):
            raise ValueError("since must be a number")
        reason, by = data.get("reason"), data.get("by")
        return cls(kind=kind, target=parse_target(kind, target),
                   reason=check_reason(reason if isinstance(reason, str) else None),
                   until=float(until) if until is not None else None, since=float(since),
                   by=by if isinstance(by, str) else None)


def _mask_pattern(mask: str) -> re.Pattern[str]:
    parts = (".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in mask)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def host_key(host: str) -> str:
    """A route's host as store holds are keyed: IP literals in standard form, names lower-cased."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower()


class HoldSet:
    """The holds in force in one process: immutable, replaced whole when they change.

    :meth:`match` runs on every routed login, so the set is indexed once:
    exact user keys and stores in dicts, wildcard masks as compiled patterns.
    """

    def __init__(self, holds: Iterable[Hold] = ()) -> None:
        self.holds = tuple(sorted(holds, key=lambda h: h.ident))
        self.empty = not self.holds
        self._users: dict[str, Hold] = {}
        self._patterns: list[tuple[re.Pattern[str], Hold]] = []
        self._stores: dict[tuple[str, int | None], Hold] = {}
        for hold in self.holds:
            if hold.kind == USER:
                if "*" in hold.target or "?" in hold.target:
                    self._patterns.append((_mask_pattern(hold.target), hold))
                else:
                    self._users[hold.target] = hold
            else:
                address = parse_hostport(hold.target)
                self._stores[(host_key(address.host), address.port)] = hold

    def match(self, key: str, host: str, port: int, now: float) -> Hold | None:
        """The hold, in force at ``now``, on the map key ``key`` or the store ``host:port``."""
        found = self._users.get(key.lower())
        if found is not None and not found.expired(now):
            return found
        for pattern, hold in self._patterns:
            if pattern.fullmatch(key) and not hold.expired(now):
                return hold
        if self._stores:
            wanted = host_key(host)
            for candidate in (self._stores.get((wanted, port)),
                              self._stores.get((wanted, None))):
                if candidate is not None and not candidate.expired(now):
                    return candidate
        return None

    def active(self, now: float) -> list[Hold]:
        """The holds not expired at ``now``."""
        return [hold for hold in self.holds if not hold.expired(now)]

    def counts(self, now: float) -> dict[str, int]:
        """How many holds of each kind are in force at ``now``."""
        active = self.active(now)
        return {kind: sum(1 for hold in active if hold.kind == kind) for kind in KINDS}

    def next_expiry(self, now: float) -> float | None:
        """The earliest ``until`` still ahead of ``now``."""
        ahead = [h.until for h in self.holds if h.until is not None and h.until > now]
        return min(ahead) if ahead else None


def describe(hold: Hold) -> str:
    """``user bob@riseup.net`` or ``store 10.0.0.5:143``."""
    return f"{hold.kind} {hold.target}"
