"""``authsvc check-config`` and ``authsvc lookup``: the operator's two questions.

``check-config`` answers "will this configuration load, and what does it
mean?": every error and warning as ``file:line: key: message``, then one line
per listener.  ``lookup`` answers "where does this login go, and why?" by
printing :meth:`authsvc.routing.Router.trace`, the same code path ``serve``
uses, so the explanation and the real decision cannot disagree.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from authsvc import routing, sizing
from authsvc.config import ConfigError, Issue, load_settings
from authsvc.config.issues import PROXY_ONLY
from authsvc.settings import (
    FileMapSettings,
    ForwardClient,
    ListenerSettings,
    MailProtocol,
    MapSettings,
    MySqlMapSettings,
    RegexMapSettings,
    Settings,
)

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_CONFIG = 2


def describe_map(settings: MapSettings) -> str:
    """One line about a map, without its password."""
    if isinstance(settings, FileMapSettings):
        return f"file {settings.path}"
    if isinstance(settings, RegexMapSettings):
        return f"regex {settings.path}"
    if isinstance(settings, MySqlMapSettings):
        hosts = ",".join(str(h) for h in settings.hosts)
        port = (settings.port_column if settings.port_constant is None
                else f"constant {settings.port_constant}")
        return (f"mysql {settings.user}@{hosts}/{settings.database}.{settings.table} "
                f"(key {settings.user_column}, server {settings.server_column}, port {port})")
    return "none"


def describe_listener(listener: ListenerSettings) -> str:
    """The one-line summary ``check-config`` prints per listener."""
    binds = ",".join(str(b) for b in listener.bind)
    tls = listener.tls.value + (" required" if listener.tls_required else "")
    fallback = ",".join(str(s) for s in listener.default_servers) or "none"
    return (f"{listener.name}: {listener.protocol.value} on {binds}, tls {tls}; "
            f"map {describe_map(listener.map)}; outgoing_server {fallback}; "
            f"backend tls {listener.backend_tls.value}, port {listener.default_port} "
            f"({listener.source})")


def _print_issues(issues: list[Issue], *, errors: bool) -> None:
    """Errors go to stderr, warnings to stdout with the listener summary."""
    for issue in issues:
        print(issue, file=sys.stderr if errors else sys.stdout)


def check_config(args: argparse.Namespace) -> int:
    """Validate ``args.config``; 0 when usable, 2 on errors (or warnings with --strict)."""
    if not args.config:
        print("authsvc check-config: no file: give [PROTO=]FILE or --config [PROTO=]FILE",
              file=sys.stderr)
        return EXIT_CONFIG
    try:
        loaded = load_settings(args.config)
    except ConfigError as exc:
        _print_issues(exc.warnings, errors=False)
        _print_issues(exc.issues, errors=True)
        print(f"{len(exc.issues)} error(s), {len(exc.warnings)} warning(s)", file=sys.stderr)
        return EXIT_CONFIG
    command = None if args.for_ == "all" else args.for_
    warnings = [issue for issue in [*loaded.warnings, *forwarding_warnings(loaded.settings),
                                    *descriptor_warnings(loaded.settings)]
                if issue.concerns(command)]
    if args.strict and warnings:
        _print_issues(warnings, errors=True)
        print(f"{len(warnings)} warning(s), errors under --strict", file=sys.stderr)
        return EXIT_CONFIG
    _print_issues(warnings, errors=False)
    for listener in loaded.settings.listeners:
        print(describe_listener(listener))
    count = len(loaded.settings.listeners)
    print(f"ok: {count} listener{'s' if count != 1 else ''}, "
          f"{len(warnings)} warning(s)")
    return EXIT_OK


def forwarding_warnings(settings: Settings) -> list[Issue]:
    """One warning when the proxy tells the stores no client address, else none.

    One for the whole configuration, not one per listener: ``forward_client``
    is the process's (docs/proxy.md, "Dovecot's auth penalty").
    """
    if settings.proxy.forward_client is not ForwardClient.NONE or not settings.listeners:
        return []
    # A listener's source is "file.toml:line" (native) or the Perdition file.
    source = settings.listeners[0].source
    native = ".toml:" in source
    file = source.rsplit(":", 1)[0] if native else source
    names = ", ".join(listener.name for listener in settings.listeners)
    return [Issue(
        file, 0, "proxy.forward_client" if native else "forward_client", used_by=PROXY_ONLY,
        message=f'"none" for listeners {names}: the stores see every proxied login come from '
        "the proxy's address, so a store's per-address auth penalty (Dovecot's) for one "
        "client's wrong passwords holds every user's login; set forward_client = \"id\" "
        "with the proxies in Dovecot's login_trusted_networks, or switch the penalty off at "
        "the stores and turn [throttle] on (docs/proxy.md, \"Dovecot's auth penalty\")")]


def descriptor_warnings(settings: Settings) -> list[Issue]:
    """One warning when the proxy's sessions cannot fit in its descriptor limit, else none.

    The sessions are the sum of the listeners' ``connection_limit`` (each
    proxy process counts its own, docs/proxy.md, "Limits"), two descriptors
    each, below the headroom the proxy keeps (:mod:`authsvc.sizing`).  The
    limit is ``[proxy] nofile`` when set, else ``LimitNOFILE=`` of the shipped
    deploy/systemd/authsvc-proxy.service: the limit the proxy will run under,
    never the limit of the shell that runs check-config.  A listener without a
    ``connection_limit`` leaves the count unbounded, and there is nothing to compare.
    """
    listeners = settings.listeners
    if not listeners or any(listener.connection_limit <= 0 for listener in listeners):
        return []
    sessions = sum(listener.connection_limit for listener in listeners)
    configured = settings.proxy.nofile
    limit = configured if configured is not None else sizing.PROXY_UNIT_NOFILE
    if sizing.proxy_sessions_fit(sessions, limit):
        return []
    source = listeners[0].source
    native = ".toml:" in source
    file = source.rsplit(":", 1)[0] if native else source
    where = (f"[proxy] nofile = {limit}" if configured is not None else
             f"LimitNOFILE={limit} of the shipped authsvc-proxy.service")
    names = ", ".join(f"{listener.name} {listener.connection_limit}" for listener in listeners)
    needed = sizing.proxy_nofile_for(sessions)
    return [Issue(
        file, 0, "listener.connection_limit" if native else "connection_limit",
        f"{sessions} sessions per proxy process (connection_limit: {names}) need "
        f"{needed} descriptors ({sizing.CONNECTIONS_PER_SESSION} per session, "
        f"{sizing.PROXY_OWN_DESCRIPTORS} of its own, and the headroom), more than "
        f"{where}, so the proxy would refuse clients before it holds that many; raise "
        "LimitNOFILE "
        "(systemctl edit authsvc-proxy) and [proxy] nofile with it, or lower connection_limit "
        '(docs/proxy.md, "Limits")', PROXY_ONLY)]


async def _trace(settings: Settings, request: routing.LoginRequest) -> routing.Trace:
    async with routing.open_router(settings) as router:
        return await router.trace(request)


def _row(label: str, text: str) -> None:
    print(f"{label:<14} {text}")


def choose_listener(settings: Settings, protocol: MailProtocol | None,
                    name: str | None) -> ListenerSettings:
    """The listener ``lookup`` asks for: ``--listener``, else the first of ``--protocol``,
    else the configuration's first.  ValueError names the listeners there are."""
    if name is not None:
        found = settings.listener(name)
        if found is None:
            raise ValueError(f"no listener named {name!r}; {_listeners(settings)}")
        if protocol is not None and found.protocol is not protocol:
            raise ValueError(f"listener {name!r} speaks {found.protocol.value}, not "
                             f"{protocol.value}; {_listeners(settings)}")
        return found
    if protocol is not None:
        first = settings.first_listener(protocol)
        if first is None:
            raise ValueError(f"no {protocol.value} listener; {_listeners(settings)}")
        return first
    if not settings.listeners:
        raise ValueError("the configuration has no listener")
    return settings.listeners[0]


def _listeners(settings: Settings) -> str:
    names = ", ".join(f"{li.name} ({li.protocol.value})" for li in settings.listeners)
    return f"the configuration has {names}"


def lookup(args: argparse.Namespace) -> int:
    """Explain where ``args.login`` is routed; 0 on a route, 1 on a refusal, 2 when the
    configuration cannot be loaded or has no such listener."""
    settings = load_settings(args.config).settings
    try:
        listener = choose_listener(
            settings, None if args.protocol is None else MailProtocol(args.protocol),
            args.listener)
    except ValueError as exc:
        print(f"authsvc lookup: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    protocol = listener.protocol
    request = routing.LoginRequest(
        login=args.login, protocol=protocol, listener=listener.name,
        local_name=args.local_name)
    try:
        trace = asyncio.run(_trace(settings, request))
    except OSError as exc:  # e.g. a map file that cannot be opened
        print(f"authsvc: lookup failed: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    _row("login", repr(args.login))
    _row("listener", trace.listener or f"none ({protocol.value})")
    for index, step in enumerate(trace.lookup_steps):
        _row("lookup" if index == 0 else "", f"{step.name:<12} {step.value!r}")
    if trace.key is not None:
        _row("map key", trace.key)
        _row("map", trace.map_description)
        _row("map answer", trace.map_answer)
    for index, step in enumerate(trace.backend_steps):
        _row("backend login" if index == 0 else "", f"{step.name:<12} {step.value!r}")
    decision = trace.decision
    code = EXIT_REFUSED
    if isinstance(decision, routing.Route):
        host = f"[{decision.host}]" if ":" in decision.host else decision.host
        _row("route", f"{host}:{decision.port} as {decision.backend_login!r} "
             f"(from {decision.source}, backend tls {decision.backend_tls.value})")
        code = EXIT_OK
    elif decision is not None:
        _row("refused", f"{decision.kind.value}: {decision.reason}")
    _row("time", f"{trace.seconds * 1000:.2f} ms")
    return code
