"""The ``authsvc`` command line: parse arguments, load settings once, dispatch.

Each subcommand's work lives in its own module, imported lazily so that
``authsvc check-config`` never imports aiohttp and ``authsvc`` never imports
the proxy unless asked.  ``main(argv) -> int`` never lets a traceback reach an
operator for bad input: configuration errors print ``file:line: key: message``
and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from authsvc import __version__
from authsvc.config.issues import COMMANDS

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

#: Which node an operator command reaches (authsvc/control/client.py).
URL_HELP = ("the node's control listener, http(s)://HOST:PORT or unix:/path "
            "(default: [control] listen from the config)")


def _add_config(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument(
        "--config",
        "-c",
        action="append",
        default=[],
        required=required,
        metavar="[PROTO=]FILE",
        help="native TOML, or a Perdition file; repeat for several Perdition files. "
        "PROTO (imap4, imaps or imap4s, pop3, pop3s) names the protocol of a Perdition file "
        "whose name does not say it",
    )


def _add_target(parser: argparse.ArgumentParser) -> None:
    """``--url``, ``--pool``, ``--node``: where an operator command goes (its ``Request``
    then goes through authsvc/control/pool.py)."""
    parser.add_argument("--url", help=URL_HELP)
    parser.add_argument("--pool", action="store_true",
                        help="every [[haproxy.nodes]] of the config, at its control address")
    parser.add_argument("--node", action="append", default=[], metavar="NAME",
                        help="only this pool node (repeatable; implies --pool)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="authsvc", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"authsvc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check-config", help="validate configuration files and list warnings")
    # The files as arguments or with --config, as every other command takes them;
    # both land in args.config, in command-line order.
    p.add_argument("config", nargs="*", action="extend", metavar="[PROTO=]FILE",
                   help="the same as --config FILE")
    _add_config(p, required=False)
    p.add_argument("--strict", action="store_true", help="treat warnings as errors")
    p.add_argument("--for", dest="for_", choices=(*COMMANDS, "all"),
                   default="all", help="only what this command uses: serve, proxy, "
                   "nginx (render-nginx), haproxy (render-haproxy); default all")

    p = sub.add_parser("lookup", help="explain where a login is routed, step by step")
    p.add_argument("login")
    p.add_argument("--protocol", choices=("imap", "pop3"),
                   help="use the first listener of this protocol (default: the first listener)")
    p.add_argument("--listener", help="listener name (default: the first listener, or the "
                   "first of --protocol)")
    p.add_argument(
        "--local-name",
        help="name or address of the local address the client reached (add_domain "
        "without explicit_domain)",
    )
    _add_config(p)

    p = sub.add_parser("serve", help="run the nginx auth_http endpoint")
    _add_config(p)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--listen", metavar="HOST:PORT", help="TCP address (overrides config)")
    where.add_argument("--unix", metavar="PATH", help="unix socket path (overrides config)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")

    p = sub.add_parser("flush", help="drop cached routes in a running authsvc serve or proxy, "
                       "in every worker")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--user", metavar="KEY", help="one map key, e.g. bob@riseup.net")
    what.add_argument("--domain", metavar="DOMAIN", help="every key of one domain")
    what.add_argument("--all", action="store_true", help="everything")
    _add_config(p)
    _add_target(p)

    p = sub.add_parser("throttle", help="list or clear brute-force throttle counts in a "
                       "running authsvc serve or proxy")
    actions = p.add_subparsers(dest="action", required=True)
    t = actions.add_parser("list", help="every address and login with failures counted")
    t.add_argument("--json", action="store_true", help="the raw JSON answer")
    _add_config(t)
    _add_target(t)
    t = actions.add_parser("clear", help="forget the failures of an address, network or login")
    t.add_argument("who", metavar="ADDRESS|LOGIN")
    _add_config(t)
    _add_target(t)

    p = sub.add_parser("sessions", help="list or end the sessions a running authsvc proxy "
                       "relays, in every worker")
    actions = p.add_subparsers(dest="action", required=True)
    for action, text in (("list", "the relayed sessions (all, or those the options select)"),
                         ("kick", "close the selected sessions at once, both sockets, no BYE")):
        t = actions.add_parser(action, help=text)
        t.add_argument("--user", metavar="MASK",
                       help="map keys matching MASK, with * and ? (e.g. '*@riseup.net')")
        t.add_argument("--client", metavar="CIDR", help="clients in this network or address")
        t.add_argument("--store", metavar="HOST[:PORT]",
                       help="sessions to this store (a name matches all its addresses)")
        if action == "list":
            t.add_argument("--json", action="store_true", help="the raw JSON answer")
        else:
            t.add_argument("--dry-run", action="store_true",
                           help="close nothing; say how many would be closed")
            t.add_argument("--rate", type=float, metavar="N",
                           help="at most N kicks a second over the pool (default: all at once)")
        _add_config(t)
        _add_target(t)

    p = sub.add_parser("hold", help="refuse new logins of a user or to a store, with a "
                       "temporary failure (maintenance), in every worker")
    kinds = p.add_subparsers(dest="kind", required=True)
    for kind, metavar, about in (("user", "MASK", "map keys matching MASK ('*' and '?')"),
                                ("store", "HOST[:PORT]", "the store (every port without one)")):
        h = kinds.add_parser(kind, help=f"hold {about}")
        h.add_argument("target", metavar=metavar)
        h.add_argument("--reason", metavar="TEXT", help="why, for hold list and the logs")
        ends = h.add_mutually_exclusive_group()
        ends.add_argument("--for", dest="duration", metavar="DURATION",
                           help="end by itself after this long: 90s, 30m, 2h, 1d")
        ends.add_argument("--until", metavar="ISO",
                           help="end by itself at this time (ISO 8601; no offset: local time)")
        _add_config(h)
        _add_target(h)
    h = kinds.add_parser("list", help="the holds in force")
    h.add_argument("--json", action="store_true", help="the raw JSON answer")
    _add_config(h)
    _add_target(h)

    p = sub.add_parser("release", help="end a hold on a user or a store")
    kinds = p.add_subparsers(dest="kind", required=True)
    for kind, metavar in (("user", "MASK"), ("store", "HOST[:PORT]")):
        h = kinds.add_parser(kind, help=f"release a {kind} hold, as it was placed")
        h.add_argument("target", metavar=metavar)
        _add_config(h)
        _add_target(h)

    p = sub.add_parser("reload", help="make a running serve or proxy re-read its configuration "
                       "(sends SIGHUP, as systemctl reload does)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--pid", type=int, help="process id of authsvc serve/proxy")
    which.add_argument("--pid-file", metavar="FILE", help="file holding that process id")

    p = sub.add_parser("render-nginx", help="print an nginx mail {} config for these settings")
    _add_config(p)
    p.add_argument("--standalone", action="store_true", help="a complete nginx.conf, for tests")
    p.add_argument("--ssl-cert", help="override the certificate path")
    p.add_argument("--ssl-key", help="override the key path")
    p.add_argument("--auth-http", help="override the auth_http URL (default: from the config)")
    p.add_argument("--proxy-protocol-from", action="append", default=[], metavar="CIDR",
                   help="accept PROXY headers from this network (HAProxy in front)")
    p.add_argument("--listen-offset", type=int, default=0,
                   help="add this to every listen port (behind HAProxy, or for tests)")
    p.add_argument("--bind", help="override every listener's address")
    p.add_argument("--pid", help="pid file (--standalone)")
    p.add_argument("--prefix", help="directory for logs and temp files (--standalone)")

    p = sub.add_parser("render-haproxy", help="print an HAProxy config for a pool of nodes")
    _add_config(p)
    p.add_argument("--node", action="append", default=[], metavar="NAME=HOST[:HEALTHPORT]",
                   help="a front-end node (default: from the config)")
    p.add_argument("--bind", help="override the frontends' address")
    p.add_argument("--node-port-offset", type=int, default=None,
                   help="the nodes listen on the standard port plus this "
                   "(default: each node's port_offset from the config, else 0)")
    p.add_argument("--proxy-v1", action="store_true", help="send PROXY v1 instead of v2")
    p.add_argument("--stats", metavar="HOST:PORT", help="add a stats listener")
    p.add_argument("--admin-socket", metavar="PATH", help="admin socket path")
    p.add_argument("--check-inter", default=None,
                   help="health-check interval, an HAProxy time such as 2s or 500ms "
                   "(default: haproxy.check_inter from the config)")

    p = sub.add_parser("proxy", help="run the IMAP/POP3 proxy (every configured listener)")
    _add_config(p)
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes sharing the listening ports (default 1)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the process exit code."""
    args = build_parser().parse_args(argv)
    from authsvc.config import ConfigError

    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"authsvc: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_FAILURE


def _dispatch(args: argparse.Namespace) -> int:
    command: str = args.command
    if command == "check-config":
        from authsvc.commands import check_config

        return check_config(args)
    if command == "lookup":
        from authsvc.commands import lookup

        return lookup(args)
    if command == "serve":
        from authsvc.http.serve import serve

        return serve(args)
    if command == "flush":
        from authsvc.control.commands import flush

        return flush(args)
    if command == "throttle":
        from authsvc.control.commands import throttle_command

        return throttle_command(args)
    if command == "sessions":
        from authsvc.control.session_commands import sessions_command

        return sessions_command(args)
    if command == "hold":
        from authsvc.control.hold_commands import hold_command

        return hold_command(args)
    if command == "release":
        from authsvc.control.hold_commands import release_command

        return release_command(args)
    if command == "reload":
        from authsvc.reload import reload_command

        return reload_command(args)
    if command == "proxy":
        from authsvc.proxy.command import main as proxy_main

        return proxy_main(args)
    if command in ("render-nginx", "render-haproxy"):
        from authsvc.render import render_command

        return render_command(args)
    raise AssertionError(f"unhandled command {command}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
