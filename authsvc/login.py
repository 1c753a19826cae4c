"""Perdition's login-name rules as pure functions (``username_mangle``, perdition/username.c).

Only :mod:`authsvc.routing` imports this module (the layering test enforces
it), so there is exactly one place where names are stripped, given a domain or
lower-cased.  Nothing here does I/O: the name of the local address, which
Perdition gets from ``getnameinfo()``, is an argument.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from authsvc.settings import LoginPolicy, Stage

_ASCII_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ASCII_LOWER = "abcdefghijklmnopqrstuvwxyz"
# str.lower() would fold non-ASCII letters too (and "İ" into two characters).
# Perdition calls tolower() byte by byte with no setlocale(), so only A-Z change.
_ASCII_FOLD = str.maketrans(_ASCII_UPPER, _ASCII_LOWER)
_CONTROL = re.compile("[\x00-\x1f\x7f]")


class LoginRejected(ValueError):
    """A login that is refused before any lookup (too long, NUL, control bytes)."""


class Step(NamedTuple):
    """One step of the normalisation, for ``authsvc lookup``'s explanation.

    A named tuple, not a frozen dataclass: two are made for every login, and a
    tuple is several times cheaper to build.
    """

    name: str
    value: str


def check_login(login: str, policy: LoginPolicy) -> None:
    """Refuse logins that no mail store could hold, before they reach a map.

    Perdition would truncate at a NUL (we saw ``bob\\0evil`` log in as bob) and
    build a truncated SQL string past 255 bytes (perditiondb_mysql.c); both are
    refused here instead.
    """
    if not login:
        raise LoginRejected("empty login")
    if len(login.encode("utf-8", "surrogateescape")) > policy.max_login_length:
        raise LoginRejected(f"login longer than {policy.max_login_length} bytes")
    if _CONTROL.search(login) is not None:
        raise LoginRejected("control character in login")


def domain_from_local_name(local_name: str | None, depth: int) -> str | None:
    """Perdition's add_domain domain: the local name minus ``depth`` leading labels.

    ``mail.example.org`` with depth 1 gives ``example.org``; the IPv4 address
    ``10.0.0.5`` gives ``0.0.5`` (Perdition uses the numeric address when there
    is no PTR record).  When a label cannot be removed, or nothing is left,
    nothing is added (``localhost`` gives None).
    """
    if not local_name:
        return None
    rest = local_name
    for _ in range(depth):
        dot = rest.find(".")
        if dot < 0:
            return None
        rest = rest[dot + 1 :]
    return rest or None


def _domain(policy: LoginPolicy, local_name: str | None) -> str | None:
    if policy.explicit_domain is not None:
        # explicit_domain is used verbatim; the depth does not apply to it.
        return policy.explicit_domain or None
    return domain_from_local_name(local_name, policy.add_domain_depth)


def normalise_steps(
    login: str, stage: Stage, policy: LoginPolicy, local_name: str | None = None
) -> list[Step]:
    """Perdition's ``username_mangle``: strip, then add-domain, then lower-case.

    Each step looks only at its own option, exactly as Perdition does.  The
    returned list starts with the login as typed and names each step that ran.
    """
    delim = policy.domain_delimiter
    name = login
    steps = [Step("as typed", name)]
    if stage in policy.strip_domain:
        # Cut at the *last* delimiter, and drop the delimiter too.
        cut = name.rfind(delim)
        if cut >= 0:
            name = name[:cut]
            steps.append(Step("strip_domain", name))
    if stage in policy.add_domain and delim not in name:
        # Only a name with no delimiter anywhere gets one (Perdition uses strstr).
        domain = _domain(policy, local_name)
        if domain is not None:
            name = f"{name}{delim}{domain}"
            steps.append(Step("add_domain", name))
    if stage in policy.lower_case:
        lowered = name.translate(_ASCII_FOLD)
        if lowered != name:
            name = lowered
            steps.append(Step("lower_case", name))
    return steps


def normalise(
    login: str, stage: Stage, policy: LoginPolicy, local_name: str | None = None
) -> str:
    """The name to use at ``stage``; see :func:`normalise_steps`."""
    return normalise_steps(login, stage, policy, local_name)[-1].value

