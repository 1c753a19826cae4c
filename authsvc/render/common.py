"""What both renderers share: errors, durations, listener ports, ``--bind`` and the templates.

Nothing here knows nginx's or HAProxy's syntax beyond what both read alike
(durations such as ``90s`` or ``31m``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import jinja2

from authsvc.address import parse_hostport, well_known_port
from authsvc.settings import HostPort, ListenerSettings, ListenTls

#: Perdition's ``timeout 0`` / ``authenticate_timeout 0`` mean "never"; nginx and
#: HAProxy have no "never", so the renders use a day.
NO_TIMEOUT = 24 * 3600.0

#: Bind hosts that mean every address: nginx and HAProxy get the port alone.
ALL_ADDRESSES = frozenset({"", "*"})


class RenderError(ValueError):
    """The settings ask for something the target cannot do; the message says what."""


@dataclass(frozen=True, slots=True)
class Rendered:
    """A rendered config file and the warnings that were also written into it."""

    text: str
    warnings: tuple[str, ...] = ()


class View(Protocol):
    """A view model: the template reads it as ``v``, and its warnings go to stderr."""

    @property
    def warnings(self) -> tuple[str, ...]: ...


def format_time(seconds: float) -> str:
    """A duration in the largest exact unit nginx and HAProxy both read (h, m, s, ms)."""
    if seconds <= 0:
        raise RenderError(f"duration must be positive, got {seconds}")
    ms = round(seconds * 1000)
    if ms % 1000:
        return f"{ms}ms"
    whole = ms // 1000
    for unit, size in (("h", 3600), ("m", 60)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def nonzero(seconds: float) -> float:
    """A timeout where 0 ("never") becomes :data:`NO_TIMEOUT`."""
    return NO_TIMEOUT if seconds <= 0 else seconds


def bind_host(text: str) -> str:
    """A ``--bind`` value: an address or host name without a port (IPv6 with or
    without brackets), or ``*`` for every address."""
    if text.strip() == "*":
        return "*"
    try:
        found = parse_hostport(text)
    except ValueError as exc:
        raise RenderError(f"--bind: {exc}") from None
    if found.port is not None:
        raise RenderError(f"--bind: {text!r} has a port; the ports come from the listeners")
    return found.host


def listener_ports(listener: ListenerSettings) -> tuple[HostPort, ...]:
    """The listener's addresses with every port filled in (143/993/110/995 by default)."""
    default = well_known_port(listener.protocol, listener.tls is ListenTls.IMPLICIT)
    binds = listener.bind or (HostPort(""),)
    return tuple(HostPort(b.host, b.port if b.port is not None else default) for b in binds)


def render_template(name: str, view: View) -> Rendered:
    """``templates/<name>`` laid out with ``view``; the view's warnings come along."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("authsvc.templates", "."),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # config files, not HTML  # noqa: S701
        trim_blocks=True,
        lstrip_blocks=True,
    )
    text = environment.get_template(name).render(v=view)
    return Rendered(text=text, warnings=view.warnings)
