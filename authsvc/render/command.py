"""``render-nginx`` / ``render-haproxy``: command-line options to a config on stdout.

The options become :class:`~authsvc.render.nginx.NginxOptions` or
:class:`~authsvc.render.haproxy.HaproxyOptions`; addresses in them (``--node``,
``--stats``) follow the one rule of :mod:`authsvc.address`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Literal

from authsvc.address import parse_hostport
from authsvc.render.common import RenderError
from authsvc.render.haproxy import HaproxyOptions, render_haproxy
from authsvc.render.nginx import NginxOptions, render_nginx
from authsvc.settings import HostPort, PoolNode


def parse_node(text: str, default_offset: int = 0) -> PoolNode:
    """``NAME=HOST[:HEALTHPORT]`` (IPv6 as ``[::1]:9143``) as a :class:`PoolNode`."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise RenderError(f"--node: expected NAME=HOST[:HEALTHPORT], got {text!r}")
    try:
        address = parse_hostport(rest)
    except ValueError as exc:
        raise RenderError(f"--node {text!r}: {exc}") from None
    return PoolNode(
        name=name,
        host=address.host,
        port_offset=default_offset,
        health=address if address.port is not None else None,
    )


def parse_stats(text: str) -> HostPort:
    """``--stats HOST:PORT`` (IPv6 as ``[::1]:8404``)."""
    try:
        return parse_hostport(text, need_port=True)
    except ValueError as exc:
        raise RenderError(f"--stats: {exc}") from None


def nginx_options(args: argparse.Namespace) -> NginxOptions:
    """``render-nginx``'s parsed arguments as :class:`NginxOptions`."""
    return NginxOptions(
        standalone=args.standalone,
        ssl_cert=args.ssl_cert,
        ssl_key=args.ssl_key,
        auth_http=args.auth_http,
        proxy_protocol_from=tuple(args.proxy_protocol_from),
        listen_offset=args.listen_offset,
        bind=args.bind,
        pid=args.pid,
        prefix=args.prefix,
    )


def haproxy_options(args: argparse.Namespace) -> HaproxyOptions:
    """``render-haproxy``'s parsed arguments as :class:`HaproxyOptions`."""
    offset: int | None = args.node_port_offset
    return HaproxyOptions(
        nodes=tuple(parse_node(n, offset or 0) for n in args.node),
        bind=args.bind,
        node_port_offset=offset,
        proxy_protocol="v1" if args.proxy_v1 else None,
        stats=parse_stats(args.stats) if args.stats else None,
        admin_socket=args.admin_socket,
        check_inter=args.check_inter,
    )


def render_command(args: argparse.Namespace) -> int:
    """``authsvc render-nginx`` / ``render-haproxy``: print the config to stdout.

    Load warnings and render warnings go to stderr; the config goes to stdout
    only when it is complete, so ``> mail.conf`` never leaves half a file's worth
    of surprises.  Exit 0, or 2 when the settings cannot be rendered.
    """
    from authsvc.config import load_settings

    command: Literal["render-nginx", "render-haproxy"] = args.command
    loaded = load_settings(list(args.config))
    for issue in loaded.warnings_for("nginx" if command == "render-nginx" else "haproxy"):
        print(f"authsvc: warning: {issue}", file=sys.stderr)
    try:
        if command == "render-nginx":
            rendered = render_nginx(loaded.settings, nginx_options(args))
        else:
            rendered = render_haproxy(loaded.settings, haproxy_options(args))
    except RenderError as exc:
        print(f"authsvc: {command}: {exc}", file=sys.stderr)
        return 2
    for warning in rendered.warnings:
        print(f"authsvc: {command}: warning: {warning}", file=sys.stderr)
    sys.stdout.write(rendered.text)
    return 0
