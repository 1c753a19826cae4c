"""The throttling policy, sans-IO: subjects, counter keys, windows, delays, fingerprints.

Nothing here reads a clock, a socket or a store; ``service.py`` feeds it counts
and carries out what it says.  docs/security.md explains the choices:

* a client is its IPv4 address, or its IPv6 ``/ipv6_prefix`` network (one
  customer usually gets a /64, and rotating through it must not reset the count);
* three counters: per address (the delay doubles per failure past
  ``free_failures`` up to ``max_delay``, and past ``address_limit`` the address
  is refused outright), per login from any address (at ``login_limit`` every
  attempt on it waits ``max_delay``; never refused, or anyone could lock a
  user out), and per (address, login) pair (the proxy resets it, and takes it
  back out of the address and login counters, on a successful login).

Counters are sliding windows approximated by ``BUCKETS`` buckets per window:
a failure adds 1 to the bucket of ``now``; a count is the sum of the buckets
that overlap the last window (:func:`window_total`).  The error is at most
one bucket (a tenth of the window), and a counter costs at most ``BUCKETS``
small rows or hash fields in a store.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from authsvc.redact import Secret
from authsvc.settings import ThrottleSettings

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
#: A dotted-quad IPv4 address as ``ipaddress`` accepts it: four decimal octets,
#: no leading zeros.
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}", re.ASCII)

#: Counter key prefixes.  Keys are text so SQLite and Redis store them alike.
ADDRESS = "a"
LOGIN = "l"
PAIR = "p"

#: Buckets per window.
BUCKETS = 10


def bucket_of(now: float, window: float) -> int:
    """The bucket number ``now`` falls in, for a counter of ``window`` seconds."""
    return math.floor(now / (window / BUCKETS))


def oldest_bucket(now: float, window: float) -> int:
    """The oldest bucket still inside the window ending at ``now``."""
    return bucket_of(now, window) - BUCKETS + 1


def window_total(buckets: Iterable[tuple[int, int]], now: float, window: float) -> int:
    """A counter's count at ``now``: its (bucket, amount) pairs still in the window.

    Never below zero: a success takes a pair's failures back out of the
    address count, and may take out more than a partly slid window still holds.
    """
    oldest = oldest_bucket(now, window)
    return max(0, sum(amount for bucket, amount in buckets if bucket >= oldest))


@dataclass(frozen=True, slots=True)
class Keys:
    """The counters one attempt touches, each with its window in seconds."""

    address: str
    login: str
    pair: str
    address_window: float
    login_window: float


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with an attempt: wait ``delay`` seconds, or refuse and close."""

    delay: float = 0.0
    blocked: bool = False
    address_failures: int = 0
    login_failures: int = 0


#: An attempt that is not throttled at all (trusted network, feature off).
FREE = Verdict()


def subject(client_ip: str | None, prefix: int) -> str | None:
    """The address a client is counted as: IPv4 alone, IPv6 by its ``prefix`` network.

    None for text that is no address (a unix-socket peer): such requests come
    from a local front end and are not counted.
    """
    if not client_ip:
        return None
    if ":" not in client_ip:
        # IPv4 has one textual form (ipaddress refuses leading zeros), so a
        # valid one is its own key: one match, no ipaddress object per login.
        return client_ip if _IPV4.fullmatch(client_ip) else None
    try:
        address = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:  # ::ffff:192.0.2.1 is the IPv4 client it names
            return str(mapped)
        return str(ipaddress.IPv6Network((address, prefix), strict=False))
    return str(address)


class Policy:
    """The pure part of throttling, built once from ``[throttle]``."""

    def __init__(self, settings: ThrottleSettings) -> None:
        self.settings = settings
        self._trusted = tuple(ipaddress.ip_network(n, strict=False) for n in settings.trusted)

    def trusted(self, client_ip: str | None) -> bool:
        """Whether the client is in a trusted network (never throttled)."""
        if not client_ip or not self._trusted:
            return False
        try:
            address = ipaddress.ip_address(client_ip.split("%", 1)[0])
        except ValueError:
            return False
        return any(address in network for network in self._trusted)

    def keys(self, client_ip: str | None, login: str) -> Keys | None:
        """The counters for this attempt; None when it is not throttled at all."""
        if not self.settings.enabled or self.trusted(client_ip):
            return None
        who = subject(client_ip, self.settings.ipv6_prefix)
        if who is None:
            return None
        # Logins are compared case-folded: Bob and bob are one mailbox to
        # every store we front (auth_username_format = %Ln).
        name = login.casefold()
        return Keys(address=f"{ADDRESS}:{who}", login=f"{LOGIN}:{name}",
                    pair=f"{PAIR}:{who}|{name}",
                    address_window=self.settings.address_window,
                    login_window=self.settings.login_window)

    def delay_for(self, failures: int) -> float:
        """Seconds to wait after ``failures`` counted failures."""
        s = self.settings
        over = failures - s.free_failures
        if over <= 0 or s.delay <= 0:
            return 0.0
        return min(s.delay * 2.0 ** min(over - 1, 60), s.max_delay)

    def verdict(self, address_failures: int, login_failures: int) -> Verdict:
        """The delay, or the refusal, the counts earn.

        Past ``address_limit`` the address is refused (even for a right
        password).  The login counter only escalates: at ``login_limit`` the
        delay is the maximum, but the login is never refused for everyone.
        """
        s = self.settings
        if address_failures >= s.address_limit:
            return Verdict(0.0, True, address_failures, login_failures)
        delay = self.delay_for(address_failures)
        if login_failures >= s.login_limit:
            # A login under attack from many addresses: everyone trying it
            # waits the most, but below the limit one user's typos elsewhere
            # never slow down the same user at home.
            delay = s.max_delay
        return Verdict(delay, False, address_failures, login_failures)


def fingerprint(key: Secret, who: str, login: str, password: Secret) -> str:
    """A keyed fingerprint of one (address, login, password): never the password.

    HMAC-SHA256 with the configured key, so the fingerprints in a shared store
    (Redis) cannot be tested against a word list by whoever can read it.
    Truncated to 128 bits: it only has to tell one device's repeats apart.
    """
    message = b"\0".join((who.encode(), login.casefold().encode(),
                          password.reveal().encode("utf-8", "surrogateescape")))
    return hmac.new(key.reveal().encode(), message, hashlib.sha256).hexdigest()[:32]
